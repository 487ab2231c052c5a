"""A screening table names each candidate by the keys its pieces changed, and compares only like with like."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import accuracy  # noqa: E402
from accuracy_screening import screening  # noqa: E402
from accuracy_store import write_piece  # noqa: E402

from common.data.synth import write_synthetic_tree  # noqa: E402

KEYS = {"seed": 0, "model": "resnet18", "learning-rate": 0.001, "proximal-mu": 0.0, "local-epochs": 0.25,
        "dp-enabled": False}
REQUEST = {"keys": KEYS, "data": "brain-mri", "epochs": 20, "rounds_per_epoch": 4,
           "scored_on": "validation (15% of train/)"}


def _folder(root: Path, name: str, keys: dict[str, Any], last2: float, *, setting: str = "best-dirichlet",
            **request: Any) -> Path:  # fmt: skip
    folder = root / name
    write_piece(folder / f"brain-mri--{setting}--seed0.json", {**REQUEST, "keys": {**KEYS, **keys}, **request},
                {setting: {"last2_mean": last2, "final": last2, "config": "local-epochs=0.25"}})  # fmt: skip
    return folder


def test_each_candidate_is_named_by_what_it_changed_and_measured_against_the_baseline(tmp_path: Path) -> None:
    baseline = _folder(tmp_path, "defaults", {}, 0.9317)
    lr = _folder(tmp_path, "lr", {"learning-rate": 0.002}, 0.9400)
    both = _folder(tmp_path, "both", {"proximal-mu": 0.01, "learning-rate": 0.002, "dp-sample-rate": 0.1}, 0.9200)
    eighth = _folder(tmp_path, "eighth", {"local-epochs": 0.125}, 0.9335, rounds_per_epoch=8)  # more rounds: a lever
    # keys the baseline's code did not have yet: the one at the value that code trained at is no change
    added = _folder(tmp_path, "added", {"label-smoothing": 0.0, "augmentation-strength": 0.5}, 0.9475)
    rows = screening(baseline, [lr, both, eighth, added])["brain-mri"]
    assert sorted(rows) == [
        "augmentation-strength=0.5", "defaults", "learning-rate=0.002", "learning-rate=0.002 proximal-mu=0.01",
        "local-epochs=0.125",
    ]  # not the DP keys a non-private run never used
    assert rows["defaults"]["baseline_gap_pt"] == 0.0 and rows["defaults"]["config"] == "local-epochs=0.25"
    assert rows["learning-rate=0.002"]["baseline_gap_pt"] == pytest.approx(0.83)
    assert rows["learning-rate=0.002 proximal-mu=0.01"]["baseline_gap_pt"] == pytest.approx(-1.17)
    assert "config" not in rows["learning-rate=0.002"]
    piece = json.loads((lr / "brain-mri--best-dirichlet--seed0.json").read_text())
    assert {k: rows["learning-rate=0.002"][k] for k in ("commit", "date", "machine")} == {
        k: piece[k] for k in ("commit", "date", "machine")
    }


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (lambda root: _folder(root, "c", {"learning-rate": 0.002}, 0.9, epochs=15), "scored otherwise"),
        (lambda root: _folder(root, "c", {}, 0.9), "trains what the baseline trained"),
        (lambda root: _folder(root, "c", {"learning-rate": 0.002}, 0.9, setting="best-iid"), "has no baseline piece"),
        (lambda root: root / "empty", "no accuracy pieces"),
    ],
)
def test_a_candidate_that_cannot_be_compared_stops_with_one_line(tmp_path: Path, candidate: Any, message: str) -> None:
    baseline = _folder(tmp_path, "defaults", {}, 0.9317)
    with pytest.raises(SystemExit, match=message):
        screening(baseline, [candidate(tmp_path)])


def test_a_baseline_holding_two_settings_is_refused(tmp_path: Path) -> None:
    baseline = _folder(tmp_path, "defaults", {}, 0.93)
    _folder(tmp_path, "defaults", {}, 0.95, setting="best-iid")
    with pytest.raises(SystemExit, match="more than one setting on brain-mri"):
        screening(baseline, [])


def test_a_best_row_names_the_keys_set_on_it_beside_the_recipe(tmp_path: Path) -> None:
    root = tmp_path / "brain-mri"
    write_synthetic_tree(root, modality="brain-mri", train_per_class=8, test_per_class=2, size=32, seed=0)
    base = {**accuracy.BASE, "model": "cnn3", "image-size": 32, "batch-size": 8}
    accuracy.run_dataset(root, "brain-mri", settings=["best-dirichlet"], epochs=1, overrides={"label-smoothing": 0.1},
                         validation=True, base=base, folder=tmp_path / "pieces", checkpoints=None)  # fmt: skip
    piece = json.loads((tmp_path / "pieces" / "brain-mri--best-dirichlet--seed0.json").read_text())
    shown = dict(item.split("=", 1) for item in piece["results"]["best-dirichlet"]["config"].split())
    assert shown["label-smoothing"] == "0.1" and set(accuracy.BEST) <= set(shown)


def test_an_empty_checkpoints_flag_saves_nowhere_not_in_the_working_directory() -> None:
    assert accuracy.checkpoint_folder("") is None
    assert accuracy.checkpoint_folder("ckpt") == Path("ckpt")
