"""A consortium on loopback, set up by running the deployment guide's steps as written.

The ```bash blocks of ``docs/how-to/deploy.md`` ("Deploy across hospitals") are extracted and
run in order in a fresh copy of the checkout; only the values of its step 0 variables are the
tests' own (a free port, folders under a temporary directory, a tiny model). The
``flower-superlink`` and ``flower-supernode`` lines run in the background, as the terminals or
services the guide gives them. Every process is started with the consortium's own ``FLWR_HOME``
and stopped by PID (``flower_env.stop_all``), even when a test fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from flower_env import BIN, REPO, build_app, free_port, processes_of, stop_all

from common.data.synth import write_synthetic_tree

FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
HOSPITALS = ("hospital-a", "hospital-b")
NODES = (*HOSPITALS, "evaluator")
GUIDE = REPO / "docs" / "how-to" / "deploy.md"
SECTION = "# Deploy across hospitals"
LONG_RUNNING = ("flower-superlink", "flower-supernode")
READY = {"flower-superlink": "Uvicorn running on https://", "flower-supernode": "SuperNode ID:"}
TINY = "model='cnn3' image-size=32 local-epochs=1 fraction-evaluate=0.0"


def readme_blocks() -> list[str]:
    """The ```bash blocks of the deployment guide, in order."""
    section = GUIDE.read_text().split(SECTION, 1)[1]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def chunks(block: str) -> list[tuple[bool, str]]:
    """The block as (long-running?, shell text): continuation lines joined, servers split out."""
    found: list[tuple[bool, str]] = []
    lines: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith(LONG_RUNNING):
            if lines:
                found.append((False, "\n".join(lines)))
                lines = []
            found.append((True, line.strip()))
        else:
            lines.append(line)
    if any(line.strip() for line in lines):
        found.append((False, "\n".join(lines)))
    return found


@dataclass
class Consortium:
    """The checkout the README's steps ran in, their environment, its hospitals, and the servers they started."""

    checkout: Path
    env: dict[str, str]
    logs: Path
    hospitals: tuple[str, ...] = HOSPITALS
    commands: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return Path(self.env["FLWR_HOME"])

    def sh(self, text: str, timeout: float = 300, check: bool = True, **env: str) -> str:
        """Run shell text in the checkout (``bash -euo pipefail``); with ``check``, it must succeed."""
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=self.checkout,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert not check or proc.returncode == 0, f"step failed:\n{text}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def start(self, name: str, text: str, **env: str) -> subprocess.Popen[bytes]:
        """Run shell text in the background (``exec``: the process is the command); output to ``log(name)``."""
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {text}"],
                cwd=self.checkout,
                env={**self.env, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def serve(self, name: str, command: str, timeout: float = 90) -> None:
        """Start a SuperLink or SuperNode command line and wait until it is up."""
        self.commands[name] = command
        offset = len(self.log(name))
        proc = self.start(name, command)
        ready = READY[command.split()[0]]
        deadline = time.monotonic() + timeout
        while ready not in self.log(name)[offset:]:
            assert proc.poll() is None and time.monotonic() < deadline, f"{command}\n{self.log(name)[-3000:]}"
            time.sleep(0.5)

    def restart(self, *nodes: str, timeout: float = 150) -> None:
        """Start ``nodes`` again at once with their README command lines (same key, same state-dir).

        Flower re-admits a node's key only after it has noticed the old session is gone
        (about 50 s after a kill); until then activation fails with code 2004, and we retry.
        """
        deadline = time.monotonic() + timeout
        waiting = {node: len(self.log(node)) for node in nodes}
        for node in nodes:
            self.start(node, self.commands[node])
        while waiting:
            for node, offset in list(waiting.items()):
                if READY["flower-supernode"] in self.log(node)[offset:]:
                    del waiting[node]
                elif self.procs[node].poll() is not None:  # refused: the old session is still held
                    assert time.monotonic() < deadline, f"{node} was not re-admitted:\n" + self.log(node)[-3000:]
                    waiting[node] = len(self.log(node))
                    self.start(node, self.commands[node])
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
        """SIGKILL ``node``'s SuperNode and every process under it: its SuperExec and the ClientApps that started."""
        proc = self.procs.pop(node)
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait(timeout=10)
        for child in tree:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                continue

    def shut_down(self, node: str) -> None:
        """SIGTERM ``node``'s SuperNode, as its operator would stop it, and wait until it has left."""
        proc = self.procs.pop(node)
        proc.terminate()
        proc.wait(timeout=60)


def start_misconfigured_node(site: Consortium) -> None:
    """A fourth node, enrolled, whose node config has a typo ('data-pth'): not a README step."""
    site.sh(
        'ssh-keygen -q -t ecdsa -b 384 -N "" -f typo.key && '
        "flwr supernode register typo.key.pub consortium --name hospital-c"
    )
    site.serve(
        "hospital-c",
        "flower-supernode --superlink $SUPERLINK_HOST:$SUPERLINK_PORT --root-certificates pki/ca.crt "
        f"--auth-supernode-private-key typo.key --port {free_port()} --node-config \"role='hospital' data-pth='/d'\"",
    )


def _node_data(root: Path, extra_hospitals: Sequence[str]) -> None:
    """Each node's own small synthetic images: 40 training images per hospital, 24 test images at the evaluator."""
    nodes = [(node, 10, 0) for node in (*HOSPITALS, *extra_hospitals)] + [("evaluator", 1, 6)]
    for seed, (node, train, test) in enumerate(nodes):
        write_synthetic_tree(
            root / node, modality="brain-mri", train_per_class=train, test_per_class=test, size=40, seed=seed
        )


def _on_a_free_port(block: str) -> str:
    """A README node block whose SuperNode serves its ClientApps on a free local port."""
    return re.sub(r"--port \d+", f"--port {free_port()}", block)


def _extra_hospital_block(block: str, name: str) -> str:
    """hospital-a's README block (node check, SuperNode) for hospital ``name``: its own key, folders and port."""
    return _on_a_free_port(block.replace("hospital-a", name))


def _enrol(site: Consortium, name: str) -> None:
    """A key of its own for hospital ``name`` where make-pki.sh puts the guide's, registered as step 4 does."""
    key = f"pki/nodes/{name}/node.key"
    site.sh(
        f'mkdir -p pki/nodes/{name} && ssh-keygen -q -t ecdsa -b 384 -N "" -f {key} && '
        f"flwr supernode register {key}.pub consortium --name {name}"
    )


@contextmanager
def open_consortium(
    root: Path, *, extra_hospitals: Sequence[str] = (), misconfigured_node: bool = True, free_ports: bool = False
) -> Iterator[Consortium]:
    """README steps 0-5 as written, in ``root``: PKI, HE keys, a TLS SuperLink, every node enrolled and running.

    Step 6 (the run) is left to the caller, with its own ``TRAINING``; every other variable is
    set here, and must be exactly the ones step 0 names. ``extra_hospitals`` are enrolled and
    started beyond the guide's two, each as hospital-a is (its README block with its own name,
    key and port); ``misconfigured_node`` adds hospital-c, whose node config has a typo.
    ``free_ports`` moves the guide's SuperNodes off its local ports 9094-9096, so that a long
    benchmark and a test on the same host do not collide. Every process is stopped by PID on exit.
    """
    if set(extra_hospitals) & {*NODES, *(["hospital-c"] if misconfigured_node else [])}:
        raise ValueError(f"extra_hospitals {list(extra_hospitals)} reuse a name the consortium already has")
    values = {
        "SUPERLINK_HOST": "127.0.0.1",
        "SUPERLINK_PORT": str(free_port()),
        "NODE_DATA": str(root / "node-data"),
        "NODE_STATE": str(root / "node-state"),
        "TRAINING": TINY,
    }
    _node_data(root / "node-data", extra_hospitals)
    home = root / "flwr-home"
    home.mkdir()
    (root / "logs").mkdir()
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, **FLOWER_ENV, **values, "FLWR_HOME": str(home), "PATH": path}
    site = Consortium(build_app(root / "checkout"), env, root / "logs", hospitals=(*HOSPITALS, *extra_hospitals))
    settings, *steps, run = readme_blocks()
    assert set(re.findall(r"^export (\w+)=", settings, re.M)) == set(values), "step 0 names other variables"
    assert run.lstrip().startswith("flwr run"), "the last step is no longer the run"
    node_blocks = [b for b in steps if any(t.startswith("flower-supernode") for _, t in chunks(b))]
    assert len(node_blocks) == len(NODES), "the README starts another number of SuperNodes than 3"
    checked: list[str] = []

    def run_block(block: str, server: str) -> None:
        for long_running, text in chunks(block):
            if long_running:
                site.serve(server, text)
            else:
                checked.append(site.sh(text))

    def start_extra(name: str) -> None:
        _enrol(site, name)
        run_block(_extra_hospital_block(node_blocks[0], name), name)

    try:
        for block in steps[: steps.index(node_blocks[0])]:  # PKI, keys, the SuperLink, its connection, enrolment
            run_block(block, "superlink")
        assert "superlink" in site.commands, "the README starts no SuperLink before the SuperNodes"
        # Each node block is one node's host: they run side by side, with the extra nodes.
        with ThreadPoolExecutor(len(NODES) + len(extra_hospitals) + 1) as pool:
            blocks = [_on_a_free_port(b) for b in node_blocks] if free_ports else node_blocks
            started = [pool.submit(run_block, block, node) for block, node in zip(blocks, NODES, strict=True)]
            started += [pool.submit(start_extra, name) for name in extra_hospitals]
            if misconfigured_node:
                started.append(pool.submit(start_misconfigured_node, site))
            for future in started:
                future.result()
        assert steps[-1] is node_blocks[-1], "a step follows the SuperNodes other than the run"
        for node in (*NODES, *extra_hospitals):
            role = "evaluator" if node == "evaluator" else "hospital"
            assert any(f"node config: ok ({role} '{node}')" in out for out in checked)
        site.commands["run"] = run.strip()
        yield site
    finally:
        stop_all(home)
        assert not processes_of(home), "processes outlived the consortium"


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    """README steps 0-5 as written, with a misconfigured fourth node (``open_consortium``)."""
    with open_consortium(tmp_path_factory.mktemp("consortium")) as site:
        yield site
