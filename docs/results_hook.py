"""MkDocs hook: ``<!-- generated: results/<name> -->`` becomes the tables of ``benchmarks/results/<name>.json``.

The tables come from ``docs/results_tables.py``; a marker whose JSON is missing or unreadable, or
that no table fits, fails the build with one line naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from results_tables import builder, section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- generated: results/([\w-]+) -->")


def load(name: str) -> Any:
    """The parsed ``benchmarks/results/<name>.json``; :class:`PluginError` naming the file if it cannot be read."""
    path = RESULTS / f"{name}.json"
    shown = path.relative_to(ROOT)
    if not path.is_file():
        raise PluginError(f"results page: {shown} does not exist (marker 'results/{name}'); run its benchmark")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PluginError(f"results page: {shown} is not valid JSON ({error})") from error


def generated(name: str) -> str:
    """The Markdown section for one marker."""
    data = load(name)
    if builder(name) is None:
        raise PluginError(f"results page: no table for 'results/{name}' in docs/results_tables.py")
    return section(name, data)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace every results marker with its generated section."""
    return MARKER.sub(lambda match: generated(match.group(1)), markdown)
