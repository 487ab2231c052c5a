"""``medsilo outcome`` and the outcome record: exit 0 only for a completed run."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from common.cli import app
from common.run_outcome import read_outcome, run_id_in_log, write_outcome


def _outcome(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["outcome", *args])


def test_the_record_round_trips_and_the_log_names_the_run(tmp_path: Path) -> None:
    line = "run stopped: 0 valid hospital update(s)"
    write_outcome(tmp_path, 7, status="stopped", line=line, run_dir=tmp_path / "r")
    assert read_outcome(tmp_path, 7) == {"run_id": 7, "status": "stopped", "line": line, "run_dir": str(tmp_path / "r")}
    assert read_outcome(tmp_path, 8) is None
    assert run_id_in_log("Loading project\nSuccessfully started run 123456789\nINFO : ...") == 123456789
    assert run_id_in_log("❌ Invalid run configuration") is None


def test_only_a_completed_run_exits_0(tmp_path: Path) -> None:
    write_outcome(tmp_path, 1, status="completed", line="central accuracy 0.7250 after 45.0 s; report: r.html")
    write_outcome(tmp_path, 2, status="failed", line="run config: 'model' = 'resnet99' is invalid; expected one of")
    write_outcome(tmp_path, 3, status="stopped", line="run stopped: too few hospitals")
    done = _outcome("--run-id", "1", "--output-dir", str(tmp_path))
    assert done.exit_code == 0 and "run 1 completed: central accuracy 0.7250" in done.output
    failed = _outcome("--run-id", "2", "--output-dir", str(tmp_path))
    assert failed.exit_code == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: run 2 failed: run config: 'model' = 'resnet99' is invalid; expected one of"
    )
    stopped = _outcome("--run-id", "3", "--output-dir", str(tmp_path))
    assert stopped.exit_code == 1 and "run 3 stopped: run stopped: too few hospitals" in stopped.stderr


def test_a_run_without_a_record_or_a_log_without_a_run_fails(tmp_path: Path) -> None:
    missing = _outcome("--run-id", "9", "--output-dir", str(tmp_path))
    assert missing.exit_code == 1 and "run 9 left no outcome" in missing.stderr and "flwr log 9" in missing.stderr
    log = tmp_path / "flwr.log"
    log.write_text("Loading project configuration...\n❌ Invalid run configuration: unknown key 'modle'\n")
    refused = _outcome("--log", str(log), "--output-dir", str(tmp_path))
    assert refused.exit_code == 1 and "Invalid run configuration: unknown key 'modle'" in refused.stderr
    neither = _outcome("--output-dir", str(tmp_path))
    assert neither.exit_code == 2 and "--run-id or --log is required" in neither.stderr
