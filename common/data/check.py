"""``medsilo data check``: class counts, unreadable files and exact duplicates."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from common.data.images import IMAGE_SUFFIXES

__all__ = ["check_data_root"]


def _pixel_digest(path: Path) -> str:
    with Image.open(path) as img:
        img.load()
        return hashlib.sha256(f"{img.mode}{img.size}".encode() + img.tobytes()).hexdigest()


def check_data_root(root: str | Path) -> dict[str, Any]:
    """Scan ``root/<split>/<class>/*`` and report what a curator must know.

    Duplicates are pixel-identical images (same mode, size and pixels), whatever the
    file encoding. Returns a JSON-ready dict with ``splits`` (class counts),
    ``unreadable`` (path, reason), ``duplicates_within`` (groups per split) and
    ``duplicates_across`` (groups spanning splits).
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
                    digest = _pixel_digest(path)
                except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as err:
                    unreadable.append({"path": rel, "reason": str(err)})
                    continue
                by_digest[digest].append((split.name, rel))
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
    return {
        "root": str(root),
        "splits": counts,
        "unreadable": unreadable,
        "duplicates_within": dict(within),
        "duplicates_across": across,
    }
