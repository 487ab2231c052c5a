"""``resume-from``: a stopped run continues from its last checkpoint, in plaintext and under HE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flower_env import REPO, Flower
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


def _run(flower: Flower, tmp_path: Path, config: str, *, supernodes: int = 3) -> None:
    proc = flower.run(
        "run",
        str(REPO),
        "--stream",
        "--federation-config",
        f"num-supernodes={supernodes}",
        "--run-config",
        config,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_a_resumed_run_equals_an_uninterrupted_one(flower: Flower, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    paths = f"data-root='{data_root}' output-dir='{out}'"
    _run(flower, tmp_path, f"{BASE} {paths} num-server-rounds=3 run-name='whole'")
    _run(flower, tmp_path, f"{BASE} {paths} num-server-rounds=2 run-name='stopped'")
    stopped = out / "stopped"
    assert sorted(p.name for p in (stopped / "checkpoints").iterdir()) == ["round-0002"]
    _run(flower, tmp_path, f"{BASE} {paths} num-server-rounds=3 run-name='ignored' resume-from='{stopped}'")

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
    _run(flower, tmp_path, f"{config} num-server-rounds=1", supernodes=4)
    checkpoint = out / "he" / "checkpoints" / "round-0001"
    assert (checkpoint / "encrypted.json").is_file() and not (checkpoint / "model.safetensors").exists()
    _run(flower, tmp_path, f"{config} num-server-rounds=2 resume-from='{out / 'he'}'", supernodes=4)
    history = json.loads((out / "he" / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [0, 1, 2]
    assert sorted(history["rounds"][2]["hospitals"]) == ["hospital-0", "hospital-1", "hospital-2"]
    assert history["rounds"][2]["central"]["accuracy"] is not None
    assert (out / "he" / "model" / "encrypted.json").is_file()
