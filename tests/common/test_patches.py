"""``medsilo data patches``: window positions computed by hand, tissue filtering, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from common.cli import app
from common.data.patches import cut_patches, tissue_mask, window_origins

# 400 px windows at IoU 0.3: (400 - d) / (400 + d) = 0.3 gives d = 215.4, so a 215 px stride.
XS = [0, 215, 430, 645, 860, 1075, 1290, 1505]  # the last full window ends at 1905 <= 2000
YS = [0, 215, 430, 645, 860, 1075]  # ... and at 1475 <= 1500


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    """A 2000 x 1500 slide: stained tissue (pink) in columns 0..999, white glass to the right."""
    pixels = np.full((1500, 2000, 3), 255, dtype=np.uint8)
    pixels[:, :1000] = (200, 100, 170)
    pixels[700:710, 100:200] = (20, 20, 120)  # a marker so that positions can be checked in the pixels
    src = tmp_path / "slides" / "colon_aca"
    src.mkdir(parents=True)
    Image.fromarray(pixels).save(src / "slide1.png")
    (src / "broken.png").write_bytes(b"not a png")
    return tmp_path / "slides"


def test_window_origins_match_the_hand_computed_grid() -> None:
    assert window_origins(2000, size=400, iou=0.3) == XS
    assert window_origins(1500, size=400, iou=0.3) == YS
    assert window_origins(399, size=400, iou=0.3) == []
    assert window_origins(800, size=400, iou=0.0) == [0, 400]


@pytest.mark.parametrize(
    ("min_tissue", "kept_xs"),
    [
        (0.5, [0, 215, 430, 645]),  # the window at 645 holds 355/400 = 0.89 tissue, at 860 only 0.35
        (0.3, [0, 215, 430, 645, 860]),
        (0.9, [0, 215, 430]),
        (0.0, XS),
    ],
)
def test_patches_are_the_windows_with_enough_tissue(slide: Path, tmp_path: Path, min_tissue: float, kept_xs) -> None:
    out = tmp_path / f"patches-{min_tissue}"
    summary = cut_patches(slide, out, size=400, iou=0.3, min_tissue=min_tissue)
    assert summary.images == 1 and summary.windows == len(XS) * len(YS)
    assert [name for name, _ in summary.skipped] == ["colon_aca/broken.png"]
    expected = sorted(f"slide1_x{x}_y{y}.png" for x in kept_xs for y in YS)
    assert sorted(p.name for p in (out / "colon_aca").iterdir()) == expected
    assert summary.patches == len(expected)
    with Image.open(out / "colon_aca" / "slide1_x0_y645.png") as patch:
        pixels = np.asarray(patch)
    assert pixels.shape == (400, 400, 3)
    assert (pixels[55:65, 100:200] == (20, 20, 120)).all() and (pixels[54, 100:200] == (200, 100, 170)).all()


def test_the_tissue_mask_is_otsu_on_saturation() -> None:
    rgb = np.full((10, 10, 3), 240, dtype=np.uint8)  # grey glass: no saturation
    rgb[:, :3] = (180, 60, 150)
    mask = tissue_mask(rgb)
    assert mask[:, :3].all() and not mask[:, 3:].any()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iou", "1.0"], "iou = 1.0 is invalid; expected 0 <= iou < 1"),
        (["--size", "0"], "size = 0 is invalid"),
        (["--min-tissue", "1.5"], "min-tissue = 1.5 is invalid"),
    ],
)
def test_bad_arguments_are_one_line(slide: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["data", "patches", "--in", str(slide), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_the_command_reports_what_it_cut(slide: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "patches", "--in", str(slide), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (
        "24 patch(es) of 48 window(s) from 1 image(s)" in result.output
        and "1 unreadable image(s) skipped" in result.output
    )
    missing = runner.invoke(app, ["data", "patches", "--in", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output
