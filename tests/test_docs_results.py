"""The Results page: every table generated from its benchmark's JSON, with the JSON's provenance; no typed figure."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS = ("train_throughput", "he_overhead", "fl_overhead", "scale", "accuracy", "dp_utility")


@pytest.fixture(scope="module")
def sections(site: Path) -> dict[str, str]:
    """The built Results page, split at each generated section's opening (``From benchmarks/results/<name>.json:``)."""
    page = html.unescape((site / "results" / "index.html").read_text())
    parts = re.split(r"<code>benchmarks/results/([\w-]+)\.json</code>: ", page)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _json(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _short(commit: str) -> str:
    return commit.split("+")[0][:7]


def _headline(name: str, data: Any) -> list[str]:
    """Table cells the page must hold, formatted here from the JSON."""
    if name == "train_throughput":
        return [f"<td>{data['speedup']:.2f}</td>", f"<td>{data['fp32_img_s']:.1f}</td>"]
    if name == "he_overhead":
        return [f"<td>{data['bytes_per_param_up']:.2f}</td>", f"<td>{data['round_time_ratio_full']:.2f}</td>"]
    if name == "fl_overhead":
        return [f"<td>{data['wall_ratio']:.2f}</td>", f"<td>{data['federated']['wall_s']:.1f}</td>"]
    if name == "scale":
        return [f"<td>{run['s_per_hospital_round']:.4f}</td>" for run in data["runs"]]
    if name == "dp_utility":
        runs = [row for key, rows in data.items() if key in ("brain-mri", "chest-xray") for row in rows.values()]
        assert runs, "dp_utility.json holds no run"
        return [f"<td>{row['last2_mean']:.4f}</td>" for row in runs]
    raise AssertionError(name)


@pytest.mark.parametrize("name", [n for n in BENCHMARKS if n != "accuracy"])
def test_each_table_carries_its_json_figures_and_provenance(sections: dict[str, str], name: str) -> None:
    data = _json(name)
    section = sections[name]
    for cell in _headline(name, data):
        assert cell in section, f"{name}: {cell} not on the page"
    opening = section.split("</p>", 1)[0]
    recorded = {"machine": data.get("machine"), "date": (data.get("date") or "")[:10] or None,
                "commit": _short(data["commit"]) if data.get("commit") else None}  # fmt: skip
    for key, shown in recorded.items():
        if shown is None:  # not in the JSON: the page says so instead of guessing
            assert re.search(rf"does not record its [a-z, ]*\b{key}\b", opening), f"{name}: {opening}"
        else:
            assert shown in opening, f"{name}: {key} {shown!r} not in {opening!r}"


def test_every_accuracy_row_names_its_own_machine_date_and_commit(sections: dict[str, str]) -> None:
    for name in ("accuracy", "accuracy-validation"):
        for dataset, settings in _json(name).items():
            assert f"<code>{dataset}</code>" in sections[name]
            table = sections[name].split(f"<code>{dataset}</code>", 1)[1].split("</table>", 1)[0]  # this dataset's
            rows = re.findall(r"<tr>.*?</tr>", table, flags=re.S)
            for setting, result in settings.items():
                row = next((r for r in rows if f"<td><code>{setting}</code></td>" in r), "")
                for cell in (f"{result['last2_mean']:.4f}", result["machine"], result["date"][:10],
                             _short(result["commit"])):  # fmt: skip
                    assert f"<td>{cell}</td>" in row, f"{name} {dataset} {setting}: {cell} not in its row"
                if "last2_mean_clean" in result:
                    assert f"<td>{result['last2_mean_clean']:.4f}</td>" in row


def test_the_page_has_every_benchmark_marker_and_no_hand_typed_figure() -> None:
    source = (ROOT / "docs" / "results.md").read_text()
    for name in BENCHMARKS:
        assert f"<!-- generated: results/{name} -->" in source
    prose = re.sub(r"<!--.*?-->", "", source, flags=re.S)
    typed = re.findall(r"\d+\.\d+|\d+ ?%|\d+ ?(?:s|ms|min|minutes|hours|GiB|MiB|px|pt|points|img/s)\b", prose)
    assert not typed, f"docs/results.md types figures by hand: {typed}"


def test_a_missing_json_fails_the_build_naming_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    import results_hook

    with pytest.raises(PluginError, match=r"benchmarks/results/no-such-benchmark\.json does not exist"):
        results_hook.on_page_markdown("<!-- generated: results/no-such-benchmark -->")


def test_missing_keys_and_rows_show_as_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    import results_tables

    for name in results_tables.BUILDERS:
        for data in ({}, [], {"runs": [{}], "results": {"x": {}}, "models": {"m": {}}}, {"d": {"centralised": {}}}):
            assert "—" in results_tables.section(name, data), name


def test_operating_point_columns_appear_only_where_a_row_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "docs"))
    import results_tables

    plain = {"chest-xray": {"centralised": {"last2_mean": 0.9, "specificity": 0.7}}}
    assert "threshold picked" not in results_tables.section("accuracy", plain)
    point = {"accuracy": 0.9123, "sensitivity": 0.9612, "specificity": 0.7734}
    scored = {"chest-xray": {"centralised": {"last2_mean": 0.9, "operating_point": point},
                             "best-dirichlet": {"last2_mean": 0.89}}}  # fmt: skip
    page = results_tables.section("accuracy", scored)
    assert "threshold picked" in page
    assert all(f"{value:.4f}" in page for value in point.values())
