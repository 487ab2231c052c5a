"""The robust strategies reproduce Flower's own result and independent numpy references, and skip a short round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from scipy.stats import trim_mean

from common import records as rk
from common.config import parse_run_config
from server.history import RunHistory
from server.server_steps import make_strategy

HOSPITALS = 7
SHAPE = (3, 4)


@pytest.fixture(autouse=True)
def _ids(task_identity: None) -> None:
    """Messages need the ids a ServerApp process has."""


class _Nodes:
    def __init__(self, count: int) -> None:
        self.nodes = list(range(1, count + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _weights(seed: int = 0) -> list[np.ndarray]:
    """Seven hospitals' weights around 1.0; the last one is hostile (scaled 50 times)."""
    rng = np.random.default_rng(seed)
    weights = [(1.0 + 0.1 * rng.normal(size=SHAPE)).astype(np.float32) for _ in range(HOSPITALS)]
    weights[-1] = weights[-1] * 50.0
    return weights


def _content(w: np.ndarray, tracked: int, n: int, name: str) -> RecordDict:
    arrays = ArrayRecord({"w": Array(w), "bn.num_batches_tracked": Array(np.array(tracked, dtype=np.int64))})
    metrics = MetricRecord({rk.NUM_EXAMPLES: n, rk.TRAIN_LOSS: 1.0})
    return RecordDict({rk.ARRAYS: arrays, rk.METRICS: metrics, rk.HOSPITAL: ConfigRecord({"name": name})})


def _replies(sent: list[Message], weights: list[np.ndarray]) -> list[Message]:
    """One reply per message sent; a fresh copy each call (Flower's strategies empty the records they read)."""
    return [
        Message(_content(w.copy(), 10 + i, 10 * (i + 1), f"h{i + 1}"), reply_to=msg)
        for i, (msg, w) in enumerate(zip(sent, weights, strict=True))
    ]


def _strategy(tmp_path: Path, strategy: str, **keys: object):  # type: ignore[no-untyped-def]
    cfg = parse_run_config({"strategy": strategy, "min-train-nodes": HOSPITALS, **keys})
    history = RunHistory(tmp_path / "history.json")
    return make_strategy(cfg, history=history, min_train_nodes=cfg.min_train_nodes, min_available_nodes=1)


def _sent(strategy, count: int = HOSPITALS) -> list[Message]:  # type: ignore[no-untyped-def]
    start = ArrayRecord(
        {"w": Array(np.ones(SHAPE, dtype=np.float32)), "bn.num_batches_tracked": Array(np.array(9, dtype=np.int64))}
    )
    return list(strategy.configure_train(1, start, ConfigRecord(), _Nodes(count)))


FLOWER = {
    "fedmedian": lambda: FedMedian(),
    "fedtrimmedavg": lambda: FedTrimmedAvg(beta=0.2),
    "krum": lambda: Krum(num_malicious_nodes=1),
    "multikrum": lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=HOSPITALS - 1),
    "bulyan": lambda: Bulyan(num_malicious_nodes=1),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "bulyan" else n for n in sorted(FLOWER)]
)
def test_each_robust_strategy_reproduces_flowers_own(tmp_path: Path, name: str) -> None:
    strategy = _strategy(tmp_path, name)
    sent, weights = _sent(strategy), _weights()
    ours, _ = strategy.aggregate_train(1, _replies(sent, weights))
    theirs, _ = FLOWER[name]().aggregate_train(1, _replies(sent, weights))
    assert ours is not None and theirs is not None
    assert ours["w"].dtype == "float32" and ours["bn.num_batches_tracked"].dtype == "int64"  # as sent
    np.testing.assert_allclose(ours["w"].numpy(), theirs["w"].numpy(), rtol=1e-6)
    assert int(ours["bn.num_batches_tracked"].numpy()) == int(np.rint(theirs["bn.num_batches_tracked"].numpy()))
    assert np.abs(ours["w"].numpy() - 1.0).max() < 1.0  # the hostile hospital (x50) moved nothing far


def test_fedmedian_and_fedtrimmedavg_match_numpy_and_scipy(tmp_path: Path) -> None:
    weights = _weights(1)
    stacked = np.stack(weights)
    for name, expected in (("fedmedian", np.median(stacked, axis=0)), ("fedtrimmedavg", trim_mean(stacked, 0.2))):
        strategy = _strategy(tmp_path, name)
        arrays, _ = strategy.aggregate_train(1, _replies(_sent(strategy), weights))
        np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-6)  # type: ignore[index]


def test_krum_picks_one_honest_update_and_multikrum_leaves_out_the_hostile_one(tmp_path: Path) -> None:
    weights = _weights(2)
    krum = _strategy(tmp_path, "krum")
    arrays, _ = krum.aggregate_train(1, _replies(_sent(krum), weights))
    picked = arrays["w"].numpy()  # type: ignore[index]
    assert any(np.array_equal(picked, w) for w in weights[:-1])
    multikrum = _strategy(tmp_path, "multikrum")
    arrays, _ = multikrum.aggregate_train(1, _replies(_sent(multikrum), weights))
    honest = np.average(np.stack(weights[:-1]), axis=0, weights=[10 * (i + 1) for i in range(HOSPITALS - 1)])
    np.testing.assert_allclose(arrays["w"].numpy(), honest, rtol=1e-6)  # type: ignore[index]


@pytest.mark.parametrize(
    ("name", "keys", "sampled", "expected"),
    [
        ("fedmedian", {}, 3, "2 valid update(s), fewer than the 3 that fedmedian needs (the median of two"),
        ("fedtrimmedavg", {}, 5, "4 valid update(s), fewer than the 5 that fedtrimmedavg needs (trim-fraction 0.2"),
        ("krum", {}, 5, "4 valid update(s), fewer than the 5 that krum needs (Krum needs n > 2f + 2 with f = "),
        ("multikrum", {"num-malicious-nodes": 2}, 7, "fewer than the 7 that multikrum needs (Krum needs n > 2f + 2"),
        ("bulyan", {}, 7, "6 valid update(s), fewer than the 7 that bulyan needs (Bulyan needs n >= 4f + 3 with f"),
    ],
)
def test_a_round_with_too_few_updates_keeps_the_global_model(
    tmp_path: Path, name: str, keys: dict, sampled: int, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One hospital declines (say, its privacy budget): the others are fewer than the rule needs."""
    cfg = parse_run_config({"strategy": name, "min-train-nodes": sampled, **keys})
    strategy = make_strategy(cfg, history=RunHistory(tmp_path / "h.json"), min_train_nodes=sampled)
    sent = _sent(strategy, sampled)
    replies = _replies(sent[:-1], _weights()[: sampled - 1])
    info = ConfigRecord({"name": "h-last", rk.DECLINED: "privacy budget spent"})
    declined = RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 0}), rk.HOSPITAL: info})
    arrays, metrics = strategy.aggregate_train(1, [*replies, Message(declined, reply_to=sent[-1])])
    assert arrays is None and metrics is None  # the round loop keeps the previous global model
    reason = strategy.history.round(1)["aggregate_rejected"]
    assert expected in reason and reason.endswith("; the global model is kept") and "\n" not in reason
    lines = [r.getMessage() for r in caplog.records if "the global model is kept" in r.getMessage()]
    assert lines == [f"round 1: {reason}"]
