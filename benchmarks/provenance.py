"""Where and when a benchmark ran: the CPU model, its core count, the date and the commit."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["provenance"]


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


def provenance() -> dict[str, Any]:
    """``machine`` (CPU model), ``cpus``, ``date`` (UTC, ISO 8601) and ``commit`` of this run."""
    return {
        "machine": _cpu_model(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _commit(),
    }
