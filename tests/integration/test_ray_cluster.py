"""A simulation attached to a Ray cluster that was already running (``RAY_ADDRESS``), on loopback.

``ray start --head`` runs under the test's own ``FLWR_HOME``, so the cluster's processes are
stopped by PID with Flower's when the test ends.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from flower_env import BIN, flower_environment, free_port, native_bf16_or_fp32

from common.data.synth import write_synthetic_tree


def test_a_simulation_runs_on_an_existing_ray_cluster(flower_app: Path, tmp_path: Path) -> None:
    data = write_synthetic_tree(tmp_path / "data", modality="brain-mri", train_per_class=6, test_per_class=2, size=32)
    ray_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        _run_on_cluster(flower_app, tmp_path, data, ray_dir)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def _run_on_cluster(flower_app: Path, tmp_path: Path, data: Path, ray_dir: Path) -> None:
    """Start the cluster, run one round attached to it, check it was used; every process is stopped on exit."""
    with flower_environment(tmp_path, flower_app) as flower:
        port = free_port()
        started = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={ray_dir}",
                "--disable-usage-stats",
            ],
            env=flower.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr[-2000:]
        attached = dataclasses.replace(flower, env={**flower.env, "RAY_ADDRESS": f"127.0.0.1:{port}"})
        out = tmp_path / "runs"
        attached.simulate(
            f"model='cnn3' image-size=32 local-steps=2 batch-size=8 num-server-rounds=1 min-train-nodes=2 "
            f"min-evaluate-nodes=2 data-root='{data}' output-dir='{out}' run-name='on-ray'",
            supernodes=2,
            cwd=tmp_path,
        )
        assert json.loads((out / "on-ray" / "report.json").read_text())["n"] == 8
        history = json.loads((out / "on-ray" / "history.json").read_text())
        trained_in = {h["precision"] for r in history["rounds"][1:] for h in r["hospitals"].values()}
        assert trained_in == {native_bf16_or_fp32()}  # precision "auto" (the default) on this CPU
        drivers = list(ray_dir.glob("session_*/logs/python-core-driver-*.log"))
        assert drivers, "the simulation did not connect to the running cluster"
