"""Fixtures that run real Flower processes and always stop them by PID."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from common.data.synth import write_synthetic_tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEFAULT_LOCAL_SUPERLINK_PORT = 39091
"""Where ``flwr run`` starts its local SuperLink unless told otherwise (``make run`` leaves one there)."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def processes_of(flwr_home: Path) -> list[psutil.Process]:
    """Every live process started with ``FLWR_HOME`` = ``flwr_home`` (they inherit it)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("FLWR_HOME") == str(flwr_home) and proc.pid != os.getpid():
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_all(flwr_home: Path) -> None:
    """Terminate, then kill, every process of this ``FLWR_HOME``, by PID."""
    procs = processes_of(flwr_home)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def build_app(out: Path) -> Path:
    """A copy of the app without the folders ``.gitignore`` keeps out of its bundle anyway.

    ``flwr run DIR`` walks every file under DIR before it packs DIR's app (applying
    ``.gitignore`` only then): from the repository that walk includes ``.venv/`` and ``runs/``,
    about 10 s a run here, and ``flwr build`` costs the same. Runs from this copy (it keeps
    ``.gitignore``, so Flower packs the same files) skip that walk.
    """
    app = out / "app"
    heavy = shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"
    )
    shutil.copytree(REPO, app, ignore=heavy)
    return app


@pytest.fixture(scope="session")
def flower_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app every test's ``flwr run`` ships, packed once per session."""
    return build_app(tmp_path_factory.mktemp("fab"))


@dataclass(frozen=True)
class Flower:
    """A temporary ``FLWR_HOME``, the local SuperLink's own ports, and the environment every Flower command needs."""

    home: Path
    env: dict[str, str]
    superlink_port: int
    app: Path

    def run(self, *args: str, cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` to completion and return its output."""
        return subprocess.run(
            [str(BIN / "flwr"), *args], cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def simulate(self, config: str, *, supernodes: int, cwd: Path) -> subprocess.CompletedProcess[str]:
        """``flwr run . --stream`` on ``supernodes`` simulated SuperNodes; fails the test unless it succeeds."""
        proc = self.run(
            "run",
            str(self.app),
            "--stream",
            "--federation-config",
            f"num-supernodes={supernodes}",
            "--run-config",
            config,
            cwd=cwd,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return proc


@contextmanager
def flower_environment(root: Path, app: Path) -> Iterator[Flower]:
    """A Flower environment in ``root``; every process it starts is stopped on exit, by PID.

    Its local SuperLink listens on free ports of its own (Flower reads them from
    ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` and ``FLWR_LOCAL_CONTROL_API_PORT``), so a SuperLink
    that ``make run`` left on the default port neither blocks the tests nor receives their runs.
    """
    home = root / "flwr-home"
    superlink_port = free_port()
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_DEDUP_LOGS": "0",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(superlink_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
    }
    try:
        yield Flower(home, env, superlink_port, app)
    finally:
        stop_all(home)
        assert not processes_of(home), "processes outlived the test"


@pytest.fixture(scope="session")
def flower(tmp_path_factory: pytest.TempPathFactory, flower_app: Path) -> Iterator[Flower]:
    """One Flower environment for the session's simulations.

    Its local SuperLink starts with the first ``flwr run`` and takes the later runs, as it does for a
    user who runs several; every process of the environment is stopped at the end of the session, by PID.
    """
    with flower_environment(tmp_path_factory.mktemp("flower"), flower_app) as env:
        yield env


@contextmanager
def default_port_held() -> Iterator[None]:
    """Keep the default local SuperLink port busy, as the SuperLink ``make run`` leaves behind does."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", DEFAULT_LOCAL_SUPERLINK_PORT))
            sock.listen()
        except OSError:
            pass  # already taken: by a SuperLink of `make run`, which is what this stands in for
        yield


@dataclass(frozen=True)
class SimulatedRun:
    """A finished plaintext simulation: its data root, run directory and ``flwr run`` output.

    It ran while the default local SuperLink port was busy, as after ``make run``.
    """

    data_root: Path
    run_dir: Path
    output: str
    superlink_port: int


SIMULATION = (
    "model='cnn3' image-size=32 local-steps=2 batch-size=16 optimizer='sgd' learning-rate=0.003 min-train-nodes=3 "
    "min-evaluate-nodes=3 seed=11 optimizer-state='keep' loss='logit-adjusted' lr-schedule='constant' "
    "lr-warmup-rounds=1 precision='fp32' strategy='fedavg'"
)
"""The shared run's config, less data-root, output-dir, run-name and num-server-rounds (3).

float32: the encrypted, resumed run is compared with it to 1e-5, and bf16 autocast would carry
CKKS's 1e-9 rounding past that over three rounds (2e-5 measured on an AMX CPU). FedAvg: the
default ``auto`` is FedAvgM in plaintext but FedAvg under HE, and the two runs must be the same.

The accuracy benchmark's best configuration (FedAvg, kept optimiser state, logit adjustment,
short rounds of 2 batches), with SGD + momentum at a small learning rate for Adam. Training
amplifies the difference between an encrypted and a plaintext aggregate (CKKS rounding, about
1e-9): with Adam (it divides each step by the root of its second moment, so a weight whose
gradient is near zero moves by up to the learning rate on any difference) the weights differed
by 2.5e-4, and with SGD at lr 0.01 and 3 batches a round by 3.6e-7 in one run and 5.4e-5 in
another (measured); the HE test compares weights to 1e-5. The resume test checks that
``resume-from`` continues the kept momentum exactly (the warm-up does not depend on
``num-server-rounds``). A server step's own state across a resume: tests/server/test_server_steps.py.
"""


@pytest.fixture(scope="session")
def simulated_run(tmp_path_factory: pytest.TempPathFactory, flower: Flower) -> SimulatedRun:
    """One 3-round plaintext simulation on 3 hospitals, shared by the tests that only read what it wrote.

    With ``local-baseline``: each hospital's local-only model is checked in ``test_simulation.py``.
    """
    root = tmp_path_factory.mktemp("simulated")
    data_root = write_synthetic_tree(
        root / "data" / "synthetic-mri", modality="brain-mri", train_per_class=24, test_per_class=8, size=40, seed=3
    )
    out = root / "runs"
    with default_port_held():
        proc = flower.simulate(
            f"{SIMULATION} num-server-rounds=3 data-root='{data_root}' output-dir='{out}' run-name='whole' "
            "local-baseline=true",
            supernodes=3,
            cwd=root,
        )
    return SimulatedRun(data_root, out / "whole", proc.stdout + proc.stderr, flower.superlink_port)


def native_bf16_or_fp32() -> str:
    """What ``precision = "auto"`` must pick on this CPU, read from /proc/cpuinfo's flags."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return "bf16" if "avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags else "fp32"
