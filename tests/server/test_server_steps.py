"""Server optimisers behind the reply vetting, non-finite replies and aggregates, and their checkpointed state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.config import parse_run_config
from server.history import RunHistory
from server.server_steps import load_server_state, make_strategy, server_state

KEYS = {"w": (3, 2), "bn.num_batches_tracked": ()}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _Nodes:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _record(w: np.ndarray, tracked: int = 5) -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(w.astype(np.float32)), "bn.num_batches_tracked": Array(np.array(tracked, dtype=np.int64))}
    )


def _replies(sent: list[Message], weights: list[np.ndarray], n: list[int]) -> list[Message]:
    out = []
    for msg, w, k in zip(sent, weights, n, strict=True):
        content = RecordDict(
            {
                "arrays": _record(w, tracked=7),
                "metrics": MetricRecord({"num-examples": k, "train-loss": 1.0}),
                "hospital": ConfigRecord({"name": f"h{msg.metadata.dst_node_id}"}),
            }
        )
        out.append(Message(content, reply_to=msg))
    return out


def _strategy(tmp_path: Path, **keys: object):  # type: ignore[no-untyped-def]
    cfg = parse_run_config(keys)
    return make_strategy(cfg, history=RunHistory(tmp_path / "h.json"), min_train_nodes=2, min_available_nodes=2)


def _run(strategy, rounds: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:  # type: ignore[no-untyped-def]
    """``rounds`` rounds with random hospital weights; the final w and every round's FedAvg of the replies."""
    w = np.zeros((3, 2), dtype=np.float32)
    averages = []
    for server_round in range(1, rounds + 1):
        sent = list(strategy.configure_train(server_round, _record(w), ConfigRecord(), _Nodes([1, 2])))
        local = [w + rng.normal(size=w.shape).astype(np.float32) for _ in sent]
        averages.append((local[0] * 10 + local[1] * 30) / 40)
        arrays, _ = strategy.aggregate_train(server_round, _replies(sent, local, [10, 30]))
        assert arrays is not None
        assert arrays["w"].dtype == "float32" and arrays["bn.num_batches_tracked"].dtype == "int64"
        assert arrays["bn.num_batches_tracked"].numpy().shape == ()
        w = arrays["w"].numpy()
    return w, averages


def test_fedadam_follows_the_published_update(tmp_path: Path) -> None:
    """Reddi et al. 2021 (Algorithm 2 with Flower's bias correction), written out in numpy."""
    strategy = _strategy(tmp_path, strategy="fedadam", **{"server-learning-rate": 0.05})
    w, averages = _run(strategy, 3, np.random.default_rng(0))
    x, m, v = np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2))
    for t, avg in enumerate(averages, start=1):
        delta = avg - x
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        eta = 0.05 * np.sqrt(1 - 0.99 ** (t + 1)) / (1 - 0.9 ** (t + 1))
        x = (x + eta * m / (np.sqrt(v) + 1e-3)).astype(np.float32)
    np.testing.assert_allclose(w, x, rtol=1e-5, atol=1e-6)


def test_fedavgm_follows_heavy_ball_momentum(tmp_path: Path) -> None:
    keys = {"server-learning-rate": 1.0, "server-momentum": 0.9, "update-norm-limit": 0.0}
    strategy = _strategy(tmp_path, strategy="fedavgm", **keys)
    w, averages = _run(strategy, 3, np.random.default_rng(1))
    x, buf = np.zeros((3, 2)), None
    for avg in averages:
        grad = x - avg
        buf = grad if buf is None else 0.9 * buf + grad
        x = (x - buf).astype(np.float32)
    np.testing.assert_allclose(w, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm"])
def test_a_restored_server_state_continues_exactly(tmp_path: Path, name: str) -> None:
    keys = {"strategy": name, "server-learning-rate": 0.1, "server-momentum": 0.5}
    whole = _strategy(tmp_path / "a", **keys)
    first = _strategy(tmp_path / "b", **keys)
    w_whole, _ = _run(whole, 4, np.random.default_rng(2))
    rng = np.random.default_rng(2)
    w, _ = _run(first, 2, rng)
    resumed = _strategy(tmp_path / "c", **keys)
    load_server_state(resumed, {k: v.copy() for k, v in server_state(first).items()})
    for server_round in (3, 4):
        sent = list(resumed.configure_train(server_round, _record(w), ConfigRecord(), _Nodes([1, 2])))
        local = [w + rng.normal(size=w.shape).astype(np.float32) for _ in sent]
        arrays, _ = resumed.aggregate_train(server_round, _replies(sent, local, [10, 30]))
        assert arrays["bn.num_batches_tracked"].numpy().shape == ()  # type: ignore[index]
        w = arrays["w"].numpy()  # type: ignore[index]
    assert server_state(resumed)
    np.testing.assert_allclose(w, w_whole, rtol=0, atol=1e-6)


def test_server_state_of_another_step_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds \\['momentum'\\]; expected only \\['m_t', 'v_t'\\]"):
        load_server_state(_strategy(tmp_path, strategy="fedadam"), {"momentum/00000": np.zeros(2)})
    assert server_state(_strategy(tmp_path, strategy="fedavg")) == {}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (np.array([[np.nan, 0], [0, 0], [0, 0]], dtype=np.float32), "'w' holds NaN or Inf values"),
        (np.array([[np.inf, 0], [0, 0], [0, 0]], dtype=np.float32), "'w' holds NaN or Inf values"),
        (np.zeros((3, 2), dtype=np.float16), "'w' has dtype float16; expected float32"),
    ],
)
def test_a_non_finite_or_retyped_reply_is_rejected_and_the_round_goes_on(
    tmp_path: Path, bad: np.ndarray, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = _strategy(tmp_path)
    sent = list(strategy.configure_train(1, _record(np.zeros((3, 2))), ConfigRecord(), _Nodes([1, 2, 3])))
    replies = _replies(sent[:2], [np.ones((3, 2)), np.full((3, 2), 3.0)], [10, 10])
    tampered = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(bad), "bn.num_batches_tracked": Array(np.array(7, dtype=np.int64))}),
            "metrics": MetricRecord({"num-examples": 10, "train-loss": 1.0}),
            "hospital": ConfigRecord({"name": "h3"}),
        }
    )
    arrays, _ = strategy.aggregate_train(1, [*replies, Message(tampered, reply_to=sent[2])])
    assert arrays is not None and np.isfinite(arrays["w"].numpy()).all()
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((3, 2), 2.0))
    failure = strategy.history.round(1)["failures"][0]
    assert failure["node_id"] == 3 and reason in failure["reason"]
    assert any("rejected reply from h3" in r.getMessage() for r in caplog.records)


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # the divergence it provokes
def test_a_server_step_that_diverges_keeps_the_global_model(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, strategy="fedavgm", **{"server-learning-rate": 100.0})
    sent = list(strategy.configure_train(1, _record(np.zeros((3, 2))), ConfigRecord(), _Nodes([1, 2])))
    arrays, _ = strategy.aggregate_train(1, _replies(sent, [np.full((3, 2), 3e38)] * 2, [10, 10]))
    assert arrays is None  # the round loop keeps the previous global model
    assert "holds NaN or Inf values; the global model is kept" in strategy.history.round(1)["aggregate_rejected"]


def test_a_server_optimiser_steps_weights_and_averages_buffers(tmp_path: Path) -> None:
    """BatchNorm statistics are averaged: momentum would push a running variance below zero."""
    keys = {"server-learning-rate": 1.0, "server-momentum": 0.9, "update-norm-limit": 0.0}
    strategy = _strategy(tmp_path, strategy="fedavgm", **keys)
    strategy.buffer_keys = frozenset({"bn.num_batches_tracked"})
    _run(strategy, 2, np.random.default_rng(3))
    sent = list(strategy.configure_train(3, _record(np.zeros((3, 2)), tracked=5), ConfigRecord(), _Nodes([1, 2])))
    arrays, _ = strategy.aggregate_train(3, _replies(sent, [np.ones((3, 2))] * 2, [10, 30]))
    assert int(arrays["bn.num_batches_tracked"].numpy()) == 7  # the replies' average, not a momentum step
    assert not np.allclose(arrays["w"].numpy(), 1.0)  # the weights took the momentum step


def test_make_strategy_names_the_models_buffers(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, strategy="fedadam", model="resnet18")
    assert "bn1.running_var" in strategy.buffer_keys and "conv1.weight" not in strategy.buffer_keys
