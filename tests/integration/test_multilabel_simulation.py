"""A real ``flwr run`` of a multi-label set under HE and DP-SGD, with early stopping, checked against scikit-learn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_env import Flower
from sklearn.metrics import average_precision_score, roc_auc_score

from common.data.synth import write_synthetic_multilabel
from common.run_files import read_predictions_csv

LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")


def test_a_multilabel_run_under_he_and_dp_reports_per_label_metrics(flower: Flower, tmp_path: Path) -> None:
    data = write_synthetic_multilabel(tmp_path / "nih", labels=LABELS, patients=(8, 4), images_per_patient=4, seed=4)
    out = tmp_path / "runs"
    config = (
        f"dataset='nih-chestxray' task='multilabel' classes='{','.join(LABELS)}' data-root='{data}' "
        f"output-dir='{out}' run-name='ml' model='cnn3' image-size=32 batch-size=8 local-epochs=1 "
        "num-server-rounds=3 min-train-nodes=2 min-evaluate-nodes=2 he-enabled=true dp-enabled=true "
        "label-threshold='0.4,0.5,0.6' early-stopping-patience=1 seed=5"
    )
    proc = flower.simulate(config, supernodes=3, cwd=tmp_path)  # 2 hospitals + the evaluator (the key-holder)
    run = out / "ml"
    assert (run / "report.json").is_file(), proc.stdout[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["task"] == "multilabel" and report["classes"] == list(LABELS) and report["n"] == 16
    history = json.loads((run / "history.json").read_text())
    fitted = history["calibration"]  # per label, best F1 on the hospitals' summed validation histograms
    assert report["thresholds"] == fitted["threshold"]
    for i, given in enumerate((0.4, 0.5, 0.6)):  # a label the validation images cannot set keeps label-threshold
        assert fitted["validation_sensitivity"][i] is not None or fitted["threshold"][i] == given
    assert len(report["calibration"]["temperature"]) == 3 and fitted["encrypted"]

    paths, truth, probs, classes = read_predictions_csv(run / "predictions.csv")
    assert classes == list(LABELS) and truth.shape == probs.shape == (16, 3) and len(set(paths)) == 16
    for i, name in enumerate(LABELS):
        row = report["per_label"][name]
        if 0 < truth[:, i].sum() < len(truth):
            assert row["auroc"] == pytest.approx(roc_auc_score(truth[:, i], probs[:, i]), abs=1e-12)
            assert row["average_precision"] == pytest.approx(average_precision_score(truth[:, i], probs[:, i]))
        predicted = probs[:, i] >= report["thresholds"][i]
        assert row["support"] == int(truth[:, i].sum())
        negatives = truth[:, i] == 0
        assert row["specificity"] == pytest.approx(float((~predicted[negatives]).mean()))
    assert report["micro"]["auroc"] == pytest.approx(roc_auc_score(truth.ravel(), probs.ravel()))

    stopping = history["early_stopping"]
    best = stopping["best_round"]
    losses = {r["round"]: r["federated_evaluate"]["eval-loss"] for r in history["rounds"][1:]}
    assert best == min(losses, key=losses.get) and stopping["best_validation_loss"] == pytest.approx(losses[best])
    central = {r["round"]: r["central"]["loss"] for r in history["rounds"]}
    assert report["loss"] == pytest.approx(central[best])  # model/ and report.json are the best round's
    for record in history["rounds"][1:]:
        for hospital in record["hospitals"].values():
            assert 0 < hospital["epsilon"] <= 8.0 and hospital["encrypt_seconds"] > 0
            assert hospital["precision"] == "fp32"  # DP-SGD never runs under autocast
    assert (run / "model" / "encrypted.json").is_file() and not (run / "model" / "model.safetensors").exists()
    markdown = (run / "report.md").read_text()
    assert "Central evaluation, per label" in markdown and (run / "figures" / "roc_curves.png").is_file()
    assert "Confusion matrix" not in markdown and "partitioner whole patients at random" in markdown
    assert np.isfinite(probs).all()
