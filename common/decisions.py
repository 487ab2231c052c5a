"""What a calibrated model decides for one image: shared by ``medsilo predict`` and the upload page."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.calibration import Calibration
from common.calibration_fit import positive_scores
from common.models import ModelSpec

__all__ = ["Decision", "decide"]

DEFAULT_LABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class Decision:
    """One image's calibrated probabilities and what the model decides.

    Attributes:
        probabilities: ``(K,)`` calibrated class (or label) probabilities.
        flagged: per class, whether it is the prediction (the argmax); per label, whether its
            probability is at or above its threshold.
        thresholds: multi-label: each label's threshold; else empty.
        operating_point: one class per image with a stored threshold: the finding's score
            against it, in one line; else ``None``.
    """

    probabilities: np.ndarray
    flagged: tuple[bool, ...]
    thresholds: tuple[float, ...]
    operating_point: str | None


def decide(raw_probabilities: np.ndarray, spec: ModelSpec, calibration: Calibration) -> Decision:
    """Apply the model's temperature to one image's ``(K,)`` probabilities and decide."""
    probs = calibration.apply(np.asarray(raw_probabilities, dtype=np.float64)[None, :], multilabel=spec.multilabel)[0]
    if spec.multilabel:
        thresholds = calibration.threshold or (DEFAULT_LABEL_THRESHOLD,) * len(spec.classes)
        return Decision(probs, tuple(bool(p >= t) for p, t in zip(probs, thresholds, strict=True)), thresholds, None)
    best = int(probs.argmax())
    flagged = tuple(i == best for i in range(len(spec.classes)))
    if not calibration.threshold:
        return Decision(probs, flagged, (), None)
    score = float(positive_scores(probs[None, :], spec.classes, calibration.positive)[0])
    threshold = calibration.threshold[0]
    verdict = "positive" if score >= threshold else "negative"
    target = calibration.target_sensitivity
    why = f" (set for sensitivity {target:g} on the hospitals' validation images)" if target is not None else ""
    line = (
        f"{verdict}: p({' or '.join(calibration.positive)}) = {score:.4f} "
        f"{'>=' if score >= threshold else '<'} threshold {threshold:.4g}{why}"
    )
    return Decision(probs, flagged, (), line)
