"""``resume-from``: a stopped run continues from its last checkpoint, in plaintext and under HE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_env import Flower
from safetensors.numpy import load_file

from common.data.synth import write_synthetic_tree

BASE = (
    "model='cnn3' image-size=32 local-epochs=1 batch-size=16 learning-rate=0.003 min-train-nodes=3 "
    "fraction-evaluate=0.0 seed=11"
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_tree(
        tmp_path_factory.mktemp("data") / "mri", modality="brain-mri", train_per_class=12, test_per_class=4, size=40
    )


def test_a_resumed_run_equals_an_uninterrupted_one(flower: Flower, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    paths = f"data-root='{data_root}' output-dir='{out}'"
    flower.simulate(f"{BASE} {paths} num-server-rounds=3 run-name='whole'", supernodes=3, cwd=tmp_path)
    flower.simulate(f"{BASE} {paths} num-server-rounds=2 run-name='stopped'", supernodes=3, cwd=tmp_path)
    stopped = out / "stopped"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["round-0002"]
    flower.simulate(
        f"{BASE} {paths} num-server-rounds=3 run-name='ignored' resume-from='{stopped}'", supernodes=3, cwd=tmp_path
    )

    assert not (out / "ignored").exists()  # the resumed run continues in its own directory
    history = json.loads((stopped / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2, 3]
    assert history["resumed"][0]["after_round"] == 2
    assert json.loads((stopped / "config.json").read_text())["resume-from"] == str(stopped)
    whole = load_file(out / "whole" / "model" / "model.safetensors")
    resumed = load_file(stopped / "model" / "model.safetensors")
    assert whole.keys() == resumed.keys()
    assert max(float(np.abs(whole[k].astype(np.float64) - resumed[k]).max()) for k in whole) <= 1e-6
    whole_history = json.loads((out / "whole" / "history.json").read_text())
    assert history["rounds"][3]["central"]["accuracy"] == whole_history["rounds"][3]["central"]["accuracy"]
    assert (stopped / "report.html").is_file()


def test_an_encrypted_run_resumes_from_its_encrypted_checkpoint(
    flower: Flower, data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    config = f"{BASE} data-root='{data_root}' output-dir='{out}' he-enabled=true run-name='he'"
    flower.simulate(f"{config} num-server-rounds=1", supernodes=4, cwd=tmp_path)
    checkpoint = out / "he" / "checkpoints" / "round-0001"
    assert (checkpoint / "encrypted.json").is_file() and not (checkpoint / "model.safetensors").exists()
    flower.simulate(f"{config} num-server-rounds=2 resume-from='{out / 'he'}'", supernodes=4, cwd=tmp_path)
    history = json.loads((out / "he" / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert sorted(history["rounds"][2]["hospitals"]) == ["hospital-0", "hospital-1", "hospital-2"]
    assert history["rounds"][2]["central"]["accuracy"] is not None
    assert (out / "he" / "model" / "encrypted.json").is_file()
