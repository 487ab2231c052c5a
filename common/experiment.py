"""Set-up that every party derives identically from the run config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from common.config import RunConfig
from common.data.images import ImageSet, load_split
from common.data.labels_csv import load_labels_csv
from common.feature_standardization import fold_statistics, read_feature_stats, standardize_head
from common.models import ModelSpec, build_from_spec
from common.presets import DatasetPreset, get_preset
from common.pretrained import IMAGENET, load_pretrained, pretrained_on

__all__ = ["initial_model", "load_run_split", "model_spec", "preset_for", "resolve_path", "saved_spec"]


def preset_for(cfg: RunConfig) -> DatasetPreset:
    """The dataset preset of the run, its training augmentation scaled by ``augmentation-strength``."""
    preset, strength = get_preset(cfg.dataset), cfg.augmentation_strength
    return replace(
        preset,
        rotation=preset.rotation * strength,
        zoom=preset.zoom * strength,
        shift=preset.shift * strength,
        color_jitter=preset.color_jitter * strength,
        flips=preset.flips and strength > 0,
        right_angles=preset.right_angles and strength > 0,
    )


def model_spec(cfg: RunConfig) -> ModelSpec:
    """The architecture, classes, size, channels and normalisation of the run's model."""
    preset = preset_for(cfg)
    return ModelSpec(
        architecture=cfg.model,
        classes=cfg.class_names,
        image_size=cfg.image_size,
        channels=preset.channels,
        mean=preset.mean,
        std=preset.std,
        dp_compatible=cfg.dp_enabled or cfg.norm_layer == "group",  # the GroupNorm variant
        multilabel=cfg.multilabel,
        norm_groups=cfg.norm_groups,
        weight_standardization=cfg.weight_standardization,
        feature_standardization=cfg.feature_standardization,
    )


def load_run_split(cfg: RunConfig, root: str | Path, split: str) -> ImageSet:
    """``split`` of a data root as the run reads it: class folders, an ``.npz``, or (multi-label) ``labels.csv``."""
    preset = preset_for(cfg)
    kwargs = {"channels": preset.channels, "size": cfg.image_size, "cache_mb": cfg.decoded_cache_mb}
    if cfg.multilabel:
        return load_labels_csv(root, split, labels=cfg.class_names, **kwargs)
    return load_split(root, split, classes=cfg.class_names, **kwargs)


def resolve_path(value: str) -> Path:
    """A path from the config: absolute, or relative to the working directory."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path)


def _starting_weights(cfg: RunConfig) -> str | Path:
    """``pretrained-weights``: ``"imagenet"`` as it is, a path resolved against the working directory."""
    return cfg.pretrained_weights if cfg.pretrained_weights == IMAGENET else resolve_path(cfg.pretrained_weights)


def initial_model(cfg: RunConfig) -> nn.Module:
    """The run's starting model: seeded fresh weights, then ``pretrained-weights`` where it names some.

    With ``feature-standardization`` the head then gets the starting model's public feature
    statistics, re-parametrised so the model's outputs stay the same.
    """
    spec = replace(model_spec(cfg), feature_standardization=False)
    model = build_from_spec(spec, seed=cfg.seed)
    if cfg.pretrained_weights:
        load_pretrained(model, _starting_weights(cfg), spec=spec)
    if cfg.feature_standardization:
        mean, scale = read_feature_stats(_starting_weights(cfg))
        standardize_head(model, cfg.model)
        fold_statistics(model, cfg.model, mean, scale)
    return model


def saved_spec(cfg: RunConfig) -> ModelSpec:
    """The ``model.json`` of the models a run saves: :func:`model_spec` and what its starting weights were trained on.

    Only the party that loads the starting weights (the server) calls it.
    """
    if not cfg.pretrained_weights:
        return model_spec(cfg)
    return replace(model_spec(cfg), pretrained_on=pretrained_on(_starting_weights(cfg), architecture=cfg.model))
