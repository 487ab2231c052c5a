"""A ``flwr run`` under a Flower home and SuperLink ports of its own, for the benchmarks.

The local SuperLink that ``flwr run .`` starts outlives the command, so every process of the
home is found by its ``FLWR_HOME`` and stopped by PID afterwards, with the integration tests'
own helpers (``tests/integration/flower_env.py``). A sampler sums the RSS of
those processes (SuperLink, simulation, Ray and its actors).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from flower_env import BIN, free_port, processes_of, stop_all  # noqa: E402  (the tests' own process handling)


class PeakRss(threading.Thread):
    """The largest sum of RSS over the Flower home's processes, sampled every 0.1 s."""

    def __init__(self, home: Path) -> None:
        super().__init__(daemon=True)
        self.home, self.peak, self.done = home, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            for proc in processes_of(self.home):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.1)


@dataclass(frozen=True)
class FlowerRun:
    """What one ``flwr run`` took: wall-clock seconds, its output, and peak RSS (bytes, 0 if not sampled)."""

    wall_s: float
    output: str
    peak_rss: int
    timed_out: bool


def flwr_run(
    home: Path, *, federation: str, config: str, cwd: Path, timeout: float, sample_rss: bool = False
) -> FlowerRun:
    """``flwr run ROOT --stream`` with ``federation`` and ``config`` under Flower home ``home``, then stop it."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    sampler = PeakRss(home)
    if sample_rss:
        sampler.start()
    command = [str(BIN / "flwr"), "run", str(ROOT), "--stream"]
    command += ["--federation-config", federation, "--run-config", config]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        output, timed_out = proc.stdout + proc.stderr, False
    except subprocess.TimeoutExpired:
        output, timed_out = "timed out", True
    wall = time.perf_counter() - start
    if sample_rss:
        sampler.done.set()
        sampler.join()
    stop_all(home)
    return FlowerRun(wall_s=wall, output=output, peak_rss=sampler.peak, timed_out=timed_out)
