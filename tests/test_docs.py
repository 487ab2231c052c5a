"""The docs site builds strictly and offline, and its run-config reference is complete and true."""

from __future__ import annotations

import html
import re
import tomllib
from pathlib import Path

import pytest

from common import config_reference
from common.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_and_loads_nothing_from_the_network(site: Path) -> None:
    pages = list(site.rglob("*.html"))
    assert (site / "index.html").is_file() and (site / "reference" / "run-config" / "index.html").is_file()
    for page in pages:
        text = page.read_text()
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not remote, f"{page.relative_to(site)} loads {remote}"
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text
    assert (site / "search" / "search_index.json").is_file()  # the search index ships with the site


def test_the_reference_lists_every_key_with_its_real_default(site: Path) -> None:
    page = html.unescape((site / "reference" / "run-config" / "index.html").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    listed = re.findall(r"<tr>\s*<td><code>([a-z0-9-]+)</code></td>\s*<td>[^<]*</td>\s*<td><code>([^<]*)</code>", page)
    assert {key for key, _ in listed} == set(pyproject)  # every key, and no key that does not exist
    for key, default in listed:
        expected = pyproject[key]
        shown = "''" if expected == "" else str(expected).lower() if isinstance(expected, bool) else str(expected)
        assert default == shown, f"{key}: the reference says {default!r}, pyproject.toml {expected!r}"


def test_a_key_without_a_line_in_the_reference_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    meanings = dict(config_reference.MEANINGS)
    del meanings["precision"]
    monkeypatch.setattr(config_reference, "MEANINGS", meanings)
    with pytest.raises(KeyError, match="precision"):
        config_reference.reference_table()
    monkeypatch.undo()
    aliases = {field.alias or name for name, field in RunConfig.model_fields.items()}
    assert set(config_reference.MEANINGS) == aliases  # no line for a key that does not exist
