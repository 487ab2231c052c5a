"""``report.json``'s ``calibration`` and ``operating_point``, computed from probabilities and a :class:`Calibration`.

Everything here is a function of ``predictions.csv`` (the calibrated probabilities) and the
model's stored calibration, so a report is rebuilt from the run directory alone.

- ECE: 15 equal bins of confidence on [0, 1], a bin holding the confidences in (lower, upper]
  (the first one 0 too); the sum over bins of the bin's share of images times |accuracy - mean
  confidence|. One class per image: the confidence is the largest probability, the accuracy that
  of the argmax (Guo et al. 2017). Multi-label: per label, the label's probability against how
  often it is present.
- Brier: the mean over images of the squared distance between the probabilities and the one-hot
  truth, halved for two classes (the binary Brier score of the positive class, as scikit-learn's
  ``brier_score_loss``); multi-label: per label. Multi-label summaries are macro means over labels.
- Wilson 95% intervals for sensitivity, specificity, PPV and NPV at the operating point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.calibration import Calibration
from common.calibration_fit import positive_scores

__all__ = [
    "ECE_BINS",
    "brier_score",
    "calibrated_report",
    "calibration_summary",
    "expected_calibration_error",
    "operating_point_summary",
    "reliability_bins",
    "wilson_interval",
]

ECE_BINS = 15
_Z95 = 1.959963984540054


def reliability_bins(confidence: np.ndarray, hit: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, ...]:
    """Per confidence bin (``(lower, upper]`` of ``bins`` equal bins): image count, mean confidence, mean hit."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    hits = np.asarray(hit, dtype=np.float64).ravel()
    index = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], conf, side="left")
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=bins) / count
        mean_hit = np.bincount(index, weights=hits, minlength=bins) / count
    return count, mean_conf, mean_hit


def expected_calibration_error(confidence: np.ndarray, hit: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of confidences against 0/1 outcomes (see the module's docstring)."""
    count, mean_conf, mean_hit = reliability_bins(confidence, hit, bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(mean_hit[used] - mean_conf[used])))


def brier_score(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The multi-class Brier score of ``(N, K)`` probabilities against ``(N,)`` class indices, halved for K = 2."""
    p = np.asarray(probabilities, dtype=np.float64)
    onehot = np.eye(p.shape[1])[np.asarray(y_true, dtype=np.int64)]
    score = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    return score / 2 if p.shape[1] == 2 else score


def _scores(y: np.ndarray, p: np.ndarray, labels: Sequence[str] | None) -> dict[str, Any]:
    if labels is None:
        hit = p.argmax(axis=1) == y
        return {"ece": expected_calibration_error(p.max(axis=1), hit), "brier": brier_score(y, p)}
    per_label = {
        name: {"ece": expected_calibration_error(p[:, i], y[:, i]), "brier": float(np.mean((p[:, i] - y[:, i]) ** 2))}
        for i, name in enumerate(labels)
    }
    return {
        "ece": float(np.mean([row["ece"] for row in per_label.values()])),
        "brier": float(np.mean([row["brier"] for row in per_label.values()])),
        "per_label": per_label,
    }


def calibration_summary(
    y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], calibration: Calibration, *,
    multilabel: bool,
) -> dict[str, Any]:  # fmt: skip
    """ECE and Brier score before and after temperature scaling, from the calibrated probabilities.

    ``probabilities`` are the model's calibrated ones (``predictions.csv``); the ones before are
    recovered by undoing the temperature.
    """
    y = np.asarray(y_true)
    after = np.asarray(probabilities, dtype=np.float64)
    temperature = calibration.temperatures(after.shape[1] if multilabel else 1)
    before = Calibration(tuple(1.0 / t for t in temperature)).apply(after, multilabel=multilabel)
    return {
        "bins": ECE_BINS,
        "temperature": temperature,
        "fitted": bool(calibration.temperature),
        "source": calibration.source,
        "before": _scores(y, before, classes if multilabel else None),
        "after": _scores(y, after, classes if multilabel else None),
    }


def wilson_interval(successes: int, total: int) -> tuple[float, float] | None:
    """The Wilson score 95% interval of a proportion; ``None`` when ``total`` is 0."""
    if total == 0:
        return None
    p = successes / total
    centre = (p + _Z95**2 / (2 * total)) / (1 + _Z95**2 / total)
    half = _Z95 / (1 + _Z95**2 / total) * math.sqrt(p * (1 - p) / total + _Z95**2 / (4 * total**2))
    return max(0.0, centre - half), min(1.0, centre + half)


def _proportion(successes: int, total: int) -> dict[str, Any]:
    interval = wilson_interval(successes, total)
    return {
        "value": successes / total if total else None,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
        "count": int(successes),
        "total": int(total),
    }


def _decisions(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    tp = int(np.sum(truth & predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    tn = int(np.sum(~truth & ~predicted))
    return {
        "sensitivity": _proportion(tp, tp + fn),
        "specificity": _proportion(tn, tn + fp),
        "ppv": _proportion(tp, tp + fp),
        "npv": _proportion(tn, tn + fn),
    }


def operating_point_summary(
    y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], calibration: Calibration, *, multilabel: bool
) -> dict[str, Any] | None:
    """Sensitivity, specificity, PPV and NPV at the stored threshold(s), with Wilson 95% intervals; ``None``: none.

    One class per image: positive when the ``positive`` classes' summed probability is at or above
    the threshold. Multi-label: each label at its own threshold.
    """
    if not calibration.threshold:
        return None
    y = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=np.float64)
    rule = "best F1" if calibration.target_sensitivity is None else "target sensitivity"
    summary: dict[str, Any] = {"target_sensitivity": calibration.target_sensitivity, "rule": rule}
    if not multilabel:
        truth = np.isin(y, [list(classes).index(c) for c in calibration.positive])
        predicted = positive_scores(p, classes, calibration.positive) >= calibration.threshold[0]
        return {**summary, "positive": list(calibration.positive), "threshold": calibration.threshold[0],
                **_decisions(truth, predicted)}  # fmt: skip
    per_label = {
        name: {"threshold": t, **_decisions(y[:, i].astype(bool), p[:, i] >= t)}
        for i, (name, t) in enumerate(zip(classes, calibration.threshold, strict=True))
    }
    return {**summary, "per_label": per_label}


def calibrated_report(
    y_true: np.ndarray,
    raw_probabilities: np.ndarray,
    classes: Sequence[str],
    calibration: Calibration,
    *,
    loss: float | None,
    multilabel: bool,
    label_thresholds: Sequence[float] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """``report.json`` for a calibrated model, and its calibrated probabilities (``predictions.csv``'s).

    The metric suite is computed on the calibrated probabilities; multi-label decisions use the
    stored thresholds, else ``label_thresholds``. ``loss`` stays the model's own (before scaling).
    """
    from common.tasks import evaluation_report  # scikit-learn: imported when a report is made

    probabilities = calibration.apply(raw_probabilities, multilabel=multilabel)
    thresholds = calibration.threshold if multilabel and calibration.threshold else label_thresholds
    report = evaluation_report(y_true, probabilities, classes, loss=loss, thresholds=thresholds)
    report["calibration"] = calibration_summary(y_true, probabilities, classes, calibration, multilabel=multilabel)
    point = operating_point_summary(y_true, probabilities, classes, calibration, multilabel=multilabel)
    if point is not None:
        report["operating_point"] = point
    return report, probabilities
