"""Multi-label data sets: a labels CSV (``path, patient_id, split, <label columns>``) and its images.

Each row is one image: its path (relative to the CSV's folder), its patient, its split
(``train`` or ``test``) and a 0/1 column per label. The label columns must be exactly the
run's label list (the preset's or ``classes``), in any order. Images are decoded once, like
the ImageFolder loader; an unreadable file is skipped and counted.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from common.data.images import DECODED_CACHE_MB, ImageSet, decode_files

__all__ = ["LABELS_CSV", "REQUIRED_COLUMNS", "load_labels_csv"]

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"
"""The labels file's name inside a multi-label data root."""
REQUIRED_COLUMNS = ("path", "patient_id", "split")


def _header(csv_path: Path, header: list[str], labels: Sequence[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{csv_path}: column(s) {', '.join(missing)} missing; expected {', '.join(REQUIRED_COLUMNS)}, <labels>"
        )
    columns = [c for c in header if c not in REQUIRED_COLUMNS]
    if sorted(columns) != sorted(labels):
        extra = sorted(set(columns) - set(labels))
        absent = sorted(set(labels) - set(columns))
        raise ValueError(
            f"{csv_path}: label columns differ from the label list (extra: {', '.join(extra) or 'none'}; "
            f"missing: {', '.join(absent) or 'none'}); expected exactly: {', '.join(labels)}"
        )


def _flags(csv_path: Path, line: int, row: dict[str, str], labels: Sequence[str]) -> list[int]:
    values = [row[label].strip() for label in labels]
    if any(v not in ("0", "1") for v in values):
        bad = next(label for label, v in zip(labels, values, strict=True) if v not in ("0", "1"))
        raise ValueError(f"{csv_path} line {line}: {bad!r} = {row[bad]!r} is invalid; expected 0 or 1")
    return [int(v) for v in values]


@lru_cache(maxsize=8)
def _load(
    csv_path: str, split: str, labels: tuple[str, ...], channels: int, size: int, cache_mb: int, stamp: int
) -> ImageSet:
    path = Path(csv_path)
    root = path.parent
    rows: list[tuple[str, list[int], str]] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        _header(path, list(reader.fieldnames or []), labels)
        for line, row in enumerate(reader, start=2):
            if row["split"].strip() == split:
                rows.append((row["path"].strip(), _flags(path, line, row, labels), row["patient_id"].strip()))
    files = [root / rel for rel, _, _ in rows]
    pixels, readable, unreadable = decode_files(
        files, channels=channels, size=size, cache_mb=cache_mb, name=f"{path} ({split})"
    )
    skipped = tuple((rows[i][0], reason) for i, reason in unreadable)
    if skipped:
        log.warning("%s (%s): skipped %d unreadable image(s)", path, split, len(skipped))
    targets = [rows[i][1] for i in readable]
    label_matrix = torch.tensor(targets, dtype=torch.long).reshape(len(targets), len(labels))
    paths = tuple(rows[i][0] for i in readable)
    return ImageSet(pixels, label_matrix, paths, labels, skipped, groups=tuple(rows[i][2] for i in readable))


def load_labels_csv(
    root: str | Path,
    split: str,
    *,
    labels: Sequence[str],
    channels: int,
    size: int,
    cache_mb: int = DECODED_CACHE_MB,
) -> ImageSet:
    """The ``split`` rows of ``root/labels.csv``: ``labels`` is an ``(N, L)`` 0/1 matrix, ``groups`` the patients.

    Raises:
        ValueError: no labels file, a missing column, label columns other than ``labels``,
            or a flag that is not 0 or 1 (one line naming the file, line and column).
    """
    csv_path = Path(root).resolve() / LABELS_CSV
    if not csv_path.is_file():
        raise ValueError(
            f"data-root {str(root)!r} has no {LABELS_CSV}; expected a multi-label folder with "
            f"{LABELS_CSV} ({', '.join(REQUIRED_COLUMNS)}, <labels>) and the images it names"
        )
    return _load(str(csv_path), split, tuple(labels), channels, size, cache_mb, csv_path.stat().st_mtime_ns)
