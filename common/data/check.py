"""``medsilo data check``: class counts, unreadable files, exact duplicates and near-twins."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.data.images import IMAGE_SUFFIXES
from common.data.near_duplicates import DEFAULT_TOLERANCE, clean_split, dihedral_hashes, near_twin_groups

__all__ = ["check_data_root"]


def _fingerprints(path: Path, near: bool) -> tuple[str, np.ndarray | None]:
    """The pixel digest of an image and, when ``near``, its 8 perceptual hashes."""
    with Image.open(path) as img:
        img.load()
        digest = hashlib.sha256(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()
        return digest, dihedral_hashes(img) if near else None


def check_data_root(root: str | Path, *, near: bool = True, tolerance: int = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Scan ``root/<split>/<class>/*`` and report what a curator must know.

    Duplicates are pixel-identical images (same mode, size and pixels), whatever the
    file encoding. Near-twins (``near``) are the same picture flipped, rotated by 90°,
    resized or re-encoded (:mod:`common.data.near_duplicates`). Returns a JSON-ready dict
    with ``splits`` (class counts), ``unreadable`` (path, reason), ``duplicates_within``
    (groups per split), ``duplicates_across`` (groups spanning splits) and, when ``near``,
    ``near_twins`` (``tolerance``, groups within each split, groups across splits, and
    ``clean_split_moves``: the images a split without straddling groups would move).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{str(root)!r} is not a folder; expected ROOT/<split>/<class>/<images>")
    splits = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not splits:
        raise ValueError(f"{root} has no split folders; expected ROOT/train and ROOT/test")
    counts: dict[str, dict[str, int]] = {}
    unreadable: list[dict[str, str]] = []
    by_digest: dict[str, list[tuple[str, str]]] = defaultdict(list)
    images: list[str] = []
    hashes: list[np.ndarray] = []
    for split in splits:
        counts[split.name] = {}
        for class_dir in sorted(p for p in split.iterdir() if p.is_dir()):
            n = 0
            for path in sorted(class_dir.rglob("*")):
                if not path.is_file() or path.name.startswith("."):
                    continue
                rel = str(path.relative_to(root))
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    unreadable.append({"path": rel, "reason": "not an image file"})
                    continue
                try:
                    digest, views = _fingerprints(path, near)
                except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as err:
                    unreadable.append({"path": rel, "reason": str(err)})
                    continue
                by_digest[digest].append((split.name, rel))
                if views is not None:
                    images.append(rel)
                    hashes.append(views)
                n += 1
            counts[split.name][class_dir.name] = n
    within: dict[str, list[list[str]]] = defaultdict(list)
    across: list[list[str]] = []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        per_split: dict[str, list[str]] = defaultdict(list)
        for split_name, rel in group:
            per_split[split_name].append(rel)
        for split_name, paths in per_split.items():
            if len(paths) > 1:
                within[split_name].append(paths)
        if len(per_split) > 1:
            across.append([rel for _, rel in group])
    result = {
        "root": str(root),
        "splits": counts,
        "unreadable": unreadable,
        "duplicates_within": dict(within),
        "duplicates_across": across,
    }
    if near:
        result["near_twins"] = _near_twins(images, hashes, tolerance)
    return result


def _near_twins(paths: list[str], hashes: list[np.ndarray], tolerance: int) -> dict[str, Any]:
    groups = near_twin_groups(np.stack(hashes) if hashes else np.empty((0, 8), np.uint64), tolerance=tolerance)
    named = [[paths[i] for i in g] for g in groups]
    within: dict[str, int] = defaultdict(int)
    for group in named:
        splits = {p.split("/", 1)[0] for p in group}
        if len(splits) == 1:
            within[splits.pop()] += 1
    return {
        "tolerance_bits": tolerance,
        "groups_within": dict(within),
        "across": [g for g in named if len({p.split("/", 1)[0] for p in g}) > 1],
        "clean_split_moves": clean_split(paths, groups),
        "images": paths,
    }
