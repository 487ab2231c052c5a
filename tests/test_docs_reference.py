"""The node-config and CLI reference pages are generated from the code, complete and true."""

from __future__ import annotations

import html
import re
from pathlib import Path

import click
import pytest

from common import node_config_reference
from common.cli import app
from common.cli_reference import commands
from common.he.keys import HEParams
from common.node_config import NodeConfig

ROOT = Path(__file__).resolve().parents[1]


def _page(site: Path, name: str) -> str:
    return html.unescape((site / "reference" / name / "index.html").read_text())


def _text(cell: str) -> str:
    return re.sub(r"<[^>]+>", "", cell).strip()


def test_the_node_config_page_lists_every_key_with_its_real_default(site: Path) -> None:
    row = r"<tr>\s*<td><code>([a-z-]+)</code></td>\s*<td>[^<]*</td>\s*<td>(.*?)</td>"
    rows = re.findall(row, _page(site, "node-config"))
    listed = {key: _text(default) for key, default in rows}
    fields = {field.alias or name: field.default for name, field in NodeConfig.model_fields.items()}
    assert set(listed) == set(fields)  # every key, and no key that does not exist
    for key, default in fields.items():
        expected = "unset" if default is None else "''" if default == "" else str(default)
        assert listed[key] == expected, f"{key}: the page says {listed[key]!r}, NodeConfig {default!r}"


def test_a_node_config_key_without_a_line_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    meanings = dict(node_config_reference.MEANINGS)
    del meanings["state-dir"]
    monkeypatch.setattr(node_config_reference, "MEANINGS", meanings)
    with pytest.raises(KeyError, match="state-dir"):
        node_config_reference.reference_table()
    monkeypatch.undo()
    aliases = {field.alias or name for name, field in NodeConfig.model_fields.items()}
    assert set(node_config_reference.MEANINGS) == aliases  # no line for a key that does not exist


def _sections(page: str) -> dict[str, str]:
    """Each command's section of the CLI page, by the command's full name in its heading."""
    parts = re.split(r"<h[23] id=\"[^\"]*\"><code>([^<]+)</code>", page)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_cli_page_documents_every_command_and_option_with_its_default(site: Path) -> None:
    sections = _sections(_page(site, "cli"))
    named = [name for name, _ in commands(app) if name != "medsilo"]
    assert list(sections) == named  # every command and group, in the app's order, and nothing else
    for name, command in commands(app):
        if name == "medsilo" or isinstance(command, click.Group):
            continue
        section = sections[name]
        assert " ".join((command.help or "").split()[:4]) in section, f"{name}: its help text is missing"
        rows = [re.findall(r"<td>(.*?)</td>", row, re.S) for row in re.findall(r"<tr>(.*?)</tr>", section, re.S)]
        shown = {_text(cells[0]): [_text(c) for c in cells] for cells in rows if cells}  # name, type, default, help
        for param in command.params:
            label = " / ".join([*param.opts, *param.secondary_opts]) if isinstance(param, click.Option) else None
            label = label or param.human_readable_name
            assert label in shown, f"{name}: {label} is missing"
            default = param.default
            if not param.required and default is not None and not isinstance(default, bool):
                expected = "''" if default == "" else str(default)
                assert shown[label][2] == expected, f"{name} {label}: the page says {shown[label][2]!r}"


def test_the_he_codec_page_states_the_real_default_parameters() -> None:
    text = (ROOT / "docs" / "explanation" / "he-codec.md").read_text()
    params = HEParams()
    assert f"N = {params.poly_modulus_degree}" in text
    assert f"[{', '.join(map(str, params.coeff_mod_bit_sizes))}] bits" in text
    assert f"scale of 2^{params.scale_bits}" in text
