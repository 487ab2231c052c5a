"""Writers and readers of the evaluation files every run and ``medsilo evaluate`` leave behind."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TRUE_PREFIX", "read_predictions_csv", "write_json", "write_predictions_csv"]

TRUE_PREFIX = "y_"
"""Multi-label ``predictions.csv``: the prefix of each label's 0/1 truth column."""


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def write_predictions_csv(
    path: str | Path,
    *,
    paths: Sequence[str],
    y_true: Sequence[int] | np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
) -> Path:
    """One row per image: ``path, y_true, y_pred, p_<class>...`` (labels are indices).

    Multi-label truth ``(N, L)`` is written as ``path, y_<label>..., p_<label>...`` (0/1 flags).
    Probabilities are written with ``repr`` so they read back bit-identical.
    """
    path = Path(path)
    truth = np.asarray(y_true)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        if truth.ndim == 2:
            writer.writerow(["path", *(f"{TRUE_PREFIX}{c}" for c in classes), *(f"p_{c}" for c in classes)])
            for name, flags, row in zip(paths, truth, probabilities, strict=True):
                writer.writerow([name, *(int(f) for f in flags), *(repr(float(p)) for p in row)])
            return path
        writer.writerow(["path", "y_true", "y_pred", *(f"p_{c}" for c in classes)])
        for name, label, pred, row in zip(
            paths, truth, np.asarray(probabilities).argmax(axis=1), probabilities, strict=True
        ):
            writer.writerow([name, int(label), int(pred), *(repr(float(p)) for p in row)])
    return path


def read_predictions_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Read ``predictions.csv`` back: paths, ``y_true`` ``(N,)`` (multi-label ``(N, L)``), probabilities, classes."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0] if rows else []
    body = rows[1:]
    multiclass = header[:3] == ["path", "y_true", "y_pred"]
    if not multiclass and len(header) > 1 and header[0] == "path" and header[1].startswith(TRUE_PREFIX):
        k = sum(h.startswith(TRUE_PREFIX) for h in header)
        classes = [h.removeprefix(TRUE_PREFIX) for h in header[1 : 1 + k]]
        if header[1 + k :] != [f"p_{c}" for c in classes]:
            raise ValueError(f"{path}: multi-label header expected path,y_<label>...,p_<label>... in label order")
        flags = np.array([[int(v) for v in r[1 : 1 + k]] for r in body], dtype=np.int64).reshape(len(body), k)
        probs = np.array([[float(v) for v in r[1 + k :]] for r in body], dtype=np.float64).reshape(len(body), k)
        return [r[0] for r in body], flags, probs, classes
    if not multiclass:
        raise ValueError(f"{path} is not a predictions.csv; expected the header path,y_true,y_pred,p_<class>...")
    classes = [h.removeprefix("p_") for h in header[3:]]
    paths = [r[0] for r in body]
    y_true = np.array([int(r[1]) for r in body], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64).reshape(len(body), len(classes))
    return paths, y_true, probs, classes
