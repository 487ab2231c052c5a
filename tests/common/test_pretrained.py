"""Starting weights (common.pretrained): local files, model directories, and torchvision's ImageNet weights offline.

Nothing is downloaded: every test runs offline (``offline_torch_home``: torch.hub's ``urlopen``
refuses, ``$TORCH_HOME`` is a fresh folder), so the ImageNet path either finds a file placed
there or gives its one line.
"""

from __future__ import annotations

import builtins
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision import models as tvm

from common.config import ConfigError, parse_run_config
from common.experiment import initial_model, saved_spec
from common.models import ModelSpec, Pretraining, build_from_spec, build_model, save_model_dir
from common.pretrained import load_pretrained, pretrained_on

RESNET18_FILE = "resnet18-f37072fd.pth"
"""The basename of torchvision's ResNet18_Weights.IMAGENET1K_V1 URL: the file torch.hub looks for."""
CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


class _Trap:
    """Unpickling this creates ``path``: proof that a loader ran pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.fixture(autouse=True)
def checkpoints(offline_torch_home: Path) -> Path:
    """Every test here runs offline, with an empty ``$TORCH_HOME``."""
    return offline_torch_home


def _spec(arch: str = "resnet18", classes: tuple[str, ...] = CLASSES, *, dp: bool = False) -> ModelSpec:
    return ModelSpec(arch, classes, 32, 1, (0.5,), (0.25,), dp_compatible=dp)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: list[str]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module")
def imagenet_like() -> dict[str, torch.Tensor]:
    """A 3-channel, 1000-class resnet18 state dict in torchvision's format, standing in for ImageNet weights."""
    torch.manual_seed(11)
    return tvm.resnet18(weights=None).state_dict()


def _write_weights(path: Path, state: dict[str, torch.Tensor]) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


# ---------------------------------------------------------------- local files


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_a_gray_model_sums_the_rgb_first_convolution(tmp_path, imagenet_like, suffix):
    path = _write_weights(tmp_path / f"weights{suffix}", imagenet_like)
    model = build_model("resnet18", num_classes=4, in_channels=1, seed=1)
    fresh_fc = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fc.")}
    skipped = load_pretrained(model, path, spec=_spec())
    state = model.state_dict()
    assert sorted(skipped) == ["fc.bias", "fc.weight"]
    expected = imagenet_like["conv1.weight"].numpy().astype(np.float64).sum(axis=1, keepdims=True)
    assert state["conv1.weight"].shape == (64, 1, 7, 7)
    np.testing.assert_allclose(state["conv1.weight"].numpy(), expected, rtol=0, atol=1e-5)
    gray = torch.rand(2, 1, 32, 32)  # a gray image answers as it would as three equal channels
    as_rgb = torch.nn.functional.conv2d(gray.expand(-1, 3, -1, -1), imagenet_like["conv1.weight"], stride=2, padding=3)
    torch.testing.assert_close(model.conv1(gray), as_rgb, rtol=1e-4, atol=1e-4)
    assert _equal(state, fresh_fc, list(fresh_fc))
    assert _equal(state, imagenet_like, [k for k in state if k not in fresh_fc and k != "conv1.weight"])


def test_same_shapes_load_exactly(tmp_path, imagenet_like):
    path = _write_weights(tmp_path / "w.safetensors", imagenet_like)
    model = build_model("resnet18", num_classes=1000, in_channels=3, seed=2)
    spec = ModelSpec("resnet18", tuple(str(i) for i in range(1000)), 32, 3, (0.5,) * 3, (0.25,) * 3)
    assert load_pretrained(model, path, spec=spec) == []
    assert _equal(model.state_dict(), imagenet_like, list(imagenet_like))


def test_a_missing_source_or_a_folder_without_model_json_raises(tmp_path):
    model = build_from_spec(_spec("cnn3"))
    with pytest.raises(ValueError, match="does not exist; expected 'imagenet', a model directory"):
        load_pretrained(model, tmp_path / "absent.safetensors", spec=_spec("cnn3"))
    with pytest.raises(ValueError, match="is a folder without model.json"):
        load_pretrained(model, tmp_path, spec=_spec("cnn3"))


def test_a_file_without_a_state_dict_raises(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_pretrained(build_from_spec(_spec("cnn3")), tmp_path / "tensor.pt", spec=_spec("cnn3"))


def test_a_pickled_payload_is_never_run(tmp_path):
    marker = tmp_path / "unpickled"
    torch.save({"conv1.weight": _Trap(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is unreadable"):
        load_pretrained(build_from_spec(_spec()), tmp_path / "evil.pt", spec=_spec())
    assert not marker.exists()


def test_a_file_that_is_no_safetensors_raises(tmp_path):
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors' is unreadable"):
        load_pretrained(build_from_spec(_spec("cnn3")), tmp_path / "garbage.safetensors", spec=_spec("cnn3"))


def test_the_run_loads_a_weights_file_and_records_no_pretraining(tmp_path):
    source = build_model("cnn3", num_classes=4, in_channels=1, seed=99)
    path = _write_weights(tmp_path / "w.safetensors", source.state_dict())
    cfg = parse_run_config({"model": "cnn3", "pretrained-weights": str(path)})
    assert _equal(initial_model(cfg).state_dict(), source.state_dict(), list(source.state_dict()))
    assert saved_spec(cfg).pretrained_on is None
    with pytest.raises(ValueError, match="absent.pt"):
        initial_model(parse_run_config({"model": "cnn3", "pretrained-weights": str(tmp_path / "absent.pt")}))


# ---------------------------------------------------------------- model directories

RECORD = Pretraining("public-mri", CLASSES, images=24, epochs=2, image_size=32, date="2026-05-01")


def _model_dir(tmp_path: Path, spec: ModelSpec, seed: int = 5) -> tuple[Path, dict[str, torch.Tensor]]:
    model = build_from_spec(spec, seed=seed)
    save_model_dir(tmp_path / "start", model, replace(spec, pretrained_on=RECORD))
    return tmp_path / "start", model.state_dict()


@pytest.mark.parametrize("name", ["", "model.safetensors"])
def test_a_model_directory_of_the_same_classes_loads_whole_and_its_record_travels(tmp_path, name):
    directory, source = _model_dir(tmp_path, _spec("cnn3"))
    cfg = parse_run_config({"model": "cnn3", "pretrained-weights": str(directory / name) if name else str(directory)})
    assert _equal(initial_model(cfg).state_dict(), source, list(source))
    assert saved_spec(cfg).pretrained_on == RECORD


def test_other_classes_leave_the_head_fresh_even_at_the_same_count(tmp_path):
    directory, source = _model_dir(tmp_path, _spec("cnn3", ("w", "x", "y", "z")))
    model = build_from_spec(_spec("cnn3"), seed=1)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    assert sorted(load_pretrained(model, directory, spec=_spec("cnn3"))) == ["classifier.bias", "classifier.weight"]
    state = model.state_dict()
    assert _equal(state, fresh, ["classifier.bias", "classifier.weight"])
    assert _equal(state, source, [k for k in state if not k.startswith("classifier.")])


def test_a_model_directory_of_another_architecture_raises_one_line(tmp_path):
    directory, _ = _model_dir(tmp_path, _spec("cnn3"))
    with pytest.raises(ValueError, match=r"holds a cnn3 model; expected a resnet18 one \(the run's model\)$"):
        load_pretrained(build_from_spec(_spec()), directory, spec=_spec())


def test_a_model_directory_without_weights_raises(tmp_path):
    directory, _ = _model_dir(tmp_path, _spec("cnn3"))
    (directory / "model.safetensors").unlink()  # what an encrypted model directory looks like to this loader
    with pytest.raises(ValueError, match="has no model.safetensors; expected a plaintext model directory"):
        load_pretrained(build_from_spec(_spec("cnn3")), directory, spec=_spec("cnn3"))


def test_a_groupnorm_model_directory_loads_into_the_batchnorm_model(tmp_path):
    """The GroupNorm (DP) variant's scale and shift carry over; BatchNorm keeps fresh running statistics."""
    directory, source = _model_dir(tmp_path, _spec("resnet18", dp=True))
    model = build_from_spec(_spec())
    skipped = load_pretrained(model, directory, spec=_spec())
    assert skipped and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in skipped)
    assert _equal(model.state_dict(), source, list(source))


def test_pretrained_on_names_imagenet_by_its_weights_and_nothing_for_fresh_ones():
    assert pretrained_on("", architecture="cnn3") is None
    assert pretrained_on("imagenet", architecture="resnet50") == Pretraining(
        "ImageNet-1k (torchvision ResNet50_Weights.IMAGENET1K_V2)"
    )


# ---------------------------------------------------------------- torchvision's ImageNet weights


def test_offline_imagenet_gives_one_line_naming_the_file_to_place(checkpoints):
    cfg = parse_run_config({"model": "resnet18", "pretrained-weights": "imagenet", "image-size": 32})
    with pytest.raises(ValueError) as err:
        initial_model(cfg)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"pretrained-weights = 'imagenet': cannot download {RESNET18_FILE} (")
    assert f"place torchvision's ResNet18_Weights.IMAGENET1K_V1 file {RESNET18_FILE}" in line
    assert line.endswith(f"in $TORCH_HOME/hub/checkpoints/, here {checkpoints}/")
    assert not (checkpoints / RESNET18_FILE).exists()


@pytest.mark.parametrize("dp", [False, True])
def test_a_placed_imagenet_file_loads_without_a_download(checkpoints, imagenet_like, dp):
    """torch.hub checks a file's hash only when it downloads it, so a state dict placed under the name loads."""
    checkpoints.mkdir(parents=True)
    torch.save(imagenet_like, checkpoints / RESNET18_FILE)
    cfg = parse_run_config({"model": "resnet18", "pretrained-weights": "imagenet", "image-size": 32, "dp-enabled": dp})
    state = initial_model(cfg).state_dict()
    summed = imagenet_like["conv1.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(state["conv1.weight"], summed)
    shared = [k for k in state if not k.startswith(("fc.", "conv1."))]
    assert shared and _equal(state, imagenet_like, shared)  # GroupNorm (DP) takes BatchNorm's scale and shift
    if dp:
        assert "bn1.running_mean" not in state
    assert saved_spec(cfg).pretrained_on == Pretraining("ImageNet-1k (torchvision ResNet18_Weights.IMAGENET1K_V1)")


def test_a_placed_densenet_file_with_torchvisions_old_key_names_loads(checkpoints):
    """torchvision's DenseNet file predates ``num_batches_tracked`` and names ``norm1`` as ``norm.1``."""
    torch.manual_seed(3)
    new = tvm.densenet121(weights=None).state_dict()
    old = {
        k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
        for k, v in new.items()
        if not k.endswith("num_batches_tracked")
    }
    checkpoints.mkdir(parents=True)
    torch.save(old, checkpoints / "densenet121-a639ec97.pth")
    skipped = load_pretrained(build_from_spec(_spec("densenet121")), "imagenet", spec=_spec("densenet121"))
    assert [k for k in skipped if not k.endswith("num_batches_tracked")] == ["classifier.weight", "classifier.bias"]


def test_an_unreadable_placed_imagenet_file_gives_one_line(checkpoints):
    checkpoints.mkdir(parents=True)
    (checkpoints / RESNET18_FILE).write_bytes(b"half a download")
    with pytest.raises(ValueError, match=rf"{RESNET18_FILE} is unreadable \(.*\); expected torchvision's") as err:
        load_pretrained(build_from_spec(_spec()), "imagenet", spec=_spec())
    assert "\n" not in str(err.value)


def test_imagenet_for_an_architecture_torchvision_lacks_is_refused():
    with pytest.raises(ConfigError, match=r"'pretrained-weights' = 'imagenet' is invalid; expected a model directory"):
        parse_run_config({"model": "cnn3", "pretrained-weights": "imagenet"})
    with pytest.raises(ValueError, match="torchvision has no ImageNet weights for it"):
        load_pretrained(build_from_spec(_spec("cnn3")), "imagenet", spec=_spec("cnn3"))
