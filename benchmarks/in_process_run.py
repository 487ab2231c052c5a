"""One medsilo federation in this process: its ServerApp ``main`` against its ClientApp over an ``InProcessGrid``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from in_process_grid import InProcessGrid

from client.app import app as client_app
from common.run_outcome import read_outcome
from server.app import main as server_main

__all__ = ["run_federation"]


def run_federation(
    node_configs: list[Mapping[str, Any]], run_config: dict[str, Any], *, out_dir: Path, label: str
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """Run to its end under ``out_dir``: the run's outcome, its ``history.json`` and the seconds it took.

    Raises:
        SystemExit: the run never started (its one line, prefixed with ``label``).
    """
    run_config = {**run_config, "output-dir": str(out_dir)}
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what a ServerApp process has
    grid = InProcessGrid(client_app, node_configs, run_config)
    start = time.perf_counter()
    server_main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    seconds = time.perf_counter() - start
    outcome = read_outcome(out_dir, 1)
    if outcome is None or not outcome.get("run_dir"):
        raise SystemExit(f"{label}: the run did not start: {outcome['line'] if outcome else 'no outcome recorded'}")
    return outcome, json.loads((Path(outcome["run_dir"]) / "history.json").read_text()), seconds
