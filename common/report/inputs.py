"""Read what a run directory (or a ``medsilo evaluate`` output) holds, checked, as plain data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.run_files import read_predictions_csv

__all__ = ["Predictions", "ReportInputs", "is_multilabel", "read_inputs"]

_COMMON_KEYS = ("classes", "n", "accuracy", "balanced_accuracy", "loss", "macro")
_REPORT_KEYS = (*_COMMON_KEYS, "weighted", "per_class", "confusion_matrix")
_MULTILABEL_KEYS = (*_COMMON_KEYS, "subset_accuracy", "micro", "per_label", "thresholds")


def is_multilabel(report: dict[str, Any]) -> bool:
    """Whether ``report.json`` scores labels (a multi-label run) rather than classes."""
    return report.get("task") == "multilabel"


@dataclass(frozen=True)
class Predictions:
    """``predictions.csv``: image paths, ``y_true (N,)`` (multi-label ``(N, K)`` flags), probabilities ``(N, K)``."""

    paths: list[str]
    y_true: np.ndarray
    probabilities: np.ndarray


@dataclass(frozen=True)
class ReportInputs:
    """The files a report is built from; all but ``report.json`` are optional.

    ``pretrained_on`` is the run's ``model/model.json`` record of what its starting weights were trained on.
    """

    directory: Path
    report: dict[str, Any]
    config: dict[str, Any] | None
    history: dict[str, Any] | None
    predictions: Predictions | None
    pretrained_on: dict[str, Any] | None = None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def _optional_json(path: Path, expected: type) -> Any:
    if not path.is_file():
        return None
    data = _json(path)
    if not isinstance(data, expected):
        raise ValueError(f"{path} holds a {type(data).__name__}; expected a JSON {expected.__name__}")
    return data


def _predictions(path: Path, classes: list[str]) -> Predictions | None:
    if not path.is_file():
        return None
    try:
        paths, y_true, probabilities, found = read_predictions_csv(path)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path} is unreadable: {err}") from None
    if found != classes:
        raise ValueError(f"{path} has the classes {found}; report.json has {classes}")
    return Predictions(paths, y_true, probabilities)


def _pretrained_on(directory: Path) -> dict[str, Any] | None:
    """``model/model.json``'s ``pretrained_on`` (plaintext and encrypted model directories both have one)."""
    spec = _optional_json(directory / "model" / "model.json", dict)
    record = (spec or {}).get("pretrained_on")
    return record if isinstance(record, dict) else None


def read_inputs(directory: str | Path) -> ReportInputs:
    """Read ``report.json`` (required), ``config.json``, ``history.json``, ``predictions.csv`` and ``model/model.json``.

    Raises:
        ValueError: not a directory, no or malformed ``report.json``, or unreadable files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory; expected a run directory (output-dir/<run-name>)")
    report_path = directory / "report.json"
    if not report_path.is_file():
        raise ValueError(f"{directory} has no report.json; expected a finished run directory or evaluate output")
    report = _json(report_path)
    keys = _MULTILABEL_KEYS if isinstance(report, dict) and is_multilabel(report) else _REPORT_KEYS
    missing = [k for k in keys if not isinstance(report, dict) or k not in report]
    if missing:
        raise ValueError(f"{report_path} lacks {', '.join(missing)}; expected the report.json schema of DESIGN")
    history = _optional_json(directory / "history.json", dict)
    if history is not None and not isinstance(history.get("rounds"), list):
        raise ValueError(f"{directory / 'history.json'} has no 'rounds' list")
    return ReportInputs(
        directory=directory,
        report=report,
        config=_optional_json(directory / "config.json", dict),
        history=history,
        predictions=_predictions(directory / "predictions.csv", list(report["classes"])),
        pretrained_on=_pretrained_on(directory),
    )
