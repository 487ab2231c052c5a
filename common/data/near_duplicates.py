"""Near-duplicate audit: the same picture flipped, rotated by a multiple of 90°, resized or re-encoded.

Each image gets a 64-bit perceptual hash (``imagehash.phash``: the signs of its low DCT
frequencies against their median) of each of its 8 flips and rotations. Two images are
near-twins when the hash of one lies within ``tolerance`` bits of a hash of the other;
twins are joined into groups (union-find), so a chain of copies is one group. Rotations by
other angles (LC25000's up to 25°) are mostly not found: the hash is not made for them.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

__all__ = ["DEFAULT_TOLERANCE", "clean_split", "dihedral_hashes", "near_twin_groups", "write_clean_split"]

DEFAULT_TOLERANCE = 4
_SIDE = 32  # phash's own working size (hash_size 8 x highfreq_factor 4)
_TRANSFORMS = (
    None,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def dihedral_hashes(img: Image.Image) -> np.ndarray:
    """``(8,)`` uint64 perceptual hashes of ``img`` and its 7 other flips and right-angle rotations."""
    small = img.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS)
    out = np.empty(len(_TRANSFORMS), dtype=np.uint64)
    for i, transform in enumerate(_TRANSFORMS):
        view = small if transform is None else small.transpose(transform)
        bits = imagehash.phash(view).hash.reshape(-1)
        out[i] = np.packbits(bits).view(">u8")[0]
    return out


def near_twin_groups(hashes: np.ndarray, *, tolerance: int = DEFAULT_TOLERANCE, block: int = 512) -> list[list[int]]:
    """Groups (index lists, sorted) of images within ``tolerance`` bits under some flip or rotation.

    Args:
        hashes: ``(n, 8)`` from :func:`dihedral_hashes`, one row per image.
        tolerance: the largest Hamming distance (of 64 bits) that still counts as the same picture.
        block: rows compared at once (memory: ``block x n x 8`` bytes).
    """
    if tolerance < 0 or tolerance > 32:
        raise ValueError(f"tolerance = {tolerance} is invalid; expected 0..32 bits of 64")
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    own = hashes[:, 0]
    for start in range(0, n, block):
        rows = hashes[start : start + block]  # (b, 8): every view of these images
        distance = np.bitwise_count(rows[:, :, None] ^ own[None, None, :]).min(axis=1)  # (b, n)
        for i, j in zip(*np.nonzero(distance <= tolerance), strict=True):
            a, b = find(start + int(i)), find(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def clean_split(paths: Sequence[str], groups: Sequence[Sequence[int]]) -> dict[str, str]:
    """The split each image belongs to so that no group straddles two splits.

    ``paths`` are ``<split>/<class>/...`` relative paths. A straddling group goes wholly to
    the split holding most of its members (``train`` on a tie); every other image stays.

    Returns:
        ``{path: new split}`` for the images that move.
    """
    moves: dict[str, str] = {}
    for group in groups:
        splits = [paths[i].split("/", 1)[0] for i in group]
        if len(set(splits)) < 2:
            continue
        counts = {s: splits.count(s) for s in set(splits)}
        target = max(sorted(counts), key=lambda s: (counts[s], s == "train"))
        moves.update({paths[i]: target for i, s in zip(group, splits, strict=True) if s != target})
    return moves


def write_clean_split(root: Path, paths: Sequence[str], moves: dict[str, str], out: Path) -> Path:
    """Write ``out/<split>/<class>/<file>`` for every image, moved as ``moves`` says (hard links, else copies)."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; expected a new folder for the clean split")
    for rel in paths:
        split, rest = rel.split("/", 1)
        target = out / moves.get(rel, split) / rest
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / rel, target)
        except OSError:
            shutil.copy2(root / rel, target)
    return out
