"""The multi-label metric suite of ``report.json``, computed with scikit-learn.

Each label is its own yes/no question, scored from its probability (AUROC, average
precision) and from its decision at the label's threshold (F1, precision, sensitivity,
specificity, NPV). What is undefined for a label (AUROC without both outcomes in the test
set, precision of a label never predicted) is ``None``; macro averages are taken over the
labels where the metric is defined, micro averages over every (image, label) pair.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from common.metrics import mean_defined, number, ratio

__all__ = ["MULTILABEL_KEYS", "multilabel_report"]

MULTILABEL_KEYS = ("auroc", "average_precision", "f1", "precision", "sensitivity", "specificity", "npv")
"""The per-label metrics, each also macro- and micro-averaged."""


def _check(y: np.ndarray, probs: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]) -> None:
    k = len(labels)
    if y.ndim != 2 or y.shape[1] != k or probs.shape != y.shape:
        raise ValueError(f"labels {y.shape} and probabilities {probs.shape}; expected both (N, {k})")
    if len(y) == 0:
        raise ValueError("cannot score an empty test set")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("multi-label truth holds values other than 0 and 1; expected a 0/1 flag per label")
    if len(thresholds) != k:
        raise ValueError(f"{len(thresholds)} thresholds; expected one per label ({k})")


def multilabel_report(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[str],
    *,
    thresholds: Sequence[float],
    loss: float | None = None,
) -> dict[str, Any]:
    """Score per-label probabilities ``(N, L)`` against 0/1 truth ``(N, L)``.

    Returns:
        ``task``, ``classes`` and ``labels`` (the same list), ``n``, ``accuracy`` (the mean
        per-label accuracy, 1 - Hamming loss), ``subset_accuracy`` (every label right),
        ``balanced_accuracy`` (macro mean of (sensitivity + specificity) / 2), ``loss``,
        ``thresholds``, ``macro``, ``micro`` and ``per_label`` (each with
        :data:`MULTILABEL_KEYS`, ``threshold`` and ``support``).
    """
    y = np.asarray(y_true).astype(np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    _check(y, probs, labels, thresholds)
    predicted = (probs >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)
    matrices = multilabel_confusion_matrix(y, predicted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, zero_division=np.nan)
        micro_p, micro_r, micro_f1, _ = precision_recall_fscore_support(
            y, predicted, average="micro", zero_division=np.nan
        )
    per_label: dict[str, dict[str, float | int | None]] = {}
    for i, name in enumerate(labels):
        (tn, fp), (fn, tp) = matrices[i]
        positives = int(y[:, i].sum())
        per_label[name] = {
            "auroc": float(roc_auc_score(y[:, i], probs[:, i])) if 0 < positives < len(y) else None,
            "average_precision": float(average_precision_score(y[:, i], probs[:, i])) if positives else None,
            "f1": number(f1[i]),
            "precision": number(precision[i]),
            "sensitivity": number(recall[i]),
            "specificity": ratio(tn, tn + fp),
            "npv": ratio(tn, tn + fn),
            "threshold": float(thresholds[i]),
            "support": positives,
        }
    tn, fp, fn, tp = matrices.sum(axis=0).ravel()
    both = bool(0 < y.sum() < y.size)
    micro = {
        "auroc": float(roc_auc_score(y, probs, average="micro")) if both else None,
        "average_precision": float(average_precision_score(y, probs, average="micro")) if y.any() else None,
        "f1": number(micro_f1),
        "precision": number(micro_p),
        "sensitivity": number(micro_r),
        "specificity": ratio(int(tn), int(tn + fp)),
        "npv": ratio(int(tn), int(tn + fn)),
    }
    macro = {key: mean_defined([per_label[name][key] for name in labels]) for key in MULTILABEL_KEYS}
    balanced = mean_defined(
        [
            (row["sensitivity"] + row["specificity"]) / 2  # type: ignore[operator]
            if row["sensitivity"] is not None and row["specificity"] is not None
            else None
            for row in per_label.values()
        ]
    )
    return {
        "task": "multilabel",
        "classes": list(labels),
        "labels": list(labels),
        "n": int(len(y)),
        "accuracy": float((predicted == y).mean()),
        "subset_accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": balanced,
        "loss": number(loss),
        "thresholds": [float(t) for t in thresholds],
        "macro": macro,
        "micro": micro,
        "per_label": per_label,
    }
