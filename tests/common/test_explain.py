"""Tests for common.explain: image loading, class probabilities, Grad-CAM and overlays."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from common.data.synth import TEXTURES, synth_image
from common.explain import class_probabilities, gradcam, load_image, overlay, target_layer
from common.models import MODELS, ModelSpec, build_from_spec
from common.precision import Precision

SIZE = 32  # the trained cnn3
CLASSES = ("stripes", "solid")


pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(arch: str = "cnn3", *, size: int = 64, channels: int = 1, dp: bool = False) -> ModelSpec:
    return ModelSpec(arch, CLASSES, size, channels, (0.5,) * channels, (0.25,) * channels, dp)


def _evidence(label: int, *, size: int, channels: int, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """A synthetic image whose class evidence is one textured disc, and the disc's mask."""
    array, (row, col, radius) = synth_image(
        TEXTURES.index(CLASSES[label]), len(TEXTURES), size=size, channels=channels, rng=rng
    )
    image = torch.from_numpy(array.reshape(size, size, channels).copy()).permute(2, 0, 1).contiguous()
    yy, xx = np.mgrid[0:size, 0:size]
    return image, np.hypot(yy - row, xx - col) <= radius


def _normalised(image: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Independent of the project's transforms: scale to [0, 1], then (x - mean) / std."""
    mean = torch.tensor(spec.mean).view(-1, 1, 1)
    std = torch.tensor(spec.std).view(-1, 1, 1)
    return ((image.double() / 255.0 - mean) / std).float().unsqueeze(0)


def _reference_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM by hand (Selvaraju et al.): ReLU(sum_k mean(dy/dA_k) A_k), upsampled, min-max scaled."""
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model.eval()(x.requires_grad_(True))
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logits[0, target], store["a"])
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * store["a"]).sum(dim=1, keepdim=True)).detach()
    cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp_min(0)[0, 0]
    return ((cam - cam.min()) / (cam.max() - cam.min() + 1e-7)).numpy()


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "dp"])
def trained_cnn3(request) -> tuple[nn.Module, ModelSpec]:
    """cnn3 (and its DP-compatible variant) trained briefly to tell striped discs from solid ones."""
    spec = _spec(size=SIZE, dp=request.param)
    rng = np.random.default_rng(0)
    images = [_evidence(i % 2, size=SIZE, channels=1, rng=rng)[0] for i in range(32)]
    x = torch.cat([_normalised(image, spec) for image in images])
    y = torch.arange(32) % 2
    model = build_from_spec(spec, seed=0).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), spec


def _assert_untouched(model: nn.Module, hooks: int, state: dict[str, torch.Tensor]) -> None:
    """No hook left behind, no gradient stored, every parameter still trainable, weights unchanged."""
    assert _hook_count(model) == hooks, "Grad-CAM left hooks on the model"
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- Grad-CAM


def test_gradcam_finds_the_region_that_holds_the_evidence(trained_cnn3):
    model, spec = trained_cnn3
    assert spec.dp_compatible == any(isinstance(m, nn.GroupNorm) for m in model.modules())
    hooks, state = _hook_count(model), {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(1)
    inside, outside = [], []
    for i in range(8):
        label = i % 2
        image, disc = _evidence(label, size=SIZE, channels=1, rng=rng)
        cam = gradcam(model, spec, image, label)
        assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
        assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.std() > 0.05
        inside.append(cam[disc].mean())
        outside.append(cam[~disc].mean())
    assert all(i > o for i, o in zip(inside, outside, strict=True)), "heat outside the evidence"
    assert np.mean(inside) > 2 * np.mean(outside)
    _assert_untouched(model, hooks, state)


def test_gradcam_matches_a_hand_written_reference(trained_cnn3):
    model, spec = trained_cnn3
    image, _ = _evidence(0, size=SIZE, channels=1, rng=np.random.default_rng(2))
    for target in (0, 1):
        expected = _reference_cam(model, model.features[-2], _normalised(image, spec), target)
        np.testing.assert_allclose(gradcam(model, spec, image, target), expected, atol=2e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_gradcam_under_a_lower_precision_is_close_to_the_float32_reference(trained_cnn3, precision: str):
    model, spec = trained_cnn3
    hooks, state = _hook_count(model), {k: v.clone() for k, v in model.state_dict().items()}
    image, disc = _evidence(1, size=SIZE, channels=1, rng=np.random.default_rng(4))
    expected = _reference_cam(model, model.features[-2], _normalised(image, spec), 1)
    cam = gradcam(model, spec, image, precision=Precision(precision, "cpu"))  # the predicted class, found in bf16
    assert cam.dtype == np.float32 and cam.shape == (SIZE, SIZE)
    assert np.abs(cam - expected).max() < 0.05 and cam[disc].mean() > 2 * cam[~disc].mean()
    _assert_untouched(model, hooks, state)  # our float32 hooks are gone too


def test_gradcam_defaults_to_the_predicted_class(trained_cnn3):
    model, spec = trained_cnn3
    image, _ = _evidence(1, size=SIZE, channels=1, rng=np.random.default_rng(3))
    predicted = int(class_probabilities(model, spec, image).argmax())
    np.testing.assert_array_equal(gradcam(model, spec, image), gradcam(model, spec, image, predicted))


def test_gradcam_works_under_no_grad(trained_cnn3):
    model, spec = trained_cnn3
    image, _ = _evidence(0, size=SIZE, channels=1, rng=np.random.default_rng(3))
    with torch.no_grad():
        cam = gradcam(model, spec, image, 0)
    np.testing.assert_array_equal(cam, gradcam(model, spec, image, 0))


@pytest.mark.parametrize("dp", [False, True], ids=["plain", "dp"])
@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_gradcam_per_architecture(arch, dp):
    """Random weights (seed 0): a well-formed, non-constant map, with the model left as it was."""
    channels = 3 if arch == "resnet18" else 1
    spec = _spec(arch, channels=channels, dp=dp)
    model = build_from_spec(spec, seed=0).eval()
    if dp:
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    image, _ = _evidence(0, size=64, channels=channels, rng=np.random.default_rng(0))
    hooks, state = _hook_count(model), {k: v.clone() for k, v in model.state_dict().items()}

    cam = gradcam(model, spec, image)

    assert cam.shape == (64, 64) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0 and cam.std() > 0.01, "a constant map"
    _assert_untouched(model, hooks, state)
    assert overlay(image, cam).shape == (64, 64, 3)


def test_gradcam_resnet18_matches_the_reference():
    spec = _spec("resnet18", channels=3)
    model = build_from_spec(spec, seed=0).eval()
    image, _ = _evidence(1, size=64, channels=3, rng=np.random.default_rng(4))
    expected = _reference_cam(model, model.layer4[-1], _normalised(image, spec), 1)
    np.testing.assert_allclose(gradcam(model, spec, image, 1), expected, atol=2e-3)


def test_gradcam_rejects_a_bad_target_class(trained_cnn3):
    model, spec = trained_cnn3
    image, _ = _evidence(0, size=SIZE, channels=1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"target_class = 2 is invalid; expected 0\.\.1"):
        gradcam(model, spec, image, 2)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_target_layer_is_the_last_convolutional_stage(arch):
    size = 80 if arch == "inception_v3" else 64
    model = build_from_spec(_spec(arch, size=size), seed=0)
    expected = {
        "cnn3": lambda m: m.features[-2],
        "resnet18": lambda m: m.layer4[-1],
        "resnet34": lambda m: m.layer4[-1],
        "resnet50": lambda m: m.layer4[-1],
        "densenet121": lambda m: m.features.denseblock4,
        "alexnet": lambda m: m.features[-2],
        "vgg11": lambda m: m.features[-2],
        "inception_v3": lambda m: m.Mixed_7c,
    }[arch](model)
    assert target_layer(model, arch) is expected


def test_target_layer_rejects_an_unknown_architecture():
    with pytest.raises(ValueError, match=r"architecture = 'vit' has no Grad-CAM layer; expected one of: cnn3, "):
        target_layer(nn.Linear(2, 2), "vit")


def test_target_layer_rejects_a_model_of_another_architecture():
    with pytest.raises(ValueError, match=r"architecture = 'resnet18' does not match the _CNN3 model"):
        target_layer(build_from_spec(_spec()), "resnet18")


# --------------------------------------------------------------------------- probabilities


def test_class_probabilities_match_an_independent_forward(trained_cnn3):
    model, spec = trained_cnn3
    rng = np.random.default_rng(5)
    for label in (0, 1):
        image, _ = _evidence(label, size=SIZE, channels=1, rng=rng)
        probs = class_probabilities(model, spec, image)
        with torch.no_grad():
            expected = torch.softmax(model(_normalised(image, spec)).double(), dim=1)[0].numpy()
        assert probs.shape == (2,) and probs.dtype == np.float64
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        assert int(probs.argmax()) == label  # the briefly trained model does tell the classes apart


@pytest.mark.parametrize(
    ("image", "found"),
    [
        (torch.zeros(1, SIZE, SIZE), "torch.float32 (1, 32, 32)"),
        (torch.zeros(3, SIZE, SIZE, dtype=torch.uint8), "torch.uint8 (3, 32, 32)"),
        (torch.zeros(1, 16, 16, dtype=torch.uint8), "torch.uint8 (1, 16, 16)"),
    ],
)
def test_a_malformed_image_is_rejected(trained_cnn3, image, found):
    model, spec = trained_cnn3
    message = re.escape(f"image is {found}; expected torch.uint8 (1, 32, 32) (use load_image)")
    with pytest.raises(ValueError, match=message):
        class_probabilities(model, spec, image)
    with pytest.raises(ValueError, match=message):
        gradcam(model, spec, image)


# --------------------------------------------------------------------------- overlay


@pytest.mark.parametrize("channels", [1, 3])
def test_overlay_paints_the_hot_region_red(channels):
    image = torch.full((channels, 40, 40), 128, dtype=torch.uint8)
    cam = np.zeros((40, 40), dtype=np.float32)
    cam[:20, :20] = 1.0
    blended = overlay(image, cam)
    assert blended.shape == (40, 40, 3) and blended.dtype == np.uint8
    hot, cold = blended[:20, :20].astype(int), blended[20:, 20:].astype(int)
    assert hot[..., 0].mean() > cold[..., 0].mean() + 50  # jet: 1 is red ...
    assert cold[..., 2].mean() > hot[..., 2].mean() + 50  # ... and 0 is blue


def test_overlay_keeps_the_image_visible():
    image = torch.zeros((1, 16, 16), dtype=torch.uint8)
    image[:, :, 8:] = 255
    blended = overlay(image, np.zeros((16, 16), dtype=np.float32)).astype(int)
    assert blended[:, 8:].sum() > blended[:, :8].sum()


@pytest.mark.parametrize(
    ("cam", "message"),
    [
        (np.zeros((8, 8), dtype=np.float32), r"image \(1, 16, 16\) and cam \(8, 8\) do not match"),
        (np.full((16, 16), 1.5, dtype=np.float32), r"cam values lie outside \[0, 1\]"),
    ],
)
def test_overlay_rejects_a_bad_cam(cam, message):
    with pytest.raises(ValueError, match=message):
        overlay(torch.zeros((1, 16, 16), dtype=torch.uint8), cam)


# --------------------------------------------------------------------------- loading


def test_load_image_reads_gray_and_rgb(tmp_path: Path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "scan.png")
    loaded = load_image(tmp_path / "scan.png", _spec(size=24, channels=3))
    assert loaded.dtype == torch.uint8
    np.testing.assert_array_equal(loaded.permute(1, 2, 0).numpy(), rgb)

    Image.fromarray(np.full((50, 30), 77, dtype=np.uint8)).save(tmp_path / "flat.jpg", quality=100)
    gray = load_image(str(tmp_path / "flat.jpg"), _spec(size=24, channels=1))
    assert gray.shape == (1, 24, 24) and int(gray.min()) >= 76 and int(gray.max()) <= 78


def test_load_image_rejects_a_text_file(tmp_path: Path):
    path = tmp_path / "notes.png"
    path.write_text("not an image\n")
    with pytest.raises(ValueError, match=r"notes\.png: not a readable image .*; expected a png, jpg, tif or bmp file"):
        load_image(path, _spec())


def test_load_image_rejects_a_missing_file(tmp_path: Path):
    with pytest.raises(ValueError, match=r"missing\.png: not a readable image"):
        load_image(tmp_path / "missing.png", _spec())


def test_dicom_needs_pydicom(tmp_path: Path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pydicom" else real(name, *a))
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"\0" * 200)
    with pytest.raises(ValueError, match=r"scan\.dcm: reading DICOM needs pydicom; expected 'pip install pydicom'"):
        load_image(path, _spec())


def test_dicom_is_read_with_pydicom(tmp_path: Path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.tile(np.linspace(1000, 3000, 32, dtype=np.uint16), (32, 1))
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "scan.dcm", enforce_file_format=True)

    image = load_image(tmp_path / "scan.dcm", _spec(size=32))
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8
    assert int(image[0, :, 0].min()) == 0 and int(image[0, :, -1].max()) == 255  # min-max scaled to 8 bits
    assert torch.all(image[0, 0, 1:] >= image[0, 0, :-1])  # the ramp survives


def test_a_broken_dicom_is_rejected(tmp_path: Path):
    pytest.importorskip("pydicom")
    path = tmp_path / "broken.dcm"
    path.write_text("not dicom")
    with pytest.raises(ValueError, match=r"broken\.dcm: not a readable DICOM image"):
        load_image(path, _spec())
