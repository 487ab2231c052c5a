"""The report's calibration and operating-point sections: can the probability be trusted, and at what threshold.

The calibration section is recomputed from ``predictions.csv`` (the calibrated probabilities)
and the temperature ``report.json`` records, so ``medsilo report`` rebuilds it from the run
directory alone; the operating point's figures are ``report.json``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from common.calibration import Calibration
from common.calibration_metrics import ECE_BINS, calibration_summary, reliability_bins
from common.report import figures
from common.report.content import Block, Cell, Note, Paragraph, Section, Table, fmt
from common.report.inputs import Predictions, is_multilabel

__all__ = ["CALIBRATION_TITLE", "OPERATING_POINT_TITLE", "calibration_section", "operating_point_section"]

CALIBRATION_TITLE = "Calibration"
OPERATING_POINT_TITLE = "Operating point"
_DECISIONS = ("sensitivity", "specificity", "ppv", "npv")
_DECISION_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "ppv": "PPV", "npv": "NPV"}


def _valued(key: str | None, value: float | int | None) -> Cell:
    """A number's cell; ``key`` names its ``report.json`` entry (``None`` when the report has none)."""
    return Cell(fmt(value), key=key, value=value)


def _diagram_inputs(y: np.ndarray, probs: np.ndarray, *, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and outcome per point: top-class confidence and hit, or every (image, label) pair."""
    if multilabel:
        return probs.ravel(), y.ravel()
    return probs.max(axis=1), probs.argmax(axis=1) == y


def calibration_section(report: Mapping[str, Any], predictions: Predictions | None, out: Path) -> Section:
    """ECE and Brier score before and after temperature scaling, and the reliability diagram.

    The figures are recomputed from ``predictions.csv`` and the recorded temperature; where
    ``report.json`` records them (every run since calibration), the cells name those entries.
    """
    if predictions is None:
        return Section(CALIBRATION_TITLE, (Note("Left out: this directory has no predictions.csv."),))
    multilabel = is_multilabel(report)
    classes = report["classes"]
    recorded = report.get("calibration")
    keyed = (lambda key: f"calibration.{key}") if recorded else (lambda key: None)
    entry = recorded or {"fitted": False, "source": "this run predates calibration"}
    temperature = tuple(float(t) for t in entry.get("temperature", [])) if entry["fitted"] else ()
    calibration = Calibration(temperature=temperature, source=str(entry["source"]))
    y, after = predictions.y_true, predictions.probabilities
    summary = calibration_summary(y, after, classes, calibration, multilabel=multilabel)
    if temperature:
        values: list[str | Cell] = []
        for i, t in enumerate(summary["temperature"]):
            values += [", " if i else "", _valued(keyed(f"temperature.{i}"), t)]
        how: tuple[str | Cell, ...] = ("Temperature scaling: the logits are divided by T = ", *values,
                                       f" ({calibration.source}). ")  # fmt: skip
    else:
        how = (f"No temperature was fitted ({calibration.source}): before and after are the same. ",)
    bins = ("ECE over ", _valued(keyed("bins"), summary["bins"]), " equal confidence bins.")
    rows = tuple(
        (Cell(f"{when} scaling"), *(_valued(keyed(f"{when}.{m}"), summary[when][m]) for m in ("ece", "brier")))
        for when in ("before", "after")
    )
    blocks: list[Block] = [Paragraph((*how, *bins)), Table(("", "ECE", "Brier score"), rows)]
    if multilabel:
        label_rows = tuple(
            (
                Cell(name),
                Cell(fmt(summary["temperature"][i])),
                *(
                    _valued(keyed(f"{when}.per_label.{name}.{m}"), summary[when]["per_label"][name][m])
                    for m in ("ece", "brier")
                    for when in ("before", "after")
                ),
            )
            for i, name in enumerate(classes)
        )
        header = ("label", "T", "ECE before", "ECE after", "Brier before", "Brier after")
        blocks.append(Table(header, label_rows))
    before = Calibration(tuple(1 / t for t in summary["temperature"])).apply(after, multilabel=multilabel)
    curves = {}
    for when, probs in (("before", before), ("after", after)):
        confidence, outcome = _diagram_inputs(y, probs, multilabel=multilabel)
        curves[f"{when} scaling"] = (*reliability_bins(confidence, outcome), summary[when]["ece"])
    what = (
        ("the label's probability", "share of images with the label", "(image, label) pairs")
        if multilabel
        else ("largest class probability", "share predicted right", "test images")
    )
    blocks.append(figures.reliability_diagram(curves, out / "reliability.png", what=what, bins=ECE_BINS))
    blocks.append(
        Note(
            "ECE: each bin's share of images times the gap between its accuracy and its mean confidence"
            + (", per label against how often the label is present, averaged over labels" if multilabel else "")
            + ". Brier score: mean squared distance between the probabilities and the truth"
            + (", per label, averaged." if multilabel else " (for two classes, that of the positive class).")
        )
    )
    return Section(CALIBRATION_TITLE, tuple(blocks))


def _interval(key: str, entry: Mapping[str, Any]) -> tuple[Cell, ...]:
    """Value, the Wilson interval's ends and the count over the total, each naming its ``report.json`` entry."""
    return tuple(_valued(f"{key}.{part}", entry[part]) for part in ("value", "low", "high", "count", "total"))


def _against_target(point: Mapping[str, Any]) -> str:
    """How far the test sensitivity is from the target, and whether the target is inside its interval."""
    target, found = point["target_sensitivity"], point["sensitivity"]
    if target is None or found["value"] is None:
        return ""
    gap = found["value"] - target
    inside = found["low"] <= target <= found["high"]
    return (
        f" On the central test set the sensitivity is {found['value']:.3f} (95% CI {found['low']:.3f}–"
        f"{found['high']:.3f}), {abs(gap):.3f} {'above' if gap >= 0 else 'below'} the target {target:g}: "
        + (
            "the target lies inside the interval, so the gap is what sampling "
            f"{found['total']} positive test images explains."
            if inside
            else "the target lies outside the interval, so the test images differ from the hospitals' validation "
            "images by more than sampling explains."
        )
    )


def operating_point_section(report: Mapping[str, Any]) -> Section:
    """Sensitivity, specificity, PPV and NPV at the threshold(s) picked on the hospitals' validation data."""
    point = report["operating_point"]
    target = point["target_sensitivity"]
    picked: tuple[str | Cell, ...] = (
        ("for a pooled validation sensitivity of at least ", _valued("operating_point.target_sensitivity", target))
        if target is not None
        else ("for the best F1 on the pooled validation images",)
    )
    if not is_multilabel(report):
        positive = " or ".join(point["positive"])
        text = (
            f"An image is positive when p({positive}) is at or above ",
            _valued("operating_point.threshold", point["threshold"]),
            ", the threshold picked on the hospitals' validation splits (never on test/) ",
            *picked,
            ".",
            _against_target(point),
        )
        header = ("", "value", "95% CI low (Wilson)", "95% CI high", "count", "total")
        rows = tuple((Cell(_DECISION_NAMES[m]), *_interval(f"operating_point.{m}", point[m])) for m in _DECISIONS)
        return Section(OPERATING_POINT_TITLE, (Paragraph(text), Table(header, rows)))
    text = ("Each label is flagged at or above its own threshold, picked on the hospitals' validation splits ",
            *picked, ". Each figure is given with its Wilson 95% interval.")  # fmt: skip
    rows = tuple(
        (
            Cell(name),
            _valued(f"operating_point.per_label.{name}.threshold", entry["threshold"]),
            *(Cell(f"{fmt(entry[m]['value'])} ({fmt(entry[m]['low'])}–{fmt(entry[m]['high'])})") for m in _DECISIONS),
        )
        for name, entry in point["per_label"].items()
    )
    label_header = ("label", "threshold", *(_DECISION_NAMES[m] for m in _DECISIONS))
    return Section(OPERATING_POINT_TITLE, (Paragraph(text), Table(label_header, rows)))
