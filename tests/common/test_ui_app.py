"""Tests for the Streamlit page behind ``medsilo ui``, driven by Streamlit's AppTest."""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import softmax
from streamlit.testing.v1 import AppTest

from common import ui_app
from common.calibration import Calibration, write_calibration
from common.models import ModelSpec, build_from_spec, save_model_dir

PAGE = str(Path(ui_app.__file__).resolve())
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
SPEC = ModelSpec("cnn3", CLASSES, 32, 1, (0.5,), (0.25,))
TYPES = "png, jpg, jpeg"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_model_dir(tmp_path_factory.mktemp("model"), build_from_spec(SPEC, seed=0), SPEC)


@pytest.fixture()
def no_pydicom(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pydicom" else real(name, *a))


@pytest.fixture()
def page(model_dir: Path, monkeypatch, no_pydicom) -> AppTest:
    """The page with the model named by $MEDSILO_UI_MODEL, after its first run."""
    monkeypatch.setattr(sys, "argv", [PAGE])
    monkeypatch.setenv(ui_app.MODEL_ENV, str(model_dir))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception and not at.error
    return at


def _png(tmp_path: Path) -> bytes:
    """A sample scan written with PIL."""
    path = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _expected_probabilities(data: bytes) -> np.ndarray:
    """An independent forward pass: PIL decode and resize, manual normalisation, softmax."""
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    with torch.no_grad():
        logits = build_from_spec(SPEC, seed=0).eval()(torch.from_numpy((array / 255.0 - 0.5) / 0.25)[None, None])
    return torch.softmax(logits.double(), dim=1)[0].numpy()


def test_upload_an_image_shows_the_prediction_and_its_grad_cam(page: AppTest, tmp_path: Path):
    assert page.title[0].value == "medsilo: image classification with Grad-CAM"
    assert not page.image and not page.subheader
    data = _png(tmp_path)

    page.file_uploader[0].set_value(("scan.png", data, "image/png"))
    page.run()

    assert not page.exception and not page.error
    probs = _expected_probabilities(data)
    best = int(probs.argmax())
    assert [s.value for s in page.subheader] == [f"Prediction: {CLASSES[best]} (p = {probs[best]:.2f})"]
    assert len(page.progress) == len(CLASSES)  # one probability bar per class
    assert len(page.image) == 1 and page.image[0].value[0].startswith("/mock/media/")
    assert "Grad-CAM" in page.image[0].captions[0]


def test_the_page_applies_the_models_temperature_and_shows_its_operating_point(model_dir: Path, tmp_path: Path,
                                                                               monkeypatch, no_pydicom):  # fmt: skip
    calibrated = tmp_path / "calibrated"
    shutil.copytree(model_dir, calibrated)
    write_calibration(calibrated, Calibration(temperature=(0.5,), threshold=(0.4,), positive=("glioma", "pituitary")))
    monkeypatch.setattr(sys, "argv", [PAGE, "--model", str(calibrated)])
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    data = _png(tmp_path)
    at.file_uploader[0].set_value(("scan.png", data, "image/png"))
    at.run()
    assert not at.exception and not at.error
    probs = softmax(np.log(_expected_probabilities(data)) / 0.5)
    best = int(probs.argmax())
    assert [s.value for s in at.subheader] == [f"Prediction: {CLASSES[best]} (p = {probs[best]:.2f})"]
    assert "temperature 0.5" in at.caption[0].value
    score = probs[0] + probs[3]
    assert any(f"p(glioma or pituitary) = {score:.4f}" in m.value for m in at.markdown)


@pytest.mark.parametrize(
    ("name", "data", "mime", "message"),
    [
        ("notes.txt", b"not an image\n", "text/plain", f"notes.txt is not a supported image; expected a {TYPES} file"),
        ("notes.png", b"not an image\n", "image/png", f"notes.png is not a readable image; expected a {TYPES} file"),
    ],
    ids=["text-file", "text-named-png"],
)
def test_upload_a_text_file_gets_a_clear_error(page: AppTest, name: str, data: bytes, mime: str, message: str):
    page.file_uploader[0].set_value((name, data, mime))
    page.run()
    assert not page.exception
    assert [e.value for e in page.error] == [message]
    assert not page.image and not page.subheader


def test_an_oversized_upload_is_refused_by_the_page(page: AppTest):
    data = b"\0" * (ui_app.MAX_UPLOAD_MB * 2**20 + 1)
    page.file_uploader[0].set_value(("huge.png", data, "image/png"))
    page.run()
    assert [e.value for e in page.error] == [f"huge.png is 20.0 MB; expected at most {ui_app.MAX_UPLOAD_MB} MB"]
    assert not page.image


def test_the_model_comes_from_the_command_line(model_dir: Path, tmp_path: Path, monkeypatch, no_pydicom):
    monkeypatch.setattr(sys, "argv", [PAGE, "--model", str(model_dir)])
    monkeypatch.setenv(ui_app.MODEL_ENV, str(tmp_path / "elsewhere"))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception and not at.error
    assert at.caption[0].value == f"cnn3 from {model_dir}; classes: {', '.join(CLASSES)}"


def test_no_model_gets_a_clear_error(monkeypatch):
    monkeypatch.setattr(sys, "argv", [PAGE])
    monkeypatch.delenv(ui_app.MODEL_ENV, raising=False)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert [e.value for e in at.error] == [
        "no model directory; expected 'medsilo ui --model DIR' or MEDSILO_UI_MODEL=DIR"
    ]
    assert not at.file_uploader


def test_a_folder_that_is_no_model_gets_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [PAGE, "--model", str(tmp_path)])
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert [e.value for e in at.error] == [
        f"{tmp_path} is not a model directory; expected model.json and model.safetensors"
    ]
    assert not at.file_uploader


def test_an_example_image_is_shown_until_something_is_uploaded(
    model_dir: Path, tmp_path: Path, monkeypatch, no_pydicom
):
    data = _png(tmp_path)
    monkeypatch.setattr(sys, "argv", [PAGE, "--model", str(model_dir), "--example", str(tmp_path / "scan.png")])
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()

    assert not at.exception and not at.error
    assert [i.value for i in at.info] == ["Example: scan.png (upload an image to classify your own)"]
    probs = _expected_probabilities(data)
    best = int(probs.argmax())
    assert [s.value for s in at.subheader] == [f"Prediction: {CLASSES[best]} (p = {probs[best]:.2f})"]
    assert len(at.progress) == len(CLASSES)
    assert len(at.image) == 1 and "Grad-CAM" in at.image[0].captions[0]

    at.file_uploader[0].set_value(("notes.txt", b"not an image\n", "text/plain"))
    at.run()  # an upload replaces the example
    assert not at.info and not at.subheader and not at.image
    assert [e.value for e in at.error] == [f"notes.txt is not a supported image; expected a {TYPES} file"]


def test_a_missing_example_image_gets_a_clear_error(model_dir: Path, tmp_path: Path, monkeypatch):
    missing = tmp_path / "gone.png"
    monkeypatch.setattr(sys, "argv", [PAGE, "--model", str(model_dir), "--example", str(missing)])
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        f"example image {missing} is not a readable file; expected an image for --example"
    ]
    assert not at.info and not at.subheader and not at.image
    assert at.file_uploader  # uploading still works


def test_example_from_args():
    assert ui_app.example_from_args(["--model", "/m", "--example", "/x/scan.png"]) == Path("/x/scan.png")
    assert ui_app.example_from_args(["--model", "/m"]) is None
    assert ui_app.example_from_args(["--exam", "/abbreviated"]) is None


def test_model_dir_from_args_prefers_the_command_line():
    env = {ui_app.MODEL_ENV: "/from/env"}
    assert ui_app.model_dir_from_args(["--model", "/from/argv"], env) == Path("/from/argv")
    assert ui_app.model_dir_from_args(["-q", "-p", "no:cacheprovider", "tests/x.py"], env) == Path("/from/env")
    with pytest.raises(ValueError, match=r"no model directory; expected 'medsilo ui --model DIR' or MEDSILO_UI_MODEL="):
        ui_app.model_dir_from_args(["--mod", "/abbreviated"], {})


def test_dicom_is_offered_only_with_pydicom(monkeypatch, no_pydicom):
    assert ui_app.upload_types() == ("png", "jpg", "jpeg")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "pydicom" else None)
    assert ui_app.upload_types() == ("png", "jpg", "jpeg", "dcm")
