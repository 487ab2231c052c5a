"""What a hospital gains by joining: a model trained on its shard alone, against the global model.

With ``local-baseline = true``, after the last round each hospital trains a local-only model
from the run's starting weights for the rounds it trained in the federation, round by round as
the federation trained it (the same seeds, so the same batches and augmentation, the same
learning-rate schedule, kept optimiser state with ``optimizer-state = "keep"``). It then scores
that model and the final global model on its own validation split. Only the two accuracies and
the image count leave the hospital; the local-only model never does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from client.training import round_seed, split_scores, train_local
from common.config import RunConfig
from common.data import ImageSet
from common.experiment import model_spec, preset_for
from common.models import build_from_spec
from common.precision import Precision

__all__ = ["BaselineScores", "compare_with_local_only", "train_local_only"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BaselineScores:
    """A hospital's validation accuracy of its local-only model and of the global model."""

    validation_images: int
    local_only: float
    global_model: float


def train_local_only(
    starting_weights: dict[str, torch.Tensor],
    train: ImageSet,
    *,
    cfg: RunConfig,
    rounds: Sequence[int],
    device: torch.device,
    precision: Precision,
    name: str = "hospital",
) -> nn.Module:
    """A model trained on ``train`` alone from ``starting_weights``, for ``rounds`` as the federation trained them."""
    model = build_from_spec(model_spec(cfg))
    model.load_state_dict(starting_weights, strict=True)
    preset = preset_for(cfg)
    kept = None
    for server_round in rounds:
        result = train_local(
            model,
            train,
            cfg=cfg,
            preset=preset,
            device=device,
            seed=round_seed(cfg, server_round),
            server_round=server_round,
            optimizer_state=kept,
            precision=precision,
        )
        kept = result.optimizer_state if cfg.optimizer_state == "keep" else None
        log.info("%s local-only round %d: loss %.4f, %.1fs", name, server_round, result.loss, result.seconds)
    return model


def compare_with_local_only(
    global_model: nn.Module,
    starting_weights: dict[str, torch.Tensor],
    train: ImageSet,
    val: ImageSet,
    *,
    cfg: RunConfig,
    rounds: Sequence[int],
    device: torch.device,
    precision: Precision,
    name: str = "hospital",
) -> BaselineScores:
    """Score the global model on ``val``, then train the local-only model and score it there too.

    Raises:
        ValueError: this hospital holds no validation images.
    """
    if len(val) == 0:
        raise ValueError(f"{name} holds no validation images to compare the models on (local-val-fraction)")
    scoring = {"cfg": cfg, "preset": preset_for(cfg), "device": device, "precision": precision}
    global_accuracy, _ = split_scores(global_model, val, **scoring)
    local = train_local_only(
        starting_weights, train, cfg=cfg, rounds=rounds, device=device, precision=precision, name=name
    )
    local_accuracy, _ = split_scores(local, val, **scoring)
    return BaselineScores(len(val), local_accuracy, global_accuracy)
