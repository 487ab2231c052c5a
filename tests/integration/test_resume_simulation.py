"""Encrypted FedAvg, stopped and resumed, end to end: real ``flwr run``s against the shared plaintext run.

One test checks both that encrypted FedAvg equals plaintext FedAvg and that ``resume-from`` continues
a run exactly (global model, each hospital's kept optimiser state): a resume that lost any state would
move the weights by far more than the 1e-5 that CKKS rounding allows. ``resume-from`` reads a plaintext
checkpoint through the same code, apart from the file it loads (tests/server/test_resume.py covers both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_env import SIMULATION, Flower, SimulatedRun

from common.models import load_model_dir

HOSPITALS = ["hospital-0", "hospital-1", "hospital-2"]


def _decrypt(run_dir: Path, out: Path) -> torch.nn.Module:
    """The final model as a key-holder decrypts it with ``medsilo model decrypt``."""
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.cli",
            "model",
            "decrypt",
            "--model",
            str(run_dir / "model"),
            "--keys",
            str(run_dir / "keys" / "secret.ctx"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    model, _ = load_model_dir(out)
    return model


def test_a_resumed_encrypted_run_equals_the_uninterrupted_plaintext_run(
    flower: Flower, simulated_run: SimulatedRun, tmp_path: Path
) -> None:
    """The shared 3-round plaintext run against the same config and seed under HE, stopped after round 2 and resumed.

    Under HE one more SuperNode is the evaluator (the key-holder); the 3 hospitals get the same shards.
    """
    out = tmp_path / "runs"
    config = f"{SIMULATION} data-root='{simulated_run.data_root}' output-dir='{out}' he-enabled=true"
    flower.simulate(f"{config} num-server-rounds=2 run-name='stopped'", supernodes=4, cwd=tmp_path)
    stopped = out / "stopped"
    # the last two rounds are kept, so a last good one survives a rejected round
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["round-0001", "round-0002"]
    checkpoint = stopped / "checkpoints" / "round-0002"
    assert (checkpoint / "encrypted.json").is_file() and not (checkpoint / "model.safetensors").exists()
    kept = sorted(p.name for p in (stopped / "state" / "hospital-0").glob("optimizer-round-*.pt"))
    assert kept == ["optimizer-round-0001.pt", "optimizer-round-0002.pt"]  # each hospital's optimiser state
    flower.simulate(
        f"{config} num-server-rounds=3 run-name='ignored' resume-from='{stopped}' local-baseline=true",
        supernodes=4,
        cwd=tmp_path,
    )

    assert not (out / "ignored").exists()  # the resumed run continues in its own directory
    assert json.loads((stopped / "config.json").read_text())["resume-from"] == str(stopped)
    history = json.loads((stopped / "history.json").read_text())
    assert history["resumed"][0]["after_round"] == 2
    whole_history = json.loads((simulated_run.run_dir / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [r["round"] for r in whole_history["rounds"]] == [0, 1, 2, 3]
    for record in history["rounds"][1:]:
        assert sorted(record["hospitals"]) == HOSPITALS and record["failures"] == []
        for hospital in record["hospitals"].values():
            assert hospital["bytes_sent"] > 0 and hospital["encrypt_seconds"] > 0
        assert record["hospitals"]["hospital-0"]["decrypt_seconds"] > 0 or record["round"] == 1
        assert record["timings"]["aggregate_s"] > 0 and record["timings"]["evaluator_decrypt_s"] >= 0

    # The server kept only ciphertexts; a key-holder decrypts the final model.
    assert not (stopped / "model" / "model.safetensors").exists() and (stopped / "model" / "encrypted.json").is_file()
    assert oct((stopped / "keys" / "secret.ctx").stat().st_mode & 0o777) == "0o600"
    he_model = _decrypt(stopped, tmp_path / "decrypted")
    plain_model, _ = load_model_dir(simulated_run.run_dir / "model")
    diffs = [
        (a.double() - b.double()).abs().max().item()
        for (name, a), b in zip(he_model.state_dict().items(), plain_model.state_dict().values(), strict=True)
        if a.is_floating_point()
    ]
    assert max(diffs) < 1e-5, f"the resumed encrypted run and the plaintext run differ: max |diff| {max(diffs)}"
    with torch.no_grad():
        x = torch.randn(4, 1, 32, 32)
        np.testing.assert_allclose(he_model.eval()(x).numpy(), plain_model.eval()(x).numpy(), atol=1e-3)

    plain_report = json.loads((simulated_run.run_dir / "report.json").read_text())
    he_report = json.loads((stopped / "report.json").read_text())
    assert set(he_report) == set(plain_report) and he_report["n"] == plain_report["n"] == 32
    assert abs(plain_report["accuracy"] - he_report["accuracy"]) <= 0.005
    assert (stopped / "report.html").is_file()

    # Each hospital's local-only model (its shard, the rounds it trained before and after the resume, the same
    # seeds) is the plaintext run's; the global model it scores was decrypted at the hospital.
    plain_rows = {r["hospital"]: r for r in whole_history["local_baseline"]["hospitals"]}
    he_rows = {r["hospital"]: r for r in history["local_baseline"]["hospitals"]}
    assert sorted(he_rows) == sorted(plain_rows) == HOSPITALS
    for name, row in he_rows.items():
        assert row["rounds"] == 3
        assert row["local_only_accuracy"] == pytest.approx(plain_rows[name]["local_only_accuracy"])
        assert row["global_accuracy"] == pytest.approx(plain_rows[name]["global_accuracy"])
