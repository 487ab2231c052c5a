"""Real ``flwr run``s exit 0 whatever happened; the outcome record tells a completed run from a failed one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flower_env import Flower, SimulatedRun


def _outcome(log_text: str, output_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "flwr-run.log"
    log.write_text(log_text)
    return subprocess.run(
        [sys.executable, "-m", "common.cli", "outcome", "--log", str(log), "--output-dir", str(output_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_completed_run_records_it_and_exits_0(simulated_run: SimulatedRun, tmp_path: Path) -> None:
    output_dir = simulated_run.run_dir.parent
    checked = _outcome(simulated_run.output, output_dir, tmp_path)
    assert checked.returncode == 0, checked.stderr
    record = next((output_dir / ".outcomes").glob("*.json"))
    assert json.loads(record.read_text())["run_dir"] == str(simulated_run.run_dir)
    assert "completed: central accuracy" in checked.stdout


def test_a_run_refused_for_its_config_exits_1_with_its_error_line_last(flower: Flower, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = flower.run(
        "run", str(flower.app), "--stream", "--federation-config", "num-supernodes=2",
        "--run-config", f"model='resnet99' num-server-rounds=1 output-dir='{out}'", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0  # Flower's own exit code says nothing about the run
    checked = _outcome(proc.stdout + proc.stderr, out, tmp_path)
    assert checked.returncode == 1
    last = checked.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run ") and " failed: run config: 'model' = 'resnet99' is invalid; expected" in last
