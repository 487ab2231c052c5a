"""The round loop keeps the previous global model when a key-holder finds the aggregate not finite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common import records as rk
from common.config import parse_run_config
from server.central import AggregateRejected, CentralEvaluator, EvaluatorNodeScorer, Scored
from server.history import RunHistory
from server.resume import load_resume_point
from server.rounds import run_rounds
from server.run_directory import RunDirectory
from server.strategy import MedsiloFedAvg


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((2, 2), value, dtype=np.float32))})


class _Grid:
    """Hospitals 1 and 2 reply with ``value``; node 9, the evaluator, declines a non-finite aggregate."""

    def __init__(self) -> None:
        self.value = 1.0

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        replies = []
        for msg in messages:
            if msg.metadata.dst_node_id == 9:
                info = ConfigRecord({"name": "evaluator", rk.DECLINED: "the decrypted aggregate is unusable: w"})
                content = RecordDict({rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 0}), rk.HOSPITAL: info})
            else:
                content = RecordDict(
                    {
                        rk.ARRAYS: _arrays(self.value),
                        rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 10}),
                        rk.HOSPITAL: ConfigRecord({"name": f"h{msg.metadata.dst_node_id}"}),
                    }
                )
            replies.append(Message(content, reply_to=msg))
        return replies

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pending = {f"m{i}": msg for i, msg in enumerate(messages)}
        return list(self.pending)

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        sent = [self.pending.pop(i) for i in message_ids if i in self.pending]
        return self.send_and_receive(sent, timeout=0)


def test_the_evaluators_verdict_is_raised() -> None:
    scorer = EvaluatorNodeScorer(_Grid(), node_id=9, base_config=ConfigRecord(), timeout=5)  # type: ignore[arg-type]
    with pytest.raises(AggregateRejected, match="evaluator node 9 declined the aggregate: .*unusable: w"):
        scorer(_arrays(1.0))


def test_a_rejected_aggregate_keeps_the_previous_model_and_the_run_goes_on(tmp_path: Path) -> None:
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "num-server-rounds": 3, "classes": "a,b"})
    history = RunHistory(tmp_path / "history.json")
    strategy = MedsiloFedAvg(history=history, min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)

    def score(arrays: ArrayRecord) -> Scored:
        value = float(arrays["w"].numpy()[0, 0])
        if value == 2.0:  # stands for the aggregate a key-holder refuses
            raise AggregateRejected("the evaluator node 9 declined the aggregate: not finite")
        probs = np.array([[0.9, 0.1], [0.2, 0.8]]) if value != 3.0 else np.full((2, 2), np.nan)
        return Scored(("a.png", "b.png"), np.array([0, 1]), probs, 0.3, 0)

    run_dir = RunDirectory.create(cfg, run_id=1, output_dir=tmp_path)
    evaluator = CentralEvaluator(cfg, scorer=score, history=history, run_dir=run_dir)
    grid = _Grid()
    sent: list[float] = []
    original = strategy.configure_train

    def configure(server_round: int, arrays: ArrayRecord, config: ConfigRecord, g: object) -> list[Message]:
        sent.append(float(arrays["w"].numpy()[0, 0]))
        grid.value = {1: 2.0, 2: 3.0, 3: 4.0}[server_round]
        return list(original(server_round, arrays, config, g))  # type: ignore[arg-type]

    strategy.configure_train = configure  # type: ignore[method-assign]
    final = run_rounds(
        strategy,
        grid,
        arrays=_arrays(0.0),
        first_round=1,
        last_round=3,
        train_config=ConfigRecord(),  # type: ignore[arg-type]
        evaluate_fn=evaluator,
    )
    # round 1's aggregate (2.0) was refused by the evaluator; round 2's (3.0) predicts NaN: both kept round 0's model
    assert sent == [0.0, 0.0, 0.0]
    assert float(final["w"].numpy()[0, 0]) == 4.0
    assert "declined the aggregate" in history.round(1)["aggregate_rejected"]
    assert "predictions on the central test set are not finite" in history.round(2)["aggregate_rejected"]
    assert history.round(1)["central"]["accuracy"] == 1.0  # the kept model was scored and checkpointed
    assert sorted(p.name for p in (run_dir.path / "checkpoints").iterdir()) == ["round-0002", "round-0003"]


class _Stopped(Exception):
    """Stands for the error the Grid raises once ``flwr stop`` has ended the run."""


def test_a_run_stopped_during_central_evaluation_resumes_from_the_round_history_records(tmp_path: Path) -> None:
    """No checkpoint before its round is in history.json, so resume-from never skips a round (the soak found it)."""
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "num-server-rounds": 3, "classes": "a,b"})
    run_dir = RunDirectory.create(cfg, run_id=1, output_dir=tmp_path)
    history = RunHistory(run_dir.history_file)
    strategy = MedsiloFedAvg(history=history, min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0)
    scored = {"rounds": 0}

    def score(arrays: ArrayRecord) -> Scored:
        scored["rounds"] += 1
        if scored["rounds"] == 3:  # round 2's central evaluation: the run is stopped under it
            raise _Stopped("Runtime task-token authentication failed")
        return Scored(("a.png", "b.png"), np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), 0.3, 0)

    evaluator = CentralEvaluator(cfg, scorer=score, history=history, run_dir=run_dir)
    with pytest.raises(_Stopped):
        run_rounds(
            strategy,
            _Grid(),  # type: ignore[arg-type]
            arrays=_arrays(0.0),
            first_round=1,
            last_round=3,
            train_config=ConfigRecord(),
            evaluate_fn=evaluator,
        )
    assert sorted(p.name for p in (run_dir.path / "checkpoints").iterdir()) == ["round-0000", "round-0001"]
    point = load_resume_point(run_dir.path, cfg)
    assert point.last_round == 1 and [r["round"] for r in point.rounds] == [0, 1]
