"""``report.html``: one self-contained page, with inline CSS and the figures as data URIs.

The page references nothing outside itself: no fonts, scripts, stylesheets or links to
other hosts, so it opens offline and makes no network request. Every number taken from
``report.json`` carries ``data-key`` (its dotted path) and ``data-value`` (the full
precision value, ``null`` when undefined) for machine checks.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from common.report.content import Block, Cell, Figure, Note, Paragraph, Section, Table, evaluation_section

__all__ = ["render_html"]

# The page may load nothing: only its own inline style and data: images.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1b1f24;
  background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin-top: 0; font-size: 1.7rem; border-bottom: 3px solid #2c6fbb; padding-bottom: 8px; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
nav ol { columns: 2; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; }
thead th { background: #eef2f6; text-align: center; }
tbody th { text-align: left; font-weight: 600; background: #fafbfc; }
figure { display: inline-table; vertical-align: top; margin: 16px 16px 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figcaption { display: table-caption; caption-side: bottom; font-size: 0.85rem; color: #57606a; margin-top: 4px; }
p.note { font-style: italic; color: #57606a; }
span[data-key] { font-weight: 600; }
"""


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _data_value(value: float | int | None) -> str:
    return "null" if value is None else repr(value)


def _keyed(tag: str, cell: Cell) -> str:
    if cell.key is None:
        return f"<{tag}>{escape(cell.text)}</{tag}>"
    attrs = f' data-key="{escape(cell.key)}" data-value="{_data_value(cell.value)}"'
    return f"<{tag}{attrs}>{escape(cell.text)}</{tag}>"


def _table(table: Table) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in table.header)
    rows = []
    for row in table.rows:
        name = f'<th scope="row">{escape(row[0].text)}</th>' if row else ""
        rows.append("<tr>" + name + "".join(_keyed("td", c) for c in row[1:]) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    alt = escape(figure.alt)
    return (
        f'<figure id="figure-{escape(figure.path.stem)}"><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


def _block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return "<p>" + "".join(_keyed("span", p) if isinstance(p, Cell) else escape(p) for p in block.parts) + "</p>"
    if isinstance(block, Note):
        return f'<p class="note">{escape(block.text)}</p>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(
    report: Mapping[str, Any], *, title: str, summary: Mapping[str, Any], sections: Sequence[Section] = ()
) -> str:
    """The self-contained HTML report: run summary, central evaluation, then ``sections``."""
    parts = [evaluation_section(report), *sections]
    toc = "".join(f'<li><a href="#{_anchor(s.title)}">{escape(s.title)}</a></li>' for s in parts)
    facts = "".join(f"<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>" for k, v in summary.items())
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<section id="run-summary"><h2>Run summary</h2><dl class="summary">{facts}</dl></section>',
        f"<nav><ol>{toc}</ol></nav>",
    ]
    for section in parts:
        blocks = "\n".join(_block(b) for b in section.blocks)
        body.append(f'<section id="{_anchor(section.title)}"><h2>{escape(section.title)}</h2>\n{blocks}\n</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
