"""A real deployment on loopback: a TLS SuperLink with SuperNode authentication, one SuperNode per node.

Every process is started with this deployment's own ``FLWR_HOME`` and stopped by PID
(``flower_env.stop_all``), even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from flower_env import BIN, REPO, free_port, processes_of, stop_all

from common.data.synth import write_synthetic_tree

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
HOSPITALS = ("hospital-a", "hospital-b")
NODES = (*HOSPITALS, "evaluator", "rogue")


@dataclass
class Deployment:
    """Paths, ports and processes of one loopback deployment."""

    root: Path
    env: dict[str, str]
    port: int
    app: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return Path(self.env["FLWR_HOME"])

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        (self.root / "logs").mkdir(exist_ok=True)
        with (self.root / "logs" / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_superlink(self) -> None:
        """``flower-superlink`` with TLS and SuperNode authentication; waits until it listens."""
        self._spawn(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(self.pki / "ca.crt"),
                "--ssl-certfile",
                str(self.pki / "superlink.crt"),
                "--ssl-keyfile",
                str(self.pki / "superlink.key"),
                "--enable-supernode-auth",
                "--database",
                str(self.root / "superlink.db"),
                "--isolation",
                "subprocess",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
        )
        deadline = time.monotonic() + 60
        while "Uvicorn running on https://" not in self.log("superlink"):
            if self.procs["superlink"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the SuperLink did not start:\n" + self.log("superlink")[-3000:])
            time.sleep(0.5)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` against this deployment's ``FLWR_HOME``."""
        return subprocess.run(
            [str(BIN / "flwr"), *args], cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def register(self, node: str) -> None:
        """Enrol ``node``'s public key (``flwr supernode register``)."""
        proc = self.flwr(
            "supernode", "register", str(self.pki / "nodes" / node / "node.key.pub"), "deploy", "--name", node
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def node_config(self, node: str, **extra: str) -> str:
        role = "evaluator" if node == "evaluator" else "hospital"
        values = {
            "role": role,
            "data-path": str(self.root / "data" / node),
            "he-secret-context": str(self.root / "keys" / "secret.ctx"),
            "state-dir": str(self.root / "state" / node),
            **({"hospital-name": node} if role == "hospital" else {}),
            **extra,
        }
        return " ".join(f"{k}='{v}'" for k, v in values.items())

    def start_supernode(
        self, node: str, *, key: str | None = None, ca: bool = True, retries: int | None = None
    ) -> None:
        """``flower-supernode`` for ``node`` with its own key, the CA and its node config."""
        args = [
            str(BIN / "flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--auth-supernode-private-key",
            str(self.pki / "nodes" / (key or node) / "node.key"),
            "--port",
            str(free_port()),
            "--node-config",
            self.node_config(node),
        ]
        if ca:
            args += ["--root-certificates", str(self.pki / "ca.crt")]
        if retries is not None:
            args += ["--max-retries", str(retries), "--max-wait-time", "20"]
        self._spawn(node, args)

    def wait_connected(self, node: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "SuperNode ID:" not in self.log(node):
            if self.procs[node].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{node} did not connect:\n" + self.log(node)[-3000:])
            time.sleep(0.5)

    def restart(self, *nodes: str, timeout: float = 150) -> None:
        """Start ``nodes`` again at once (same key, same state-dir), retrying while the SuperLink holds an old session.

        Flower re-admits a node's key only after it has noticed the old session is gone
        (about 50 s after the kill); until then activation fails with code 2004.
        """
        deadline = time.monotonic() + timeout
        waiting = {node: len(self.log(node)) for node in nodes}
        for node in nodes:
            self.start_supernode(node)
        while waiting:
            for node, offset in list(waiting.items()):
                if "SuperNode ID:" in self.log(node)[offset:]:
                    del waiting[node]
                elif self.procs[node].poll() is not None:  # refused: the old session is still held
                    assert time.monotonic() < deadline, f"{node} was not re-admitted:\n" + self.log(node)[-3000:]
                    waiting[node] = len(self.log(node))
                    self.start_supernode(node)
            assert time.monotonic() < deadline, f"{sorted(waiting)} did not reconnect"
            time.sleep(1)

    def wait_busy(self, node: str, *, since: float, timeout: float = 120) -> None:
        """Wait until ``node``'s SuperNode runs a ClientApp process started after ``since`` (a time.time())."""
        deadline = time.monotonic() + timeout
        supernode = psutil.Process(self.procs[node].pid)
        while not any(c.create_time() > since for c in supernode.children(recursive=True)):
            assert time.monotonic() < deadline, f"{node} received no message within {timeout} s"
            time.sleep(0.2)

    def kill(self, node: str) -> None:
        """SIGKILL ``node``'s SuperNode and the ClientApp processes it started."""
        proc = self.procs.pop(node)
        children = [p for p in processes_of(self.home) if p.ppid() == proc.pid]
        proc.kill()
        proc.wait(timeout=10)
        for child in children:
            child.kill()

    def shut_down(self, node: str) -> None:
        """SIGTERM ``node``'s SuperNode, as its operator would stop it, and wait until it has left."""
        proc = self.procs.pop(node)
        proc.terminate()
        proc.wait(timeout=60)

    def start_run(self, name: str, config: str) -> subprocess.Popen[bytes]:
        """``flwr run . deploy --stream`` with ``config``, in the background; its output goes to ``log(name)``."""
        return self._spawn(
            name, [str(BIN / "flwr"), "run", str(self.app), "deploy", "--stream", "--run-config", config]
        )


@pytest.fixture(scope="module")
def materials(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the consortium hands out once: PKI, HE keys, and one small synthetic data folder per node."""
    root = tmp_path_factory.mktemp("materials")
    subprocess.run(
        ["bash", str(REPO / "docker" / "make-pki.sh"), str(root / "pki"), *NODES], check=True, capture_output=True
    )
    subprocess.run([str(BIN / "medsilo"), "keys", "init", "--out", str(root / "keys")], check=True, capture_output=True)
    (root / "server-keys").mkdir()
    (root / "server-keys" / "public.ctx").write_bytes((root / "keys" / "public.ctx").read_bytes())
    for seed, node in enumerate(HOSPITALS):
        write_synthetic_tree(
            root / "data" / node, modality="brain-mri", train_per_class=10, test_per_class=0, size=40, seed=seed
        )
    write_synthetic_tree(
        root / "data" / "evaluator", modality="brain-mri", train_per_class=1, test_per_class=6, size=40, seed=9
    )
    return root


@pytest.fixture(scope="module")
def deployment(materials: Path, flower_app: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A running TLS SuperLink with the nodes enrolled, shared by this module's tests; its state, logs and runs
    live in a folder of its own, and its processes are stopped by PID when the module ends."""
    root = tmp_path_factory.mktemp("deployment")
    for shared in ("pki", "keys", "server-keys", "data"):
        (root / shared).symlink_to(materials / shared, target_is_directory=True)
    home = root / "flwr-home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink.deploy]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{root / "pki" / "ca.crt"}"\n'
    )
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    dep = Deployment(root, env, port, flower_app)
    try:
        dep.start_superlink()
        for node in (*HOSPITALS, "evaluator"):
            dep.register(node)
        yield dep
    finally:
        stop_all(home)
        assert not processes_of(home), "processes outlived the test"
