"""Cut large histology images into tissue patches: a sliding window, kept where there is tissue.

Windows of ``size`` x ``size`` px step by the stride at which two neighbouring windows
overlap with the given IoU: ``stride = round(size * (1 - iou) / (1 + iou))`` (400 px at
IoU 0.3: 215 px). Windows start at 0, stride, 2 x stride, ... and stay inside the image; the
strip beyond the last full window is not cut. Tissue is what Otsu's threshold on the
saturation channel (HSV) marks as coloured, computed once per image with OpenCV: stained
tissue is saturated, glass background is white or grey. A window is kept when at least
``min_tissue`` of its pixels are tissue. Whole-slide formats (SVS, NDPI) need OpenSlide and
are not read here; export a level to PNG or TIFF first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.images import IMAGE_SUFFIXES

__all__ = ["PatchSummary", "cut_patches", "patch_stride", "tissue_mask", "window_origins"]


@dataclass(frozen=True)
class PatchSummary:
    """What :func:`cut_patches` did."""

    images: int
    patches: int
    windows: int
    skipped: list[tuple[str, str]]


def patch_stride(size: int, iou: float) -> int:
    """The step at which two neighbouring ``size`` px windows overlap with ``iou``."""
    if size < 1:
        raise ValueError(f"size = {size} is invalid; expected a positive number of pixels")
    if not 0.0 <= iou < 1.0:
        raise ValueError(f"iou = {iou} is invalid; expected 0 <= iou < 1")
    return max(1, round(size * (1 - iou) / (1 + iou)))


def window_origins(length: int, *, size: int, iou: float) -> list[int]:
    """Window starts along one axis of ``length`` px: multiples of the stride that fit."""
    return list(range(0, length - size + 1, patch_stride(size, iou)))


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean ``(h, w)`` mask: Otsu's threshold on the HSV saturation of an RGB ``uint8`` image."""
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[:, :, 1]
    _, mask = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return mask.astype(bool)


def cut_patches(src: Path, out: Path, *, size: int, iou: float, min_tissue: float) -> PatchSummary:
    """Cut every image under ``src`` into ``out``, mirroring its folders (``<stem>_x<X>_y<Y>.png``).

    An unreadable image is skipped and counted. Raises ``ValueError`` for bad arguments.
    """
    if not src.is_dir():
        raise ValueError(f"--in {str(src)!r} is not a folder; expected a folder of slide images")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min-tissue = {min_tissue} is invalid; expected a fraction in 0..1")
    patch_stride(size, iou)  # bad arguments fail before any work
    images = patches = windows = 0
    skipped: list[tuple[str, str]] = []
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = path.relative_to(src)
        try:
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"))
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as err:
            skipped.append((str(rel), str(err)))
            continue
        images += 1
        mask = tissue_mask(rgb)
        target = out / rel.parent
        for y in window_origins(rgb.shape[0], size=size, iou=iou):
            for x in window_origins(rgb.shape[1], size=size, iou=iou):
                windows += 1
                if mask[y : y + size, x : x + size].mean() < min_tissue:
                    continue
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb[y : y + size, x : x + size]).save(target / f"{path.stem}_x{x}_y{y}.png")
                patches += 1
    return PatchSummary(images=images, patches=patches, windows=windows, skipped=skipped)
