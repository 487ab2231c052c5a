"""MkDocs hook: pages that say ``<!-- generated: run-config -->`` get the reference generated from ``RunConfig``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config_reference import reference_table  # noqa: E402

MARKER = "<!-- generated: run-config -->"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Replace the marker with the run-config table."""
    return markdown.replace(MARKER, reference_table()) if MARKER in markdown else markdown
