"""Tests for common.metrics.classification_report and the predictions CSV, against
scikit-learn and numpy computed independently here."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from common.metrics import classification_report
from common.report import render_markdown
from common.run_files import read_predictions_csv, write_json, write_predictions_csv

TOL = 1e-12
PER_CLASS_KEYS = {"precision", "recall", "f1", "specificity", "npv", "auroc", "average_precision", "support"}
MACRO_KEYS = {"precision", "recall", "f1", "specificity", "npv", "auroc", "average_precision"}


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _random_case(k: int, seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    rng.shuffle(y)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0  # some signal, far from perfect
    return y, _softmax(logits)


def _close(actual: float | None, expected: float) -> bool:
    """``actual`` is None exactly where ``expected`` is NaN, else equal to TOL."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return actual is None
    return actual is not None and math.isclose(actual, float(expected), rel_tol=0.0, abs_tol=TOL)


def _hand_confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def _reference(y: np.ndarray, probs: np.ndarray, k: int) -> dict:
    """Everything the report holds, computed independently (NaN where undefined)."""
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    cm = _hand_confusion(y, pred, k)
    assert np.array_equal(cm, confusion_matrix(y, pred, labels=labels))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
        wp, wr, wf, _ = precision_recall_fscore_support(
            y, pred, labels=labels, average="weighted", zero_division=np.nan
        )
        balanced = balanced_accuracy_score(y, pred)
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        npv = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
    auroc = np.full(k, np.nan)
    ap = np.full(k, np.nan)
    for i in range(k):
        positive = (y == i).astype(int)
        if 0 < positive.sum() < len(y):
            auroc[i] = roc_auc_score(positive, probs[:, i])
        if positive.sum() > 0:
            ap[i] = average_precision_score(positive, probs[:, i])
    per_class = {
        "precision": p,
        "recall": r,
        "f1": f,
        "specificity": spec,
        "npv": npv,
        "auroc": auroc,
        "average_precision": ap,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN
        macro = {key: float(np.nanmean(values)) for key, values in per_class.items()}
    return {
        "accuracy": accuracy_score(y, pred),
        "accuracy_hand": float(np.mean(pred == y)),
        "balanced_accuracy": balanced,
        "weighted": {"precision": wp, "recall": wr, "f1": wf},
        "per_class": per_class,
        "support": s,
        "macro": macro,
        "cm": cm,
    }


def _assert_matches_reference(report: dict, y: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    k = len(classes)
    ref = _reference(y, probs, k)
    assert report["classes"] == classes
    assert report["n"] == len(y)
    assert _close(report["accuracy"], ref["accuracy"])
    assert _close(report["accuracy"], ref["accuracy_hand"])
    assert _close(report["balanced_accuracy"], ref["balanced_accuracy"])
    assert report["confusion_matrix"] == ref["cm"].tolist()
    for i, name in enumerate(classes):
        row = report["per_class"][name]
        for key, values in ref["per_class"].items():
            assert _close(row[key], values[i]), (name, key, row[key], values[i])
        assert row["support"] == int(ref["support"][i]) == int((y == i).sum())
        assert type(row["support"]) is int
    # balanced accuracy is, by definition, the mean recall over the classes present
    assert _close(report["balanced_accuracy"], ref["macro"]["recall"])
    for key, value in ref["macro"].items():
        assert _close(report["macro"][key], value), (key, report["macro"][key], value)
    for key, value in ref["weighted"].items():
        assert _close(report["weighted"][key], value), (key, report["weighted"][key], value)


# ---------------------------------------------------------------- random data vs references


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_report_matches_sklearn_and_numpy(k, seed):
    y, probs = _random_case(k, seed)
    classes = [f"class-{i}" for i in range(k)]
    report = classification_report(y, probs, classes, loss=0.25)
    _assert_matches_reference(report, y, probs, classes)
    assert report["loss"] == 0.25


@pytest.mark.parametrize("k", [2, 3, 4])
def test_macro_auroc_equals_sklearn_one_vs_rest(k):
    y, probs = _random_case(k, seed=3)
    report = classification_report(y, probs, [str(i) for i in range(k)])
    if k == 2:
        expected = roc_auc_score(y, probs[:, 1])
    else:
        expected = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert math.isclose(report["macro"]["auroc"], expected, rel_tol=0.0, abs_tol=TOL)


def test_specificity_and_npv_by_hand_on_a_small_case():
    # true: 0 0 0 1 1 2 ; predicted: 0 1 0 1 2 2
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 2, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    report = classification_report(y, probs, ["a", "b", "c"])
    # class a: tp 2, fp 0, fn 1, tn 3 ; class b: tp 1, fp 1, fn 1, tn 3 ; class c: tp 1, fp 1, fn 0, tn 4
    assert report["per_class"]["a"]["specificity"] == 3 / 3 and report["per_class"]["a"]["npv"] == 3 / 4
    assert report["per_class"]["b"]["specificity"] == 3 / 4 and report["per_class"]["b"]["npv"] == 3 / 4
    assert report["per_class"]["c"]["specificity"] == 4 / 5 and report["per_class"]["c"]["npv"] == 4 / 4
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy"] == 4 / 6


# ---------------------------------------------------------------- undefined metrics are None


def _absent_case() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """a: present and predicted; b: present, never predicted; c: absent, predicted; d: absent, never predicted."""
    y = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0, 1])
    pred = np.array([0, 0, 0, 2, 0, 2, 0, 0, 0, 0])
    rng = np.random.default_rng(5)
    probs = rng.uniform(0.0, 0.2, size=(10, 4))
    probs[np.arange(10), pred] += 0.7
    probs /= probs.sum(axis=1, keepdims=True)
    assert np.array_equal(probs.argmax(axis=1), pred)
    return y, probs, ["a", "b", "c", "d"]


def test_absent_class_never_predicted_is_all_none():
    y, probs, classes = _absent_case()
    d = classification_report(y, probs, classes)["per_class"]["d"]
    assert d["precision"] is None
    assert d["recall"] is None
    assert d["f1"] is None
    assert d["auroc"] is None
    assert d["average_precision"] is None
    assert d["support"] == 0
    # nothing is ever predicted d and nothing is d: all ten are true negatives
    assert d["specificity"] == 1.0 and d["npv"] == 1.0


def test_absent_class_that_is_predicted_has_precision_zero_recall_none():
    y, probs, classes = _absent_case()
    c = classification_report(y, probs, classes)["per_class"]["c"]
    assert c["precision"] == 0.0
    assert c["recall"] is None
    assert c["auroc"] is None and c["average_precision"] is None
    assert c["support"] == 0


def test_present_class_never_predicted_has_precision_none_recall_zero():
    y, probs, classes = _absent_case()
    b = classification_report(y, probs, classes)["per_class"]["b"]
    assert b["precision"] is None
    assert b["recall"] == 0.0
    assert b["auroc"] is not None and b["average_precision"] is not None
    assert b["support"] == 4


def test_absent_class_macro_averages_skip_undefined_classes():
    y, probs, classes = _absent_case()
    report = classification_report(y, probs, classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, _ = precision_recall_fscore_support(y, probs.argmax(axis=1), labels=[0, 1, 2, 3], zero_division=np.nan)
    assert math.isclose(report["macro"]["precision"], np.nanmean(p), abs_tol=TOL)
    assert math.isclose(report["macro"]["recall"], np.nanmean(r), abs_tol=TOL)
    assert math.isclose(report["macro"]["f1"], np.nanmean(f), abs_tol=TOL)
    # precision defined for a (tp 5 / 8 predicted a) and c (0); recall for a (5/6) and b (0)
    assert math.isclose(report["macro"]["precision"], (5 / 8 + 0.0) / 2, abs_tol=TOL)
    assert math.isclose(report["macro"]["recall"], (5 / 6 + 0.0) / 2, abs_tol=TOL)
    _assert_matches_reference(report, y, probs, classes)


def test_all_one_class_test_set():
    y = np.zeros(6, dtype=int)
    pred = np.array([0, 0, 0, 0, 1, 2])
    probs = np.full((6, 3), 0.1)
    probs[np.arange(6), pred] = 0.8
    report = classification_report(y, probs, ["a", "b", "c"])
    _assert_matches_reference(report, y, probs, ["a", "b", "c"])
    a = report["per_class"]["a"]
    assert a["recall"] == 4 / 6 and a["precision"] == 1.0
    assert a["auroc"] is None  # no negatives
    assert a["average_precision"] == pytest.approx(1.0, abs=TOL)  # every case is positive
    assert a["specificity"] is None  # no negatives
    assert a["npv"] == 0.0  # tn 0, fn 2
    for name in ("b", "c"):
        assert report["per_class"][name]["recall"] is None
        assert report["per_class"][name]["auroc"] is None
        assert report["per_class"][name]["precision"] == 0.0
    assert report["macro"]["auroc"] is None
    assert report["balanced_accuracy"] == pytest.approx(4 / 6, abs=TOL)
    assert report["accuracy"] == pytest.approx(4 / 6, abs=TOL)


def test_all_one_class_perfectly_predicted():
    y = np.ones(4, dtype=int)
    probs = np.tile([0.2, 0.8], (4, 1))
    report = classification_report(y, probs, ["neg", "pos"])
    assert report["accuracy"] == 1.0
    assert report["per_class"]["neg"] == {
        "precision": None,
        "recall": None,
        "f1": None,
        "specificity": 1.0,
        "npv": 1.0,
        "auroc": None,
        "average_precision": None,
        "support": 0,
    }
    assert report["confusion_matrix"] == [[0, 0], [0, 4]]


@pytest.mark.parametrize("loss", [None, math.nan])
def test_missing_or_nan_loss_is_none(loss):
    y, probs = _random_case(2, seed=0, n=10)
    assert classification_report(y, probs, ["a", "b"], loss=loss)["loss"] is None


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("y", "probs"),
    [
        ([0, 1], np.full((2, 3), 1 / 3)),  # K columns != len(classes)
        ([0, 1], np.full((3, 2), 0.5)),  # rows != len(y)
        ([0, 1], np.full(2, 0.5)),  # 1-D
        ([0, 1], np.full((2, 2, 1), 0.5)),  # 3-D
    ],
)
def test_wrong_probabilities_shape_raises(y, probs):
    with pytest.raises(ValueError, match="shape"):
        classification_report(y, probs, ["a", "b"])


def test_empty_test_set_raises():
    with pytest.raises(ValueError, match="empty"):
        classification_report([], np.zeros((0, 2)), ["a", "b"])


@pytest.mark.parametrize("y", [[0, 2], [-1, 0], [5, 5]])
def test_label_out_of_range_raises(y):
    with pytest.raises(ValueError, match="labels"):
        classification_report(y, np.full((2, 2), 0.5), ["a", "b"])


# ---------------------------------------------------------------- report.json schema


def test_report_schema_keys_are_exact_and_json_clean(tmp_path):
    y, probs, classes = _absent_case()
    report = classification_report(y, probs, classes, loss=0.7)
    assert set(report) == {
        "classes",
        "n",
        "accuracy",
        "balanced_accuracy",
        "loss",
        "macro",
        "weighted",
        "per_class",
        "confusion_matrix",
    }
    assert set(report["macro"]) == MACRO_KEYS
    assert set(report["weighted"]) == {"precision", "recall", "f1"}
    assert list(report["per_class"]) == classes
    for row in report["per_class"].values():
        assert set(row) == PER_CLASS_KEYS
    assert all(type(v) is int for row in report["confusion_matrix"] for v in row)
    # strict JSON (no NaN) and survives a round trip unchanged
    path = write_json(tmp_path / "report.json", report)
    assert json.loads(path.read_text()) == report
    assert not (tmp_path / "report.json.tmp").exists()


def test_render_markdown_shows_na_for_undefined():
    y, probs, classes = _absent_case()
    text = render_markdown(classification_report(y, probs, classes), title="T", summary={"run": "x"})
    d_row = next(line for line in text.splitlines() if line.startswith("| d |"))
    assert d_row.count("n/a") == 5  # precision, recall, f1, auroc, ap
    assert text.startswith("# T\n")


# ---------------------------------------------------------------- predictions.csv


def _awkward_probabilities(n: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    probs = _softmax(rng.normal(scale=8.0, size=(n, k)))
    probs[0, 0] = 1 / 3
    probs[1, 0] = 5e-324  # smallest subnormal
    probs[2, 0] = 0.1 + 0.2
    probs[3, :] = np.nextafter(0.5, 1.0)
    return probs


def test_predictions_csv_round_trip_is_bit_exact(tmp_path):
    n, classes = 12, ["NORMAL", "with, comma", 'quote "q"', "p_prefixed"]
    probs = _awkward_probabilities(n, len(classes))
    paths = [f"test/c{i}/img {i},x.png" for i in range(n)]
    paths[1] = "test/ünïcode/ñ.png"
    y = np.random.default_rng(2).integers(0, len(classes), n)
    out = write_predictions_csv(
        tmp_path / "predictions.csv", paths=paths, y_true=y, probabilities=probs, classes=classes
    )
    got_paths, got_y, got_probs, got_classes = read_predictions_csv(out)
    assert got_paths == paths
    assert got_classes == classes
    assert got_y.dtype == np.int64 and np.array_equal(got_y, y)
    assert got_probs.dtype == np.float64 and got_probs.shape == probs.shape
    assert got_probs.tobytes() == probs.tobytes()
    # the y_pred column is the argmax
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:3] == ["path", "y_true", "y_pred"]
    assert [int(r[2]) for r in rows[1:]] == probs.argmax(axis=1).tolist()


def test_report_from_read_back_csv_equals_original(tmp_path):
    y, probs = _random_case(4, seed=9, n=40)
    probs = probs.astype(np.float64)
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    original = classification_report(y, probs, classes)
    path = write_predictions_csv(
        tmp_path / "p.csv", paths=[f"{i}.png" for i in range(len(y))], y_true=y, probabilities=probs, classes=classes
    )
    _, y2, probs2, classes2 = read_predictions_csv(path)
    assert classification_report(y2, probs2, classes2) == original


def test_predictions_csv_with_no_rows(tmp_path):
    path = write_predictions_csv(
        tmp_path / "p.csv", paths=[], y_true=[], probabilities=np.zeros((0, 2)), classes=["a", "b"]
    )
    paths, y, probs, classes = read_predictions_csv(path)
    assert paths == [] and len(y) == 0 and probs.shape == (0, 2) and classes == ["a", "b"]


def test_predictions_csv_length_mismatch_raises(tmp_path):
    with pytest.raises(ValueError):
        write_predictions_csv(
            tmp_path / "p.csv", paths=["a.png"], y_true=[0, 1], probabilities=np.full((2, 2), 0.5), classes=["a", "b"]
        )


@pytest.mark.parametrize(
    "body",
    [
        "path,y_true,y_pred,p_a,p_b\nx.png,0,0,0.5\n",  # a probability missing
        "path,y_true,y_pred,p_a,p_b\nx.png,0,0,0.5,0.5\ny.png,1,1,0.5\n",  # ragged rows
        "path,y_true,y_pred,p_a,p_b\nx.png,zero,0,0.5,0.5\n",  # label not an integer
        "path,y_true,y_pred,p_a,p_b\nx.png,0,0,0.5,half\n",  # probability not a number
    ],
)
def test_read_predictions_csv_malformed_raises(tmp_path, body):
    path = tmp_path / "p.csv"
    path.write_text(body)
    with pytest.raises(ValueError):
        read_predictions_csv(path)


def test_read_predictions_csv_empty_file_raises_value_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("")
    with pytest.raises(ValueError):
        read_predictions_csv(path)
