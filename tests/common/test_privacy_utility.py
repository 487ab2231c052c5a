"""The cross-run privacy–utility comparison, on run directories written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from common.privacy.utility import compare_runs, comparison_note, config_differences, plot

BASE = {"model": "cnn3", "learning-rate": 0.003, "dp-enabled": False, "dp-target-epsilon": 8.0, "run-name": "x"}


def _run(
    root: Path,
    name: str,
    *,
    accuracy: float,
    dp: bool,
    target: float = 8.0,
    eps: list[dict] | None = None,
    **config: object,
) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({**BASE, "dp-enabled": dp, "dp-target-epsilon": target, "run-name": name, **config})
    )
    report = {"accuracy": accuracy, "balanced_accuracy": accuracy - 0.01, "macro": {"f1": accuracy - 0.02}}
    (run / "report.json").write_text(json.dumps(report))
    rounds = [{"round": i + 1, "hospitals": h} for i, h in enumerate(eps or [])]
    (run / "history.json").write_text(json.dumps({"rounds": [{"round": 0, "hospitals": {}}, *rounds]}))
    return run


def test_rows_are_ordered_and_take_each_hospitals_latest_epsilon(tmp_path: Path) -> None:
    eps8 = [{"a": {"epsilon": 5.0}, "b": {"epsilon": 5.5}}, {"a": {"epsilon": 7.9}, "b": {"declined": "budget"}}]
    eps1 = [{"a": {"epsilon": 0.6}}, {"a": {"epsilon": 0.98}, "b": {"epsilon": 0.97}}]
    runs = [
        _run(tmp_path, "eps1", accuracy=0.5, dp=True, target=1.0, eps=eps1),
        _run(tmp_path, "nodp", accuracy=0.8, dp=False),
        _run(tmp_path, "eps8", accuracy=0.7, dp=True, target=8.0, eps=eps8),
    ]
    rows = compare_runs(runs)
    assert [r["run"] for r in rows] == ["nodp", "eps8", "eps1"]
    assert [r["epsilon_spent"] for r in rows] == [None, 7.9, 0.98]
    assert rows[1]["macro_f1"] == pytest.approx(0.68)
    assert "share every setting except the DP keys" in comparison_note(rows)


def test_other_differences_are_flagged(tmp_path: Path) -> None:
    rows = compare_runs(
        [
            _run(tmp_path, "a", accuracy=0.8, dp=False),
            _run(tmp_path, "b", accuracy=0.6, dp=True, eps=[{"h": {"epsilon": 1.0}}], **{"learning-rate": 0.1}),
        ]
    )
    assert config_differences(rows) == ["learning-rate"]
    assert comparison_note(rows) == "Not a like-for-like comparison: the runs also differ in learning-rate."


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = compare_runs(
        [
            _run(tmp_path, "a", accuracy=0.8, dp=False),
            _run(tmp_path, "b", accuracy=0.6, dp=True, eps=[{"h": {"epsilon": 1.0}}]),
            _run(tmp_path, "c", accuracy=0.7, dp=True, target=8.0, eps=[{"h": {"epsilon": 8.0}}]),
        ]
    )
    path = plot(rows, tmp_path / "pu.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_bad_inputs_give_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path, "a", accuracy=0.8, dp=False)
    with pytest.raises(ValueError, match="at least 2 run directories"):
        compare_runs([run])
    with pytest.raises(ValueError, match="missing has no config.json"):
        compare_runs([run, tmp_path / "missing"])
    broken = _run(tmp_path, "broken", accuracy=0.5, dp=False)
    (broken / "history.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        compare_runs([run, broken])
