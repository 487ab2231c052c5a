"""``feature-standardization``: the head's input standardised by public feature statistics, outputs unchanged."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from common.config import ConfigError, parse_run_config
from common.data import build_transform
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model, load_run_split, model_spec, preset_for
from common.feature_standardization import (
    STATS_FILE,
    FeatureStandardizer,
    feature_statistics,
    fold_statistics,
    read_feature_stats,
    standardize_head,
    write_feature_stats,
)
from common.models import build_from_spec, build_model, load_model_dir, save_model_dir
from common.pretrain import write_public_feature_stats

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Opacus: secure RNG off, torch.func notes
    pytest.mark.usefixtures("one_thread"),
]


def _cnn3_features(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """What cnn3's classifier receives, computed from its layers directly, in float64."""
    return torch.flatten(model.pool(model.features(x)), 1).double().detach().numpy()


def _stats(features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(features, generator=generator), torch.rand(features, generator=generator) + 0.5


@pytest.mark.parametrize("architecture", ["cnn3", "resnet18", "alexnet"])
def test_folding_the_statistics_leaves_the_outputs_as_they_were(architecture: str) -> None:
    size = 64 if architecture == "alexnet" else 32
    plain = build_model(architecture, num_classes=3, in_channels=1, seed=0).eval()
    x = torch.randn(4, 1, size, size)
    expected = plain(x).detach().double().numpy()
    standardize_head(plain, architecture)
    features = plain.get_submodule({"cnn3": "classifier", "resnet18": "fc", "alexnet": "classifier.6"}[architecture])
    fold_statistics(plain, architecture, *_stats(features[1].in_features))
    np.testing.assert_allclose(plain(x).detach().double().numpy(), expected, rtol=1e-4, atol=1e-4)
    fold_statistics(plain, architecture, *_stats(features[1].in_features, seed=1))  # folding again: still the same
    np.testing.assert_allclose(plain(x).detach().double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_the_head_sees_the_features_standardised_by_the_folded_statistics() -> None:
    model = build_model("cnn3", num_classes=4, in_channels=1, seed=0).eval()
    x = torch.randn(5, 1, 32, 32)
    raw = _cnn3_features(model, x)
    standardize_head(model, "cnn3")
    mean, scale = _stats(raw.shape[1])
    fold_statistics(model, "cnn3", mean, scale)
    seen: list[torch.Tensor] = []
    model.classifier[1].register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    model(x)
    expected = (raw - mean.double().numpy()) / scale.double().numpy()
    np.testing.assert_allclose(seen[0].double().detach().numpy(), expected, rtol=1e-4, atol=1e-4)
    assert {"classifier.0.mean", "classifier.0.scale", "classifier.1.weight"} <= set(model.state_dict())


def test_the_statistics_are_the_features_mean_and_floored_spread() -> None:
    model = build_model("cnn3", num_classes=4, in_channels=1, seed=0).eval()
    batches = [(torch.randn(7, 1, 32, 32), torch.zeros(7)) for _ in range(3)]
    mean, scale = feature_statistics(model, "cnn3", batches)
    features = np.concatenate([_cnn3_features(model, x) for x, _ in batches])
    np.testing.assert_allclose(mean.numpy(), features.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scale.numpy(), np.sqrt(features.var(axis=0) + 1e-4), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="no image"):
        feature_statistics(model, "cnn3", [])


def test_opacus_per_example_gradients_of_the_standardised_head_match_autograd() -> None:
    spec = model_spec(parse_run_config({"model": "cnn3", "image-size": 32, "dp-enabled": True}))
    model = build_from_spec(spec, seed=0)
    standardize_head(model, "cnn3")
    fold_statistics(model, "cnn3", *_stats(model.classifier[1].in_features))
    x, y = torch.randn(3, 1, 32, 32), torch.tensor([0, 2, 3])
    expected = []
    for i in range(3):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append(model.classifier[1].weight.grad.clone())
    wrapped = GradSampleModule(model, loss_reduction="sum")
    nn.functional.cross_entropy(wrapped(x), y, reduction="sum").backward()
    np.testing.assert_allclose(model.classifier[1].weight.grad_sample.numpy(), torch.stack(expected).numpy(),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
    assert isinstance(model.classifier[0], FeatureStandardizer)


def test_a_saved_standardised_model_rebuilds_from_its_model_json(tmp_path: Path) -> None:
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "norm-layer": "group"})
    spec = model_spec(cfg)
    model = build_from_spec(spec, seed=0)
    standardize_head(model, "cnn3")
    fold_statistics(model, "cnn3", *_stats(model.classifier[1].in_features))
    save_model_dir(tmp_path, model, replace(spec, feature_standardization=True))
    loaded, loaded_spec = load_model_dir(tmp_path)
    x = torch.randn(2, 1, 32, 32)
    assert loaded_spec.feature_standardization
    np.testing.assert_allclose(loaded.eval()(x).detach().numpy(), model.eval()(x).detach().numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with feature statistics, as ``medsilo pretrain`` writes it (statistics made up)."""
    out = tmp_path_factory.mktemp("start")
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "norm-layer": "group"})
    model = build_from_spec(model_spec(cfg), seed=3)
    save_model_dir(out, model, model_spec(cfg))
    write_feature_stats(out, *_stats(model.classifier.in_features), images=10)
    return out


def test_a_run_with_feature_standardization_starts_from_the_same_outputs(start: Path) -> None:
    keys = {"model": "cnn3", "image-size": 32, "dp-enabled": True, "pretrained-weights": str(start)}
    plain = initial_model(parse_run_config(keys)).eval()
    standardised = initial_model(parse_run_config({**keys, "feature-standardization": True})).eval()
    x = torch.randn(3, 1, 32, 32)
    np.testing.assert_allclose(standardised(x).detach().numpy(), plain(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    mean, scale = read_feature_stats(start)
    assert torch.equal(standardised.classifier[0].mean, mean) and torch.equal(standardised.classifier[0].scale, scale)
    clients = build_from_spec(model_spec(parse_run_config({**keys, "feature-standardization": True})))
    assert clients.state_dict().keys() == standardised.state_dict().keys()  # a hospital builds the same structure


@pytest.mark.parametrize("weights", ["", "imagenet"])
def test_feature_standardization_without_a_pretrained_model_is_one_line(weights: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_config({"model": "resnet18", "feature-standardization": True, "pretrained-weights": weights})
    assert "feature-standardization" in str(info.value) and "\n" not in str(info.value)


def test_a_start_without_statistics_or_with_broken_ones_is_one_line(start: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.safetensors"):
        (bare / name).write_bytes((start / name).read_bytes())
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "norm-layer": "group", "pretrained-weights": str(bare),
                            "feature-standardization": True})  # fmt: skip
    with pytest.raises(ValueError, match=f"has no {STATS_FILE}; expected a model directory written by") as info:
        initial_model(cfg)
    assert "\n" not in str(info.value)
    (bare / STATS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=f"{STATS_FILE} is unreadable"):
        read_feature_stats(bare)


def test_a_classifier_that_is_not_one_linear_layer_is_refused() -> None:
    model = build_model("cnn3", num_classes=2, in_channels=1, seed=0)
    model.classifier = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="expected a Linear layer"):
        standardize_head(model, "cnn3")


def test_pretrain_writes_the_statistics_of_its_own_images(tmp_path: Path) -> None:
    root = write_synthetic_tree(tmp_path / "public", modality="brain-mri", train_per_class=3, test_per_class=1,
                                size=32)  # fmt: skip
    cfg = parse_run_config({"model": "cnn3", "image-size": 32, "batch-size": 5})
    model = build_from_spec(model_spec(cfg), seed=0)
    images = load_run_split(cfg, root, "train")
    write_public_feature_stats(tmp_path, model, images, cfg=cfg, device=torch.device("cpu"))
    transform = build_transform(preset_for(cfg), train=False)
    x = torch.stack([transform(images.images[i]) for i in range(len(images))])
    features = _cnn3_features(model.eval(), x)
    mean, scale = read_feature_stats(tmp_path)
    np.testing.assert_allclose(mean.numpy(), features.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scale.numpy(), np.sqrt(features.var(axis=0) + 1e-4), rtol=1e-3, atol=1e-5)
