"""The clinical metric suite of ``report.json``, computed with scikit-learn.

What is undefined for a class (recall of a class absent from the test set, precision of
a class never predicted, AUROC without both outcomes) is ``None``, never a silent 0.
Macro averages are taken over the classes where the metric is defined.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["classification_report", "mean_defined", "number", "ratio"]


def number(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing or NaN (undefined)."""
    if value is None or math.isnan(value):
        return None
    return float(value)


def ratio(num: int, den: int) -> float | None:
    """``num / den``, or ``None`` when ``den`` is 0."""
    return float(num / den) if den > 0 else None


def mean_defined(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    loss: float | None = None,
) -> dict[str, Any]:
    """Score class probabilities against true labels.

    Args:
        y_true: ``(N,)`` true class indices.
        probabilities: ``(N, K)`` class probabilities; the prediction is the argmax.
        classes: the ``K`` class names, in index order.
        loss: the mean cross-entropy, when the caller computed it from logits.

    Returns:
        The ``report.json`` dict of DESIGN: accuracy, balanced accuracy, loss, macro,
        weighted, per-class metrics and the confusion matrix (rows = true class).
    """
    y = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    k = len(classes)
    if probs.ndim != 2 or probs.shape != (len(y), k):
        raise ValueError(f"probabilities have shape {probs.shape}; expected ({len(y)}, {k})")
    if len(y) == 0:
        raise ValueError("cannot score an empty test set")
    if y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels span {y.min()}..{y.max()}; expected 0..{k - 1}")
    y_pred = probs.argmax(axis=1)
    labels = list(range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        warnings.simplefilter("ignore", UserWarning)
        precision, recall, f1, support = precision_recall_fscore_support(y, y_pred, labels=labels, zero_division=np.nan)
        weighted = precision_recall_fscore_support(y, y_pred, labels=labels, average="weighted", zero_division=np.nan)
        balanced = balanced_accuracy_score(y, y_pred)
    per_class_cm = multilabel_confusion_matrix(y, y_pred, labels=labels)
    per_class: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(classes):
        (tn, fp), (fn, tp) = per_class_cm[i]
        positive = y == i
        both = 0 < positive.sum() < len(y)
        per_class[name] = {
            "precision": number(precision[i]),
            "recall": number(recall[i]),
            "f1": number(f1[i]),
            "specificity": ratio(tn, tn + fp),
            "npv": ratio(tn, tn + fn),
            "auroc": float(roc_auc_score(positive, probs[:, i])) if both else None,
            "average_precision": float(average_precision_score(positive, probs[:, i])) if positive.any() else None,
            "support": int(support[i]),
        }
    macro = {
        key: mean_defined([per_class[c][key] for c in classes])  # type: ignore[misc]
        for key in ("precision", "recall", "f1", "specificity", "npv", "auroc", "average_precision")
    }
    return {
        "classes": list(classes),
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": number(balanced),
        "loss": number(loss),
        "macro": macro,
        "weighted": {"precision": number(weighted[0]), "recall": number(weighted[1]), "f1": number(weighted[2])},
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, y_pred, labels=labels).tolist(),
    }
