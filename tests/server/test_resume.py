"""Loading a resume point: the checkpoint, the history so far, and one line for every misfit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from safetensors.numpy import load_file

from common.config import ConfigError, parse_run_config
from common.experiment import initial_model, model_spec
from common.he.codec import ParamLayout, encrypt_vector
from common.he.keys import create_key_pair, load_secret_context
from common.he.model_dir import save_encrypted_dir
from common.he.payload import EncryptedPayload
from common.models import save_model_dir, state_dict_to_cpu
from server import run_directory
from server.resume import load_resume_point
from server.run_directory import RunDirectory

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


def test_a_checkpoint_cut_short_is_never_the_resume_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server stopped while it writes round 3's checkpoint leaves round 2 as the last one."""
    cfg = parse_run_config(CONFIG)
    run = _stopped_run(tmp_path)

    def cut_short(directory: Path, *args: object) -> Path:
        directory.mkdir(parents=True)
        (directory / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt  # stands for the stop

    monkeypatch.setattr(run_directory, "_save_global", cut_short)
    with pytest.raises(KeyboardInterrupt):
        RunDirectory(run).checkpoint(3, ArrayRecord(), model_spec(cfg), server_state={})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [".partial-round-0003", "round-0002"]
    assert load_resume_point(run, cfg).last_round == 2


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


def test_an_encrypted_checkpoint_of_the_old_codec_is_one_line(tmp_path: Path) -> None:
    """A run stopped before codec 2 cannot be resumed: its ciphertexts are TenSEAL's, not seeded SEAL ones."""
    cfg = parse_run_config({**CONFIG, "he-enabled": True})
    run = _stopped_run(tmp_path, **{"he-enabled": True})
    checkpoint = run / "checkpoints" / "round-0002"
    shutil.rmtree(checkpoint)
    secret_path, _ = create_key_pair(tmp_path / "keys")
    secret = load_secret_context(secret_path)
    state = state_dict_to_cpu(initial_model(cfg))
    layout = ParamLayout.of(state)
    payload = EncryptedPayload(
        "aggregate", secret.params.fingerprint(), secret.key_id, layout, encrypt_vector(secret, layout.flatten(state))
    )
    save_encrypted_dir(checkpoint, payload.to_record(), model_spec(cfg))
    assert load_resume_point(run, cfg).last_round == 2  # codec 2 resumes
    header = json.loads((checkpoint / "encrypted.json").read_text())
    del header["codec"]  # as codec 1 wrote it
    (checkpoint / "encrypted.json").write_text(json.dumps(header))
    with pytest.raises(
        ConfigError, match=r"round-0002 is unreadable \(encrypted model .* uses medsilo HE codec 1"
    ) as err:
        load_resume_point(run, cfg)
    assert "\n" not in str(err.value)
