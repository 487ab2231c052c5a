"""Differential-privacy building blocks: DP-compatible models, RDP accounting, DP-SGD rounds.

Independent of Flower. Sample-level DP-SGD with Opacus and Poisson sampling:

- :func:`make_dp_compatible` is the model variant every party builds when DP is on
  (BatchNorm → GroupNorm, no in-place operation anywhere), deterministic for a seed.
- The accounting is pure functions plus one small piece of state, :class:`PrivacyLedger`:
  a history of ``(noise_multiplier, sample_rate, steps)`` entries, persisted as JSON in
  the hospital's state directory, so epsilon never resets when a node restarts.
- :func:`train_private` runs one round of DP-SGD and reports what the ledger records.

Every privacy-relevant argument is keyword-only, so no number lands in the wrong place.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.validators import ModuleValidator
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision.models.densenet import DenseNet
from torchvision.models.inception import BasicConv2d
from torchvision.models.resnet import BasicBlock, Bottleneck

from common.data.images import ImageSet
from common.ghost_clipping import BookKeepingClipper  # importing it also registers ghost clipping's Conv2d norms
from common.inference import loader

__all__ = [
    "GRAD_SAMPLE_MODES",
    "PrivacyLedger",
    "PrivateTrainResult",
    "default_delta",
    "fits_budget",
    "PrivateTraining",
    "make_dp_compatible",
    "make_private",
    "noise_multiplier_for",
    "poisson_schedule",
    "train_private",
]

GRAD_SAMPLE_MODES = ("bk", "hooks", "functorch", "ew", "ghost")
"""How :func:`train_private` clips per example: ``bk`` (book-keeping, :mod:`common.ghost_clipping`;
the fastest, and the default) or one of Opacus' per-sample gradient modes."""

LEDGER_MECHANISM = "rdp"
_ENTRY_KEYS = ("noise_multiplier", "sample_rate", "steps")
# Opacus' default RDP orders plus the large orders Google's dp-accounting also searches:
# a tighter (still valid) epsilon when the privacy cost per order is tiny.
_ORDERS: tuple[float, ...] = (*RDPAccountant.DEFAULT_ALPHAS, 128, 256, 512, 1024)
_OPACUS_PARAM_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample", "_norm_sample")


# --------------------------------------------------------------------------- models


class _DPBasicBlock(BasicBlock):
    """torchvision ``BasicBlock`` with ``out = out + identity`` instead of ``out += identity``."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _DPBottleneck(Bottleneck):
    """torchvision ``Bottleneck`` with ``out = out + identity`` instead of ``out += identity``."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _DPDenseNet(DenseNet):
    """torchvision ``DenseNet`` whose head ReLU (after ``norm5``) is not in place."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
        return self.classifier(torch.flatten(out, 1))


class _DPBasicConv2d(BasicConv2d):
    """torchvision Inception ``BasicConv2d`` with an out-of-place ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


# Exact torchvision class → the subclass that only rewrites ``forward`` out of place.
# Same attributes, same parameters, same state-dict keys.
_OUT_OF_PLACE: dict[type[nn.Module], type[nn.Module]] = {
    BasicBlock: _DPBasicBlock,
    Bottleneck: _DPBottleneck,
    DenseNet: _DPDenseNet,
    BasicConv2d: _DPBasicConv2d,
}


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """The Opacus-compatible variant of ``model`` that every party builds when DP is on.

    BatchNorm mixes examples of a batch, so it becomes GroupNorm
    (``ModuleValidator.fix``: ``gcd(32, channels)`` groups, weight 1, bias 0). Opacus'
    per-sample-gradient hooks wrap each layer's output in a ``BackwardHookFunction`` view,
    which torch refuses to modify in place, so every in-place operation goes: modules with
    an ``inplace`` flag (ReLU, Dropout, ...) get ``inplace=False``, and the torchvision
    forwards that use ``+=`` or ``F.relu(..., inplace=True)`` (ResNet blocks, DenseNet's
    head, Inception's ``BasicConv2d``) are swapped for out-of-place subclasses.

    Deterministic: two models built with the same seed give identical state dicts after
    this call, so the server's initial model and the hospitals' models match exactly.

    Args:
        model: any model of :data:`common.models.MODELS`, left untouched.

    Returns:
        A new model with the DP-compatible layers.

    Raises:
        ValueError: the model still holds a layer Opacus cannot train.
    """
    fixed = ModuleValidator.fix(model)  # a deep copy; the argument is left as it was
    for module in fixed.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
        replacement = _OUT_OF_PLACE.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ValueError(f"{type(model).__name__} is not DP-compatible: {str(errors[0]).splitlines()[0]}")
    return fixed


# --------------------------------------------------------------------------- accounting


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_entry(noise_multiplier: object, sample_rate: object, steps: object, where: str) -> tuple[float, float, int]:
    if not _is_number(noise_multiplier) or noise_multiplier <= 0:  # type: ignore[operator]
        raise ValueError(f"{where}noise_multiplier = {noise_multiplier!r} is invalid; expected a finite number > 0")
    if not _is_number(sample_rate) or not 0 < sample_rate <= 1:  # type: ignore[operator]
        raise ValueError(f"{where}sample_rate = {sample_rate!r} is invalid; expected a number in (0, 1]")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{where}steps = {steps!r} is invalid; expected an integer >= 1")
    return float(noise_multiplier), float(sample_rate), steps  # type: ignore[arg-type]


def _check_delta(delta: object) -> float:
    if not _is_number(delta) or not 0 < delta < 1:  # type: ignore[operator]
        raise ValueError(f"delta = {delta!r} is invalid; expected a number in (0, 1)")
    return float(delta)  # type: ignore[arg-type]


class PrivacyLedger:
    """The privacy spent so far: a history of ``(noise_multiplier, sample_rate, steps)``.

    Epsilon is computed from the history with Opacus' RDP accountant maths (subsampled
    Gaussian mechanism, composed over all steps). Consecutive entries with the same noise
    multiplier and sample rate are merged, as Opacus' ``RDPAccountant`` does. The state is
    small, checked on load, and saved atomically.

    Example:
        >>> ledger = PrivacyLedger.load(state_dir / "privacy.json")
        >>> ledger.record(noise_multiplier=1.1, sample_rate=0.01, steps=200)
        >>> ledger.save(state_dir / "privacy.json")
        >>> ledger.epsilon(1e-5)
    """

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def __len__(self) -> int:
        return len(self.history)

    def __repr__(self) -> str:
        return f"PrivacyLedger(history={self.history!r})"

    @property
    def steps(self) -> int:
        """Total DP-SGD steps recorded."""
        return sum(entry[2] for entry in self.history)

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Add ``steps`` Poisson-sampled DP-SGD steps with this noise multiplier and sample rate.

        Raises:
            ValueError: a value is out of range (noise <= 0, sample rate outside (0, 1], steps < 1).
        """
        sigma, q, k = _check_entry(noise_multiplier, sample_rate, steps, "")
        if self.history and self.history[-1][:2] == (sigma, q):
            self.history[-1] = (sigma, q, self.history[-1][2] + k)
        else:
            self.history.append((sigma, q, k))

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0.0 for an empty ledger).

        Raises:
            ValueError: ``delta`` is not in (0, 1).
        """
        delta = _check_delta(delta)
        if not self.history:
            return 0.0
        accountant = RDPAccountant()
        accountant.history = list(self.history)
        with warnings.catch_warnings():  # "optimal order is the largest alpha": informative only
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(delta=delta, alphas=list(_ORDERS)))

    def copy(self) -> PrivacyLedger:
        """An independent copy (for "what if" projections)."""
        ledger = PrivacyLedger()
        ledger.history = list(self.history)
        return ledger

    def state_dict(self) -> dict[str, Any]:
        """The JSON-ready state: ``{"mechanism": "rdp", "history": [{noise_multiplier, sample_rate, steps}]}``."""
        return {
            "mechanism": LEDGER_MECHANISM,
            "history": [dict(zip(_ENTRY_KEYS, entry, strict=True)) for entry in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history with ``state`` (as written by :meth:`state_dict`), after checking all of it.

        Raises:
            ValueError: one line naming the first bad field; the ledger is left unchanged.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"privacy ledger state is a {type(state).__name__}; expected a mapping")
        if set(state) != {"mechanism", "history"}:
            raise ValueError(f"privacy ledger state has keys {sorted(state)}; expected ['history', 'mechanism']")
        if state["mechanism"] != LEDGER_MECHANISM:
            raise ValueError(f"privacy ledger mechanism = {state['mechanism']!r} is unsupported; expected 'rdp'")
        raw = state["history"]
        if not isinstance(raw, list):
            raise ValueError(f"privacy ledger history is a {type(raw).__name__}; expected a list")
        history = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, Mapping) or set(entry) != set(_ENTRY_KEYS):
                raise ValueError(f"privacy ledger history[{i}] = {entry!r} is invalid; expected keys {_ENTRY_KEYS}")
            history.append(_check_entry(*(entry[k] for k in _ENTRY_KEYS), f"privacy ledger history[{i}]."))
        self.history = history

    def save(self, path: str | Path) -> Path:
        """Write the ledger as JSON, atomically (temp file in the same folder, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.state_dict(), fh, indent=2, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """The ledger saved at ``path``; an empty ledger when the file does not exist.

        Raises:
            ValueError: the file exists but is unreadable, not JSON or not a valid ledger
                (never silently reset: that would forget privacy already spent).
        """
        path = Path(path)
        ledger = cls()
        if not path.exists():
            return ledger
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            ledger.load_state_dict(state)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"privacy ledger {str(path)!r} is corrupt or invalid: {reason}") from None
        return ledger


def noise_multiplier_for(*, target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that makes the whole planned training end at epsilon <= ``target_epsilon``.

    ``steps`` is the total number of Poisson-sampled DP-SGD steps of the plan (all rounds ×
    local epochs × steps per epoch). Binary search with Opacus' RDP accountant, to within
    ``min(0.01, 0.5 % of target_epsilon)`` below the target.

    Raises:
        ValueError: an input is out of range, or the target needs a noise multiplier above 10⁶.
    """
    if not _is_number(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon = {target_epsilon!r} is invalid; expected a finite number > 0")
    delta = _check_delta(delta)
    _, q, k = _check_entry(1.0, sample_rate, steps, "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(
                get_noise_multiplier(
                    target_epsilon=float(target_epsilon),
                    target_delta=delta,
                    sample_rate=q,
                    steps=k,
                    accountant="rdp",
                    epsilon_tolerance=min(0.01, 0.005 * target_epsilon),
                    alphas=list(_ORDERS),
                )
            )
    except ValueError:
        raise ValueError(
            f"target_epsilon = {target_epsilon} is unreachable for {k} steps at sample rate {q:.4g}; "
            "expected a larger epsilon, fewer rounds or epochs, or a smaller batch"
        ) from None


def default_delta(n: int) -> float:
    """The default delta for a dataset of ``n`` examples: ``min(1e-5, 1 / (10 n))``.

    Always well below ``1/n`` (a delta near ``1/n`` allows releasing one example outright),
    and never looser than the customary ``1e-5``.

    Raises:
        ValueError: ``n < 1``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n = {n!r} is invalid; expected the number of training examples (>= 1)")
    return min(1e-5, 1.0 / (10 * n))


def fits_budget(
    ledger: PrivacyLedger,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    target_epsilon: float,
) -> tuple[bool, float]:
    """Whether one more round of ``steps`` keeps the epsilon spent <= ``target_epsilon``.

    Used by a hospital to decline a round before training; ``ledger`` is not changed.

    Returns:
        ``(fits, projected_epsilon)``: the epsilon the ledger would show after that round.
    """
    if not _is_number(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon = {target_epsilon!r} is invalid; expected a finite number > 0")
    projected = ledger.copy()
    projected.record(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
    epsilon = projected.epsilon(delta)
    return epsilon <= target_epsilon * (1 + 1e-9), epsilon


def poisson_schedule(*, num_examples: int, batch_size: int, epochs: int = 1) -> tuple[float, int]:
    """The sample rate and number of steps :func:`train_private` uses for ``epochs`` epochs.

    As Opacus' ``DPDataLoader``: ``steps_per_epoch = ceil(num_examples / batch_size)`` and
    ``sample_rate = 1 / steps_per_epoch`` (each example is in each step with this probability).

    Returns:
        ``(sample_rate, steps)`` with ``steps = epochs * steps_per_epoch``.
    """
    for name, value in (("num_examples", num_examples), ("batch_size", batch_size), ("epochs", epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} = {value!r} is invalid; expected an integer >= 1")
    per_epoch = math.ceil(num_examples / batch_size)
    return 1.0 / per_epoch, epochs * per_epoch


# --------------------------------------------------------------------------- training


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
    """

    num_examples: int
    loss: float
    accuracy: float
    seconds: float
    steps: int
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float


def _make_optimizer(
    model: nn.Module, name: str, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer_name = {name!r} is invalid; expected 'sgd', 'adam' or 'adamw'")


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

    def step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
        """One DP-SGD step on a batch: the logits and mean loss, or None for an empty Poisson batch.

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
        if self.clipper is not None:
            x = x.detach().requires_grad_(True)  # the backward pass reaches every layer through the input
            logits = self.model(x)
            per_example = F.cross_entropy(logits, y, reduction="none")
            self.clipper.backward(per_example, x)
            loss = per_example.mean()
        else:
            logits = self.model(x)
            loss = self.criterion(logits, y)
            loss.backward()
        self.optimizer.step()
        return (logits, loss) if len(y) else None

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
) -> PrivateTraining:
    """Wrap ``model``, ``optimizer`` and ``batches`` for DP-SGD with clipping ``mode`` (:data:`GRAD_SAMPLE_MODES`).

    ``bk`` runs on Opacus' ghost-clipping wrapper with its hooks off: the book-keeping clipper
    computes the clipped sums, Opacus' optimizer adds the noise.
    """
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"grad_sample_mode = {mode!r} is invalid; expected one of {GRAD_SAMPLE_MODES}")
    with warnings.catch_warnings():  # Opacus warns about secure RNG and (functorch) about torch.func
        warnings.simplefilter("ignore")
        wrapped = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            data_loader=batches,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=poisson_sampling,
            grad_sample_mode="ghost" if mode == "bk" else mode,
        )
    if mode in ("ghost", "bk"):  # ghost clipping's loss runs both backward passes; bk does not use it
        dp_model, dp_optimizer, criterion, dp_batches = wrapped
    else:
        (dp_model, dp_optimizer, dp_batches), criterion = wrapped, nn.CrossEntropyLoss()
    clipper = None
    if mode == "bk":
        dp_model.disable_hooks()
        clipper = BookKeepingClipper(model, max_grad_norm=float(max_grad_norm))
    return PrivateTraining(dp_model, dp_optimizer, dp_batches, mode, criterion, clipper)


def train_private(
    model: nn.Module,
    images: ImageSet,
    *,
    transform: Callable[[Tensor], Tensor],
    batch_size: int,
    epochs: int,
    lr: float,
    optimizer_name: str,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    device: torch.device,
    grad_sample_mode: str = "bk",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> PrivateTrainResult:
    """One round of DP-SGD (Opacus, Poisson sampling), training ``model`` in place.

    ``model`` must come from :func:`make_dp_compatible`. Opacus wraps it for the round;
    afterwards its hooks and per-parameter attributes are removed, so the caller's model
    object holds the trained weights under its original state-dict keys (no ``_module.``).
    Training runs in float32 (no autocast: per-sample gradients are computed in full
    precision). ``seed`` fixes the Poisson sampling, the augmentation and the noise, which
    makes a round reproducible; that is for experiments, not a secure noise source.

    Args:
        model: the DP-compatible model, trained in place.
        images: this hospital's training images.
        transform: the training transform (augmentation + normalisation).
        batch_size: expected Poisson batch size; see :func:`poisson_schedule`.
        epochs: local epochs of ``ceil(len(images) / batch_size)`` steps each.
        lr: learning rate.
        optimizer_name: ``sgd``, ``adam`` or ``adamw``.
        noise_multiplier: Gaussian noise std relative to ``max_grad_norm`` (0 disables noise: not private).
        max_grad_norm: per-sample gradient clipping norm.
        seed: seed of the sampling, augmentation and noise.
        device: where to train.
        grad_sample_mode: how to clip per example, one of :data:`GRAD_SAMPLE_MODES`.
        momentum: SGD momentum.
        weight_decay: weight decay of every optimizer.

    Returns:
        The round's :class:`PrivateTrainResult`.

    Raises:
        ValueError: no images, or an argument out of range.
    """
    if len(images) == 0:
        raise ValueError("this hospital has no training images")
    sample_rate, planned_steps = poisson_schedule(num_examples=len(images), batch_size=batch_size, epochs=epochs)
    if not _is_number(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier = {noise_multiplier!r} is invalid; expected a finite number >= 0")
    if not _is_number(max_grad_norm) or max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm = {max_grad_norm!r} is invalid; expected a finite number > 0")
    start = time.perf_counter()
    torch.manual_seed(seed)
    model.to(device).train()
    optimizer = _make_optimizer(model, optimizer_name, lr=lr, momentum=momentum, weight_decay=weight_decay)
    batches = loader(images, transform, batch_size=batch_size, device=device, shuffle=False, seed=seed)
    private = make_private(
        model,
        optimizer,
        batches,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        mode=grad_sample_mode,
    )
    steps, seen, loss_sum, correct = 0, 0, 0.0, 0
    try:
        if not math.isclose(private.batches.sample_rate, sample_rate, rel_tol=1e-12):
            raise RuntimeError(f"Opacus samples at rate {private.batches.sample_rate}; expected {sample_rate}")
        with warnings.catch_warnings():  # torch: "the first layer's input needs no gradient", once per step
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for _ in range(epochs):
                for x, y in private.batches:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    result = private.step(x, y)
                    steps += 1
                    if result is not None:
                        logits, loss = result
                        seen += len(y)
                        loss_sum += float(loss.detach()) * len(y)
                        correct += int((logits.detach().argmax(1) == y).sum())
    finally:
        private.close()
        _strip_opacus(model)
    if steps != planned_steps:  # the accountant must record what really happened
        raise RuntimeError(f"DP-SGD took {steps} steps; expected {planned_steps}")
    return PrivateTrainResult(
        num_examples=len(images),
        loss=loss_sum / max(seen, 1),
        accuracy=correct / max(seen, 1),
        seconds=time.perf_counter() - start,
        steps=steps,
        sample_rate=sample_rate,
        noise_multiplier=float(noise_multiplier),
        max_grad_norm=float(max_grad_norm),
    )
