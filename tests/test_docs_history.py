"""The ``history.json`` reference lists exactly the keys the server writes: the page cannot rot silently."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from scipy.special import softmax

from common import records as rk
from common.calibration_fit import histogram_statistics, nll_statistics
from common.config import parse_run_config
from server.calibration import FederatedCalibration
from server.central import AggregateRejected, CentralEvaluator, Scored
from server.early_stopping import EarlyStopping
from server.history import RunHistory
from server.local_baseline import LocalBaseline
from server.roster import NodeRoster
from server.run_directory import RunDirectory
from server.strategy import MedsiloFedAvg

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "history.md"
TRAIN_METRICS = (
    rk.TRAIN_LOSS, rk.TRAIN_ACCURACY, rk.TRAIN_SECONDS, rk.SKIPPED_IMAGES, rk.ENCRYPT_SECONDS, rk.DECRYPT_SECONDS,
    rk.EPSILON, rk.DELTA, rk.NOISE_MULTIPLIER, rk.SAMPLE_RATE, rk.STEPS, rk.MAX_GRAD_NORM,
)  # fmt: skip
"""What a hospital's training reply carries besides its example count (client/app.py, DP included)."""


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set before it builds a Message."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def documented() -> dict[str, set[str]]:
    """The keys each section of the page lists in its tables' first column."""
    parts = re.split(r"^#{2,3} (.+)$", PAGE.read_text(), flags=re.M)
    bodies = zip(parts[1::2], parts[2::2], strict=True)
    return {head: set(re.findall(r"^\| `(\w+)` \|", body, re.M)) for head, body in bodies}


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full((2, 2), value, dtype=np.float32))})


def _reply(node: int, content: RecordDict | Error, kind: str = "train") -> Message:
    sent = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type=kind)
    return Message(content, reply_to=sent)


def _trained(value: float, n: int, name: str) -> RecordDict:
    metrics = MetricRecord({rk.NUM_EXAMPLES: n, **{key: 1.0 for key in TRAIN_METRICS}})
    info = ConfigRecord({"name": name, rk.CLASS_COUNTS: [n // 2, n - n // 2], rk.PRECISION: "fp32"})
    return RecordDict({rk.ARRAYS: _arrays(value), rk.METRICS: metrics, rk.HOSPITAL: info})


def _evaluated(name: str) -> RecordDict:
    metrics = MetricRecord({rk.NUM_EXAMPLES: 5, rk.EVAL_LOSS: 0.3, rk.EVAL_ACCURACY: 0.8})
    return RecordDict({rk.METRICS: metrics, rk.HOSPITAL: ConfigRecord({"name": name})})


class _Hospitals:
    """Hospitals answering the calibration queries with the sums of three made-up validation images each."""

    def send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        z, y = np.array([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.0]]), np.array([0, 1, 1])
        replies = []
        for msg in messages:
            if msg.metadata.message_type.endswith(rk.LOCAL_BASELINE):
                metrics = {rk.NUM_EXAMPLES: 3, rk.LOCAL_ONLY_ACCURACY: 1 / 3, rk.GLOBAL_ACCURACY: 2 / 3}
                replies.append(Message(RecordDict({rk.METRICS: MetricRecord(metrics)}), reply_to=msg))
                continue
            if msg.content[rk.CONFIG][rk.CALIBRATION_STAGE] == "nll":
                stats = nll_statistics(z, y, multilabel=False)
            else:
                stats = histogram_statistics(softmax(z, axis=1)[:, 1], y == 1)
            record = ArrayRecord({name: Array(value) for name, value in stats.items()})
            replies.append(Message(RecordDict({rk.STATISTICS: record}), reply_to=msg))
        return replies


@pytest.fixture
def written(tmp_path: Path) -> dict[str, Any]:
    """``history.json`` of a resumed run through the server's own code: every record kind it writes."""
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "classes": "a,b", "target-sensitivity": 0.9})
    history = RunHistory(tmp_path / "history.json")
    history.restore([], after_round=0)
    roster = NodeRoster({11: 10, 12: 30}, {11: "a", 12: "b", 9: "evaluator"}, 9, failed={13: "bad"}, deployed=True)
    history.set_nodes(roster.to_json(), first_round=1)
    strategy = MedsiloFedAvg(history=history, min_train_nodes=1, min_available_nodes=1)
    strategy._sent = _arrays(0.0)
    declined = RecordDict(
        {rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: 0}), rk.HOSPITAL: ConfigRecord({"name": "c", rk.DECLINED: "spent"})}
    )
    replies = [_reply(11, _trained(1.0, 10, "a")), _reply(12, _trained(2.0, 30, "b")), _reply(14, declined)]
    strategy.aggregate_train(1, [*replies, _reply(15, Error(code=1, reason="crashed"))])
    strategy.aggregate_evaluate(1, [_reply(11, _evaluated("a"), "evaluate"), _reply(12, _evaluated("b"), "evaluate")])
    run_dir = RunDirectory.create(cfg, run_id=1, output_dir=tmp_path)
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])

    def scored(arrays: ArrayRecord) -> Scored:
        return Scored(("x.png", "y.png"), np.array([0, 1]), probs, 0.3, 0, decrypt_seconds=0.1)

    def failing(arrays: ArrayRecord) -> Scored:
        raise RuntimeError("the evaluator node 9 did not reply")

    def refusing(arrays: ArrayRecord) -> Scored:
        raise AggregateRejected("not finite")

    for server_round, scorer in enumerate((scored, failing, refusing), start=1):
        evaluate = CentralEvaluator(cfg, scorer=scorer, history=history, run_dir=run_dir)
        if scorer is refusing:
            with pytest.raises(AggregateRejected):
                evaluate(server_round, _arrays(1.0))
        else:
            evaluate(server_round, _arrays(1.0))
    history.early_stopping = EarlyStopping(3).to_json()
    calibration = FederatedCalibration(cfg, _Hospitals(), roster=roster, base_config=ConfigRecord(), public=None)
    _, history.calibration = calibration.fit(_arrays(1.0))
    baseline = LocalBaseline(cfg, _Hospitals(), roster=roster, base_config=ConfigRecord())  # type: ignore[arg-type]
    history.local_baseline = baseline.compare(_arrays(1.0), _arrays(0.0), history)
    history.stop("round 4: too few hospitals")
    history.flush()
    return json.loads(history.path.read_text())


def _union(records: list[dict[str, Any]]) -> set[str]:
    return {key for record in records for key in record}


def test_the_page_lists_every_key_the_server_writes_and_no_other(written: dict[str, Any]) -> None:
    rounds = written["rounds"]
    real = {
        "Top level": set(written),
        "A round": _union(rounds),
        "A hospital in a round": _union([h for r in rounds for h in r["hospitals"].values()]),
        "A failure": _union([f for r in rounds for f in r["failures"]]),
        "Timings": _union([r["timings"] for r in rounds]),
        "Central evaluation": _union([r["central"] for r in rounds if r["central"]]),
        "Nodes": set(written["nodes"]),
        "A node": _union(written["nodes"]["nodes"]),
        "Early stopping": set(written["early_stopping"]),
        "A resume": _union(written["resumed"]),
        "Calibration": set(written["calibration"]),
        "A calibration stage": _union([written["calibration"][stage] for stage in ("nll", "histograms")]),
        "Local baseline": set(written["local_baseline"]),
        "A hospital's comparison": _union(written["local_baseline"]["hospitals"]),
    }
    page = documented()
    assert set(page) == set(real), "the page's sections changed: map them to the history here"
    for section, keys in real.items():
        assert page[section] == keys, f"{section}: documented {sorted(page[section])}, written {sorted(keys)}"


@pytest.mark.parametrize("key", ["federated_train", "federated_evaluate"])
def test_the_averaged_metrics_named_on_the_page_are_those_the_hospitals_send(written: dict[str, Any], key: str) -> None:
    row = next(line for line in PAGE.read_text().splitlines() if line.startswith(f"| `{key}` |"))
    named = set(re.findall(r"`([a-z-]+)`", row)) - {key, "null"}
    assert named == set(written["rounds"][0][key])
