"""Local training of one hospital's model (CUDA + bf16 AMP when a GPU exists)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from common.config import RunConfig
from common.data import ImageSet, build_transform
from common.inference import autocast, loader
from common.presets import DatasetPreset

__all__ = ["TrainResult", "make_optimizer", "train_local"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training reports."""

    num_examples: int
    loss: float
    accuracy: float
    seconds: float


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters."""
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def train_local(
    model: nn.Module, images: ImageSet, *, cfg: RunConfig, preset: DatasetPreset, device: torch.device, seed: int
) -> TrainResult:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs on ``images``.

    ``seed`` fixes the shuffling and the augmentation, so a round is reproducible.
    """
    if len(images) == 0:
        raise ValueError("this hospital has no training images")
    start = time.perf_counter()
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    batches = loader(
        images,
        build_transform(preset, train=True),
        batch_size=cfg.batch_size,
        device=device,
        shuffle=True,
        drop_last=len(images) > cfg.batch_size,
        seed=seed,
    )
    seen, loss_sum, correct = 0, 0.0, 0
    for epoch in range(cfg.local_epochs):
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            loss.backward()
            optimizer.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
        log.info("epoch %d/%d: %d images, loss %.4f", epoch + 1, cfg.local_epochs, seen, loss_sum / max(seen, 1))
    return TrainResult(
        num_examples=len(images),
        loss=loss_sum / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=time.perf_counter() - start,
    )
