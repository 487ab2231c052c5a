"""MkDocs hook: the node-config and CLI reference pages, generated from ``NodeConfig`` and the typer app."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import app  # noqa: E402
from common.cli_reference import cli_reference  # noqa: E402
from common.node_config_reference import reference_table  # noqa: E402

GENERATED = {
    "<!-- generated: node-config -->": reference_table,
    "<!-- generated: cli -->": lambda: cli_reference(app),
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace each marker with its generated reference."""
    for marker, generate in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
