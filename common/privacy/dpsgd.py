"""One round of sample-level DP-SGD (Opacus, Poisson sampling) with the chosen clipping mode."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.data.images import ImageSet, TensorImageDataset
from common.optimizers import build_optimizer
from common.privacy.accounting import is_finite_number, poisson_schedule
from common.privacy.clipping import BookKeepingClipper  # importing it also registers ghost clipping's Conv2d norms
from common.privacy.compat import WSConv2d
from common.privacy.recipe import DPRecipe, IterateEMA, MultiViewDataset
from common.tasks import TaskLoss, hits, task_loss
from common.trainable import train_mode

__all__ = ["GRAD_SAMPLE_MODES", "PrivateTrainResult", "PrivateTraining", "make_private", "train_private"]

GRAD_SAMPLE_MODES = ("bk", "hooks", "functorch", "ew", "ghost")
"""How :func:`train_private` clips per example: ``bk`` (book-keeping, :mod:`common.privacy.clipping`;
the fastest, and the default) or one of Opacus' per-sample gradient modes."""

_OPACUS_PARAM_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample", "_norm_sample")


@dataclass(frozen=True)
class PrivateTrainResult:
    """What one round of DP-SGD reports (the last four go into the :class:`PrivacyLedger`).

    Attributes:
        num_examples: training examples at this hospital (the FedAvg weight).
        loss: mean training cross-entropy over the examples Poisson sampling drew.
        accuracy: training accuracy over the same examples.
        seconds: wall-clock time of the round.
        steps: DP-SGD steps taken (empty Poisson batches included: they are released too).
        sample_rate: Poisson sampling rate of each step.
        noise_multiplier: Gaussian noise std / clipping norm.
        max_grad_norm: per-sample gradient clipping norm.
        optimizer_state: the optimizer's state after the round, when asked to keep it.
        precision: always ``"fp32"``: under bf16 autocast the clipping is not exact (see
            ``benchmarks/dp_precision.py``), so DP-SGD never runs under autocast.
    """

    num_examples: int
    loss: float
    accuracy: float
    seconds: float
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    optimizer_state: dict[str, Any] | None = None
    precision: str = "fp32"


def _strip_opacus(model: nn.Module) -> None:
    """Remove what Opacus attached to the parameters (per-sample grads, accumulators)."""
    for p in model.parameters():
        for attr in _OPACUS_PARAM_ATTRS:
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None


@dataclass
class PrivateTraining:
    """Opacus' private model, optimizer and batches, and the DP-SGD step of the chosen clipping mode."""

    model: nn.Module
    optimizer: Any
    batches: Any
    mode: str
    criterion: Callable[[Tensor, Tensor], Any]
    clipper: BookKeepingClipper | None
    examples_per_pass: int = 0
    """Examples (with their views) one forward pass holds; 0: the whole Poisson batch."""

    def step(self, x: Tensor, y: Tensor) -> tuple[float, float, int] | None:
        """One DP-SGD step on a Poisson batch; None for an empty one, else its views' summed loss, hits and count.

        ``x`` is ``(B, C, H, W)``, or ``(B, K, C, H, W)`` for K views per example (``bk`` only).
        An empty batch still takes its step (the accountant counts it): modes that cannot run
        one release the noise alone, as ``hooks`` does.
        """
        self.optimizer.zero_grad(set_to_none=True)
        if len(y) == 0 and self.mode in ("functorch", "ew", "bk"):
            for p in self.optimizer.params:
                if self.clipper is not None:  # ghost clipping's optimizer takes the clipped sum in .grad
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            self.optimizer.step()
            return None
        if self.clipper is None:
            logits = self.model(x)
            loss = self.criterion(logits, y)
            loss.backward()
            self.optimizer.step()
            return (float(loss.detach()) * len(y), hits(logits.detach(), y), len(y)) if len(y) else None
        views = self.clipper.views
        part = (self.examples_per_pass or len(y)) * views  # rows of one forward pass
        x = x.flatten(0, 1) if views > 1 else x  # (B·K, C, H, W): example b's views are rows bK to bK + K - 1
        y = y.repeat_interleave(views, dim=0)
        loss_sum, correct = 0.0, 0.0
        for start in range(0, len(y), part):  # the clipper adds each part's clipped sum to .grad
            inputs = x[start : start + part].detach().requires_grad_(True)  # the backward pass reaches every layer
            targets = y[start : start + part]
            logits = self.model(inputs)
            per_view = task_loss(logits, targets, reduction="none")
            self.clipper.backward(per_view, inputs)
            loss_sum += float(per_view.detach().mean()) * len(targets)
            correct += hits(logits.detach(), targets)
        self.optimizer.step()
        return loss_sum, correct, len(y)

    def close(self) -> None:
        """Remove every hook; the wrapped model's parameters keep Opacus' attributes (see ``_strip_opacus``)."""
        if self.clipper is not None:
            self.clipper.remove()
        self.model.cleanup()


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool,
    mode: str,
    recipe: DPRecipe | None = None,
    expected_batch_size: int | None = None,
) -> PrivateTraining:
    """Wrap ``model``, ``optimizer`` and ``batches`` for DP-SGD with clipping ``mode`` (:data:`GRAD_SAMPLE_MODES`).

    ``bk`` runs on Opacus' ghost-clipping wrapper with its hooks off: the book-keeping clipper
    computes the clipped sums, Opacus' optimizer adds the noise. Only ``bk`` takes a ``recipe``
    with views, ``normalize`` clipping or batches split into passes. ``expected_batch_size``
    (what the noisy sum is divided by) replaces Opacus' ``len(dataset) / len(batches)``.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode = {mode!r} is invalid; expected one of {GRAD_SAMPLE_MODES}")
    recipe = recipe or DPRecipe()
    if mode == "ew" and any(isinstance(m, WSConv2d) for m in model.modules()):
        raise ValueError("grad_sample_mode = 'ew' is invalid with weight-standardised convolutions; expected another")
    if mode != "bk" and recipe.needs_book_keeping:
        raise ValueError(
            f"grad_sample_mode = {mode!r} is invalid with augmentation multiplicity, normalize clipping or "
            "physical batches; expected 'bk'"
        )
    with warnings.catch_warnings():  # Opacus warns about secure RNG and (functorch) about torch.func
        warnings.simplefilter("ignore")
        wrapped = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=optimizer,
            criterion=TaskLoss(),
            data_loader=batches,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=poisson_sampling,
            grad_sample_mode="ghost" if mode == "bk" else mode,
        )
    if mode in ("ghost", "bk"):  # ghost clipping's loss runs both backward passes; bk does not use it
        dp_model, dp_optimizer, criterion, dp_batches = wrapped
    else:
        (dp_model, dp_optimizer, dp_batches), criterion = wrapped, TaskLoss()
    if expected_batch_size is not None:
        dp_optimizer.expected_batch_size = expected_batch_size
    clipper = None
    if mode == "bk":
        dp_model.disable_hooks()
        clipper = BookKeepingClipper(
            model,
            max_grad_norm=float(max_grad_norm),
            views=recipe.augmentation_multiplicity,
            clipping=recipe.clipping,
        )
    return PrivateTraining(
        dp_model, dp_optimizer, dp_batches, mode, criterion, clipper, examples_per_pass=recipe.examples_per_pass
    )


def train_private(
    model: nn.Module,
    images: ImageSet,
    *,
    transform: Callable[[Tensor], Tensor],
    batch_size: int,
    epochs: float,
    lr: float,
    optimizer_name: str,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    device: torch.device,
    sample_rate: float = 0.0,
    recipe: DPRecipe | None = None,
    grad_sample_mode: str = "bk",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    optimizer_state: dict[str, Any] | None = None,
    keep_optimizer_state: bool = False,
    lr_factor: Callable[[int, int], float] | None = None,
) -> PrivateTrainResult:
    """One round of DP-SGD (Opacus, Poisson sampling), training ``model`` in place.

    ``model`` must come from :func:`make_dp_compatible`. Opacus wraps it for the round;
    afterwards its hooks and per-parameter attributes are removed, so the caller's model
    object holds the trained weights under its original state-dict keys (no ``_module.``).
    Only the parameters that require a gradient train (and only they reach Opacus); layers
    whose parameters are all frozen run in eval mode. Training runs in float32 whatever the
    run's ``precision``: under bf16 autocast the per-example norms are off by up to about 1%
    and an example can add more than the clipping bound, which breaks the sensitivity the
    accountant assumes. ``seed`` fixes the Poisson sampling, the augmentation and the noise,
    which makes a round reproducible; that is for experiments, not a secure noise source.

    Args:
        model: the DP-compatible model, trained in place.
        images: this hospital's training images.
        transform: the training transform (augmentation + normalisation).
        batch_size: expected Poisson batch size when ``sample_rate`` is 0; see :func:`poisson_schedule`.
        epochs: local epochs (a fraction: that share of an epoch's steps, at least one); see :func:`poisson_schedule`.
        lr: learning rate (constant through the round unless ``lr_factor``).
        optimizer_name: ``sgd``, ``adam`` or ``adamw``.
        noise_multiplier: Gaussian noise std relative to ``max_grad_norm`` (0 disables noise: not private).
        max_grad_norm: per-sample gradient clipping norm.
        seed: seed of the sampling, augmentation and noise.
        device: where to train.
        sample_rate: Poisson sampling rate q; 0: ``1 / ceil(len(images) / batch_size)``.
        recipe: views per example, clipping form, EMA and physical batch (:class:`DPRecipe`; None: the defaults).
        grad_sample_mode: how to clip per example, one of :data:`GRAD_SAMPLE_MODES`.
        momentum: SGD momentum.
        weight_decay: weight decay of every optimizer.
        optimizer_state: the optimizer's state from this hospital's previous round, or None.
        keep_optimizer_state: return the optimizer's state after the round.
        lr_factor: ``lr_factor(step, steps)`` scales ``lr`` at step ``step`` (0-based) of the round's ``steps``.

    Returns:
        The round's :class:`PrivateTrainResult`.

    Raises:
        ValueError: no images, or an argument out of range.
    """
    if len(images) == 0:
        raise ValueError("this hospital has no training images")
    sample_rate, planned_steps = poisson_schedule(
        num_examples=len(images), batch_size=batch_size, epochs=epochs, sample_rate=sample_rate
    )
    if not is_finite_number(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier = {noise_multiplier!r} is invalid; expected a finite number >= 0")
    if not is_finite_number(max_grad_norm) or max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm = {max_grad_norm!r} is invalid; expected a finite number > 0")
    recipe = recipe or DPRecipe()
    start = time.perf_counter()
    torch.manual_seed(seed)
    train_mode(model.to(device))
    # Not fused: with Opacus' expanded-weights mode ("ew") fused Adam drifted 0.15 from the hooks mode
    # in 9 steps (the unfused loop agrees with every mode to 1e-6; tests/common/test_privacy.py).
    optimizer = build_optimizer(
        model.parameters(), optimizer_name, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=False
    )
    if optimizer_state is not None:  # Opacus' optimizer wraps this one and shares its state
        optimizer.load_state_dict(optimizer_state)
    views = recipe.augmentation_multiplicity
    dataset = TensorImageDataset(images, transform) if views == 1 else MultiViewDataset(images, transform, views=views)
    batches = DPDataLoader(
        dataset,
        sample_rate=sample_rate,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=device.type == "cuda",
    )
    private = make_private(
        model,
        optimizer,
        batches,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=False,  # batches already are Poisson batches, at rate sample_rate
        mode=grad_sample_mode,
        recipe=recipe,
        expected_batch_size=max(1, int(len(images) * sample_rate)),  # Opacus' own, for batch_size's rate
    )
    ema = IterateEMA(model.parameters(), decay=recipe.ema_decay) if recipe.ema_decay else None
    steps, seen, loss_sum, correct = 0, 0, 0.0, 0.0
    try:
        if not math.isclose(private.batches.sample_rate, sample_rate, rel_tol=1e-12):
            raise RuntimeError(f"Opacus samples at rate {private.batches.sample_rate}; expected {sample_rate}")
        with warnings.catch_warnings():  # torch: "the first layer's input needs no gradient", once per step
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            while steps < planned_steps:  # whole passes of Poisson batches, the last one cut at planned_steps
                for x, y in private.batches:
                    if lr_factor is not None:
                        for group in optimizer.param_groups:
                            group["lr"] = lr * lr_factor(steps, planned_steps)
                    result = private.step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                    steps += 1
                    if ema is not None:
                        ema.update()
                    if result is not None:
                        loss_sum, correct, seen = loss_sum + result[0], correct + result[1], seen + result[2]
                    if steps == planned_steps:
                        break
    finally:
        private.close()
        _strip_opacus(model)
    if steps != planned_steps:  # the accountant must record what really happened
        raise RuntimeError(f"DP-SGD took {steps} steps; expected {planned_steps}")
    if ema is not None:
        ema.copy_to_params()
    return PrivateTrainResult(
        num_examples=len(images),
        loss=loss_sum / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=time.perf_counter() - start,
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
        optimizer_state=optimizer.state_dict() if keep_optimizer_state else None,
    )
