"""What each hospital gains (local-baseline): medsilo's own ClientApp, in process, against an independent recomputation.

Each hospital's local-only figure must equal a model trained here on that hospital's shard,
from the same starting weights, for the rounds the history says it trained, and scored with
scikit-learn on its validation split. Bad replies are left out with their reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from recording_grid import RecordingGrid
from sklearn.metrics import accuracy_score

from client.app import app
from client.site import hospital_data
from client.training import train_local
from common import records as rk
from common.config import parse_run_config
from common.data import build_transform
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model, preset_for
from common.inference import predict
from common.models import state_dict_to_cpu
from common.precision import resolve_precision
from common.report.hospital_gain import HOSPITAL_GAIN_TITLE, hospital_gain_section
from server.history import RunHistory
from server.local_baseline import LocalBaseline, rounds_trained
from server.roster import NodeRoster

pytestmark = pytest.mark.usefixtures("task_identity")
HOSPITALS = 2
CPU = torch.device("cpu")
FP32 = resolve_precision("fp32", CPU)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic brain MRI at 32 px, two Dirichlet hospitals, and a 'final global model' trained centrally."""
    base = tmp_path_factory.mktemp("baseline")
    root = write_synthetic_tree(base / "data", modality="brain-mri", train_per_class=16, test_per_class=1, size=32)
    run_config = {
        "data-root": str(root), "model": "cnn3", "image-size": 32, "batch-size": 8, "local-val-fraction": 0.3,
        "partitioner": "dirichlet", "dirichlet-alpha": 1.0, "precision": "fp32", "device": "cpu", "seed": 5,
        "local-epochs": 1.0, "num-server-rounds": 3, "lr-warmup-rounds": 1, "local-baseline": True,
    }  # fmt: skip
    cfg = parse_run_config(run_config)
    starting = state_dict_to_cpu(initial_model(cfg))
    final = initial_model(cfg)
    for pid in range(HOSPITALS):
        site = hospital_data(cfg, {"partition-id": pid, "num-partitions": HOSPITALS})
        train_local(final, site.train, cfg=cfg, preset=preset_for(cfg), device=CPU, seed=99 + pid)
    return {"run_config": run_config, "cfg": cfg, "starting": starting, "final": state_dict_to_cpu(final)}


def _history(tmp_path: Path, trained: dict[str, list[int]]) -> RunHistory:
    history = RunHistory(tmp_path / "history.json")
    for name, rounds in trained.items():
        for r in rounds:
            history.hospital(r, name).update({"examples": 10})
    history.hospital(2, "hospital-1").update({"declined": "its privacy budget is spent"})  # no "examples": not trained
    return history


def _score(model: torch.nn.Module, val: Any, cfg: Any) -> float:
    probs, _ = predict(model, val, build_transform(preset_for(cfg), train=False), device=CPU, precision=FP32)
    return float(accuracy_score(val.labels.numpy(), probs.argmax(1)))


@pytest.mark.slow
def test_each_hospitals_figures_equal_an_independent_recomputation(setting: dict[str, Any], tmp_path: Path) -> None:
    cfg = setting["cfg"]
    history = _history(tmp_path, {"hospital-0": [1, 2, 3], "hospital-1": [1, 3]})
    assert rounds_trained(history, "hospital-1") == [1, 3]
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)]
    grid = RecordingGrid(app, nodes, setting["run_config"])
    roster = NodeRoster({1: 10, 2: 10}, {1: "hospital-0", 2: "hospital-1"}, None)
    record = LocalBaseline(cfg, grid, roster=roster, base_config=ConfigRecord()).compare(
        ArrayRecord(setting["final"]), ArrayRecord(setting["starting"]), history
    )
    assert record["failures"] == []
    for reply in grid.replies:  # two accuracies, a count and a name: no weights, image, logit or score
        assert not reply.content.array_records and set(reply.content.metric_records) == {rk.METRICS}
        assert set(reply.content[rk.METRICS]) == {rk.NUM_EXAMPLES, rk.LOCAL_ONLY_ACCURACY, rk.GLOBAL_ACCURACY}
        assert dict(reply.content[rk.HOSPITAL]).keys() == {"name"}
    rows = {row["hospital"]: row for row in record["hospitals"]}
    assert sorted(rows) == ["hospital-0", "hospital-1"]
    for pid, rounds in ((0, [1, 2, 3]), (1, [1, 3])):
        site = hospital_data(cfg, {"partition-id": pid, "num-partitions": HOSPITALS})
        local = initial_model(cfg)
        local.load_state_dict(setting["starting"])
        state = None
        for r in rounds:  # the federation's rounds at this hospital: seed, schedule and kept optimiser state
            result = train_local(
                local, site.train, cfg=cfg, preset=preset_for(cfg), device=CPU, seed=cfg.seed + 7919 * r,
                server_round=r, optimizer_state=state, precision=FP32,
            )  # fmt: skip
            state = result.optimizer_state
        joined = initial_model(cfg)
        joined.load_state_dict(setting["final"])
        row = rows[f"hospital-{pid}"]
        assert row["rounds"] == len(rounds) and row["validation_images"] == len(site.val) > 0
        assert abs(row["local_only_accuracy"] - _score(local, site.val, cfg)) <= 0.01
        assert row["global_accuracy"] == pytest.approx(_score(joined, site.val, cfg))
        assert row["gain"] == pytest.approx(row["global_accuracy"] - row["local_only_accuracy"])



class _Replies:
    """A grid whose hospitals answer with fixed metrics, an error, or not at all."""

    def __init__(self, answers: dict[int, MetricRecord | str | None]) -> None:
        self.answers = answers
        self.sent: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            self.sent.append(msg)
            answer = self.answers[msg.metadata.dst_node_id]
            if isinstance(answer, str):
                replies.append(Message(Error(code=0, reason=answer), reply_to=msg))
            elif answer is not None:
                replies.append(Message(RecordDict({rk.METRICS: answer}), reply_to=msg))
        return replies


def _metrics(local: Any, joined: Any, images: Any = 12) -> MetricRecord:
    return MetricRecord({rk.NUM_EXAMPLES: images, rk.LOCAL_ONLY_ACCURACY: local, rk.GLOBAL_ACCURACY: joined})


def test_bad_or_missing_replies_are_left_out_with_their_reason(setting: dict[str, Any], tmp_path: Path) -> None:
    answers = {
        1: _metrics(0.5, 0.75),
        2: _metrics(1.5, 0.75),
        3: _metrics(0.5, float("nan")),
        4: _metrics(0.5, 0.75, images=0),
        5: "ValueError: hospital-4 holds no validation images",
        6: None,
    }
    grid = _Replies(answers)
    names = {n: f"hospital-{n - 1}" for n in answers}
    roster = NodeRoster({n: 10 for n in answers}, names, None)
    history = _history(tmp_path, {"hospital-0": [1, 2]})
    record = LocalBaseline(setting["cfg"], grid, roster=roster, base_config=ConfigRecord()).compare(  # type: ignore[arg-type]
        ArrayRecord(setting["final"]), ArrayRecord(setting["starting"]), history
    )
    assert record["hospitals"] == [
        {"hospital": "hospital-0", "node_id": 1, "validation_images": 12, "rounds": 2,
         "local_only_accuracy": 0.5, "global_accuracy": 0.75, "gain": 0.25},
    ]  # fmt: skip
    reasons = {f["node_id"]: f["reason"] for f in record["failures"]}
    assert "'local-only-accuracy' is 1.5; expected an accuracy in [0, 1]" in reasons[2]
    assert "'global-accuracy' is nan" in reasons[3]
    assert "expected a positive count of validation images" in reasons[4]
    assert "holds no validation images" in reasons[5]
    assert reasons[6].startswith("no reply within")
    sent = {m.metadata.dst_node_id: m.content[rk.CONFIG][rk.BASELINE_ROUNDS] for m in grid.sent}
    assert sent[1] == [1, 2] and sent[2] == []

    section = hospital_gain_section(record)
    assert section.title == HOSPITAL_GAIN_TITLE
    table = next(b for b in section.blocks if hasattr(b, "rows"))
    assert [c.text for c in table.rows[0]] == ["hospital-0", "12", "2", "0.500", "0.750", "+0.250"]
    assert sum("is missing" in getattr(b, "text", "") for b in section.blocks) == 5
