"""The report's content, independent of its format: sections of paragraphs, tables and figures.

Both renderers (Markdown and HTML) take the same :class:`Section` list, so the two
reports always say the same thing. A :class:`Cell` may name the ``report.json`` value it
shows (``key``, dotted, e.g. ``per_class.glioma.f1``); the HTML carries it for machines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

__all__ = [
    "Block",
    "Cell",
    "Figure",
    "Note",
    "Paragraph",
    "Section",
    "Table",
    "confusion_table",
    "evaluation_section",
    "fmt",
    "headline",
    "metrics_table",
    "multilabel_headline",
    "per_label_table",
    "report_cell",
]

METRIC_COLUMNS = ("precision", "recall", "f1", "specificity", "npv", "auroc", "average_precision")
METRIC_HEADER = ("precision", "recall (sensitivity)", "F1", "specificity", "NPV", "AUROC", "AP")
LABEL_COLUMNS = ("auroc", "average_precision", "f1", "precision", "sensitivity", "specificity", "npv")
LABEL_HEADER = ("AUROC", "AP", "F1", "precision", "sensitivity", "specificity", "NPV")


def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number as the reports show it: ``n/a`` for undefined, ints as they are."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class Cell:
    """A table cell or inline value; ``key`` names the ``report.json`` value it shows, if any."""

    text: str
    key: str | None = None
    value: float | int | None = None


@dataclass(frozen=True)
class Paragraph:
    """Running text; parts are plain strings or values (:class:`Cell`)."""

    parts: tuple[str | Cell, ...]


@dataclass(frozen=True)
class Note:
    """A one-line remark, e.g. why a section is left out."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table with a header row; the first cell of each row names the row."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Figure:
    """A PNG under ``figures/`` and its text alternative (the legend entries, in words)."""

    path: Path
    alt: str


Block = Paragraph | Note | Table | Figure


@dataclass(frozen=True)
class Section:
    """A titled part of the report."""

    title: str
    blocks: tuple[Block, ...] = field(default=())


def report_cell(report: Mapping[str, Any], key: str) -> Cell:
    """The cell showing the ``report.json`` value at the dotted ``key``."""
    value: Any = report
    for part in _split_key(report, key):
        value = value[part]
    return Cell(fmt(value), key=key, value=value)


def _split_key(report: Mapping[str, Any], key: str) -> list[Any]:
    """Dotted key to path; a class name may contain dots, so ``per_class`` keys split at the last one."""
    for table in ("per_class", "per_label"):
        if key.startswith(f"{table}."):
            name, _, metric = key.removeprefix(f"{table}.").rpartition(".")
            return [table, name, metric]
    if key.startswith("confusion_matrix."):
        _, row, col = key.split(".")
        return ["confusion_matrix", int(row), int(col)]
    return key.split(".")


def _balanced_loss_n(report: Mapping[str, Any]) -> tuple[str | Cell, ...]:
    """The end both headlines share: balanced accuracy, loss and the number of test images."""
    value = partial(report_cell, report)
    return (", balanced accuracy ", value("balanced_accuracy"), ", loss ", value("loss"), ", on ", value("n"),
            " test images.")


def headline(report: Mapping[str, Any]) -> Paragraph:
    """Accuracy, balanced accuracy, loss and the number of test images, in one sentence."""
    return Paragraph(("Accuracy ", report_cell(report, "accuracy"), *_balanced_loss_n(report)))


def metrics_table(report: Mapping[str, Any]) -> Table:
    """The per-class table of the papers, with macro and weighted averages."""
    rows: list[tuple[Cell, ...]] = []
    for name in report["per_class"]:
        metrics = [report_cell(report, f"per_class.{name}.{m}") for m in METRIC_COLUMNS]
        rows.append((Cell(name), *metrics, report_cell(report, f"per_class.{name}.support")))
    n = report_cell(report, "n")
    rows.append((Cell("macro avg"), *(report_cell(report, f"macro.{m}") for m in METRIC_COLUMNS), n))
    weighted = [report_cell(report, f"weighted.{m}") for m in ("precision", "recall", "f1")]
    rows.append((Cell("weighted avg"), *weighted, *(Cell("") for _ in range(4)), n))
    return Table(("class", *METRIC_HEADER, "support"), tuple(rows))


def confusion_table(report: Mapping[str, Any]) -> Table:
    """Counts, rows = true class, columns = predicted class."""
    classes: Sequence[str] = report["classes"]
    rows = tuple(
        (Cell(name), *(report_cell(report, f"confusion_matrix.{i}.{j}") for j in range(len(classes))))
        for i, name in enumerate(classes)
    )
    return Table(("true \\ predicted", *classes), rows)


def multilabel_headline(report: Mapping[str, Any]) -> Paragraph:
    """Macro AUROC, macro F1 at the labels' thresholds, the accuracies, loss and test images, in one sentence."""
    value = partial(report_cell, report)
    return Paragraph(
        (
            "Macro AUROC ",
            value("macro.auroc"),
            ", macro F1 at the labels' thresholds ",
            value("macro.f1"),
            ", mean per-label accuracy ",
            value("accuracy"),
            ", every label right (subset accuracy) ",
            value("subset_accuracy"),
            *_balanced_loss_n(report),
        )
    )


def per_label_table(report: Mapping[str, Any]) -> Table:
    """One row per label, its threshold and positives, then the macro and micro averages."""
    rows: list[tuple[Cell, ...]] = []
    for name in report["per_label"]:
        metrics = [report_cell(report, f"per_label.{name}.{m}") for m in LABEL_COLUMNS]
        extra = [report_cell(report, f"per_label.{name}.{m}") for m in ("threshold", "support")]
        rows.append((Cell(name), *metrics, *extra))
    for average in ("macro", "micro"):
        cells = [report_cell(report, f"{average}.{m}") for m in LABEL_COLUMNS]
        rows.append((Cell(f"{average} avg"), *cells, Cell(""), Cell("")))
    return Table(("label", *LABEL_HEADER, "threshold", "positives"), tuple(rows))


def evaluation_section(report: Mapping[str, Any]) -> Section:
    """The central evaluation in the papers' form: headline, per-class table, confusion matrix.

    A multi-label run gets its own form: per-label AUROC, AP and the decisions at each threshold.
    """
    if report.get("task") == "multilabel":
        return Section(
            "Central evaluation, per label",
            (
                multilabel_headline(report),
                per_label_table(report),
                Note(
                    "Each label is scored on its own: AUROC and AP from its probability, the rest from the decision "
                    "at its threshold. Micro averages pool every (image, label) pair. n/a: undefined for this label "
                    "on this test set (no positive or no negative images, or never predicted)."
                ),
            ),
        )
    return Section(
        "Central evaluation",
        (
            headline(report),
            metrics_table(report),
            Paragraph(("Confusion matrix (rows = true class, columns = predicted):",)),
            confusion_table(report),
            Note("n/a: undefined for this class on this test set (no true or no predicted cases)."),
        ),
    )
