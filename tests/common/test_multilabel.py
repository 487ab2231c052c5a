"""Multi-label mode: the labels CSV, patient-level splits, BCE training (plain and DP), the metric suite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from typer.testing import CliRunner

from common.cli import app
from common.config import ConfigError, parse_run_config
from common.data.labels_csv import load_labels_csv
from common.data.partition import partition_by_group, split_train_val_by_group
from common.data.synth import write_synthetic_multilabel
from common.models import ModelSpec, build_from_spec, save_model_dir
from common.multilabel_metrics import multilabel_report
from common.run_files import read_predictions_csv, write_predictions_csv

LABELS = ("Cardiomegaly", "Effusion", "Nodule")


@pytest.fixture(scope="module")
def ml_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_multilabel(
        tmp_path_factory.mktemp("ml") / "set", labels=LABELS, patients=(10, 3), images_per_patient=4, seed=2
    )


def _load(root: Path, split: str = "train", labels: tuple[str, ...] = LABELS):  # noqa: ANN202
    return load_labels_csv(root, split, labels=labels, channels=1, size=32)


def test_the_loader_reads_flags_patients_and_splits(ml_root: Path) -> None:
    train, test = _load(ml_root), _load(ml_root, "test")
    assert len(train) == 40 and len(test) == 12 and train.multilabel
    assert train.labels.shape == (40, 3) and set(train.labels.unique().tolist()) <= {0, 1}
    assert set(train.groups).isdisjoint(test.groups) and len(set(train.groups)) == 10
    rows = [line.split(",") for line in (ml_root / "labels.csv").read_text().splitlines()[1:]]
    expected = [[int(v) for v in r[3:]] for r in rows if r[2] == "train"]
    assert train.labels.tolist() == expected
    assert train.class_counts() == np.asarray(expected).sum(axis=0).tolist()


def test_label_columns_may_come_in_any_order(ml_root: Path, tmp_path: Path) -> None:
    lines = (ml_root / "labels.csv").read_text().splitlines()
    swapped = [",".join([*r.split(",")[:3], r.split(",")[4], r.split(",")[3], r.split(",")[5]]) for r in lines]
    (tmp_path / "labels.csv").write_text("\n".join(swapped) + "\n")
    (tmp_path / "images").symlink_to(ml_root / "images")
    assert torch.equal(_load(tmp_path).labels, _load(ml_root).labels)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h, r: (h.replace("patient_id,", ""), [",".join(x.split(",")[:1] + x.split(",")[2:]) for x in r]),
         "column(s) patient_id missing"),
        (lambda h, r: (h + ",Mass", [x + ",0" for x in r]), "extra: Mass"),
        (lambda h, r: (h.replace(",Nodule", ""), [x.rsplit(",", 1)[0] for x in r]), "missing: Nodule"),
        (lambda h, r: (h, [r[0].rsplit(",", 1)[0] + ",2", *r[1:]]), "line 2: 'Nodule' = '2' is invalid; expected 0"),
    ],
)
def test_a_bad_labels_csv_is_one_line(ml_root: Path, tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    header, *rows = (ml_root / "labels.csv").read_text().splitlines()
    header, rows = edit(header, rows)
    (tmp_path / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        _load(tmp_path)
    assert "\n" not in str(err.value)


def test_no_labels_csv_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no labels.csv; expected a multi-label folder"):
        _load(tmp_path)


def test_a_corrupt_image_is_skipped_and_counted(ml_root: Path, tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text((ml_root / "labels.csv").read_text())
    (tmp_path / "images").mkdir()
    for png in (ml_root / "images").iterdir():
        (tmp_path / "images" / png.name).write_bytes(png.read_bytes())
    first = (ml_root / "labels.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / first).write_bytes(b"not a png")
    loaded = _load(tmp_path)
    assert len(loaded) == 39 and [p for p, _ in loaded.skipped] == [first]


def test_hospitals_and_local_validation_split_by_patient(ml_root: Path) -> None:
    train = _load(ml_root)
    parts = partition_by_group(train.groups, num_partitions=3, seed=5)
    assert sorted(i for p in parts for i in p) == list(range(len(train)))
    owners = [{train.groups[i] for i in p} for p in parts]
    assert all(a.isdisjoint(b) for k, a in enumerate(owners) for b in owners[k + 1 :])
    assert max(map(len, parts)) - min(map(len, parts)) <= 4  # one patient's images at most
    assert parts == partition_by_group(train.groups, num_partitions=3, seed=5)
    fit, val = split_train_val_by_group(parts[0], train.groups, val_fraction=0.25, seed=1)
    assert val and {train.groups[i] for i in fit}.isdisjoint({train.groups[i] for i in val})
    assert sorted(fit + val) == parts[0]
    with pytest.raises(ValueError, match="10 patients cannot be split into 11 hospitals"):
        partition_by_group(train.groups, num_partitions=11)


def test_the_report_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(60, 3)) < 0.4).astype(int)
    y[:, 2] = 0  # a label with no positive case: AUROC and AP undefined
    probs = np.clip(y * 0.4 + rng.uniform(size=y.shape) * 0.6, 0, 1)
    thresholds = (0.5, 0.4, 0.6)
    report = multilabel_report(y, probs, LABELS, thresholds=thresholds, loss=0.3)
    predicted = (probs >= np.asarray(thresholds)).astype(int)
    for i, name in enumerate(LABELS[:2]):
        row = report["per_label"][name]
        assert row["auroc"] == pytest.approx(roc_auc_score(y[:, i], probs[:, i]))
        assert row["average_precision"] == pytest.approx(average_precision_score(y[:, i], probs[:, i]))
        assert row["f1"] == pytest.approx(f1_score(y[:, i], predicted[:, i]))
        assert row["precision"] == pytest.approx(precision_score(y[:, i], predicted[:, i]))
        assert row["sensitivity"] == pytest.approx(recall_score(y[:, i], predicted[:, i]))
        assert row["specificity"] == pytest.approx(recall_score(1 - y[:, i], 1 - predicted[:, i]))
    assert report["per_label"]["Nodule"]["auroc"] is None and report["per_label"]["Nodule"]["average_precision"] is None
    assert report["macro"]["auroc"] == pytest.approx(np.mean([roc_auc_score(y[:, i], probs[:, i]) for i in (0, 1)]))
    assert report["micro"]["auroc"] == pytest.approx(roc_auc_score(y.ravel(), probs.ravel()))
    assert report["micro"]["f1"] == pytest.approx(f1_score(y, predicted, average="micro"))
    assert report["subset_accuracy"] == pytest.approx(accuracy_score(y, predicted))
    assert report["labels"] == report["classes"] == list(LABELS)
    assert report["accuracy"] == pytest.approx((predicted == y).mean())
    with pytest.raises(ValueError, match="expected both \\(N, 3\\)"):
        multilabel_report(y[:, :2], probs[:, :2], LABELS, thresholds=thresholds)
    with pytest.raises(ValueError, match="other than 0 and 1"):
        multilabel_report(y * 2, probs, LABELS, thresholds=thresholds)


def test_predictions_csv_round_trips_multilabel_truth(tmp_path: Path) -> None:
    y = np.array([[1, 0, 1], [0, 0, 0]])
    probs = np.array([[0.9, 0.1, 0.7], [0.2, 0.3, 0.1]])
    path = write_predictions_csv(tmp_path / "p.csv", paths=["a", "b"], y_true=y, probabilities=probs, classes=LABELS)
    assert path.read_text().splitlines()[0].startswith("path,y_Cardiomegaly,y_Effusion,y_Nodule,p_Card")
    paths, truth, back, classes = read_predictions_csv(path)
    assert paths == ["a", "b"] and classes == list(LABELS)
    np.testing.assert_array_equal(truth, y)
    np.testing.assert_array_equal(back, probs)


BASE = {"dataset": "nih-chestxray", "task": "multilabel"}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"task": "multiclass"}, "'task' = 'multiclass' is invalid; expected 'multilabel' for dataset 'nih-chestxray'"),
        ({"loss": "logit-adjusted"}, "'loss' = 'logit-adjusted' is invalid; expected 'auto' or 'cross-entropy' under"),
        ({"class-weights": "balanced"}, "'class-weights' = 'balanced' is invalid; expected 'none' under task"),
        ({"label-threshold": "0.5,0.5"}, "expected one threshold, or one per label (14)"),
        ({"label-threshold": "1.5"}, "'label-threshold' = '1.5' is invalid; expected a probability in (0, 1)"),
    ],
)
def test_multilabel_config_errors_are_one_line(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config({**BASE, **keys})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_task_multilabel_needs_a_multilabel_dataset() -> None:
    with pytest.raises(ConfigError, match="'task' = 'multilabel' is invalid; expected 'multiclass' for dataset"):
        parse_run_config({"task": "multilabel"})
    with pytest.raises(ConfigError, match="'label-threshold' = '0.3' is invalid; expected '0.5' unless task"):
        parse_run_config({"label-threshold": "0.3"})
    cfg = parse_run_config({**BASE, "label-threshold": ",".join(["0.3"] * 14)})
    assert cfg.multilabel and cfg.thresholds == (0.3,) * 14
    assert parse_run_config(BASE).thresholds == (0.5,) * 14


@pytest.mark.parametrize(("keys", "adjusted"), [
    ({}, True), ({"loss": "cross-entropy"}, False), ({"loss": "logit-adjusted"}, True),
    (BASE, False), ({**BASE, "loss": "cross-entropy"}, False),
])
def test_loss_auto_adjusts_logits_for_one_class_per_image_only(keys: dict[str, object], adjusted: bool) -> None:
    assert parse_run_config(keys).logit_adjusted is adjusted


def test_medsilo_evaluate_scores_a_multilabel_model_per_label(ml_root: Path, tmp_path: Path) -> None:
    spec = ModelSpec("cnn3", LABELS, 32, 1, (0.5,), (0.25,), multilabel=True)
    model_dir = save_model_dir(tmp_path / "model", build_from_spec(spec, seed=0), spec)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(model_dir), "--data", str(ml_root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    _, truth, probs, _ = read_predictions_csv(out / "predictions.csv")
    assert report["task"] == "multilabel" and report["n"] == 12 and truth.shape == (12, 3)
    for i, name in enumerate(LABELS):
        if 0 < truth[:, i].sum() < len(truth):
            assert report["per_label"][name]["auroc"] == pytest.approx(roc_auc_score(truth[:, i], probs[:, i]))
    assert "Central evaluation, per label" in (out / "report.md").read_text()
