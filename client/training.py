"""Local training of one hospital's model, under the run's precision (bf16 autocast where the hardware has it)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from common.config import RunConfig
from common.data import ImageSet, build_transform
from common.inference import loader, predict
from common.optimizers import build_optimizer, lr_factor
from common.precision import Precision, backward_step, channels_last, resolve_precision
from common.presets import DatasetPreset
from common.tasks import AUX_LOSS_WEIGHT, hits, label_accuracy, split_outputs, task_loss
from common.trainable import freeze_batchnorm_statistics, freeze_blocks, train_mode

__all__ = [
    "TrainResult",
    "balanced_class_weights",
    "class_log_prior",
    "make_optimizer",
    "non_finite_reason",
    "non_finite_weights",
    "round_seed",
    "split_scores",
    "train_local",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training reports; ``optimizer_state`` is kept for the next round."""

    num_examples: int
    loss: float
    accuracy: float
    seconds: float
    optimizer_state: dict[str, Any] | None = None
    precision: str = "fp32"


def round_seed(cfg: RunConfig, server_round: int) -> int:
    """The seed of a hospital's training in ``server_round``: its shuffling and augmentation."""
    return cfg.seed + 7919 * server_round


def split_scores(
    model: nn.Module,
    images: ImageSet,
    *,
    cfg: RunConfig,
    preset: DatasetPreset,
    device: torch.device,
    precision: Precision,
) -> tuple[float, float]:
    """Accuracy (multi-label: label-wise at the run's thresholds) and mean loss of ``model`` on a hospital's split."""
    transform = build_transform(preset, train=False)
    probs, loss = predict(model, images, transform, batch_size=cfg.batch_size, device=device, precision=precision)
    return label_accuracy(images.labels.numpy(), probs, cfg.thresholds if cfg.multilabel else None), loss


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters."""
    return build_optimizer(
        model.parameters(), cfg.optimizer, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def non_finite_weights(model: nn.Module) -> str | None:
    """The first state-dict entry holding NaN or Inf, as ``"<name> holds NaN or Inf values"``, or ``None``."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"{name} holds NaN or Inf values"
    return None


def non_finite_reason(loss: float, model: nn.Module) -> str | None:
    """Why a trained model must not be sent (a diverged run, an fp16 overflow), or ``None``."""
    if not math.isfinite(loss):
        return f"training diverged: loss is {loss}"
    weights = non_finite_weights(model)
    return f"training diverged: {weights}" if weights else None


def class_log_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``log`` of a shard's class frequencies, add-one smoothed (a class it lacks gets a low, finite prior)."""
    counts = torch.bincount(labels.long(), minlength=num_classes).double() + 1.0
    return (counts / counts.sum()).log().float()


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``n / (k * n_c)`` for each class c a shard holds (scikit-learn's "balanced"); 1 for a class it lacks."""
    counts = torch.bincount(labels.long(), minlength=num_classes).float()
    present = counts > 0
    weights = torch.ones(num_classes)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights


def _proximal_term(model: nn.Module, anchor: list[torch.Tensor]) -> torch.Tensor:
    """FedProx's ``||w - w_global||^2`` over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))  # type: ignore[return-value]


def train_local(
    model: nn.Module,
    images: ImageSet,
    *,
    cfg: RunConfig,
    preset: DatasetPreset,
    device: torch.device,
    seed: int,
    server_round: int = 1,
    optimizer_state: dict[str, Any] | None = None,
    precision: Precision | None = None,
) -> TrainResult:
    """Train ``model`` in place for one round: ``cfg.local_steps`` batches, else ``cfg.local_epochs`` epochs.

    A fraction of an epoch (``local-epochs = 0.25``) is that share of the shard's batches, at least one.

    ``seed`` fixes the shuffling and the augmentation, so a round is reproducible. Only blocks
    ``cfg.train_from_block`` onwards train; the frozen ones run in eval mode, so not even their
    BatchNorm statistics move.
    From ``cfg.batchnorm_freeze`` of the run on, BatchNorm uses and keeps the global model's statistics.
    ``optimizer_state`` (this hospital's from its previous round, with ``optimizer-state =
    "keep"``) continues the optimizer's moments; the result carries the new state. The
    forward pass runs under ``precision`` (default: ``cfg.precision`` on ``device``), in
    channels_last layout where that is faster; the weights, the loss and the optimizer stay float32.
    """
    if len(images) == 0:
        raise ValueError("this hospital has no training images")
    start = time.perf_counter()
    torch.manual_seed(seed)
    precision = precision or resolve_precision(cfg.precision, device)
    freeze_blocks(
        model, architecture=cfg.model, train_from=cfg.train_from_block, norm_only=cfg.trainable_params == "norm"
    )
    train_mode(model.to(device))
    if cfg.batchnorm_freeze and server_round > cfg.batchnorm_freeze * cfg.num_server_rounds:
        freeze_batchnorm_statistics(model)
    with channels_last(model, enabled=precision.channels_last(cfg.image_size)):
        optimizer = make_optimizer(model, cfg)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        scaler = precision.grad_scaler()
        layout = precision.memory_format(cfg.image_size)
        batches = loader(
            images,
            build_transform(preset, train=True),
            batch_size=cfg.batch_size,
            device=device,
            shuffle=True,
            drop_last=len(images) > cfg.batch_size,
            seed=seed,
        )
        steps_per_round = cfg.local_steps or max(1, round(cfg.local_epochs * len(batches)))
        step = (server_round - 1) * steps_per_round
        mu = cfg.proximal_mu  # FedProx's local objective, under whichever server step aggregates
        anchor = [p.detach().clone() for p in model.parameters() if p.requires_grad] if mu > 0 else []
        prior = (  # logit adjustment (Menon et al., ICLR 2021): train on logits + log p_local(y)
            class_log_prior(images.labels, len(cfg.class_names)).to(device) if cfg.logit_adjusted else 0.0
        )
        weight = None  # "balanced": each hospital balances its own shard, it never sees the others' counts
        if cfg.class_weights == "balanced":
            weight = balanced_class_weights(images.labels, len(cfg.class_names)).to(device)
        seen, loss_sum, correct, done, passes = 0, 0.0, 0.0, 0, 0
        while done < steps_per_round:  # whole passes over the shard, the last one cut at steps_per_round
            for x, y in batches:
                x = x.to(device, non_blocking=True, memory_format=layout)
                y = y.to(device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.learning_rate * lr_factor(cfg, step=step, steps_per_round=steps_per_round)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    output = model(x)
                logits, aux = split_outputs(output)
                loss = task_loss(logits.float() + prior, y, weight=weight, label_smoothing=cfg.label_smoothing)
                if aux is not None:  # InceptionV3's auxiliary classifier, weighted 0.4 as in Szegedy et al. (2016)
                    aux_loss = task_loss(aux.float() + prior, y, weight=weight, label_smoothing=cfg.label_smoothing)
                    loss = loss + AUX_LOSS_WEIGHT * aux_loss
                objective = loss + 0.5 * mu * _proximal_term(model, anchor) if mu > 0 else loss
                backward_step(objective, optimizer, scaler)
                step, done = step + 1, done + 1
                seen += len(y)
                loss_sum += float(loss.detach()) * len(y)
                correct += hits(logits.detach(), y)
                if done == steps_per_round:
                    break
            passes += 1
            mean_loss = loss_sum / max(seen, 1)
            log.info("pass %d: %d/%d steps, %d images, loss %.4f", passes, done, steps_per_round, seen, mean_loss)
    return TrainResult(
        num_examples=len(images),
        loss=loss_sum / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=time.perf_counter() - start,
        optimizer_state=optimizer.state_dict() if cfg.optimizer_state == "keep" else None,
        precision=precision.name,
    )
