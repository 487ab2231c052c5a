"""The near-twin audit finds planted flipped, rotated and resized copies, and writes a clean split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from common.cli import app
from common.data.check import check_data_root
from common.data.near_duplicates import near_twin_groups, write_clean_split


def _picture(seed: int) -> Image.Image:
    """A smooth random 96 px picture: distinct seeds give unrelated pictures."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(6, 6), dtype=np.uint8)
    return Image.fromarray(coarse).resize((96, 96), Image.Resampling.BICUBIC)


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """train: 6 pictures in 2 classes (+ a transposed copy); test: 3 disguised copies and 2 new pictures."""
    root = tmp_path / "data"
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")):
        (root / split / cls).mkdir(parents=True)
    for i in range(6):
        _picture(i).save(root / "train" / ("a" if i < 3 else "b") / f"img{i}.png")
    _picture(3).transpose(Image.Transpose.TRANSPOSE).save(root / "train" / "b" / "img3-transposed.png")
    _picture(0).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "test" / "a" / "flipped0.png")
    _picture(1).transpose(Image.Transpose.ROTATE_90).save(root / "test" / "a" / "rotated1.png")
    _picture(4).resize((70, 70)).save(root / "test" / "b" / "resized4.jpg", quality=90)
    _picture(10).save(root / "test" / "a" / "new10.png")
    _picture(11).save(root / "test" / "b" / "new11.png")
    return root


def test_the_planted_copies_are_found_and_nothing_else(planted: Path) -> None:
    twins = check_data_root(planted)["near_twins"]
    across = sorted(sorted(g) for g in twins["across"])
    assert across == [
        ["test/a/flipped0.png", "train/a/img0.png"],
        ["test/a/rotated1.png", "train/a/img1.png"],
        ["test/b/resized4.jpg", "train/b/img4.png"],
    ]
    assert twins["groups_within"] == {"train": 1}  # img3 and its transposed copy
    assert twins["clean_split_moves"] == {
        "test/a/flipped0.png": "train",
        "test/a/rotated1.png": "train",
        "test/b/resized4.jpg": "train",
    }
    assert "near_twins" not in check_data_root(planted, near=False)


def test_the_clean_split_keeps_every_group_on_one_side(planted: Path, tmp_path: Path) -> None:
    twins = check_data_root(planted)["near_twins"]
    out = write_clean_split(planted, twins["images"], twins["clean_split_moves"], tmp_path / "clean")
    assert sorted(p.name for p in (out / "test").rglob("*.*")) == ["new10.png", "new11.png"]
    assert (out / "train" / "a" / "flipped0.png").is_file() and (out / "train" / "b" / "resized4.jpg").is_file()
    assert len(list((out / "train").rglob("*.*"))) == 10
    assert check_data_root(out)["near_twins"]["across"] == []
    with pytest.raises(ValueError, match="is not empty"):
        write_clean_split(planted, twins["images"], twins["clean_split_moves"], out)


def test_groups_chain_and_the_tolerance_is_checked() -> None:
    base = np.uint64(0)
    one, three = np.uint64(0b1), np.uint64(0b111)
    hashes = np.array([[base] * 8, [one] * 8, [three] * 8, [np.uint64(2**64 - 1)] * 8], dtype=np.uint64)
    assert near_twin_groups(hashes, tolerance=2) == [[0, 1, 2]]  # 0~1 and 1~2: one group though 0 and 2 differ by 3
    assert near_twin_groups(hashes, tolerance=0) == []
    with pytest.raises(ValueError, match="tolerance = 40 is invalid"):
        near_twin_groups(hashes, tolerance=40)


def test_the_command_reports_and_writes_the_clean_split(planted: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(planted), "--write-clean-split", str(tmp_path / "clean")])
    assert result.exit_code == 0, result.output
    assert "1 within train; 3 group(s) across splits" in result.output and "(3 moved)" in result.output
    bad = runner.invoke(app, ["data", "check", str(planted), "--no-near", "--write-clean-split", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--write-clean-split needs the near-twin audit" in bad.output
