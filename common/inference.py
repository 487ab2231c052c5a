"""Device selection and batched inference, shared by the server, evaluator and CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from common.data.images import ImageSet, TensorImageDataset
from common.precision import Precision, channels_last, resolve_precision
from common.tasks import probabilities, task_loss

__all__ = ["loader", "predict", "predict_logits", "resolve_device"]


def resolve_device(preference: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU raises ``ValueError``.

    On CUDA it turns on ``cudnn.benchmark`` (the image size is fixed for a run, so the
    fastest convolution algorithms are found once).
    """
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device = 'cuda' but no CUDA GPU is visible; expected 'auto' or 'cpu'")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda")
    return torch.device("cpu")


def loader(
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
) -> DataLoader[tuple[torch.Tensor, int]]:
    """A DataLoader over decoded images; pinned memory when feeding a GPU."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorImageDataset(images, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        generator=generator,
        pin_memory=device.type == "cuda",
    )


def _batches(
    model: nn.Module,
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    device: torch.device | None,
    precision: Precision | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each batch's float32 logits and targets, the model in eval mode under ``precision`` (default ``auto``)."""
    device = device or resolve_device()
    precision = precision or resolve_precision("auto", device)
    model = model.to(device).eval()
    size = int(images.images.shape[-1])
    with torch.no_grad(), channels_last(model, enabled=precision.channels_last(size)):
        for x, y in loader(images, transform, batch_size=batch_size, device=device):
            x = x.to(device, non_blocking=True, memory_format=precision.memory_format(size))
            with precision.autocast():
                logits = model(x)
            yield logits.float(), y.to(device, non_blocking=True)


def predict(
    model: nn.Module,
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    precision: Precision | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, float]:
    """Class probabilities ``(N, K)`` and the mean cross-entropy over ``images``.

    Multi-label images get a sigmoid per label and the mean binary cross-entropy instead.
    The model runs under ``precision`` (default: ``"auto"`` for the device), in channels_last
    layout where that is faster; the loss is computed in float32 and the probabilities in
    float64 (so a temperature can later be applied to them without losing a saturated one).

    ``on_batch`` is called with each batch's size once it is scored (for progress bars).
    """
    chunks: list[np.ndarray] = []
    loss_sum = 0.0
    batches = _batches(model, images, transform, batch_size=batch_size, device=device, precision=precision)
    for logits, y in batches:
        loss_sum += float(task_loss(logits, y, reduction="sum"))
        chunks.append(probabilities(logits.double(), multilabel=images.multilabel).cpu().numpy())
        if on_batch is not None:
            on_batch(len(y))
    n = len(images)
    probs = np.concatenate(chunks) if chunks else np.empty((0, len(images.classes)))
    return probs, loss_sum / max(n, 1)


def predict_logits(
    model: nn.Module,
    images: ImageSet,
    transform: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    precision: Precision | None = None,
) -> np.ndarray:
    """The logits ``float64 (N, K)`` of ``images``, scored as :func:`predict` scores them."""
    batches = _batches(model, images, transform, batch_size=batch_size, device=device, precision=precision)
    chunks = [logits.double().cpu().numpy() for logits, _ in batches]
    return np.concatenate(chunks) if chunks else np.empty((0, len(images.classes)))
