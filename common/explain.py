"""Single-image explanation: class probabilities and Grad-CAM heat maps.

Used by ``medsilo predict``, the Streamlit page and the evaluation report. Grad-CAM comes
from ``pytorch_grad_cam`` on each architecture's last convolutional stage; the hooks it
adds are removed again, and the model's gradients are left as they were.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from common.data.images import decode_image
from common.data.transforms import normalize
from common.models import ModelSpec
from common.precision import Precision
from common.tasks import probabilities

__all__ = ["class_probabilities", "gradcam", "load_image", "overlay", "target_layer"]


def _last_relu(features: nn.Module) -> nn.Module:
    """The activation of the last convolution in a ``features`` stack (cnn3, vgg11, alexnet)."""
    return [m for m in features if isinstance(m, nn.ReLU)][-1]


_TARGET_LAYERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "cnn3": lambda m: _last_relu(m.features),
    "resnet18": lambda m: m.layer4[-1],
    "resnet34": lambda m: m.layer4[-1],
    "resnet50": lambda m: m.layer4[-1],
    # the output of norm5 is rectified in place by torchvision's forward, so the block before it
    "densenet121": lambda m: m.features.denseblock4,
    "alexnet": lambda m: _last_relu(m.features),
    "vgg11": lambda m: _last_relu(m.features),
    "inception_v3": lambda m: m.Mixed_7c,
}


def target_layer(model: nn.Module, architecture: str) -> nn.Module:
    """The Grad-CAM target layer of ``model``: the output of its last convolutional stage."""
    getter = _TARGET_LAYERS.get(architecture)
    if getter is None:
        raise ValueError(
            f"architecture = {architecture!r} has no Grad-CAM layer; expected one of: {', '.join(_TARGET_LAYERS)}"
        )
    try:
        return getter(model)
    except (AttributeError, IndexError, TypeError):
        raise ValueError(f"architecture = {architecture!r} does not match the {type(model).__name__} model") from None


def _read_dicom(path: Path) -> Image.Image:
    """The first frame of a DICOM file, min-max scaled to 8 bits."""
    if importlib.util.find_spec("pydicom") is None:
        raise ValueError(f"{path}: reading DICOM needs pydicom; expected 'pip install pydicom' or a png/jpg image")
    import pydicom

    try:
        pixels = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.float64)
    except Exception as err:  # pydicom raises many unrelated types for bad files
        raise ValueError(f"{path}: not a readable DICOM image: {err}") from None
    if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        pixels = pixels[0]
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def load_image(path: str | Path, spec: ModelSpec) -> torch.Tensor:
    """Read one image for ``spec``'s model: ``uint8 (channels, image_size, image_size)``.

    Reads png, jpg, tif and bmp; DICOM (``.dcm``) too when pydicom is installed.
    """
    path = Path(path)
    if path.suffix.lower() != ".dcm":
        try:
            return decode_image(path, channels=spec.channels, size=spec.image_size)
        except OSError as err:
            raise ValueError(f"{path}: not a readable image ({err}); expected a png, jpg, tif or bmp file") from None
    image = _read_dicom(path).convert("L" if spec.channels == 1 else "RGB")
    array = np.asarray(image.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return torch.from_numpy(array.reshape(spec.image_size, spec.image_size, -1).copy()).permute(2, 0, 1).contiguous()


def _batch(model: nn.Module, spec: ModelSpec, image: torch.Tensor) -> torch.Tensor:
    """Check one ``uint8 (C, S, S)`` image and normalise it into a batch on the model's device."""
    expected = (spec.channels, spec.image_size, spec.image_size)
    if image.dtype != torch.uint8 or tuple(image.shape) != expected:
        raise ValueError(
            f"image is {image.dtype} {tuple(image.shape)}; expected torch.uint8 {expected} (use load_image)"
        )
    device = next(model.parameters()).device
    return normalize(spec.mean, spec.std)(image).unsqueeze(0).to(device)


@torch.no_grad()
def class_probabilities(model: nn.Module, spec: ModelSpec, image: torch.Tensor) -> np.ndarray:
    """Class probabilities ``float64 (K,)`` of one ``uint8 (C, S, S)`` image: softmax, or a sigmoid per label."""
    logits = model.eval()(_batch(model, spec, image))
    return probabilities(logits.double(), multilabel=spec.multilabel)[0].cpu().numpy()


def _float_outputs(module: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A forward hook handing ``module``'s output on in float32 (Grad-CAM reads it with numpy, which has no bf16)."""
    return module.register_forward_hook(lambda _module, _inputs, output: output.float())


def gradcam(
    model: nn.Module,
    spec: ModelSpec,
    image: torch.Tensor,
    target_class: int | None = None,
    *,
    precision: Precision | None = None,
) -> np.ndarray:
    """Grad-CAM heat map ``float32 (S, S)`` in [0, 1] of ``target_class`` (default: the predicted class).

    The forward and backward passes run under ``precision`` (default float32; a report passes
    its run's); the target layer's activations, their gradients and the heat map are float32.
    Works inside ``torch.no_grad()`` too; the model ends in eval mode, otherwise unchanged.
    """
    if target_class is not None and not 0 <= target_class < len(spec.classes):
        raise ValueError(f"target_class = {target_class} is invalid; expected 0..{len(spec.classes) - 1}")
    layer = target_layer(model, spec.architecture)
    batch = _batch(model, spec, image).requires_grad_(True)
    targets = None if target_class is None else [ClassifierOutputTarget(target_class)]
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # gradients flow to the input only: the model's .grad stays untouched
        p.requires_grad_(False)
    lowered = precision is not None and precision.name != "fp32"
    handles = [_float_outputs(layer), _float_outputs(model)] if lowered else []  # before GradCAM's own hooks
    cam = GradCAM(model=model.eval(), target_layers=[layer])
    try:
        with torch.enable_grad(), precision.autocast() if lowered else contextlib.nullcontext():  # type: ignore[union-attr]
            heat = cam(input_tensor=batch, targets=targets)[0]
    finally:
        cam.activations_and_grads.release()
        for handle in handles:
            handle.remove()
        for p in params:
            p.requires_grad_(True)
    return np.clip(heat, 0.0, 1.0).astype(np.float32)


def overlay(image: torch.Tensor, cam: np.ndarray) -> np.ndarray:
    """Blend the heat map ``cam (S, S)`` over ``image (C, S, S)`` as ``uint8 (S, S, 3)`` RGB."""
    if image.ndim != 3 or image.shape[0] not in (1, 3) or tuple(cam.shape) != tuple(image.shape[1:]):
        raise ValueError(
            f"image {tuple(image.shape)} and cam {tuple(cam.shape)} do not match; expected (C, S, S) and (S, S)"
        )
    if not np.all((cam >= 0) & (cam <= 1)):
        raise ValueError("cam values lie outside [0, 1]; expected a map from gradcam()")
    rgb = image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy().astype(np.float32) / 255.0
    return show_cam_on_image(rgb, cam.astype(np.float32), use_rgb=True)
