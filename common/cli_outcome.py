"""``medsilo outcome``: exit 0 only when a run completed (``flwr run --stream`` exits 0 whatever happened)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.run_outcome import OUTCOMES_DIR, read_outcome, run_id_in_log

__all__ = ["outcome"]


def _last_error(text: str) -> str:
    """The last line of a ``flwr run`` output that reports an error, or a note that there is none."""
    for line in reversed(text.strip().splitlines()):
        if any(word in line.lower() for word in ("error", "invalid", "failed", "❌")):
            return line.strip()
    return "flwr run started no run (its output names no run id)"


def outcome(
    run_id: Annotated[int | None, typer.Option(help="the run's id, as `flwr run` printed it")] = None,
    log: Annotated[Path | None, typer.Option(help="a saved `flwr run` output: the run it started")] = None,
    output_dir: Annotated[Path, typer.Option(help="the run's output-dir")] = Path("runs"),
) -> None:
    """Exit 0 if the run completed; else print how it ended (its own error line) and exit 1."""
    err = Console(stderr=True, soft_wrap=True, highlight=False)
    if run_id is None and log is None:
        err.print("[red]error:[/red] --run-id or --log is required; expected the run to look up")
        raise typer.Exit(code=2)
    if run_id is None:
        text = log.read_text(errors="replace") if log is not None and log.is_file() else ""
        run_id = run_id_in_log(text)
        if run_id is None:
            err.print(f"[red]error:[/red] {_last_error(text)}")
            raise typer.Exit(code=1)
    record = read_outcome(output_dir, run_id)
    if record is None:
        err.print(
            f"[red]error:[/red] run {run_id} left no outcome under {output_dir / OUTCOMES_DIR}: its ServerApp did "
            f"not finish (see `flwr log {run_id}`)"
        )
        raise typer.Exit(code=1)
    if record["status"] != "completed":
        err.print(f"[red]error:[/red] run {run_id} {record['status']}: {record['line']}")
        raise typer.Exit(code=1)
    Console(soft_wrap=True, highlight=False).print(f"run {run_id} completed: {record['line']}")
