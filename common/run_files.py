"""Writers and readers of the evaluation files every run and ``medsilo evaluate`` leave behind."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_predictions_csv", "write_json", "write_predictions_csv"]


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def write_predictions_csv(
    path: str | Path, *, paths: Sequence[str], y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]
) -> Path:
    """One row per image: ``path, y_true, y_pred, p_<class>...`` (labels are indices).

    Probabilities are written with ``repr`` so they read back bit-identical.
    """
    path = Path(path)
    y_pred = np.asarray(probabilities).argmax(axis=1)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "y_true", "y_pred", *(f"p_{c}" for c in classes)])
        for name, truth, pred, row in zip(paths, y_true, y_pred, probabilities, strict=True):
            writer.writerow([name, int(truth), int(pred), *(repr(float(p)) for p in row)])
    return path


def read_predictions_csv(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """Read ``predictions.csv`` back: paths, ``y_true (N,)``, probabilities ``(N, K)``, classes."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:3] != ["path", "y_true", "y_pred"]:
        raise ValueError(f"{path} is not a predictions.csv; expected the header path,y_true,y_pred,p_<class>...")
    header, body = rows[0], rows[1:]
    classes = [h.removeprefix("p_") for h in header[3:]]
    paths = [r[0] for r in body]
    y_true = np.array([int(r[1]) for r in body], dtype=np.int64)
    probs = np.array([[float(v) for v in r[3:]] for r in body], dtype=np.float64).reshape(len(body), len(classes))
    return paths, y_true, probs, classes
