"""Encrypted FedAvg end to end: a real ``flwr run`` with HE on, stopped and resumed, against the plaintext run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flower_env import Flower

from common.data.synth import write_synthetic_tree
from common.models import load_model_dir

CONFIG = (
    "model='cnn3' image-size=32 local-epochs=2 batch-size=16 learning-rate=0.003 "
    "min-train-nodes=2 min-evaluate-nodes=2 seed=5 "
    "optimizer-state='keep' lr-schedule='constant' lr-warmup-rounds=1"  # constant: the HE run grows from 1 to 2 rounds
)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_tree(
        tmp_path_factory.mktemp("he-data") / "mri",
        modality="brain-mri",
        train_per_class=20,
        test_per_class=10,
        size=40,
        seed=8,
    )


def test_resumed_encrypted_run_matches_the_plaintext_run(flower: Flower, synthetic_root: Path, tmp_path: Path) -> None:
    """2 plaintext rounds against 1 encrypted round, stopped, then resumed from its encrypted checkpoint."""
    out = tmp_path / "runs"
    common = f"{CONFIG} data-root='{synthetic_root}' output-dir='{out}'"
    flower.simulate(f"{common} num-server-rounds=2 run-name='plain'", supernodes=2, cwd=tmp_path)
    he_config = f"{common} run-name='he' he-enabled=true"
    flower.simulate(f"{he_config} num-server-rounds=1", supernodes=3, cwd=tmp_path)
    plain, he = out / "plain", out / "he"
    first = he / "checkpoints" / "round-0001"
    assert (first / "encrypted.json").is_file() and not (first / "model.safetensors").exists()
    flower.simulate(f"{he_config} num-server-rounds=2 resume-from='{he}'", supernodes=3, cwd=tmp_path)
    assert json.loads((he / "history.json").read_text())["resumed"][0]["after_round"] == 1

    # The server kept only ciphertexts; a key-holder decrypts the final model.
    assert not (he / "model" / "model.safetensors").exists()
    assert (he / "model" / "encrypted.json").is_file() and (
        he / "checkpoints" / "round-0002" / "encrypted.json"
    ).is_file()
    assert oct((he / "keys" / "secret.ctx").stat().st_mode & 0o777) == "0o600"
    decrypted = tmp_path / "decrypted"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "common.cli",
            "model",
            "decrypt",
            "--model",
            str(he / "model"),
            "--keys",
            str(he / "keys" / "secret.ctx"),
            "--out",
            str(decrypted),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    he_model, _ = load_model_dir(decrypted)
    plain_model, _ = load_model_dir(plain / "model")
    diffs = [
        (a.double() - b.double()).abs().max().item()
        for (name, a), b in zip(he_model.state_dict().items(), plain_model.state_dict().values(), strict=True)
        if a.is_floating_point()
    ]
    assert max(diffs) < 1e-5, f"encrypted and plaintext FedAvg diverged: max |diff| {max(diffs)}"

    plain_report = json.loads((plain / "report.json").read_text())
    he_report = json.loads((he / "report.json").read_text())
    # Measured when written: 0.750 plaintext and 0.750 HE accuracy on the 40-image test set.
    assert abs(plain_report["accuracy"] - he_report["accuracy"]) <= 0.005
    assert set(he_report) == set(plain_report) and he_report["n"] == plain_report["n"] == 40

    history = json.loads((he / "history.json").read_text())
    plain_history = json.loads((plain / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [r["round"] for r in plain_history["rounds"]] == [0, 1, 2]
    for record in history["rounds"][1:]:
        assert sorted(record["hospitals"]) == ["hospital-0", "hospital-1"] and record["failures"] == []
        for hospital in record["hospitals"].values():
            assert hospital["bytes_sent"] > 0 and hospital["encrypt_seconds"] > 0
        assert record["hospitals"]["hospital-0"]["decrypt_seconds"] > 0 or record["round"] == 1
        assert record["timings"]["aggregate_s"] > 0 and record["timings"]["evaluator_decrypt_s"] >= 0
    with torch.no_grad():
        x = torch.randn(4, 1, 32, 32)
        np.testing.assert_allclose(he_model.eval()(x).numpy(), plain_model.eval()(x).numpy(), atol=1e-3)
