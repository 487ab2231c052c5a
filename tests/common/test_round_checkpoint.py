"""The accuracy benchmark goes on after a stop: the resumed curve is the uninterrupted run's, round for round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from common.config import parse_run_config
from common.data import ImageSet, load_split
from common.data.synth import write_synthetic_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import accuracy  # noqa: E402
from round_checkpoint import RoundCheckpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # a small model on one thread: the same float sums


class Stop(Exception):
    """The process is stopped (a session's end)."""


def _shards(tmp_path: Path) -> tuple[list[ImageSet], dict[str, ImageSet]]:
    root = write_synthetic_tree(tmp_path / "mri", modality="brain-mri", train_per_class=12, test_per_class=4, size=32,
                                seed=3)  # fmt: skip
    kwargs = {"classes": ("glioma", "meningioma", "notumor", "pituitary"), "channels": 1, "size": 32}
    train, test = load_split(root, "train", **kwargs), load_split(root, "test", **kwargs)
    return [train.subset(list(range(k, len(train), 2))) for k in range(2)], {"evaluation": test}


@pytest.mark.slow
def test_a_stopped_setting_goes_on_to_the_uninterrupted_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # server momentum and kept Adam: both states must survive the stop
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "batch-size": 8, "local-epochs": 0.5,
                            "strategy": "fedavgm", "server-momentum": 0.5, "optimizer-state": "keep",
                            "num-server-rounds": 6, "seed": 0})  # fmt: skip
    shards, evaluation = _shards(tmp_path)
    whole = accuracy._train_rounds(cfg, shards, evaluation, 6, score_every=2)

    checkpoint = RoundCheckpoint(tmp_path / "ckpt" / "setting.pt", {"keys": cfg.to_run_config()})
    scored = accuracy.score_sets

    def stop_at_the_third_score(*args: object) -> dict[str, object]:
        if stop_at_the_third_score.calls == 2:
            raise Stop
        stop_at_the_third_score.calls += 1
        return scored(*args)

    stop_at_the_third_score.calls = 0
    monkeypatch.setattr(accuracy, "score_sets", stop_at_the_third_score)
    with pytest.raises(Stop):
        accuracy._train_rounds(cfg, shards, evaluation, 6, score_every=2, checkpoint=checkpoint)
    saved = torch.load(checkpoint.path, weights_only=True)
    assert saved["round"] == 4 and len(saved["curve"]) == 2
    assert saved["server_state"] and set(saved["optimizer_states"]) == {1, 2}

    monkeypatch.setattr(accuracy, "score_sets", scored)
    resumed = accuracy._train_rounds(cfg, shards, evaluation, 6, score_every=2, checkpoint=checkpoint)
    assert resumed.curve == whole.curve
    assert [(p["first_round"], p["last_round"]) for p in resumed.parts] == [(1, 4), (5, 6)]
    assert all(p["commit"] and p["machine"] for p in resumed.parts)  # which code and CPU trained each stretch

    other = RoundCheckpoint(checkpoint.path, {"keys": {**cfg.to_run_config(), "seed": 1}})
    assert other.load() is None  # another request's rounds are never gone on from
    dp_recipe = {**cfg.to_run_config(), "dp-sample-rate": 0.5, "dp-ema-decay": 0.9}
    assert RoundCheckpoint(checkpoint.path, {"keys": dp_recipe}).load() is not None  # DP is off: nothing it trained
    private = {**cfg.to_run_config(), "dp-enabled": True}
    assert RoundCheckpoint(checkpoint.path, {"keys": private}).load() is None
    defaults = {"a-later-key": False}  # a key the run config gained after these rounds were saved
    later = {"keys": {**cfg.to_run_config(), "a-later-key": False}}
    assert RoundCheckpoint(checkpoint.path, later, defaults).load() is not None  # at its default: the same training
    changed = {"keys": {**cfg.to_run_config(), "a-later-key": True}}
    assert RoundCheckpoint(checkpoint.path, changed, defaults).load() is None
