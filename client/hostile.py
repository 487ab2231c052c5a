"""The hostile hospital: a test-and-benchmark fixture, switched on by the node-config key ``hostile``.

A product hospital never sets it. ``benchmarks/robustness.py`` and the tests set it on one
hospital to measure what robust aggregation and the key-holders' guard do against a hospital
whose update is well-formed but harmful:

- ``label-flip``: it trains on wrong labels from the first round (a swapped class map): class
  ``c`` becomes ``c + 1`` modulo the number of classes, so no image keeps its label (multi-label:
  every flag is inverted);
- ``scaled``: from round :data:`SCALED_FROM_ROUND` (a hospital compromised mid-run) it sends
  ``global + SCALE * (its model - global)`` for every learned parameter instead of its model. Its
  buffers (BatchNorm's running statistics) go as trained: scaled, a running variance turns negative
  and the model's outputs non-finite, which the evaluator's finiteness check already catches; an
  attacker who wants to go unnoticed avoids that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Literal

import torch

from common.data import ImageSet

__all__ = ["SCALE", "SCALED_FROM_ROUND", "Hostility", "flipped_labels", "scaled_update"]

Hostility = Literal["", "label-flip", "scaled"]
SCALE = 10.0
SCALED_FROM_ROUND = 4
"""The first round a ``scaled`` hospital attacks: the hospitals' guard judges a step only after it knows three."""


def flipped_labels(images: ImageSet) -> ImageSet:
    """``images`` with every label wrong: ``(c + 1) mod K`` for one class per image, inverted flags for multi-label."""
    if images.multilabel:
        return dataclasses.replace(images, labels=1 - images.labels)
    return dataclasses.replace(images, labels=(images.labels + 1) % len(images.classes))


def scaled_update(
    trained: dict[str, torch.Tensor],
    received: dict[str, torch.Tensor],
    parameters: Collection[str],
    scale: float = SCALE,
) -> dict[str, torch.Tensor]:
    """``received + scale * (trained - received)`` for each key in ``parameters``; every other array as trained."""
    return {
        key: received[key] + scale * (value - received[key]) if key in parameters else value
        for key, value in trained.items()
    }
