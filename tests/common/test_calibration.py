"""Calibration and operating points: the maths, the stored form, the config keys, and report.json against an
independent recomputation from predictions.csv (numpy, scikit-learn, scipy; the ECE and the Wilson interval
written here from their definitions)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, logit, softmax
from sklearn.metrics import brier_score_loss, confusion_matrix

from common.calibration import Calibration, read_calibration, write_calibration
from common.calibration_fit import (
    SCORE_EDGES,
    histogram_statistics,
    nll_statistics,
    pick_temperature,
    pick_threshold,
    read_sums,
    statistic_shapes,
)
from common.calibration_metrics import calibrated_report
from common.config import ConfigError, parse_run_config
from common.decisions import decide
from common.models import ModelSpec, build_from_spec, read_spec
from common.presets import PRESETS, positive_classes
from server.run_directory import RunDirectory

Z = 1.959963984540054


def _logits(n: int, k: int, seed: int, *, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident logits: informative, then scaled up."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.0
    return z * scale, y


def _pooled_temperature(z: np.ndarray, nll: object) -> float:
    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-6}).x)


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_the_summed_nll_of_three_hospitals_picks_the_pooled_temperature(scale: float) -> None:
    parts = [_logits(n, 4, seed, scale=scale) for seed, n in enumerate((40, 90, 17))]
    summed = sum(nll_statistics(z, y, multilabel=False)["nll-sum"] for z, y in parts)
    z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    pooled = _pooled_temperature(z, lambda t: -log_softmax(z / t, axis=1)[np.arange(len(y)), y].sum())
    assert abs(pick_temperature(summed) - pooled) < 0.02


def test_multilabel_gets_one_pooled_temperature_per_label() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (150, 3))
    z = (2 * y - 1) * rng.uniform(0, 2, (150, 3)) + rng.normal(size=(150, 3))
    z *= np.array([0.5, 2.0, 6.0])  # under-confident, about right, over-confident
    summed = sum(nll_statistics(z[s], y[s], multilabel=True)["nll-sum"] for s in np.array_split(np.arange(150), 3))
    for i in range(3):
        def nll(t: float, i: int = i) -> float:
            p = np.clip(expit(z[:, i] / t), 1e-300, 1 - 1e-16)
            return -np.sum(y[:, i] * np.log(p) + (1 - y[:, i]) * np.log1p(-p))

        assert abs(pick_temperature(summed[i]) - _pooled_temperature(z, nll)) < 0.02


def test_statistic_sizes_depend_on_the_grid_and_labels_only() -> None:
    small, large = _logits(3, 4, 0), _logits(500, 4, 1)
    for stage_stats in (lambda z, y: nll_statistics(z, y, multilabel=False),
                        lambda z, y: histogram_statistics(softmax(z, axis=1)[:, 1], y == 1)):  # fmt: skip
        a, b = stage_stats(*small), stage_stats(*large)
        assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert {k: v.shape for k, v in nll_statistics(*large, multilabel=False).items()} == statistic_shapes(
        "nll", outputs=4, multilabel=False
    )


def _largest_threshold(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """Scanning the candidate edges from the top: the first whose sensitivity reaches the target."""
    for edge in SCORE_EDGES[::-1]:
        if np.mean(scores[positive] >= edge) >= target:
            return float(edge)
    raise AssertionError("the lowest edge, 0, always reaches it")


def test_the_threshold_is_the_largest_edge_that_reaches_the_target_on_the_pooled_images() -> None:
    rng = np.random.default_rng(5)
    positive = rng.random(300) < 0.4
    scores = np.clip(rng.normal(0.35 + 0.3 * positive, 0.2), 0, 1)
    parts = np.array_split(np.arange(300), 3)
    stats = [histogram_statistics(scores[s], positive[s]) for s in parts]
    point = pick_threshold(sum(s["positives"] for s in stats), sum(s["negatives"] for s in stats), target=0.95)
    assert point is not None
    assert point["threshold"] == _largest_threshold(scores, positive, 0.95)
    assert point["sensitivity"] == np.mean(scores[positive] >= point["threshold"]) >= 0.95
    assert point["specificity"] == pytest.approx(np.mean(scores[~positive] < point["threshold"]), abs=1e-12)
    best = pick_threshold(stats[0]["positives"], stats[0]["negatives"], target=None)
    f1 = [2 * np.sum(p & (scores[parts[0]] >= e)) / (np.sum(p) + np.sum(scores[parts[0]] >= e))
          for e in SCORE_EDGES for p in [positive[parts[0]]]]  # fmt: skip
    assert best is not None and best["threshold"] == SCORE_EDGES[len(f1) - 1 - int(np.argmax(f1[::-1]))]
    assert pick_threshold(np.zeros(len(SCORE_EDGES)), stats[0]["negatives"], target=0.9) is None
    assert np.isnan(read_sums("histograms", {"positives": np.zeros((1, 1000)), "negatives": np.ones((1, 1000))},
                              target=0.9)["threshold"][0])  # fmt: skip


def _ece(confidence: np.ndarray, hit: np.ndarray) -> float:
    total = 0.0
    for lower, upper in zip(np.arange(15) / 15, np.arange(1, 16) / 15, strict=True):
        inside = (confidence > lower) & (confidence <= upper)
        if inside.any():
            total += inside.mean() * abs(hit[inside].mean() - confidence[inside].mean())
    return total


def _wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson interval as the score test's acceptance region: the roots of (p̂ - p)² = z² p (1 - p) / n."""
    phat = k / n
    low, high = sorted(np.roots([n + Z**2, -(2 * n * phat + Z**2), n * phat**2]).real)
    return max(low, 0.0), min(high, 1.0)


def _finished_run(tmp_path: Path, y: np.ndarray, raw: np.ndarray, classes: tuple[str, ...], cal: Calibration,
                  *, multilabel: bool) -> Path:  # fmt: skip
    """A run directory written by the server's own code: report.json, predictions.csv, model/."""
    spec = ModelSpec("cnn3", classes, 32, 1, (0.5,), (0.25,), multilabel=multilabel)
    report, probs = calibrated_report(y, raw, classes, cal, loss=0.5, multilabel=multilabel)
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    weights = build_from_spec(spec, seed=0).state_dict()
    arrays = ArrayRecord({name: Array(tensor.numpy()) for name, tensor in weights.items()})
    run.finish(arrays=arrays, spec=spec, calibration=cal, report=report, paths=tuple(f"{i}.png" for i in range(len(y))),
               y_true=y, probabilities=probs)  # fmt: skip
    return run.path


def _read_csv(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], np.array([[float(v) for v in row[1:]] for row in rows[1:]])


def test_report_json_equals_an_independent_recomputation_from_predictions_csv(tmp_path: Path) -> None:
    classes = ("glioma", "meningioma", "notumor", "pituitary")
    z, y = _logits(120, 4, 7)
    cal = Calibration(temperature=(2.3,), threshold=(0.62,), positive=("glioma", "meningioma", "pituitary"),
                      target_sensitivity=0.9, source="test")  # fmt: skip
    run = _finished_run(tmp_path, y, softmax(z, axis=1), classes, cal, multilabel=False)
    report = json.loads((run / "report.json").read_text())
    header, table = _read_csv(run / "predictions.csv")
    truth = table[:, 0].astype(int)
    after = table[:, 2:]
    before = softmax(2.3 * np.log(after), axis=1)  # undo the temperature
    np.testing.assert_allclose(before, softmax(z, axis=1), atol=1e-12)
    for when, p in (("before", before), ("after", after)):
        block = report["calibration"][when]
        assert block["ece"] == pytest.approx(_ece(p.max(axis=1), p.argmax(axis=1) == truth), abs=1e-12)
        assert block["brier"] == pytest.approx(brier_score_loss(truth, p, labels=range(4)), abs=1e-12)
    assert report["calibration"]["temperature"] == [2.3] and report["calibration"]["bins"] == 15
    flagged = after[:, [0, 1, 3]].sum(axis=1) >= 0.62
    tn, fp, fn, tp = confusion_matrix(truth != 2, flagged).ravel()
    point = report["operating_point"]
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                       ("npv", tn, tn + fn)):  # fmt: skip
        assert (point[name]["count"], point[name]["total"]) == (k, n)
        assert point[name]["value"] == pytest.approx(k / n, abs=1e-12)
        assert (point[name]["low"], point[name]["high"]) == pytest.approx(_wilson(k, n), abs=1e-9)
    assert read_calibration(run / "model") == cal and read_spec(run / "model").classes == classes


def test_a_two_class_report_uses_the_binary_brier_score_and_the_last_class(tmp_path: Path) -> None:
    z, y = _logits(80, 2, 8)
    cal = Calibration(temperature=(0.7,), threshold=(0.3,), positive=("PNEUMONIA",), target_sensitivity=0.95)
    run = _finished_run(tmp_path, y, softmax(z, axis=1), ("NORMAL", "PNEUMONIA"), cal, multilabel=False)
    report = json.loads((run / "report.json").read_text())
    _, table = _read_csv(run / "predictions.csv")
    truth, after = table[:, 0].astype(int), table[:, 2:]
    assert report["calibration"]["after"]["brier"] == pytest.approx(brier_score_loss(truth, after[:, 1]), abs=1e-12)
    tp = int(np.sum((truth == 1) & (after[:, 1] >= 0.3)))
    assert report["operating_point"]["sensitivity"]["count"] == tp
    assert report["operating_point"]["sensitivity"]["total"] == int(np.sum(truth == 1))


def test_multilabel_reports_per_label_calibration_and_decisions_at_the_stored_thresholds(tmp_path: Path) -> None:
    labels = PRESETS["nih-chestxray"].classes
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, (60, len(labels)))
    z = (2 * y - 1) * 2.0 + rng.normal(size=y.shape) * 2
    temperature = tuple(1.0 + 0.1 * i for i in range(len(labels)))
    thresholds = tuple(0.2 + 0.04 * i for i in range(len(labels)))
    cal = Calibration(temperature=temperature, threshold=thresholds, target_sensitivity=None, source="test")
    run = _finished_run(tmp_path, y, expit(z), labels, cal, multilabel=True)
    report = json.loads((run / "report.json").read_text())
    header, table = _read_csv(run / "predictions.csv")
    after = table[:, len(labels):]
    truth = np.array([[int(v) for v in row] for row in table[:, : len(labels)]])
    np.testing.assert_allclose(expit(logit(after) * np.array(temperature)), expit(z), atol=1e-9)
    for i, name in enumerate(labels):
        row = report["calibration"]["after"]["per_label"][name]
        assert row["brier"] == pytest.approx(brier_score_loss(truth[:, i], after[:, i]), abs=1e-12)
        assert row["ece"] == pytest.approx(_ece(after[:, i], truth[:, i].astype(float)), abs=1e-12)
        assert report["per_label"][name]["threshold"] == thresholds[i]
        decided = report["operating_point"]["per_label"][name]["sensitivity"]
        assert decided["count"] == int(np.sum((truth[:, i] == 1) & (after[:, i] >= thresholds[i])))
    assert report["macro"]["f1"] == pytest.approx(np.nanmean([report["per_label"][n]["f1"] for n in labels]))
    assert report["operating_point"]["rule"] == "best F1"


def test_the_calibration_survives_in_model_json_and_bad_entries_are_one_line(tmp_path: Path) -> None:
    spec_dir = tmp_path / "model"
    spec_dir.mkdir()
    (spec_dir / "model.json").write_text(json.dumps({"format_version": 1, "classes": ["a", "b"], "multilabel": False}))
    assert read_calibration(spec_dir) == Calibration()
    cal = Calibration(temperature=(1.5,), threshold=(0.4,), positive=("b",), target_sensitivity=0.9, source="x")
    write_calibration(spec_dir, cal)
    assert read_calibration(spec_dir) == cal
    for bad, message in (({"temperature": [0.0]}, "'temperature' is [0.0]"),
                         ({"temperature": [1.0, 2.0]}, "expected 1 positive number"),
                         ({"threshold": [0.5]}, "'threshold' and 'positive' go together"),
                         ({"threshold": [0.5], "positive": ["c"]}, "'positive' names c"),
                         ({"target_sensitivity": 1.5}, "'target_sensitivity' is 1.5")):  # fmt: skip
        spec = json.loads((spec_dir / "model.json").read_text())
        spec["calibration"] = bad
        (spec_dir / "model.json").write_text(json.dumps(spec))
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            read_calibration(spec_dir)
        assert "\n" not in str(err.value) and "model.json" in str(err.value)


def test_decisions_apply_the_temperature_and_the_threshold() -> None:
    spec = ModelSpec("cnn3", ("NORMAL", "PNEUMONIA"), 32, 1, (0.5,), (0.25,))
    cal = Calibration(temperature=(2.0,), threshold=(0.2,), positive=("PNEUMONIA",), target_sensitivity=0.95)
    decision = decide(np.array([0.9, 0.1]), spec, cal)  # calibrated: 0.75, 0.25
    np.testing.assert_allclose(decision.probabilities, softmax(np.log([0.9, 0.1]) / 2.0))
    assert decision.flagged == (True, False)
    assert decision.operating_point is not None and decision.operating_point.startswith("positive: p(PNEUMONIA) = ")
    labels = ModelSpec("cnn3", ("a", "b"), 32, 1, (0.5,), (0.25,), multilabel=True)
    flags = decide(np.array([0.6, 0.6]), labels, Calibration(threshold=(0.5, 0.7)))
    assert flags.flagged == (True, False) and flags.thresholds == (0.5, 0.7)
    assert decide(np.array([0.6, 0.4]), labels, Calibration()).flagged == (True, False)  # 0.5 without a stored one


def test_the_positive_classes_of_each_preset() -> None:
    assert parse_run_config({"dataset": "chest-xray"}).positive_classes == ("PNEUMONIA",)
    assert parse_run_config({"dataset": "histology-colon"}).positive_classes == ("colon_aca",)
    assert parse_run_config({}).positive_classes == ("glioma", "meningioma", "pituitary")
    assert positive_classes(PRESETS["chest-xray"], ("a", "b")) == ("b",)  # two unknown classes: the last
    assert positive_classes(PRESETS["brain-mri"], ("x", "y", "z")) == ()


@pytest.mark.parametrize(
    ("keys", "key", "expected"),
    [
        ({"target-sensitivity": 1.0}, "target-sensitivity", "a value < 1"),
        ({"target-sensitivity": -0.1}, "target-sensitivity", "a value >= 0"),
        ({"target-sensitivity": "0.95"}, "target-sensitivity", "a number"),
        ({"target-sensitivity": True}, "target-sensitivity", "not a boolean"),
        ({"calibrate": "yes"}, "calibrate", "true or false"),
        ({"calibrate": 1}, "calibrate", "true or false"),
        ({"target-sensitivity": 0.95, "local-val-fraction": 0.0}, "target-sensitivity", "local-val-fraction > 0"),
        ({"target-sensitivity": 0.95, "classes": "x,y,z"}, "target-sensitivity", "names none of them abnormal"),
    ],
)
def test_bad_calibration_keys_are_one_line(keys: dict[str, object], key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_run_config(keys)
    message = str(err.value)
    assert "\n" not in message and f"'{key}'" in message and repr(keys[key]) in message and expected in message
