"""The classifier head's input standardised by the public pretraining data's feature statistics.

A pretrained network's pooled features share one large common component: every image's feature
vector points much the same way, and what tells the classes apart is small beside it. Under
DP-SGD each example's head gradient is its error times its features, clipped to the same norm,
so the clipped gradients all point along that common component and training learns the class
prior. Standardising each feature by the mean and spread it had on the *public* pretraining
images (``medsilo pretrain`` writes them) removes that component before the head, at no privacy
cost: no private image is read. The head is re-parametrised so the model computes the same
function as before; only the geometry its gradients see changes (Tramèr & Boneh 2021 normalise
features for DP linear models for the same reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.models import CLASSIFIER_HEADS

__all__ = [
    "STATS_FILE",
    "FeatureStandardizer",
    "classifier_head",
    "feature_statistics",
    "fold_statistics",
    "read_feature_stats",
    "standardize_head",
    "write_feature_stats",
]

STATS_FILE = "feature_stats.safetensors"
"""The file in a model directory that holds the head input's mean and scale on the pretraining images."""
VARIANCE_FLOOR = 1e-4
"""Added to each feature's variance: a feature (nearly) constant on the public images is not blown up."""


class FeatureStandardizer(nn.Module):
    """``(x - mean) / scale`` per feature, with fixed statistics (buffers: shipped, never trained)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _head_path(architecture: str) -> str:
    return CLASSIFIER_HEADS[architecture][0].rstrip(".")


def classifier_head(model: nn.Module, architecture: str) -> nn.Module:
    """The module that computes ``architecture``'s class outputs (the main head of a model with two)."""
    return model.get_submodule(_head_path(architecture))


def standardize_head(model: nn.Module, architecture: str) -> None:
    """Put a :class:`FeatureStandardizer` with identity statistics in front of the head, in place.

    The head ``H`` becomes ``Sequential(FeatureStandardizer, H)``: its parameters keep their
    block (``fc.1.weight`` is still in ``fc``), and the model computes the same function.

    Raises:
        ValueError: the head is not a single linear layer.
    """
    path = _head_path(architecture)
    head = classifier_head(model, architecture)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{architecture}'s head {path!r} is a {type(head).__name__}; expected a Linear layer")
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent), name, nn.Sequential(FeatureStandardizer(head.in_features), head))


def fold_statistics(model: nn.Module, architecture: str, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """Give a standardised head (:func:`standardize_head`) the statistics ``mean`` and ``scale``.

    The linear layer is rescaled with them (``W' = W_raw * scale``, ``b' = b_raw + W_raw @ mean``),
    so the model's outputs stay what they were; only the head's parametrisation changes.
    """
    standardizer, linear = classifier_head(model, architecture)
    with torch.no_grad():
        raw_weight = linear.weight / standardizer.scale
        raw_bias = linear.bias - raw_weight @ standardizer.mean
        linear.weight.copy_(raw_weight * scale)
        linear.bias.copy_(raw_bias + raw_weight @ mean)
        standardizer.mean.copy_(mean)
        standardizer.scale.copy_(scale)


def feature_statistics(
    model: nn.Module, architecture: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and scale (``sqrt(variance + VARIANCE_FLOOR)``) of what the head receives, over ``batches``.

    ``model`` is evaluated as it is (call ``eval()`` first); the sums are kept in float64.
    """
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None
    count = 0

    def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        nonlocal total, squares, count
        x = inputs[0].detach().flatten(1).to("cpu", torch.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = (x * x).sum(0) if squares is None else squares + (x * x).sum(0)
        count += len(x)

    hook = classifier_head(model, architecture).register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        hook.remove()
    if total is None or squares is None:
        raise ValueError("no image to take the feature statistics from; expected at least one")
    mean = total / count
    variance = (squares / count - mean * mean).clamp_min(0.0)
    return mean.float(), (variance + VARIANCE_FLOOR).sqrt().float()


def write_feature_stats(directory: Path, mean: torch.Tensor, scale: torch.Tensor, *, images: int) -> Path:
    """Write :data:`STATS_FILE` into a model directory; returns its path."""
    path = directory / STATS_FILE
    save_file({"mean": mean.contiguous(), "scale": scale.contiguous()}, path, metadata={"images": str(images)})
    return path


def read_feature_stats(value: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and scale that the model directory ``value`` (or its ``model.safetensors``) holds.

    Raises:
        ValueError: one line: ``value`` has no :data:`STATS_FILE`, or it is unreadable.
    """
    path = Path(value)
    directory = path if path.is_dir() else path.parent
    stats = directory / STATS_FILE
    if not stats.is_file():
        raise ValueError(
            f"pretrained-weights = {str(value)!r} has no {STATS_FILE}; expected a model directory written by "
            f"'medsilo pretrain' (feature-standardization needs its public feature statistics)"
        )
    try:
        tensors = load_file(stats)
        return tensors["mean"].float(), tensors["scale"].float()
    except (KeyError, OSError, SafetensorError) as err:  # a truncated file, or one of other tensors
        raise ValueError(f"pretrained-weights = {str(value)!r}: {STATS_FILE} is unreadable: {err}") from None
