"""``resume-from``: a stopped run continues from its last checkpoint (under HE: test_encrypted_simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flower_env import SIMULATION, Flower, SimulatedRun
from safetensors.numpy import load_file


def test_a_resumed_run_equals_an_uninterrupted_one(flower: Flower, simulated_run: SimulatedRun, tmp_path: Path) -> None:
    """The shared 3-round run against the same config stopped after round 2 and resumed.

    The config keeps each hospital's Adam state and FedAvgM's server momentum, so both must continue exactly.
    """
    out = tmp_path / "runs"
    config = f"{SIMULATION} data-root='{simulated_run.data_root}' output-dir='{out}'"
    flower.simulate(f"{config} num-server-rounds=2 run-name='stopped'", supernodes=3, cwd=tmp_path)
    stopped = out / "stopped"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["round-0002"]
    assert (stopped / "checkpoints" / "round-0002" / "server-state.safetensors").is_file()  # FedAvgM's momentum
    kept = sorted(p.name for p in (stopped / "state" / "hospital-0").glob("optimizer-round-*.pt"))
    assert kept == ["optimizer-round-0001.pt", "optimizer-round-0002.pt"]  # each hospital's Adam state
    flower.simulate(
        f"{config} num-server-rounds=3 run-name='ignored' resume-from='{stopped}'", supernodes=3, cwd=tmp_path
    )

    assert not (out / "ignored").exists()  # the resumed run continues in its own directory
    history = json.loads((stopped / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    assert history["resumed"][0]["after_round"] == 2
    assert json.loads((stopped / "config.json").read_text())["resume-from"] == str(stopped)
    whole = load_file(simulated_run.run_dir / "model" / "model.safetensors")
    resumed = load_file(stopped / "model" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    assert max(float(np.abs(whole[k].astype(np.float64) - resumed[k]).max()) for k in whole) <= 1e-6
    whole_history = json.loads((simulated_run.run_dir / "history.json").read_text())
    assert history["rounds"][3]["central"]["accuracy"] == whole_history["rounds"][3]["central"]["accuracy"]
    assert (stopped / "report.html").is_file()
