"""A synthetic ImageFolder generator with class structure a CNN can learn.

Each image has a textured disc at a random place on a noisy background. The class sets
the texture inside the disc (stripes, checkerboard, rings, solid, dots, hole, speckle,
outline), with a random orientation, so the classes survive the presets' rotation, flip
and zoom augmentation, and the class evidence sits in one region (what Grad-CAM should
find). Deterministic by seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from common.presets import get_preset

__all__ = ["TEXTURES", "synth_image", "write_synthetic_multilabel", "write_synthetic_tree"]

TEXTURES = ("stripes", "checkerboard", "rings", "solid", "dots", "hole", "speckle", "outline")


def _texture(
    kind: str, u: np.ndarray, v: np.ndarray, r: np.ndarray, radius: float, rng: np.random.Generator
) -> np.ndarray:
    """Texture ``kind`` on rotated coordinates ``u, v`` and radius ``r`` from the disc centre."""
    period = max(3.0, radius / 2.0)
    wave = np.sin(2 * np.pi * u / period)
    if kind == "stripes":
        return 0.5 + 0.45 * wave
    if kind == "checkerboard":
        return 0.5 + 0.45 * np.sign(wave * np.sin(2 * np.pi * v / period))
    if kind == "rings":
        return 0.5 + 0.45 * np.sin(2 * np.pi * r / period)
    if kind == "solid":
        return np.full_like(u, 0.9)
    if kind == "dots":
        return 0.3 + 0.65 * ((np.sin(2 * np.pi * u / period) > 0.7) & (np.sin(2 * np.pi * v / period) > 0.7))
    if kind == "hole":
        return np.full_like(u, 0.02)
    if kind == "speckle":
        return rng.uniform(0.0, 1.0, size=u.shape)
    return np.where(r > 0.7 * radius, 0.95, 0.3)


def synth_image(
    label: int, num_classes: int, *, size: int, channels: int, rng: np.random.Generator
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One synthetic image of class ``label`` (texture ``TEXTURES[label]``).

    Returns:
        ``uint8`` array ``(size, size)`` or ``(size, size, 3)``, and the disc
        ``(row, col, radius)`` that holds the class evidence.
    """
    if not 0 <= label < min(num_classes, len(TEXTURES)):
        raise ValueError(f"label {label} is invalid; the generator has {len(TEXTURES)} textures")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = int(size * rng.uniform(0.16, 0.22))
    row, col = (int(v) for v in rng.integers(radius + 2, size - radius - 2, size=2))
    theta = rng.uniform(0, np.pi)
    dy, dx = yy - row, xx - col
    u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
    dist = np.hypot(dy, dx)
    disc = dist <= radius
    image = 0.3 + 0.06 * rng.standard_normal((size, size))
    texture = _texture(TEXTURES[label], u, v, dist, radius, rng)
    image[disc] = texture[disc] + 0.04 * rng.standard_normal(int(disc.sum()))
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


def write_synthetic_multilabel(
    out: str | Path,
    *,
    labels: tuple[str, ...],
    patients: tuple[int, int] = (12, 4),
    images_per_patient: int = 4,
    prevalence: float = 0.35,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write ``out/images/*.png`` and ``out/labels.csv`` (``path, patient_id, split, <labels>``).

    Each label present draws its own bright square at a place of its own on a noisy gray
    background, so every label can be learnt. ``patients`` is (train, test) patients; each
    patient's images share a split, as in a patient-level split.
    """
    if not labels or size < 32 or images_per_patient < 1 or min(patients) < 1:
        raise ValueError("expected labels, size >= 32, images_per_patient >= 1 and at least one patient per split")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(len(labels))))
    cell = size // side
    rows = []
    for split, count, first in (("train", patients[0], 1), ("test", patients[1], 1 + patients[0])):
        for patient in range(first, first + count):
            for k in range(images_per_patient):
                flags = (rng.uniform(size=len(labels)) < prevalence).astype(int)
                image = 0.25 + 0.05 * rng.standard_normal((size, size))
                for i in np.flatnonzero(flags):
                    top, left = (i // side) * cell + cell // 4, (i % side) * cell + cell // 4
                    image[top : top + cell // 2, left : left + cell // 2] = 0.9
                name = f"images/{patient:05d}_{k:03d}.png"
                Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(out / name)
                rows.append([name, str(patient), split, *map(str, flags)])
    lines = [",".join(["path", "patient_id", "split", *labels]), *(",".join(r) for r in rows)]
    (out / "labels.csv").write_text("\n".join(lines) + "\n")
    return out
