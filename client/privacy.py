"""The hospital's privacy budget: plan DP-SGD once, persist the ledger, decline when spent.

The noise multiplier is set once from the target (epsilon, delta) over the whole planned
training (rounds x local epochs, at the run's sample rate). The ledger lives in the hospital's
state directory, so a restarted node continues its accounting instead of starting from zero.
The recipe's other options (views, clipping form, EMA, frozen blocks) leave the plan as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import records as rk
from common.config import RunConfig
from common.data import ImageSet, build_transform
from common.experiment import preset_for
from common.optimizers import lr_factor
from common.privacy.accounting import PrivacyLedger, default_delta, fits_budget, noise_multiplier_for, poisson_schedule
from common.privacy.dpsgd import PrivateTrainResult, train_private
from common.privacy.recipe import DPRecipe
from common.trainable import freeze_blocks

__all__ = ["LEDGER_FILE", "DPPlan", "PrivateRound", "dp_plan", "dp_recipe", "train_within_budget"]

log = logging.getLogger(__name__)

LEDGER_FILE = "privacy-ledger.json"


@dataclass(frozen=True)
class DPPlan:
    """One hospital's DP-SGD settings for every round of the run."""

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    delta: float
    max_grad_norm: float
    target_epsilon: float

    def check(self, ledger: PrivacyLedger) -> tuple[bool, float]:
        """Whether the next round fits the budget, and the epsilon it would leave spent."""
        return fits_budget(
            ledger,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps_per_round,
            delta=self.delta,
            target_epsilon=self.target_epsilon,
        )


def dp_plan(cfg: RunConfig, *, num_examples: int) -> DPPlan:
    """The plan for a hospital with ``num_examples`` training images."""
    sample_rate, steps = poisson_schedule(
        num_examples=num_examples, batch_size=cfg.batch_size, epochs=cfg.local_epochs, sample_rate=cfg.dp_sample_rate
    )
    delta = cfg.dp_delta or default_delta(num_examples)
    if delta >= 1.0 / num_examples:
        raise ValueError(
            f"run config: 'dp-delta' = {cfg.dp_delta} is invalid for a hospital of {num_examples} images; "
            f"expected a value below 1/n = {1.0 / num_examples:.3g} (0 picks one)"
        )
    sigma = cfg.dp_noise_multiplier or noise_multiplier_for(
        target_epsilon=cfg.dp_target_epsilon, delta=delta, sample_rate=sample_rate, steps=steps * cfg.num_server_rounds
    )
    return DPPlan(sigma, sample_rate, steps, delta, cfg.dp_max_grad_norm, cfg.dp_target_epsilon)


def dp_recipe(cfg: RunConfig) -> DPRecipe:
    """The run's DP-SGD options beyond σ, q and C; with ``dp-sample-rate``, ``batch-size`` bounds a forward pass."""
    return DPRecipe(
        augmentation_multiplicity=cfg.dp_augmentation_multiplicity,
        clipping=cfg.dp_clipping,
        ema_decay=cfg.dp_ema_decay,
        max_physical_batch=cfg.batch_size if cfg.dp_sample_rate else 0,
    )


@dataclass(frozen=True)
class PrivateRound:
    """A DP round's training figures and the privacy figures the server records."""

    result: PrivateTrainResult
    metrics: dict[str, float]


def _round_lr_factor(cfg: RunConfig, server_round: int, step: int, steps_per_round: int) -> float:
    """The run's learning-rate multiplier at step ``step`` of ``server_round``."""
    return lr_factor(cfg, step=(server_round - 1) * steps_per_round + step, steps_per_round=steps_per_round)


def train_within_budget(
    model: nn.Module,
    images: ImageSet,
    *,
    cfg: RunConfig,
    ledger_dir: Path,
    seed: int,
    device: torch.device,
    optimizer_state: dict[str, Any] | None = None,
    server_round: int = 1,
) -> PrivateRound | str:
    """Train one DP-SGD round if it fits the budget; otherwise return why this hospital declines.

    ``optimizer_state`` continues this hospital's optimizer (``optimizer-state = "keep"``);
    the result carries the new state. With ``dp-lr-schedule = "run"`` the learning rate of
    each step follows the run's schedule at ``server_round``.
    """
    plan = dp_plan(cfg, num_examples=len(images))
    ledger_path = ledger_dir / LEDGER_FILE
    ledger = PrivacyLedger.load(ledger_path)
    fits, projected = plan.check(ledger)
    spent = ledger.epsilon(plan.delta) if len(ledger) else 0.0
    if not fits:
        reason = (
            f"privacy budget: epsilon {spent:.3f} spent, this round would reach {projected:.3f} "
            f"> dp-target-epsilon {plan.target_epsilon} (delta {plan.delta:.2e})"
        )
        log.warning("declining to train: %s", reason)
        return reason
    freeze_blocks(
        model, architecture=cfg.model, train_from=cfg.train_from_block, norm_only=cfg.trainable_params == "norm"
    )
    result = train_private(
        model,
        images,
        transform=build_transform(preset_for(cfg), train=True),
        batch_size=cfg.batch_size,
        epochs=cfg.local_epochs,
        lr=cfg.dp_learning_rate or cfg.learning_rate,
        lr_factor=None if cfg.dp_lr_schedule == "constant" else partial(_round_lr_factor, cfg, server_round),
        optimizer_name=cfg.optimizer if cfg.dp_optimizer == "auto" else cfg.dp_optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        seed=seed,
        device=device,
        sample_rate=plan.sample_rate,
        recipe=dp_recipe(cfg),
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        optimizer_state=optimizer_state,
        keep_optimizer_state=cfg.optimizer_state == "keep",
    )
    ledger.record(noise_multiplier=result.noise_multiplier, sample_rate=result.sample_rate, steps=result.steps)
    ledger_dir.mkdir(parents=True, exist_ok=True)
    ledger.save(ledger_path)
    epsilon = ledger.epsilon(plan.delta)
    log.info(
        "DP round: %d steps, sigma %.3f, q %.4f, epsilon now %.3f",
        result.steps,
        plan.noise_multiplier,
        plan.sample_rate,
        epsilon,
    )
    metrics = {
        rk.EPSILON: epsilon,
        rk.DELTA: plan.delta,
        rk.NOISE_MULTIPLIER: result.noise_multiplier,
        rk.SAMPLE_RATE: result.sample_rate,
        rk.STEPS: result.steps,
        rk.MAX_GRAD_NORM: result.max_grad_norm,
    }
    return PrivateRound(result, metrics)
