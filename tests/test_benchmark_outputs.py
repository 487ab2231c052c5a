"""A benchmark's --quick run never overwrites the full results the README quotes; results name the code that ran."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import provenance  # noqa: E402
from provenance import result_path  # noqa: E402


def test_quick_results_go_to_their_own_file(tmp_path: Path) -> None:
    assert result_path("scale", quick=False) == BENCHMARKS / "results" / "scale.json"
    assert result_path("scale", quick=True) == BENCHMARKS / "results" / "scale-quick.json"
    assert result_path("scale", quick=True, out=tmp_path / "x.json") == tmp_path / "x.json"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if "--quick" in p.read_text()))
def test_every_benchmark_with_a_quick_mode_picks_a_quick_file(script: str) -> None:
    source = (BENCHMARKS / script).read_text()
    writes_results = re.search(r"results\" / \"\w+\.json\"", source)
    assert "quick=args.quick" in source or "-quick" in source, f"{script}: --quick may overwrite the full results"
    assert writes_results is None, f"{script}: writes a fixed results file ({writes_results.group(0)})"


def test_results_name_the_commit_the_process_started_at(monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that lands while a long benchmark runs is not credited with its results."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=BENCHMARKS).stdout.strip()
    assert provenance.provenance()["commit"].startswith(head)

    def a_later_commit(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, stdout="0000000\n" if "rev-parse" in args else "")

    monkeypatch.setattr(provenance.subprocess, "run", a_later_commit)
    assert provenance._commit() == "0000000"  # what asking git at write time would record
    assert provenance.provenance()["commit"].startswith(head)
