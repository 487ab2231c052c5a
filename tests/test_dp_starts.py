"""The DP-utility benchmark's data split: the public slice is held by no hospital, and nothing is lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from common.data.synth import write_synthetic_tree

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dp_starts import PUBLIC_FRACTION, VALIDATION_FRACTION, hospital_tree, starting_weights  # noqa: E402


def _names(folder: Path) -> dict[str, set[str]]:
    return {c.name: {p.name for p in c.iterdir()} for c in sorted(folder.iterdir())}


def test_the_public_slice_is_a_stratified_fifth_that_no_hospital_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_tree(data / "brain-mri", modality="brain-mri", train_per_class=20, test_per_class=5, size=32)
    counts = hospital_tree(data, "brain-mri", tmp_path / "tree", validation=False, carve_public=True)
    train = _names(data / "brain-mri" / "train")
    public = _names(tmp_path / "tree" / "public-slice" / "train")
    hospitals = _names(tmp_path / "tree" / "hospitals" / "train")
    for name, files in train.items():
        assert public[name].isdisjoint(hospitals[name]) and public[name] | hospitals[name] == files
        assert len(public[name]) == round(PUBLIC_FRACTION * len(files))
    assert _names(tmp_path / "tree" / "hospitals" / "test") == _names(data / "brain-mri" / "test")
    assert counts == {"public_slice": 16, "scored_on": "test/", "hospitals_train": 64, "scored": 20}


def test_the_validation_split_comes_out_of_the_hospitals_part_and_test_is_never_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_tree(data / "brain-mri", modality="brain-mri", train_per_class=20, test_per_class=5, size=32)
    again = tmp_path / "again"
    for out in (tmp_path / "tree", again):
        hospital_tree(data, "brain-mri", out, validation=True, carve_public=True)
    public = _names(tmp_path / "tree" / "public-slice" / "train")
    held = _names(tmp_path / "tree" / "hospitals" / "test")
    hospitals = _names(tmp_path / "tree" / "hospitals" / "train")
    test = {p for files in _names(data / "brain-mri" / "test").values() for p in files}
    for name, files in _names(data / "brain-mri" / "train").items():
        assert public[name] | held[name] | hospitals[name] == files
        assert not (public[name] & held[name] or held[name] & hospitals[name] or public[name] & hospitals[name])
        assert len(held[name]) == round(VALIDATION_FRACTION * len(hospitals[name] | held[name]))
        assert not held[name] & test
    assert _names(again / "hospitals" / "test") == held  # seeded: a rerun scores the same images


@pytest.mark.slow
def test_a_tagged_start_is_pretrained_beside_the_plain_one_and_both_are_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for dataset in ("brain-mri", "chest-xray"):
        write_synthetic_tree(data / dataset, modality=dataset, train_per_class=6, test_per_class=2, size=32, seed=1)
    hospital_tree(data, "brain-mri", tmp_path / "tree", validation=False, carve_public=True)
    options = {"model": "cnn3", "image-size": 32, "epochs": 1, "batch-size": 8, "seed": 0}

    def start(name: str, tag: str, epochs: int) -> Path:
        return Path(starting_weights(name, work=tmp_path / "work", public_slice=tmp_path / "tree" / "public-slice",
                                     xray=data / "chest-xray", pretrain=lambda _: {**options, "epochs": epochs},
                                     tag=tag))  # fmt: skip

    plain = start("public-slice", "", 1)
    tagged = start("public-xray-slice", "longer", 2)
    assert plain == tmp_path / "work" / "starts" / "public-slice" / "model"
    assert tagged == tmp_path / "work" / "starts" / "public-xray-slice--longer" / "model"
    source = json.loads((tagged.parent / "request.json").read_text())["pretrained-weights"]
    assert source["start"] == "public-xray" and source["epochs"] == 2  # the chain's source is the tagged one
    assert (tmp_path / "work" / "starts" / "public-xray--longer" / "model" / "model.json").is_file()
    made = {p: p.stat().st_mtime_ns for p in (plain / "model.safetensors", tagged / "model.safetensors")}
    assert start("public-slice", "", 1) == plain and start("public-xray-slice", "longer", 2) == tagged
    assert {p: p.stat().st_mtime_ns for p in made} == made  # kept, not pretrained again
    assert json.loads((plain / "model.json").read_text())["pretrained_on"]["epochs"] == 1
    (plain / "feature_stats.safetensors").unlink()  # a start pretrained before pretrain wrote the statistics
    assert start("public-slice", "", 1) == plain and (plain / "feature_stats.safetensors").is_file()
    assert {p: p.stat().st_mtime_ns for p in made} == made  # given its statistics, not pretrained again
