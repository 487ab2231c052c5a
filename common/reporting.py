"""Writers for the evaluation files every run and ``medsilo evaluate`` leave behind."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_predictions_csv", "render_markdown", "write_json", "write_predictions_csv"]


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


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def render_markdown(report: Mapping[str, Any], *, title: str, summary: Mapping[str, Any]) -> str:
    """The human-readable report: run summary, per-class table, confusion matrix."""
    cols = ("precision", "recall", "f1", "specificity", "npv", "auroc", "average_precision")
    head = "| class | precision | recall (sensitivity) | F1 | specificity | NPV | AUROC | AP | support |"
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.items()]
    lines += [
        "",
        f"Accuracy **{_fmt(report['accuracy'])}**, balanced accuracy **{_fmt(report['balanced_accuracy'])}**, "
        f"loss {_fmt(report['loss'])}, on {report['n']} central test images.",
        "",
        head,
        "|" + "---|" * 9,
    ]
    for name, row in report["per_class"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c]) for c in cols) + f" | {row['support']} |")
    macro = report["macro"]
    weighted = report["weighted"]
    lines.append("| **macro avg** | " + " | ".join(_fmt(macro[c]) for c in cols) + f" | {report['n']} |")
    lines.append(
        f"| **weighted avg** | {_fmt(weighted['precision'])} | {_fmt(weighted['recall'])} | {_fmt(weighted['f1'])} "
        f"| | | | | {report['n']} |"
    )
    classes = report["classes"]
    lines += ["", "Confusion matrix (rows = true class, columns = predicted):", ""]
    lines.append("| true \\ predicted | " + " | ".join(classes) + " |")
    lines.append("|" + "---|" * (len(classes) + 1))
    for name, row in zip(classes, report["confusion_matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "n/a: undefined for this class on this test set (no true or no predicted cases)."]
    return "\n".join(lines) + "\n"
