"""Model registry and the model directory format (``model.safetensors`` + ``model.json``).

All architectures but ``cnn3`` come from torchvision. Loading a model directory never
unpickles: its weights are read with safetensors (starting weights: :mod:`common.pretrained`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from torchvision import models as tvm

__all__ = [
    "CLASSIFIER_HEADS",
    "MODELS",
    "ModelSpec",
    "Pretraining",
    "build_from_spec",
    "build_model",
    "save_model_dir",
    "load_model_dir",
    "state_dict_to_cpu",
    "write_spec",
    "read_spec",
]

MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"
FORMAT_VERSION = 1


class _CNN3(nn.Module):
    """The small baseline: 3 conv blocks (conv-BN-ReLU-pool) and a linear classifier."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for out in (32, 64, 128):
            blocks += [
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(batch, channels, H, W)`` images to ``(batch, classes)`` logits."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )


def _resnet(factory: Callable[..., tvm.ResNet]) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = factory(weights=None, num_classes=num_classes)
        model.conv1 = _first_conv(model.conv1, in_channels)
        return model

    return build


def _densenet121(num_classes: int, in_channels: int) -> nn.Module:
    model = tvm.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = _first_conv(model.features.conv0, in_channels)
    return model


def _features0(factory: Callable[..., nn.Module]) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = factory(weights=None, num_classes=num_classes)
        model.features[0] = _first_conv(model.features[0], in_channels)
        return model

    return build


class _InceptionAux(tvm.inception.InceptionAux):
    """InceptionV3's auxiliary head for any input size: below 299 px the 17x17 map it pools is smaller."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the Mixed_6e map to the 5x5 grid the head's 5x5 convolution expects, then classify."""
        if min(x.shape[-2:]) >= 17:
            x = F.avg_pool2d(x, kernel_size=5, stride=3)
        else:
            x = F.adaptive_avg_pool2d(x, 5)
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _inception_v3(num_classes: int, in_channels: int) -> nn.Module:
    """InceptionV3 with its auxiliary classifier: training returns both logits, evaluation the main ones."""
    model = tvm.inception_v3(weights=None, num_classes=num_classes, aux_logits=True, init_weights=True)
    model.transform_input = False
    model.Conv2d_1a_3x3.conv = _first_conv(model.Conv2d_1a_3x3.conv, in_channels)
    aux = _InceptionAux(768, num_classes)
    aux.load_state_dict(model.AuxLogits.state_dict())
    model.AuxLogits = aux
    return model


MODELS: dict[str, Callable[[int, int], nn.Module]] = {
    "cnn3": _CNN3,
    "resnet18": _resnet(tvm.resnet18),
    "resnet34": _resnet(tvm.resnet34),
    "resnet50": _resnet(tvm.resnet50),
    "densenet121": _densenet121,
    "alexnet": _features0(tvm.alexnet),
    "vgg11": _features0(tvm.vgg11),
    "inception_v3": _inception_v3,
}


CLASSIFIER_HEADS: dict[str, tuple[str, ...]] = {
    "cnn3": ("classifier.",),
    "resnet18": ("fc.",),
    "resnet34": ("fc.",),
    "resnet50": ("fc.",),
    "densenet121": ("classifier.",),
    "alexnet": ("classifier.6.",),
    "vgg11": ("classifier.6.",),
    "inception_v3": ("fc.", "AuxLogits.fc."),
}
"""The state-dict prefixes of each architecture's class outputs: starting weights of other classes leave them fresh."""


@dataclass(frozen=True)
class Pretraining:
    """What a starting model was trained on (``model.json``'s ``pretrained_on``).

    Attributes:
        data: the data's name: the data root's folder (``medsilo pretrain``), or torchvision's ImageNet weights.
        classes: the classes it was trained to tell apart (empty for ImageNet's 1000).
        images: training images (0: not recorded).
        epochs: training epochs (0: not recorded).
        image_size: training size in pixels (0: not recorded).
        date: the day training ended, ISO 8601 (UTC; empty: not recorded).
        started_from: what the pretraining's own starting weights were trained on, as text (empty: fresh).
    """

    data: str
    classes: tuple[str, ...] = ()
    images: int = 0
    epochs: int = 0
    image_size: int = 0
    date: str = ""
    started_from: str = ""

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Pretraining:
        """The record from its JSON form."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it images (``model.json``).

    ``norm_groups`` and ``weight_standardization`` shape the GroupNorm variant (``dp_compatible``);
    ``feature_standardization`` puts fixed feature statistics in front of the classifier head.
    """

    architecture: str
    classes: tuple[str, ...]
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dp_compatible: bool = False
    multilabel: bool = False
    norm_groups: int = 32
    weight_standardization: bool = False
    feature_standardization: bool = False
    pretrained_on: Pretraining | None = None

    def to_json(self) -> dict[str, object]:
        """The JSON form, with the file format version."""
        return {"format_version": FORMAT_VERSION, **asdict(self)}


def build_model(architecture: str, *, num_classes: int, in_channels: int, seed: int | None = None) -> nn.Module:
    """Build an untrained model; ``seed`` makes the initial weights reproducible."""
    if architecture not in MODELS:
        raise ValueError(f"unknown model {architecture!r}; expected one of: {', '.join(MODELS)}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels = {in_channels} is invalid; expected 1 or 3")
    if num_classes < 2:
        raise ValueError(f"num_classes = {num_classes} is invalid; expected at least 2")
    if seed is None:
        return MODELS[architecture](num_classes, in_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[architecture](num_classes, in_channels)


def build_from_spec(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """Build the spec's model; the Opacus-compatible variant (GroupNorm, no in-place ops) under DP."""
    model = build_model(spec.architecture, num_classes=len(spec.classes), in_channels=spec.channels, seed=seed)
    if spec.dp_compatible:
        from common.privacy.compat import make_dp_compatible  # opacus is imported only when DP is on

        model = make_dp_compatible(model, groups=spec.norm_groups, weight_standardization=spec.weight_standardization)
    if spec.feature_standardization:
        from common.feature_standardization import standardize_head  # it imports this module's head table

        standardize_head(model, spec.architecture)
    return model


def state_dict_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of the model's state dict."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model_dir(directory: str | Path, model: nn.Module | Mapping[str, torch.Tensor], spec: ModelSpec) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (a model or its state dict) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict_to_cpu(model) if isinstance(model, nn.Module) else {k: v.contiguous() for k, v in model.items()}
    save_file(state, directory / MODEL_FILE)
    write_spec(directory, spec)
    return directory


def write_spec(directory: Path, spec: ModelSpec) -> None:
    """Write ``model.json``."""
    (directory / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=2))


def read_spec(directory: Path) -> ModelSpec:
    """Read and check ``model.json``."""
    spec_path = directory / SPEC_FILE
    if not spec_path.is_file():
        raise ValueError(f"{directory} is not a model directory; expected {SPEC_FILE}")
    raw = json.loads(spec_path.read_text())
    if raw.pop("format_version", None) != FORMAT_VERSION:
        raise ValueError(f"{spec_path}: unsupported format_version; expected {FORMAT_VERSION}")
    raw.pop("calibration", None)  # the temperature and thresholds: common.calibration reads them
    pretrained_on = raw.pop("pretrained_on", None)  # absent from model directories written before it
    spec = ModelSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if pretrained_on is None:
        return spec
    return replace(spec, pretrained_on=Pretraining.from_json(pretrained_on))


def load_model_dir(directory: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model saved in ``directory``; never unpickles."""
    directory = Path(directory)
    weights_path = directory / MODEL_FILE
    if not (directory / SPEC_FILE).is_file() or not weights_path.is_file():
        if (directory / "encrypted.json").is_file():
            raise ValueError(f"{directory} holds an encrypted model; decrypt it with 'medsilo model decrypt' first")
        raise ValueError(f"{directory} is not a model directory; expected {SPEC_FILE} and {MODEL_FILE}")
    try:
        spec = read_spec(directory)
        model = build_from_spec(spec)
        model.load_state_dict(load_file(weights_path), strict=True)
    except (TypeError, KeyError, RuntimeError, OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{directory}: cannot load the model: {str(err).splitlines()[0]}") from None
    except Exception as err:  # safetensors' own error type is not exported
        raise ValueError(f"{directory}: {MODEL_FILE} is unreadable: {err}") from None
    model.eval()
    return model, spec
