"""The FedAvg strategy rejects bad hospital replies one by one, and the round goes on."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.history import RunHistory
from server.replies import reply_problem
from server.roster import NodeRoster
from server.strategy import MedsiloFedAvg, RunStopped

SHAPES = {"w": (3, 2), "b": (2,)}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _arrays(value: float, shapes: dict[str, tuple[int, ...]] = SHAPES) -> ArrayRecord:
    return ArrayRecord({k: Array(np.full(s, value, dtype=np.float32)) for k, s in shapes.items()})


def _reply(node: int, content: RecordDict | Error) -> Message:
    sent = Message(
        content=RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type="train"
    )
    return Message(content, reply_to=sent)


def _train_content(value: float, n: object, *, name: str, shapes: dict[str, tuple[int, ...]] = SHAPES) -> RecordDict:
    return RecordDict(
        {
            "arrays": _arrays(value, shapes),
            "metrics": MetricRecord({"num-examples": n, "train-loss": 1.0}),  # type: ignore[dict-item]
            "hospital": ConfigRecord({"name": name}),
        }
    )


def test_bad_replies_are_rejected_and_logged_while_the_round_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = RunHistory(tmp_path / "history.json")
    strategy = MedsiloFedAvg(history=history, min_train_nodes=1, min_available_nodes=1)
    strategy._sent = _arrays(0.0)
    replies = [
        _reply(11, _train_content(1.0, 10, name="a")),
        _reply(12, _train_content(5.0, 30, name="b")),
        _reply(13, _train_content(9.0, 20, name="wrong-shape", shapes={"w": (2, 2), "b": (2,)})),
        _reply(14, _train_content(9.0, 20, name="extra-key", shapes={**SHAPES, "x": (1,)})),
        _reply(15, _train_content(9.0, 0, name="no-examples")),
        _reply(16, Error(code=1, reason="ClientApp crashed")),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = (1.0 * 10 + 5.0 * 30) / 40
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((3, 2), expected), rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(1.0)
    record = history.round(1)
    assert sorted(record["hospitals"]) == ["a", "b"]
    assert record["hospitals"]["b"]["examples"] == 30
    assert record["hospitals"]["b"]["bytes_sent"] == sum(len(a.data) for a in _arrays(5.0).values()) > (6 + 2) * 4
    failed = {f["node_id"]: f["reason"] for f in record["failures"]}
    assert sorted(failed) == [13, 14, 15, 16]
    assert "shape" in failed[13] and "keys" in failed[14] and "num-examples" in failed[15] and "crashed" in failed[16]
    assert sum("rejected reply from" in r.getMessage() for r in caplog.records) == 4


class _Nodes:
    """A grid whose connected nodes are fixed."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_a_round_below_the_minimum_stops_the_run_and_records_who_dropped_out(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "h.json")
    strategy = MedsiloFedAvg(history=history, min_train_nodes=2, min_available_nodes=2, round_timeout=30)
    strategy.configure_train(1, _arrays(0.0), ConfigRecord(), _Nodes([3, 4, 5]))
    with pytest.raises(
        RunStopped, match="round 1: 1 valid hospital update\\(s\\) \\(0 declined\\), below min-train-nodes 2"
    ):
        replies = [_reply(3, Error(code=1, reason="x")), _reply(4, _train_content(1.0, 10, name="b"))]
        strategy.aggregate_train(1, replies)
    failed = {f["node_id"]: f["reason"] for f in json.loads((tmp_path / "h.json").read_text())["rounds"][0]["failures"]}
    assert failed[5] == "no reply within round-timeout (30 s): node-5 dropped out"
    assert "x" in failed[3] and 4 not in failed


def test_hospitals_that_decline_do_not_stop_the_run(tmp_path: Path) -> None:
    strategy = MedsiloFedAvg(history=RunHistory(tmp_path / "h.json"), min_train_nodes=2, min_available_nodes=2)
    strategy._sent = _arrays(0.0)
    declined = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 0}),
            "hospital": ConfigRecord({"name": "a", "declined": "privacy budget spent"}),
        }
    )
    arrays, metrics = strategy.aggregate_train(1, [_reply(3, declined), _reply(4, declined)])
    assert arrays is None and metrics is None  # the global model stays as it was


def test_sampling_skips_the_evaluator_and_never_waits_forever(tmp_path: Path) -> None:
    roster = NodeRoster({1: 10, 2: 10, 3: 10}, {1: "a", 2: "b", 3: "c"}, evaluator=9)
    strategy = MedsiloFedAvg(
        history=RunHistory(tmp_path / "h.json"), roster=roster, min_train_nodes=2, round_timeout=1.5, seed=4
    )
    messages = list(strategy.configure_train(1, _arrays(0.0), ConfigRecord(), _Nodes([1, 2, 3, 9])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 2, 3]
    assert all(m.content["config"]["server-round"] == 1 for m in messages)
    start = time.monotonic()
    with pytest.raises(RunStopped, match="only 1 hospital\\(s\\) connected after round-timeout 2 s; the minimum is 2"):
        strategy.configure_train(2, _arrays(0.0), ConfigRecord(), _Nodes([1, 9]))
    assert 1.4 < time.monotonic() - start < 10


@pytest.mark.parametrize("n", [-1, "ten", 2.5e-9 * -1])
def test_reply_problem_names_a_bad_example_count(n: object) -> None:
    problem = reply_problem(_reply(4, _train_content(1.0, 1, name="z")), expected=_arrays(0.0))
    assert problem is None
    bad = RecordDict(
        {"arrays": _arrays(1.0), "metrics": MetricRecord({"num-examples": 1}), "m2": MetricRecord({"x": 1})}
    )
    assert "one MetricRecord" in reply_problem(_reply(4, bad), expected=_arrays(0.0))
    if isinstance(n, str):
        content = RecordDict({"arrays": _arrays(1.0), "metrics": MetricRecord({"other": 1})})
    else:
        content = _train_content(1.0, n, name="z")
    assert "num-examples" in reply_problem(_reply(4, content), expected=_arrays(0.0))


def test_evaluate_replies_with_mismatched_metric_keys_are_rejected(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "h.json")
    strategy = MedsiloFedAvg(history=history, min_evaluate_nodes=1, min_available_nodes=1)
    good = RecordDict({"metrics": MetricRecord({"num-examples": 4, "eval-accuracy": 0.5, "eval-loss": 1.0})})
    odd = RecordDict({"metrics": MetricRecord({"num-examples": 4, "surprise": 1.0})})
    metrics = strategy.aggregate_evaluate(1, [_reply(5, good), _reply(6, odd)])
    assert metrics is not None and metrics["eval-accuracy"] == pytest.approx(0.5)
    assert [f["node_id"] for f in history.round(1)["failures"]] == [6]


def test_an_error_the_superlink_reports_is_charged_to_the_hospital_it_was_sent_to(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "h.json")
    roster = NodeRoster({3: 10, 4: 10}, {3: "a", 4: "b"}, evaluator=None)
    strategy = MedsiloFedAvg(history=history, roster=roster, min_train_nodes=1, round_timeout=5)
    sent = strategy.configure_train(1, _arrays(0.0), ConfigRecord(), _Nodes([3, 4]))
    for msg in sent:  # what Flower's grid does when it pushes a message
        msg.metadata.__dict__["_message_id"] = f"m{msg.metadata.dst_node_id}"
    unavailable = Message(Error(code=1, reason="Node Unavailable"), reply_to=sent[1])
    unavailable.metadata.__dict__["_src_node_id"] = 1  # the SuperLink answers for a dead node
    strategy.aggregate_train(1, [_reply(3, _train_content(1.0, 10, name="a")), unavailable])
    failures = history.round(1)["failures"]
    assert [(f["node_id"], f["reason"]) for f in failures] == [(4, "error reply: Node Unavailable")]


def test_each_hospitals_precision_is_recorded_in_the_history(tmp_path: Path) -> None:
    history = RunHistory(tmp_path / "history.json")
    strategy = MedsiloFedAvg(history=history, min_train_nodes=1, min_available_nodes=1)
    strategy._sent = _arrays(0.0)
    fast, plain = _train_content(1.0, 10, name="a"), _train_content(2.0, 10, name="b")
    fast["hospital"]["precision"] = "bf16"
    plain["hospital"]["precision"] = "fp32"
    strategy.aggregate_train(1, [_reply(11, fast), _reply(12, plain), _reply(13, _train_content(3.0, 5, name="old"))])
    hospitals = history.round(1)["hospitals"]
    assert {name: h["precision"] for name, h in hospitals.items()} == {"a": "bf16", "b": "fp32", "old": None}
