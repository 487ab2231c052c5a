"""Reading a generated ``report.html`` back: every keyed number, attribute, figure and section."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

__all__ = ["ReportPage", "flatten", "read_page"]


class ReportPage(HTMLParser):
    """Every attribute, the keyed values with their text, each figure's alt text and section ids."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []
        self.keyed: dict[str, tuple[str, str]] = {}
        self.alts: dict[str, str] = {}
        self.sections: list[str] = []
        self.tags: set[str] = set()
        self._key: tuple[str, str] | None = None
        self._figure = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        self.attrs += [(tag, k, v) for k, v in values.items()]
        if "data-key" in values:
            self._key = (values["data-key"], values["data-value"])
            self.keyed[values["data-key"]] = (values["data-value"], "")
        if tag == "figure":
            self._figure = values.get("id", "")
        if tag == "img":
            self.alts[self._figure] = values.get("alt", "")
        if tag == "section":
            self.sections.append(values.get("id", ""))

    def handle_data(self, data: str) -> None:
        if self._key is not None:
            key, value = self._key
            self.keyed[key] = (value, self.keyed[key][1] + data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "span"):
            self._key = None


def read_page(run: Path) -> ReportPage:
    """Parse ``run/report.html``."""
    page = ReportPage()
    page.feed((run / "report.html").read_text())
    return page


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested JSON as ``a.b.0.c`` keys, the form of the HTML's ``data-key`` attributes."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}
