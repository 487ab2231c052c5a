"""A synthetic ImageFolder generator with class structure a CNN can learn.

Each image has a textured disc at a random place on a noisy background. The class sets
the orientation of the stripes inside the disc, so the class evidence sits in one
region (what Grad-CAM should find). Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.presets import get_preset

__all__ = ["synth_image", "write_synthetic_tree"]


def synth_image(
    label: int, num_classes: int, *, size: int, channels: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One synthetic image of class ``label``.

    Returns:
        ``uint8`` array ``(size, size)`` or ``(size, size, 3)``, and the disc
        ``(row, col, radius)`` that holds the class evidence.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = int(size * rng.uniform(0.14, 0.2))
    row, col = (int(v) for v in rng.integers(radius + 2, size - radius - 2, size=2))
    theta = np.pi * label / num_classes
    period = size / rng.uniform(5.0, 7.0)
    stripes = 0.5 + 0.45 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    disc = ((yy - row) ** 2 + (xx - col) ** 2) <= radius**2
    image = 0.3 + 0.08 * rng.standard_normal((size, size)).astype(np.float32)
    image[disc] = stripes[disc] + 0.05 * rng.standard_normal(int(disc.sum()))
    gray = (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    if channels == 1:
        return gray, (row, col, radius)
    tint = np.array([1.0, 0.75, 0.9]) * rng.uniform(0.85, 1.0, size=3)
    return (gray[:, :, None] * tint).astype(np.uint8), (row, col, radius)


def write_synthetic_tree(
    out: str | Path,
    *,
    modality: str,
    train_per_class: int = 40,
    test_per_class: int = 10,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``out/{train,test}/<class>/*.png`` for the preset ``modality``."""
    preset = get_preset(modality)
    if train_per_class < 1 or test_per_class < 0 or size < 32:
        raise ValueError("expected train_per_class >= 1, test_per_class >= 0 and size >= 32")
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(preset.classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array, _ = synth_image(label, len(preset.classes), size=size, channels=preset.channels, rng=rng)
                Image.fromarray(array).save(folder / f"{split}-{name}-{i:04d}.png")
    return out
