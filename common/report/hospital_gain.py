"""The report's "What each hospital gains" section: local-only against global, per hospital (``local-baseline``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.report.content import Block, Cell, Note, Paragraph, Section, Table, fmt

__all__ = ["HOSPITAL_GAIN_TITLE", "hospital_gain_section"]

HOSPITAL_GAIN_TITLE = "What each hospital gains"


def _signed(value: float) -> Cell:
    return Cell(f"{value:+.3f}", value=value)


def hospital_gain_section(record: Mapping[str, Any]) -> Section:
    """The table of ``history.json``'s ``local_baseline``: each hospital's validation accuracy, alone and joined."""
    why = (
        "After the last round each hospital trained a model on its own shard alone, from the same starting "
        "weights, for the rounds it trained in the federation, and scored it and the global model on its own "
        "validation split. That split shares the hospital's own label mix, which favours the local-only model; "
        "only the two accuracies left the hospital."
    )
    blocks: list[Block] = [Paragraph((why,))]
    rows = tuple(
        (
            Cell(str(row["hospital"])),
            Cell(str(row["validation_images"]), value=row["validation_images"]),
            Cell(str(row["rounds"]), value=row["rounds"]),
            Cell(fmt(row["local_only_accuracy"]), value=row["local_only_accuracy"]),
            Cell(fmt(row["global_accuracy"]), value=row["global_accuracy"]),
            _signed(row["gain"]),
        )
        for row in record.get("hospitals", [])
    )
    header = ("hospital", "validation images", "rounds", "local-only accuracy", "global accuracy", "gain")
    blocks.append(Table(header, rows) if rows else Note("No hospital returned its comparison."))
    for failure in record.get("failures", []):
        blocks.append(Note(f"Node {failure['node_id']} is missing: {failure['reason']}."))
    return Section(HOSPITAL_GAIN_TITLE, tuple(blocks))
