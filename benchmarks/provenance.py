"""Where and when a benchmark ran: the CPU model, its core count, the date and the commit."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["provenance", "result_path"]


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    return out.stdout.strip() + ("+uncommitted changes" if dirty else "")


# The code a benchmark process runs is what was checked out when it started. A long benchmark
# outlives commits (its own earlier pieces among them), which must not be credited with its results.
STARTED_AT_COMMIT = _commit()


def provenance() -> dict[str, Any]:
    """``machine`` (CPU model), ``cpus``, ``date`` (UTC, ISO 8601) and the ``commit`` this process started at."""
    return {
        "machine": _cpu_model(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": STARTED_AT_COMMIT,
    }


def result_path(name: str, *, quick: bool, out: Path | None = None) -> Path:
    """Where a benchmark writes: ``out`` if given, else ``results/<name>.json``, or ``<name>-quick.json`` for a
    ``--quick`` run, which never overwrites the full results."""
    if out is not None:
        return out
    return Path(__file__).parent / "results" / f"{name}{'-quick' if quick else ''}.json"
