"""Per-preset tensor transforms: augmentation for training, normalisation for all."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from common.presets import DatasetPreset

__all__ = ["build_transform", "normalize"]


def normalize(mean: Sequence[float], std: Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``uint8 (C, H, W)`` → normalised ``float32 (C, H, W)``."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def build_transform(preset: DatasetPreset, *, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The transform for images already decoded at the training size.

    Training adds the preset's augmentation (rotation, flips, zoom, shift, right-angle
    rotations, colour jitter); evaluation only converts and normalises.
    """
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if train:
        if preset.rotation or preset.zoom or preset.shift:
            steps.append(
                v2.RandomAffine(
                    degrees=preset.rotation,
                    translate=(preset.shift, preset.shift) if preset.shift else None,
                    scale=(1 - preset.zoom, 1 + preset.zoom) if preset.zoom else None,
                )
            )
        if preset.flips:
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        if preset.right_angles:
            steps.append(v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]))
        if preset.color_jitter:
            j = preset.color_jitter
            steps.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=j / 4))
    steps.append(normalize(preset.mean, preset.std))
    return v2.Compose(steps)
