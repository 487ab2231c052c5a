"""A run's starting weights (``pretrained-weights``): a weights file, a model directory, or torchvision's ImageNet's.

Only ``"imagenet"`` is ever downloaded, through torchvision's weights API, into
``$TORCH_HOME/hub/checkpoints/``; a file already there is loaded without a download. No
file is unpickled: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torch import nn
from torchvision import models as tvm

from common.architectures import IMAGENET_ARCHITECTURES
from common.models import CLASSIFIER_HEADS, MODEL_FILE, SPEC_FILE, ModelSpec, Pretraining, read_spec

__all__ = ["IMAGENET", "load_pretrained", "pretrained_on"]

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
"""The ``pretrained-weights`` value naming torchvision's ImageNet weights of the run's architecture."""

_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)
"""DenseNet checkpoints keep pre-0.4 names (``norm.1``); torchvision's own DenseNet loader renames them so."""

_EXPECTED = "expected 'imagenet', a model directory (model.json + model.safetensors) or a .safetensors/.pt/.pth file"


@dataclass(frozen=True)
class _Source:
    """Starting weights as read, with the source's architecture and classes where it records them."""

    name: str
    state: dict[str, torch.Tensor]
    architecture: str | None = None
    classes: tuple[str, ...] | None = None


def _imagenet_weights(architecture: str) -> tvm.WeightsEnum:
    """torchvision's default ImageNet weights of ``architecture`` (metadata only: nothing is downloaded)."""
    if architecture not in IMAGENET_ARCHITECTURES:
        raise ValueError(
            f"pretrained-weights = 'imagenet' is invalid for model {architecture!r}: torchvision has no ImageNet "
            f"weights for it; expected a model directory or a local weights file"
        )
    return tvm.get_model_weights(architecture).DEFAULT


def _read_imagenet(architecture: str) -> _Source:
    """The ImageNet state dict, from ``$TORCH_HOME/hub/checkpoints/`` or downloaded there (hash checked)."""
    weights = _imagenet_weights(architecture)
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    try:  # torch.hub checks the hash of a file it downloads; one already in place is loaded as it is
        state = weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except OSError as err:  # offline (URLError, ConnectionError, a timeout) or a folder it may not write
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"pretrained-weights = 'imagenet': cannot download {target.name} ({reason}); place torchvision's "
            f"{weights!r} file {target.name} ({weights.url}) in $TORCH_HOME/hub/checkpoints/, here {target.parent}/"
        ) from None
    except Exception as err:  # a placed file torch cannot read: pickle and zip errors share no base class
        raise ValueError(
            f"pretrained-weights = 'imagenet': {target} is unreadable ({str(err).splitlines()[0]}); expected "
            f"torchvision's {weights!r} file from {weights.url}"
        ) from None
    state = {_DENSENET_OLD_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    return _Source(f"imagenet ({weights!r})", state, architecture, tuple(weights.meta["categories"]))


def _read_file(path: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file or an unpickling-free ``torch.load`` state dict."""
    try:
        source = (
            load_file(path)
            if path.suffix == ".safetensors"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as err:  # safetensors, pickle and zip errors have no common base class
        raise ValueError(f"pretrained-weights = {name!r} is unreadable: {str(err).splitlines()[0]}") from None
    if isinstance(source, dict) and isinstance(source.get("state_dict"), dict):
        source = source["state_dict"]
    if not isinstance(source, dict):
        raise ValueError(f"pretrained-weights = {name!r} holds no state dict; {_EXPECTED}")
    return {k.removeprefix("module."): v for k, v in source.items() if isinstance(v, torch.Tensor)}


def _model_directory(path: Path) -> Path | None:
    """The model directory ``path`` names (the folder, or its ``model.safetensors``), else ``None``."""
    if path.is_dir():
        return path
    return path.parent if path.name == MODEL_FILE and (path.parent / SPEC_FILE).is_file() else None


def _directory_spec(directory: Path, name: str) -> ModelSpec:
    if not (directory / SPEC_FILE).is_file():
        raise ValueError(f"pretrained-weights = {name!r} is a folder without {SPEC_FILE}; {_EXPECTED}")
    try:
        return read_spec(directory)
    except (TypeError, KeyError, ValueError) as err:  # a model.json of another format or shape
        raise ValueError(f"pretrained-weights = {name!r}: {SPEC_FILE} is unreadable: {err}") from None


def _read_local(path: Path) -> _Source:
    name = str(path)
    directory = _model_directory(path)
    if directory is None:
        if not path.is_file():
            raise ValueError(f"pretrained-weights = {name!r} does not exist; {_EXPECTED}")
        return _Source(name, _read_file(path, name))
    spec = _directory_spec(directory, name)
    if not (directory / MODEL_FILE).is_file():
        raise ValueError(
            f"pretrained-weights = {name!r} has no {MODEL_FILE}; expected a plaintext model directory "
            f"(an encrypted one is decrypted with 'medsilo model decrypt' first)"
        )
    return _Source(name, _read_file(directory / MODEL_FILE, name), spec.architecture, spec.classes)


def load_pretrained(model: nn.Module, value: str | Path, *, spec: ModelSpec) -> list[str]:
    """Load starting weights into ``model`` (built from ``spec``), adapting what can be adapted.

    ``value`` is ``"imagenet"`` (torchvision's ImageNet weights of ``spec.architecture``), a
    model directory (``medsilo pretrain``'s, or a run's ``model/``) or its ``model.safetensors``,
    or a ``.safetensors``/``.pt``/``.pth`` state dict. A 3-channel first convolution becomes a
    1-channel one by summing over RGB: a gray image then gets the response it would get as three
    equal channels. Left at their fresh initialisation: the class outputs
    (:data:`~common.models.CLASSIFIER_HEADS`) of a source trained on other classes, tensors whose
    shape still differs, and tensors the source lacks. Between the BatchNorm and GroupNorm (DP)
    variants the scale and shift carry over (same names and shapes); BatchNorm's running
    statistics have no place in GroupNorm and are dropped, and a BatchNorm model loaded from a
    GroupNorm one keeps fresh ones.

    Returns:
        The names of the state-dict entries left at their fresh initialisation.

    Raises:
        ValueError: one line: a missing or unreadable source, ImageNet weights that can be neither
            found nor downloaded (naming the file to place in ``$TORCH_HOME/hub/checkpoints/``), a
            model directory of another architecture, or no tensor that fits.
    """
    source = _read_imagenet(spec.architecture) if str(value) == IMAGENET else _read_local(Path(value))
    if source.architecture is not None and source.architecture != spec.architecture:
        raise ValueError(
            f"pretrained-weights = {source.name!r} holds a {source.architecture} model; expected a "
            f"{spec.architecture} one (the run's model)"
        )
    other_classes = source.classes is not None and source.classes != spec.classes
    heads = CLASSIFIER_HEADS[spec.architecture] if other_classes else ()
    loaded, skipped = {}, []
    for name, tensor in model.state_dict().items():
        weight = source.state.get(name)
        if weight is not None and weight.ndim == tensor.ndim == 4 and (weight.shape[1], tensor.shape[1]) == (3, 1):
            weight = weight.sum(dim=1, keepdim=True)  # the first convolution of a gray model
        if weight is None or weight.shape != tensor.shape or name.startswith(heads):
            skipped.append(name)
        else:
            loaded[name] = weight.to(tensor.dtype)
    if not loaded:
        raise ValueError(f"pretrained-weights = {source.name!r}: no tensor matches the {spec.architecture} model")
    model.load_state_dict(loaded, strict=False)
    log.info("pretrained weights: %d tensors loaded from %s, %d left fresh", len(loaded), source.name, len(skipped))
    return skipped


def pretrained_on(value: str | Path, *, architecture: str) -> Pretraining | None:
    """What the starting weights ``value`` were trained on, for the run's ``model.json``; reads no weights.

    A model directory's own record (``medsilo pretrain`` writes one), torchvision's ImageNet
    weights by name, or ``None`` for fresh weights and a bare weights file.
    """
    if not str(value):
        return None
    if str(value) == IMAGENET:
        return Pretraining(data=f"ImageNet-1k (torchvision {_imagenet_weights(architecture)!r})")
    directory = _model_directory(Path(value))
    return _directory_spec(directory, str(value)).pretrained_on if directory is not None else None
