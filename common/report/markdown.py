"""``report.md``: the report as Markdown, figures linked from ``figures/``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.report.content import Block, Cell, Figure, Note, Paragraph, Section, Table, evaluation_section

__all__ = ["render_markdown"]


def _cell(cell: Cell) -> str:
    return cell.text.replace("|", "\\|")


def _block(block: Block, base: Path | None) -> list[str]:
    if isinstance(block, Paragraph):
        return ["".join(p.text if isinstance(p, Cell) else p for p in block.parts)]
    if isinstance(block, Note):
        return [f"_{block.text}_"]
    if isinstance(block, Table):
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in block.header) + " |"]
        lines.append("|" + "---|" * len(block.header))
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in block.rows]
        return lines
    if isinstance(block, Figure):
        target = block.path.relative_to(base) if base is not None else block.path
        alt = block.alt.replace("[", "(").replace("]", ")")
        return [f"![{alt}]({target.as_posix()})"]
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(
    report: Mapping[str, Any],
    *,
    title: str,
    summary: Mapping[str, Any],
    sections: Sequence[Section] = (),
    base: Path | None = None,
) -> str:
    """The human report: run summary, central evaluation, then ``sections``.

    Args:
        report: the ``report.json`` dict.
        title: the top heading.
        summary: run facts, one bullet each.
        sections: further sections, in order.
        base: the folder ``report.md`` is written to; figure links are made relative to it.
    """
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.items()]
    for section in (evaluation_section(report), *sections):
        lines += ["", f"## {section.title}"]
        for block in section.blocks:
            lines += ["", *_block(block, base)]
    return "\n".join(lines) + "\n"
