"""Tests for common.models (registry, model directory, pretrained loading) and common.experiment."""

from __future__ import annotations

import builtins
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from common.architectures import ARCHITECTURES
from common.config import parse_run_config
from common.experiment import initial_model, model_spec, resolve_path
from common.models import (
    CLASSIFIER_HEADS,
    MODELS,
    ModelSpec,
    Pretraining,
    build_from_spec,
    build_model,
    load_model_dir,
    save_model_dir,
)

ARCHS = ["cnn3", "resnet18", "densenet121", "resnet50"]
SPEC_KEYS = {
    "architecture",
    "classes",
    "image_size",
    "channels",
    "mean",
    "std",
    "dp_compatible",
    "multilabel",
    "norm_groups",
    "weight_standardization",
    "feature_standardization",
    "pretrained_on",
    "format_version",
}


class _Trap:
    """Unpickling this creates ``path``: proof that a loader ran pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _spec(arch: str = "cnn3", classes: tuple[str, ...] = ("a", "b", "c"), channels: int = 1) -> ModelSpec:
    return ModelSpec(arch, classes, 64, channels, (0.5,) * channels, (0.25,) * channels)


def _saved(tmp_path: Path, arch: str = "cnn3", channels: int = 1, classes: tuple[str, ...] = ("a", "b", "c")):
    model = build_model(arch, num_classes=len(classes), in_channels=channels, seed=0)
    # move BatchNorm running statistics away from their initial values
    model.train()
    with torch.no_grad():
        model(torch.randn(4, channels, 64, 64, generator=torch.Generator().manual_seed(1)))
    model.eval()
    spec = _spec(arch, classes, channels)
    return save_model_dir(tmp_path / f"{arch}-{channels}", model, spec), model, spec


# ---------------------------------------------------------------- build_model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("classes", [2, 5])
def test_output_shape(arch, channels, classes):
    model = build_model(arch, num_classes=classes, in_channels=channels, seed=0).eval()
    with torch.no_grad():
        out = model(torch.rand(2, channels, 64, 64))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["cnn3", "resnet18"])
def test_seed_makes_weights_reproducible(arch):
    a = build_model(arch, num_classes=3, in_channels=1, seed=7).state_dict()
    b = build_model(arch, num_classes=3, in_channels=1, seed=7).state_dict()
    c = build_model(arch, num_classes=3, in_channels=1, seed=8).state_dict()
    assert _states_equal(a, b)
    assert not _states_equal(a, c)


def test_seeded_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("cnn3", num_classes=2, in_channels=1, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"architecture": "vit_b_16", "num_classes": 2, "in_channels": 1}, "vit_b_16"),
        ({"architecture": "resnet18", "num_classes": 2, "in_channels": 2}, "in_channels"),
        ({"architecture": "resnet18", "num_classes": 2, "in_channels": 4}, "in_channels"),
        ({"architecture": "resnet18", "num_classes": 1, "in_channels": 1}, "num_classes"),
        ({"architecture": "cnn3", "num_classes": 0, "in_channels": 3}, "num_classes"),
    ],
)
def test_build_model_bad_arguments_raise(kwargs, match):
    arch = kwargs.pop("architecture")
    with pytest.raises(ValueError, match=match):
        build_model(arch, **kwargs)


# ---------------------------------------------------------------- model directory


@pytest.mark.parametrize(("arch", "channels"), [("cnn3", 1), ("resnet18", 3)])
def test_model_dir_round_trip(tmp_path, arch, channels):
    directory, model, spec = _saved(tmp_path, arch, channels)
    loaded, loaded_spec = load_model_dir(directory)
    assert loaded_spec == spec
    assert not loaded.training
    assert _states_equal(loaded.state_dict(), model.state_dict())
    x = torch.rand(3, channels, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_model_json_contents(tmp_path):
    directory, _, _ = _saved(tmp_path, "cnn3", 1, ("NORMAL", "PNEUMONIA"))
    assert sorted(p.name for p in directory.iterdir()) == ["model.json", "model.safetensors"]
    data = json.loads((directory / "model.json").read_text())
    assert set(data) == SPEC_KEYS
    assert data == {
        "format_version": 1,
        "architecture": "cnn3",
        "classes": ["NORMAL", "PNEUMONIA"],
        "image_size": 64,
        "channels": 1,
        "mean": [0.5],
        "std": [0.25],
        "dp_compatible": False,
        "multilabel": False,
        "norm_groups": 32,
        "weight_standardization": False,
        "feature_standardization": False,
        "pretrained_on": None,
    }


def test_a_model_json_written_before_the_group_norm_options_loads_with_their_defaults(tmp_path):
    directory, _, spec = _saved(tmp_path)
    data = json.loads((directory / "model.json").read_text())
    del data["norm_groups"], data["weight_standardization"], data["feature_standardization"]
    (directory / "model.json").write_text(json.dumps(data))
    assert load_model_dir(directory)[1] == spec


@pytest.mark.parametrize("keep", ["model.json", "model.safetensors", None])
def test_load_model_dir_missing_files_raises(tmp_path, keep):
    directory, _, _ = _saved(tmp_path)
    for path in directory.iterdir():
        if path.name != keep:
            path.unlink()
    with pytest.raises(ValueError, match="not a model directory"):
        load_model_dir(directory)


def test_load_model_dir_missing_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="not a model directory"):
        load_model_dir(tmp_path / "nowhere")


@pytest.mark.parametrize("version", [2, None, "1"])
def test_load_model_dir_wrong_format_version_raises(tmp_path, version):
    directory, _, _ = _saved(tmp_path)
    data = json.loads((directory / "model.json").read_text())
    if version is None:
        del data["format_version"]
    else:
        data["format_version"] = version
    (directory / "model.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        load_model_dir(directory)


def test_load_model_dir_invalid_json_raises(tmp_path):
    directory, _, _ = _saved(tmp_path)
    (directory / "model.json").write_text("{not json")
    with pytest.raises(ValueError):
        load_model_dir(directory)


def test_pickled_model_safetensors_is_never_unpickled(tmp_path):
    directory, model, _ = _saved(tmp_path)
    marker = tmp_path / "unpickled"
    torch.save({"state": model.state_dict(), "trap": _Trap(marker)}, directory / "model.safetensors")
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do; the point is no unpickling
        load_model_dir(directory)
    assert not marker.exists()
    # the trap is live: unpickling the same file with torch.load would have run it
    copy = shutil.copy(directory / "model.safetensors", tmp_path / "copy.pt")
    torch.load(copy, weights_only=False)
    assert marker.exists()


def _corrupt_pickled_weights(directory: Path, tmp_path: Path) -> None:
    model = build_model("cnn3", num_classes=3, in_channels=1, seed=0)
    torch.save(model.state_dict(), directory / "model.safetensors")


def _corrupt_spec_missing_key(directory: Path, tmp_path: Path) -> None:
    data = json.loads((directory / "model.json").read_text())
    del data["classes"]
    (directory / "model.json").write_text(json.dumps(data))


def _corrupt_weights_for_other_classes(directory: Path, tmp_path: Path) -> None:
    other, _, _ = _saved(tmp_path / "other", "cnn3", 1, ("a", "b"))
    shutil.copy(other / "model.safetensors", directory / "model.safetensors")


@pytest.mark.parametrize(
    "corrupt", [_corrupt_pickled_weights, _corrupt_spec_missing_key, _corrupt_weights_for_other_classes]
)
def test_malformed_model_dir_raises_value_error(tmp_path, corrupt):
    directory, _, _ = _saved(tmp_path)
    corrupt(directory, tmp_path)
    with pytest.raises(ValueError):
        load_model_dir(directory)


# ---------------------------------------------------------------- experiment


def test_model_spec_follows_config():
    cfg = parse_run_config({"dataset": "histology", "model": "cnn3", "image-size": 64, "classes": "x,y"})
    spec = model_spec(cfg)
    assert spec == ModelSpec("cnn3", ("x", "y"), 64, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_initial_model_is_seeded(tmp_path):
    cfg = parse_run_config({"model": "cnn3", "seed": 3})
    a, b = initial_model(cfg), initial_model(cfg)
    assert _states_equal(a.state_dict(), b.state_dict())
    assert a.classifier.out_features == 4 and a.features[0].in_channels == 1
    other = initial_model(parse_run_config({"model": "cnn3", "seed": 4}))
    assert not _states_equal(a.state_dict(), other.state_dict())


def test_resolve_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/x") == tmp_path / "data/x"
    assert resolve_path(str(tmp_path / "abs")) == tmp_path / "abs"


def test_dp_compatible_model_dir_round_trip(tmp_path):
    spec = ModelSpec("resnet18", ("a", "b", "c"), 32, 1, (0.5,), (0.25,), dp_compatible=True)
    model = build_from_spec(spec, seed=3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    save_model_dir(tmp_path / "m", model, spec)
    loaded, loaded_spec = load_model_dir(tmp_path / "m")
    assert loaded_spec == spec
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_the_config_names_every_architecture_the_registry_builds() -> None:
    """``common.architectures`` (torch-free, for config parsing) lists exactly the builders of ``MODELS``."""
    assert tuple(MODELS) == ARCHITECTURES == tuple(CLASSIFIER_HEADS)


@pytest.mark.parametrize("arch", ["cnn3", "resnet18", "densenet121", "alexnet", "vgg11", "inception_v3"])
def test_classifier_heads_name_exactly_the_class_outputs(arch):
    """The head prefixes cover every tensor with one row per class and nothing else (7 classes: no other size)."""
    state = build_model(arch, num_classes=7, in_channels=1).state_dict()
    heads = CLASSIFIER_HEADS[arch]
    in_head = {k for k in state if k.startswith(heads)}
    assert in_head == {k for k, v in state.items() if v.ndim in (1, 2) and v.shape[0] == 7}
    assert len(in_head) == 2 * len(heads)  # a weight and a bias per head


def test_pretraining_record_round_trips_through_model_json(tmp_path):
    record = Pretraining("public-mri", ("a", "b"), images=24, epochs=2, image_size=32, date="2026-05-01")
    spec = replace(_spec(classes=("a", "b")), pretrained_on=record)
    save_model_dir(tmp_path / "m", build_from_spec(spec, seed=0), spec)
    assert json.loads((tmp_path / "m" / "model.json").read_text())["pretrained_on"]["classes"] == ["a", "b"]
    assert load_model_dir(tmp_path / "m")[1] == spec
