"""The README's "Deploy across hospitals" section, run as written on loopback, completes an encrypted run.

The section's ```bash blocks are extracted from README.md and run in order in a fresh copy of
the checkout. Only the values of step 0's variables are the test's own (a free port, folders
under a temporary directory, a tiny model); a block that the README changes is run as changed,
so the two cannot drift apart. ``flower-superlink`` and ``flower-supernode`` lines run in the
background, like the terminals or services the README gives them. One more node, not in the
README, starts with a typo in its node config: it must show up in the run's failures and the
report, and in its own log as one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deployment import FLOWER_ENV
from flower_env import BIN, REPO, build_app, free_port, processes_of, stop_all

from common.data.synth import write_synthetic_tree

SECTION = "## Deploy across hospitals"
LONG_RUNNING = ("flower-superlink", "flower-supernode")
READY = {"flower-superlink": "Uvicorn running on https://", "flower-supernode": "SuperNode ID:"}
TRAINING = "model='cnn3' image-size=32 num-server-rounds=1 local-epochs=1 fraction-evaluate=0.0"


def readme_blocks() -> list[str]:
    """The ```bash blocks of the README's deployment section, in order."""
    section = (REPO / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def _chunks(block: str) -> list[tuple[bool, str]]:
    """The block as (long-running?, shell text): continuation lines joined, servers split out."""
    chunks: list[tuple[bool, str]] = []
    lines: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith(LONG_RUNNING):
            if lines:
                chunks.append((False, "\n".join(lines)))
                lines = []
            chunks.append((True, line.strip()))
        else:
            lines.append(line)
    if any(line.strip() for line in lines):
        chunks.append((False, "\n".join(lines)))
    return chunks


class _Shell:
    """Runs README text in the checkout with the deployment's environment; servers in the background."""

    def __init__(self, checkout: Path, env: dict[str, str], logs: Path) -> None:
        self.checkout, self.env, self.logs = checkout, env, logs
        logs.mkdir()

    def run(self, text: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=self.checkout,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"README step failed:\n{text}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    def serve(self, command: str, name: str) -> Path:
        """Start a SuperLink or SuperNode line and wait until it is up; returns its log."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"], cwd=self.checkout, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        ready = READY[command.split()[0]]
        deadline = time.monotonic() + 90
        while ready not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, f"{command}\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        return log


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[_Shell, dict[str, str]]]:
    """A fresh checkout, the nodes' data folders and the values of the README's step 0."""
    values = {
        "SUPERLINK_HOST": "127.0.0.1",
        "SUPERLINK_PORT": str(free_port()),
        "NODE_DATA": str(tmp_path / "node-data"),
        "NODE_STATE": str(tmp_path / "node-state"),
        "TRAINING": TRAINING,
    }
    data = Path(values["NODE_DATA"])
    for seed, (node, train, test) in enumerate((("hospital-a", 10, 0), ("hospital-b", 10, 0), ("evaluator", 1, 6))):
        write_synthetic_tree(
            data / node, modality="brain-mri", train_per_class=train, test_per_class=test, size=40, seed=seed
        )
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        **FLOWER_ENV,
        **values,
        "FLWR_HOME": str(home),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        yield _Shell(build_app(tmp_path / "checkout"), env, tmp_path / "logs"), values
    finally:
        stop_all(home)
        assert not processes_of(home), "processes outlived the test"


def _start_misconfigured_node(shell: _Shell) -> Path:
    """A fourth node, enrolled, whose node config has a typo ('data-pth'): not a README step."""
    shell.run(
        'ssh-keygen -q -t ecdsa -b 384 -N "" -f typo.key && '
        "flwr supernode register typo.key.pub consortium --name hospital-c"
    )
    return shell.serve(
        "flower-supernode --superlink $SUPERLINK_HOST:$SUPERLINK_PORT --root-certificates pki/ca.crt "
        "--auth-supernode-private-key typo.key --port 9097 --node-config \"role='hospital' data-pth='/d'\"",
        "hospital-c",
    )


def test_the_readme_deployment_steps_run_as_written(site: tuple[_Shell, dict[str, str]]) -> None:
    shell, values = site
    settings, *steps = readme_blocks()
    assert set(re.findall(r"^export (\w+)=", settings, re.M)) == set(values), "step 0 names other variables"
    servers = iter(("superlink", "hospital-a", "hospital-b", "evaluator"))
    output = ""
    for block in steps:
        if block.lstrip().startswith("flwr run"):  # step 6: the README's nodes are up; add the misconfigured one
            typo_log = _start_misconfigured_node(shell)
        for long_running, text in _chunks(block):
            if long_running:
                shell.serve(text, next(servers))
            else:
                output += shell.run(text)
    assert next(servers, None) is None, "the README starts other servers than the SuperLink and 3 SuperNodes"
    assert "node config: ok (evaluator 'evaluator')" in output and "node config: ok (hospital 'hospital-b')" in output

    (run_dir,) = (shell.checkout / "runs").iterdir()
    assert (run_dir / "report.html").is_file() and (run_dir / "model" / "encrypted.json").is_file()
    history = json.loads((run_dir / "history.json").read_text())
    nodes_map = history["nodes"]
    assert nodes_map["data"] == "own"
    assert sorted((n["name"], n["role"], n.get("examples")) for n in nodes_map["nodes"]) == [
        ("evaluator", "evaluator", None),
        ("hospital-a", "hospital", 36),  # 40 images less the 10 % local validation split
        ("hospital-b", "hospital", 36),
    ]
    (failed,) = nodes_map["failed"]
    assert "unknown key 'data-pth'; did you mean 'data-path'?" in failed["reason"]
    failures = [f for r in history["rounds"] for f in r["failures"]]
    assert {"node_id": failed["node_id"], "stage": "describe", "reason": failed["reason"]} in failures
    assert sorted(history["rounds"][-1]["hospitals"]) == ["hospital-a", "hospital-b"]

    config = json.loads((run_dir / "config.json").read_text())
    assert config["he-enabled"] is True and config["model"] == "cnn3"
    assert not {"data-root", "partitioner", "dirichlet-alpha"} & set(config)
    summary = (run_dir / "report.md").read_text()
    assert "each hospital's own data-path" in summary and "1 of 3 node(s) took no part" in summary
    assert "partitioner" not in summary

    typo = typo_log.read_text(errors="replace")
    assert "Traceback" not in typo and typo.count("unknown key 'data-pth'") == 1, typo[-3000:]
