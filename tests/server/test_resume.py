"""Loading a resume point: the checkpoint, the history so far, and one line for every misfit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from common.config import ConfigError, parse_run_config
from common.experiment import initial_model, model_spec
from common.models import save_model_dir
from server.resume import load_resume_point

CONFIG = {"model": "cnn3", "image-size": 32, "num-server-rounds": 3}


def _stopped_run(tmp_path: Path, **config: object) -> Path:
    cfg = parse_run_config({**CONFIG, **config})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_run_config()))
    rounds = [{"round": r, "hospitals": {}} for r in range(4)]  # round 3 was under way when it stopped
    (run / "history.json").write_text(json.dumps({"rounds": rounds}))
    model = initial_model(cfg)
    with torch.no_grad():
        next(model.parameters()).fill_(0.5)
    save_model_dir(run / "checkpoints" / "round-0002", model, model_spec(cfg))
    return run


def test_the_resume_point_is_the_last_checkpoint(tmp_path: Path) -> None:
    run = _stopped_run(tmp_path)
    point = load_resume_point(run, parse_run_config({**CONFIG, "learning-rate": 0.01}))
    assert point.last_round == 2 and [r["round"] for r in point.rounds] == [0, 1, 2]
    saved = load_file(run / "checkpoints" / "round-0002" / "model.safetensors")
    assert set(point.arrays) == set(saved)
    assert all(np.array_equal(point.arrays[k].numpy(), v) for k, v in saved.items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "resnet18"}, "ran with model = 'cnn3'; expected the same model, got 'resnet18'"),
        ({"seed": 1}, "ran with seed = 42; expected the same seed, got 1"),
        ({"he-enabled": True}, "expected the same he-enabled"),
        ({"num-server-rounds": 2}, "'num-server-rounds' = 2; the resumed run already completed round 2"),
    ],
)
def test_a_resume_that_does_not_fit_is_one_line(tmp_path: Path, change: dict[str, object], message: str) -> None:
    run = _stopped_run(tmp_path)
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        load_resume_point(run, parse_run_config({**CONFIG, **change}))


def test_dp_runs_keep_their_planned_rounds(tmp_path: Path) -> None:
    run = _stopped_run(tmp_path, **{"dp-enabled": True})
    with pytest.raises(ConfigError, match="'num-server-rounds' = 5 differs .* expected the same under DP"):
        load_resume_point(run, parse_run_config({**CONFIG, "dp-enabled": True, "num-server-rounds": 5}))


def test_missing_or_broken_run_directories(tmp_path: Path) -> None:
    cfg = parse_run_config(CONFIG)
    with pytest.raises(ConfigError, match="is not a run directory; expected config.json and history.json"):
        load_resume_point(tmp_path / "nowhere", cfg)
    run = _stopped_run(tmp_path)
    (run / "checkpoints" / "round-0002" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="its checkpoint round-0002 is unreadable"):
        load_resume_point(run, cfg)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ConfigError, match="has no checkpoint"):
        load_resume_point(run, cfg)
