"""A real ``flwr run`` simulation on small synthetic data, checked file by file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_env import DEFAULT_LOCAL_SUPERLINK_PORT, SimulatedRun
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score
from typer.testing import CliRunner

from client.site import hospital_data
from client.training import train_local
from common.calibration import read_calibration
from common.cli import app
from common.config import parse_run_config
from common.data import build_transform
from common.experiment import initial_model, preset_for
from common.inference import predict
from common.models import load_model_dir
from common.precision import resolve_precision
from common.run_files import read_predictions_csv

REPORT_KEYS = {
    "classes",
    "n",
    "accuracy",
    "balanced_accuracy",
    "loss",
    "macro",
    "weighted",
    "per_class",
    "confusion_matrix",
    "calibration",
}
PER_CLASS_KEYS = {"precision", "recall", "f1", "specificity", "npv", "auroc", "average_precision", "support"}


def test_tests_run_beside_the_superlink_make_run_leaves(simulated_run: SimulatedRun) -> None:
    """`make run` then `make test`: the shared run had the default port taken and used a port of its own."""
    assert simulated_run.superlink_port != DEFAULT_LOCAL_SUPERLINK_PORT
    assert f"Using SuperLink: local (127.0.0.1:{simulated_run.superlink_port})" in simulated_run.output
    assert (simulated_run.run_dir / "report.json").is_file()


def test_flwr_run_writes_the_run_directory(simulated_run: SimulatedRun, tmp_path: Path) -> None:
    run_dir, synthetic_root = simulated_run.run_dir, simulated_run.data_root
    assert (run_dir / "report.md").is_file(), simulated_run.output[-5000:]
    for name in ("config.json", "history.json", "report.json", "predictions.csv", "report.md"):
        assert (run_dir / name).is_file(), name

    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "cnn3" and config["num-server-rounds"] == 3 and config["data-root"] == str(synthetic_root)

    history = json.loads((run_dir / "history.json").read_text())
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    for record in rounds[1:]:
        assert sorted(record["hospitals"]) == ["hospital-0", "hospital-1", "hospital-2"]
        assert record["failures"] == []
        assert set(record["timings"]) >= {"train_s", "aggregate_s", "central_evaluate_s"}
        for hospital in record["hospitals"].values():
            assert hospital["examples"] > 0 and hospital["train_loss"] > 0 and hospital["bytes_sent"] > 0
            assert hospital["precision"] == "fp32"  # as configured (SIMULATION)
        assert record["central"]["accuracy"] == pytest.approx(record["central"]["accuracy"])
    total = sum(h["examples"] + h["eval_examples"] for h in rounds[1]["hospitals"].values())
    assert total == 24 * 4

    report = json.loads((run_dir / "report.json").read_text())
    assert set(report) == REPORT_KEYS
    assert report["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert all(set(v) == PER_CLASS_KEYS for v in report["per_class"].values())
    assert report["accuracy"] == rounds[-1]["central"]["accuracy"]

    # Recompute from predictions.csv with scikit-learn, independently of medsilo's metrics code.
    paths, y_true, probs, classes = read_predictions_csv(run_dir / "predictions.csv")
    assert classes == report["classes"] and len(paths) == report["n"] == 32
    y_pred = probs.argmax(1)
    assert abs(accuracy_score(y_true, y_pred) - report["accuracy"]) < 1e-9
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=np.nan)
    assert abs(f1_score(y_true, y_pred, average="macro") - report["macro"]["f1"]) < 1e-9
    for i, name in enumerate(classes):
        row = report["per_class"][name]
        for value, key in ((precision[i], "precision"), (recall[i], "recall"), (f1[i], "f1")):
            assert (row[key] is None) if np.isnan(value) else abs(row[key] - value) < 1e-9
        assert abs(roc_auc_score(y_true == i, probs[:, i]) - row["auroc"]) < 1e-9

    model, spec = load_model_dir(run_dir / "model")
    assert spec.architecture == "cnn3" and spec.image_size == 32 and list(spec.classes) == classes
    calibration = read_calibration(run_dir / "model")  # fitted on the 3 hospitals' validation splits
    assert history["calibration"]["nll"]["hospitals"] == 3 and report["calibration"]["fitted"]
    temperature = history["calibration"]["temperature"]
    assert list(calibration.temperature) == report["calibration"]["temperature"] == temperature

    evaluated = tmp_path / "evaluated"
    cli = CliRunner().invoke(
        app, ["evaluate", "--model", str(run_dir / "model"), "--data", str(synthetic_root), "--out", str(evaluated)]
    )
    assert cli.exit_code == 0, cli.output
    again = json.loads((evaluated / "report.json").read_text())
    assert again["n"] == report["n"] and abs(again["accuracy"] - report["accuracy"]) < 1e-9


def test_each_hospitals_local_only_figure_equals_an_independent_recomputation(simulated_run: SimulatedRun) -> None:
    """local-baseline: the report's per-hospital table, each local-only figure recomputed here from the shard."""
    run_dir = simulated_run.run_dir
    cfg = parse_run_config(json.loads((run_dir / "config.json").read_text()))
    history = json.loads((run_dir / "history.json").read_text())
    rows = {row["hospital"]: row for row in history["local_baseline"]["hospitals"]}
    assert sorted(rows) == ["hospital-0", "hospital-1", "hospital-2"] and history["local_baseline"]["failures"] == []
    cpu, fp32 = torch.device("cpu"), resolve_precision("fp32", torch.device("cpu"))
    for pid in range(3):
        site = hospital_data(cfg, {"partition-id": pid, "num-partitions": 3})
        model, state = initial_model(cfg), None
        for r in (1, 2, 3):
            result = train_local(
                model, site.train, cfg=cfg, preset=preset_for(cfg), device=cpu, seed=cfg.seed + 7919 * r,
                server_round=r, optimizer_state=state, precision=fp32,
            )  # fmt: skip
            state = result.optimizer_state
        probs, _ = predict(model, site.val, build_transform(preset_for(cfg), train=False), device=cpu, precision=fp32)
        row = rows[f"hospital-{pid}"]
        assert row["rounds"] == 3 and row["validation_images"] == len(site.val)
        assert abs(row["local_only_accuracy"] - accuracy_score(site.val.labels.numpy(), probs.argmax(1))) <= 0.01
    report = (run_dir / "report.md").read_text()
    assert "## What each hospital gains" in report
    for name, row in rows.items():
        assert f"| {name} | {row['validation_images']} | 3 | {row['local_only_accuracy']:.3f} |" in report
