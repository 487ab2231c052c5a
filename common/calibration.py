"""A model's calibration and operating point: what ``model.json`` stores, and how it is applied.

Temperature scaling (Guo et al. 2017) divides the logits by a temperature T fitted on validation
data: softmax(z / T) for one class per image, sigmoid(z_l / T_l) per label in multi-label runs.
The probabilities a model directory gives are the scaled ones. An operating point is a threshold
on one score: for one class per image the summed probability of the ``positive`` (abnormal)
classes; in multi-label runs each label's probability, with a threshold per label.

The logits are recovered from the probabilities up to a per-image constant (``log p``, or
``log p - log(1 - p)`` per label), so scaling needs no second pass through the network and a
report is rebuilt from ``predictions.csv`` alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.models import SPEC_FILE

__all__ = [
    "CALIBRATION_KEY",
    "Calibration",
    "apply_temperature",
    "log_scores",
    "read_calibration",
    "write_calibration",
]

CALIBRATION_KEY = "calibration"
"""The entry of ``model.json`` that holds a :class:`Calibration`."""


def log_scores(probabilities: np.ndarray, *, multilabel: bool) -> np.ndarray:
    """The logits of ``(N, K)`` probabilities, up to a per-image constant: ``log p``, or per label ``logit(p)``."""
    p = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p) if multilabel else np.log(p)


def apply_temperature(
    probabilities: np.ndarray, temperature: float | Sequence[float] | np.ndarray, *, multilabel: bool
) -> np.ndarray:
    """``(N, K)`` probabilities as the logits divided by ``temperature`` give them (one per label, or one).

    ``temperature`` 1 returns the probabilities as they are; ``1 / T`` undoes a scaling by ``T``.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(temperature, dtype=np.float64)
    if np.all(t == 1.0):
        return p
    z = log_scores(p, multilabel=multilabel) / t
    with np.errstate(over="ignore"):
        if multilabel:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _floats(value: Any, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ValueError(f"'{what}' is {value!r}; expected a list of numbers")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Calibration:
    """How a model's probabilities are scaled and where it decides (``model.json``'s ``calibration``).

    Attributes:
        temperature: T, one per label in multi-label runs, else one; ``()``: not fitted (T = 1).
        threshold: the operating point: one threshold on the positive classes' summed probability,
            or one per label in multi-label runs; ``()``: none (the argmax decides).
        positive: one class per image: the classes whose summed probability ``threshold`` cuts.
        target_sensitivity: the pooled validation sensitivity the thresholds were picked for;
            ``None``: multi-label thresholds picked for the best F1.
        source: how they were fitted, in words (hospitals, validation images), or why not.
    """

    temperature: tuple[float, ...] = ()
    threshold: tuple[float, ...] = ()
    positive: tuple[str, ...] = ()
    target_sensitivity: float | None = None
    source: str = "not fitted"

    def apply(self, probabilities: np.ndarray, *, multilabel: bool) -> np.ndarray:
        """The calibrated ``(N, K)`` probabilities of a model's raw ones."""
        return apply_temperature(probabilities, self.temperature or 1.0, multilabel=multilabel)

    def temperatures(self, k: int) -> list[float]:
        """T for each of ``k`` labels (multi-label), or ``[T]``; 1 where none was fitted."""
        return list(self.temperature) if self.temperature else [1.0] * k

    def to_json(self) -> dict[str, Any]:
        """The JSON form stored in ``model.json``."""
        return {
            "temperature": list(self.temperature),
            "threshold": list(self.threshold),
            "positive": list(self.positive),
            "target_sensitivity": self.target_sensitivity,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, classes: Sequence[str], multilabel: bool) -> Calibration:
        """Read and check the JSON form against the model's classes.

        Raises:
            ValueError: a malformed entry, or one that does not fit the classes.
        """
        temperature = _floats(data.get("temperature", []), "temperature")
        threshold = _floats(data.get("threshold", []), "threshold")
        positive = tuple(str(c) for c in data.get("positive", []))
        target = data.get("target_sensitivity")
        per_label = len(classes) if multilabel else 1
        if len(temperature) not in (0, per_label) or not all(math.isfinite(t) and t > 0 for t in temperature):
            raise ValueError(f"'temperature' is {list(temperature)}; expected {per_label} positive number(s) or none")
        if len(threshold) not in (0, per_label) or not all(0.0 <= t <= 1.0 for t in threshold):
            raise ValueError(f"'threshold' is {list(threshold)}; expected {per_label} number(s) in [0, 1] or none")
        if not multilabel and bool(threshold) != bool(positive):
            raise ValueError("'threshold' and 'positive' go together; expected both or neither")
        unknown = [c for c in positive if c not in classes]
        if unknown:
            raise ValueError(f"'positive' names {', '.join(unknown)}; expected classes of {', '.join(classes)}")
        if target is not None and not (isinstance(target, int | float) and 0.0 < target < 1.0):
            raise ValueError(f"'target_sensitivity' is {target!r}; expected a number in (0, 1) or null")
        return cls(temperature, threshold, positive, None if target is None else float(target),
                   str(data.get("source", "")))  # fmt: skip


def write_calibration(directory: str | Path, calibration: Calibration) -> Path:
    """Store ``calibration`` in the model directory's ``model.json`` (plaintext or encrypted directory)."""
    path = Path(directory) / SPEC_FILE
    spec = json.loads(path.read_text())
    spec[CALIBRATION_KEY] = calibration.to_json()
    path.write_text(json.dumps(spec, indent=2))
    return path


def read_calibration(directory: str | Path) -> Calibration:
    """The model directory's calibration; an uncalibrated one (T = 1, no threshold) when ``model.json`` has none.

    Raises:
        ValueError: no ``model.json``, or a malformed ``calibration`` entry.
    """
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        raise ValueError(f"{directory} is not a model directory; expected {SPEC_FILE}")
    spec = json.loads(path.read_text())
    entry = spec.get(CALIBRATION_KEY)
    if entry is None:
        return Calibration()
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: '{CALIBRATION_KEY}' is not an object")
    try:
        return Calibration.from_json(entry, classes=spec["classes"], multilabel=bool(spec.get("multilabel")))
    except ValueError as err:
        raise ValueError(f"{path}: {CALIBRATION_KEY}: {err}") from None
