"""Tests for ``medsilo predict`` and ``medsilo ui`` (the launcher; the page is in test_ui_app.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from typer.testing import CliRunner

from common.calibration import Calibration, write_calibration
from common.cli import app
from common.models import ModelSpec, build_from_spec, save_model_dir

CLASSES = ("glioma", "meningioma", "notumor")
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = ModelSpec("cnn3", CLASSES, SIZE, 1, (0.5,), (0.25,))
    return save_model_dir(tmp_path_factory.mktemp("model"), build_from_spec(spec, seed=0), spec)


@pytest.fixture()
def scans(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    gray, rgb = tmp_path / "scan-a.png", tmp_path / "scan-b.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(gray)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(rgb, quality=95)
    return [gray, rgb]


def _expected_probabilities(model_dir: Path, path: Path) -> np.ndarray:
    """An independent forward pass: PIL decode and resize, manual normalisation, softmax."""
    spec = ModelSpec("cnn3", CLASSES, SIZE, 1, (0.5,), (0.25,))
    model = build_from_spec(spec, seed=0).eval()
    with Image.open(path) as img:
        array = np.asarray(img.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
    x = torch.from_numpy((array / 255.0 - 0.5) / 0.25)[None, None]
    with torch.no_grad():
        return torch.softmax(model(x).double(), dim=1)[0].numpy()


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_predict_prints_each_images_probabilities(model_dir: Path, scans: list[Path]):
    result = CliRunner().invoke(app, ["predict", "--model", str(model_dir), *map(str, scans)])
    assert result.exit_code == 0, result.output
    for path in scans:
        probs = _expected_probabilities(model_dir, path)
        best = CLASSES[int(probs.argmax())]
        assert f"{path.name}: {best} (p = {probs.max():.2f})" in result.output.replace("\n", "")
        rows = [line for line in result.output.splitlines() if any(c in line for c in CLASSES)]
        for name, p in zip(CLASSES, probs, strict=True):
            assert any(name in row and f"{p:.4f}" in row for row in rows), f"{path.name}: no row {name} {p:.4f}"
    assert result.output.count("*") == len(scans)  # one predicted class marked per image
    assert "Grad-CAM" not in result.output


def test_predict_applies_the_stored_temperature_and_threshold(model_dir: Path, scans: list[Path], tmp_path: Path):
    calibrated = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated)
    positive = ("glioma", "meningioma")
    write_calibration(calibrated, Calibration(temperature=(0.25,), threshold=(0.5,), positive=positive,
                                              target_sensitivity=0.95))  # fmt: skip
    result = CliRunner().invoke(app, ["predict", "--model", str(calibrated), *map(str, scans)])
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", "")
    for path in scans:
        probs = softmax(np.log(_expected_probabilities(model_dir, path)) / 0.25)  # logits divided by T
        for name, p in zip(CLASSES, probs, strict=True):
            assert f"{p:.4f}" in text, f"{path.name}: no calibrated {name} {p:.4f}"
        score = probs[0] + probs[1]
        verdict = "positive" if score >= 0.5 else "negative"
        assert f"{verdict}: p(glioma or meningioma) = {score:.4f}" in text


def test_predict_writes_grad_cam_overlays(model_dir: Path, scans: list[Path], tmp_path: Path):
    out = tmp_path / "cams"
    result = CliRunner().invoke(app, ["predict", "--model", str(model_dir), "--cam", str(out), *map(str, scans)])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in out.iterdir())
    assert written == ["scan-a_cam.png", "scan-b_cam.png"]
    for name in written:
        with Image.open(out / name) as img:
            assert img.size == (SIZE, SIZE) and img.mode == "RGB"
        assert name in result.output.replace("\n", "")


def test_predict_rejects_a_text_file(model_dir: Path, scans: list[Path], tmp_path: Path):
    notes = tmp_path / "notes.png"
    notes.write_text("hello\n")
    out = tmp_path / "cams"
    result = CliRunner().invoke(
        app, ["predict", "--model", str(model_dir), "--cam", str(out), str(scans[0]), str(notes)]
    )
    line = _one_line_error(result)
    assert "notes.png: not a readable image" in line and "expected a png, jpg, tif or bmp file" in line
    assert not out.exists()  # nothing written when one input is bad


def test_predict_rejects_a_missing_image(model_dir: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["predict", "--model", str(model_dir), str(tmp_path / "absent.png")])
    assert "absent.png: not a readable image" in _one_line_error(result)


def test_predict_rejects_a_folder_that_is_no_model(scans: list[Path], tmp_path: Path):
    result = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "nothing"), str(scans[0])])
    assert "is not a model directory; expected model.json and model.safetensors" in _one_line_error(result)


def test_predict_cam_rejects_images_with_the_same_name(model_dir: Path, scans: list[Path], tmp_path: Path):
    twin = tmp_path / "other" / scans[0].name
    twin.parent.mkdir()
    twin.write_bytes(scans[0].read_bytes())
    args = ["predict", "--model", str(model_dir), "--cam", str(tmp_path / "cams"), str(scans[0]), str(twin)]
    line = _one_line_error(CliRunner().invoke(app, args))
    assert "--cam: several images are named 'scan-a'; expected distinct file names" in line


def test_predict_needs_an_image(model_dir: Path):
    result = CliRunner().invoke(app, ["predict", "--model", str(model_dir)])
    assert result.exit_code == 2 and "Missing argument 'IMAGES...'" in result.output


def test_ui_launches_streamlit_headless_without_telemetry(model_dir: Path, monkeypatch):
    calls: list[list[str]] = []

    def fake_run(command: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    result = CliRunner().invoke(app, ["ui", "--model", str(model_dir), "--port", "8765"])
    assert result.exit_code == 3, result.output  # streamlit's exit status is passed on
    (command,) = calls
    assert command[1:4] == ["-m", "streamlit", "run"]
    assert Path(command[4]).name == "ui_app.py" and Path(command[4]).is_file()
    options = dict(zip(command[5:-3:2], command[6:-3:2], strict=True))
    assert options == {
        "--server.headless": "true",
        "--server.address": "localhost",
        "--server.port": "8765",
        "--browser.gatherUsageStats": "false",
    }
    assert command[-3:] == ["--", "--model", str(model_dir.resolve())]


def test_ui_passes_an_example_image_to_the_page(model_dir: Path, tmp_path: Path, monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(
        subprocess, "run", lambda command, check: calls.append(command) or subprocess.CompletedProcess(command, 0)
    )
    image = tmp_path / "scan.png"
    image.write_bytes(b"png")
    result = CliRunner().invoke(app, ["ui", "--model", str(model_dir), "--example", str(image)])
    assert result.exit_code == 0, result.output
    (command,) = calls
    assert command[-5:] == ["--", "--model", str(model_dir.resolve()), "--example", str(image.resolve())]


def test_ui_rejects_a_missing_example_image(model_dir: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("streamlit started"))
    result = CliRunner().invoke(app, ["ui", "--model", str(model_dir), "--example", str(tmp_path / "gone.png")])
    assert f"example image {tmp_path / 'gone.png'} is not a file" in _one_line_error(result)


def test_ui_rejects_a_folder_that_is_no_model(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("streamlit started"))
    result = CliRunner().invoke(app, ["ui", "--model", str(tmp_path)])
    assert "is not a model directory" in _one_line_error(result)


def test_ui_rejects_a_bad_port(model_dir: Path):
    result = CliRunner().invoke(app, ["ui", "--model", str(model_dir), "--port", "70000"])
    assert result.exit_code == 2 and "70000 is not in the range 1<=x<=65535" in result.output
