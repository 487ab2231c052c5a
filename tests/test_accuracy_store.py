"""A benchmark piece answers a request made by the same settings, and a key added since at its default."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from accuracy_store import KEYS_ADDED_AT, load_piece, same_request, write_piece  # noqa: E402

DEFAULTS = {"seed": 42, "trainable-params": "all", "dp-lr-schedule": "constant"}
STORED = {"keys": {"seed": 0, "model": "resnet18"}, "epochs": 15}


def test_a_key_added_at_its_default_keeps_the_piece_and_any_other_change_reruns_it(tmp_path: Path) -> None:
    path = tmp_path / "brain-mri--best-iid--seed0.json"
    write_piece(path, STORED, {"best-iid": {"last2_mean": 0.9}})
    added = {"keys": {**STORED["keys"], "trainable-params": "all"}, "epochs": 15}
    assert load_piece(path, added, DEFAULTS) == {"best-iid": {"last2_mean": 0.9}}
    assert load_piece(path, STORED) is not None
    for changed in (
        {"keys": {**STORED["keys"], "trainable-params": "norm"}, "epochs": 15},  # added, not at its default
        {"keys": {**STORED["keys"], "unknown-key": 1}, "epochs": 15},  # added, no default known
        {"keys": {**STORED["keys"], "seed": 1}, "epochs": 15},  # a key changed
        {"keys": {"seed": 0}, "epochs": 15},  # a key dropped
        {"keys": STORED["keys"], "epochs": 20},  # not a key: the epochs
    ):
        assert not same_request(STORED, changed, DEFAULTS), changed
        assert load_piece(path, changed, DEFAULTS) is None
    assert load_piece(tmp_path / "missing.json", STORED) is None


def test_the_dp_recipe_of_a_non_private_piece_changes_nothing_it_trained(tmp_path: Path) -> None:
    path = tmp_path / "brain-mri--best-iid--seed0.json"
    plain = {"keys": {**STORED["keys"], "dp-enabled": False, "dp-sample-rate": 0.0}, "epochs": 15}
    write_piece(path, plain, {"best-iid": {"last2_mean": 0.9}})
    new_recipe = {"keys": {**plain["keys"], "dp-sample-rate": 0.5, "dp-ema-decay": 0.9}, "epochs": 15}
    assert load_piece(path, new_recipe, DEFAULTS) == {"best-iid": {"last2_mean": 0.9}}
    private = {"keys": {**plain["keys"], "dp-enabled": True}, "epochs": 15}
    write_piece(path, private, {"best-iid": {"last2_mean": 0.8}})
    assert load_piece(path, {"keys": {**private["keys"], "dp-sample-rate": 0.5}, "epochs": 15}, DEFAULTS) is None
    assert load_piece(path, {"keys": {**plain["keys"], "dp-enabled": True}, "epochs": 15}, DEFAULTS) is not None
    assert load_piece(path, plain, DEFAULTS) is None  # DP on against off


def test_a_key_added_since_answers_only_at_the_value_the_older_code_trained_at(tmp_path: Path) -> None:
    path = tmp_path / "brain-mri--best-iid--seed0.json"
    write_piece(path, STORED, {"best-iid": {"last2_mean": 0.9}})
    key, before = next(iter(KEYS_ADDED_AT.items()))
    moved_default = {**DEFAULTS, key: before / 2}  # the key's default has changed since the piece was written
    assert load_piece(path, {"keys": {**STORED["keys"], key: before}, "epochs": 15}, moved_default) is not None
    assert load_piece(path, {"keys": {**STORED["keys"], key: before / 2}, "epochs": 15}, moved_default) is None
