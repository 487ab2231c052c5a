"""How a run ended, as a record a script can read: ``flwr run --stream`` exits 0 whatever happened.

The ServerApp writes ``<output-dir>/.outcomes/<run id>.json`` when it ends: ``completed``,
``stopped`` (too few hospitals; resumable) or ``failed`` (a bad configuration, refused keys, an
exception), with the one line that says why. ``medsilo outcome`` reads it back for a run id, or
for the run a saved ``flwr run`` log started, and exits 0 only for ``completed``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

__all__ = ["OUTCOMES_DIR", "Outcome", "read_outcome", "run_id_in_log", "write_outcome"]

OUTCOMES_DIR = ".outcomes"
Outcome = Literal["completed", "stopped", "failed"]
_STARTED = re.compile(r"Successfully started run (\d+)")


def _path(output_dir: Path, run_id: int) -> Path:
    return output_dir / OUTCOMES_DIR / f"{run_id}.json"


def write_outcome(output_dir: Path, run_id: int, *, status: Outcome, line: str, run_dir: Path | None = None) -> Path:
    """Record how run ``run_id`` ended (written atomically)."""
    path = _path(output_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "status": status, "line": line, "run_dir": str(run_dir or "")}))
    tmp.replace(path)
    return path


def read_outcome(output_dir: Path, run_id: int) -> dict[str, str] | None:
    """The record of run ``run_id``, or ``None`` when the ServerApp never wrote one (it did not start, or crashed)."""
    path = _path(output_dir, run_id)
    return json.loads(path.read_text()) if path.is_file() else None


def run_id_in_log(text: str) -> int | None:
    """The run id a ``flwr run`` output names ("Successfully started run N"), or ``None``."""
    found = _STARTED.findall(text)
    return int(found[-1]) if found else None
