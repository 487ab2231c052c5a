"""What changes between single-label and multi-label classification: the loss, the probabilities, hits.

A target tensor says which task it is: ``(B,)`` class indices (cross-entropy over softmax) or
``(B, L)`` 0/1 flags (binary cross-entropy with logits, one sigmoid per label, the loss of an
image being the mean over its labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AUX_LOSS_WEIGHT",
    "TaskLoss",
    "evaluation_report",
    "hits",
    "label_accuracy",
    "probabilities",
    "split_outputs",
    "task_loss",
]

AUX_LOSS_WEIGHT = 0.4
"""Weight of an auxiliary classifier's loss (InceptionV3, as in Szegedy et al. 2016)."""


def task_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy for class indices (optionally label-smoothed), BCE with logits (mean over labels per image)
    for 0/1 flags."""
    if target.ndim == 2:
        per_image = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none").mean(dim=1)
        return {"none": per_image, "sum": per_image.sum(), "mean": per_image.mean()}[reduction]
    return F.cross_entropy(logits, target, weight=weight, reduction=reduction, label_smoothing=label_smoothing)


def split_outputs(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The main logits and, for InceptionV3 in training, its auxiliary logits."""
    if isinstance(output, torch.Tensor):
        return output, None
    return output.logits, output.aux_logits


class TaskLoss(nn.Module):
    """:func:`task_loss` as a criterion module (Opacus sets ``reduction`` for ghost clipping)."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` against class indices or 0/1 flags."""
        return task_loss(logits, target, reduction=self.reduction)


def probabilities(logits: torch.Tensor, *, multilabel: bool) -> torch.Tensor:
    """Softmax over classes, or an independent sigmoid per label."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def hits(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Correct predictions in a batch: images (argmax), or multi-label images' share of right labels at 0.5."""
    if target.ndim == 2:
        return float(((logits > 0) == (target > 0.5)).float().mean(dim=1).sum())
    return float((logits.argmax(1) == target).sum())


def label_accuracy(y_true: np.ndarray, probs: np.ndarray, thresholds: Sequence[float] | None = None) -> float:
    """Accuracy of class probabilities (argmax), or the mean per-label accuracy at ``thresholds`` (default 0.5)."""
    if y_true.ndim == 2:
        cut = np.asarray(thresholds if thresholds is not None else [0.5] * y_true.shape[1])
        return float(((probs >= cut) == (y_true > 0)).mean())
    return float((probs.argmax(1) == y_true).mean())


def evaluation_report(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    loss: float | None,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """``report.json``'s metric suite: per class for class indices, per label (at ``thresholds``) for 0/1 flags."""
    # scikit-learn takes about 1 s to import: a hospital that only trains never loads it
    from common.metrics import classification_report
    from common.multilabel_metrics import multilabel_report

    if np.asarray(y_true).ndim == 2:
        cut = thresholds if thresholds is not None else [0.5] * len(classes)
        return multilabel_report(y_true, probs, classes, thresholds=cut, loss=loss)
    return classification_report(y_true, probs, classes, loss=loss)
