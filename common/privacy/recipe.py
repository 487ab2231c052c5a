"""How DP-SGD trains beyond what the accountant sees: views per example, clipping form, EMA, memory.

None of these changes the privacy accounting. The accountant sees Poisson sampling at rate q,
T steps and Gaussian noise of std σC on a sum to which each example adds at most C. Views are
made from an example after it is sampled and averaged before its one clip; ``normalize``
bounds each example's contribution by C like ``clip``; splitting a batch into forward passes
changes nothing that is released; the EMA is computed from the released iterates only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from common.data.images import ImageSet, TensorImageDataset
from common.privacy.clipping import CLIPPING

__all__ = ["DPRecipe", "IterateEMA", "MultiViewDataset"]


@dataclass(frozen=True, kw_only=True)
class DPRecipe:
    """The DP-SGD options that leave the accounting as it is.

    Attributes:
        augmentation_multiplicity: K augmented views of each sampled example; its gradient is the
            mean of theirs, clipped once (De et al., 2022). 1: the example itself, augmented once.
        clipping: ``clip`` (``min(1, C / ‖g‖)``) or ``normalize`` (``C / (‖g‖ + 0.01)``, Bu et al., 2022).
        ema_decay: decay d of the bias-corrected EMA of the round's iterates, which becomes the
            round's result (0: the last iterate, no EMA).
        max_physical_batch: most images (views) one forward pass holds; a larger Poisson batch is
            processed in parts, noise added once (0: the whole batch at once).
    """

    augmentation_multiplicity: int = 1
    clipping: str = "clip"
    ema_decay: float = 0.0
    max_physical_batch: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.augmentation_multiplicity, bool) or self.augmentation_multiplicity < 1:
            raise ValueError(
                f"augmentation_multiplicity = {self.augmentation_multiplicity!r} is invalid; expected an integer >= 1"
            )
        if self.clipping not in CLIPPING:
            raise ValueError(f"clipping = {self.clipping!r} is invalid; expected one of {CLIPPING}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay = {self.ema_decay!r} is invalid; expected a number in [0, 1)")
        if isinstance(self.max_physical_batch, bool) or self.max_physical_batch < 0:
            raise ValueError(f"max_physical_batch = {self.max_physical_batch!r} is invalid; expected an integer >= 0")

    @property
    def needs_book_keeping(self) -> bool:
        """Whether only the ``bk`` clipping mode can train it (views, ``normalize``, a physical batch)."""
        return self.augmentation_multiplicity > 1 or self.clipping != "clip" or self.max_physical_batch > 0

    @property
    def examples_per_pass(self) -> int:
        """Examples one forward pass holds (with their views; at least one), or 0 for the whole batch."""
        if not self.max_physical_batch:
            return 0
        return max(1, self.max_physical_batch // self.augmentation_multiplicity)


class MultiViewDataset(Dataset[tuple[Tensor, int | Tensor]]):
    """An :class:`ImageSet` whose item is ``views`` independent draws of ``transform``: ``(views, C, H, W)``."""

    def __init__(self, images: ImageSet, transform: Callable[[Tensor], Tensor], *, views: int) -> None:
        self.items = TensorImageDataset(images, transform)
        self.views = views

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int | Tensor]:
        drawn = [self.items[index] for _ in range(self.views)]
        return torch.stack([x for x, _ in drawn]), drawn[0][1]


class IterateEMA:
    """The bias-corrected exponential moving average of parameters over one round's steps.

    After steps 1..T with iterates w_1..w_T: ``Σ_t (1-d) d^(T-t) w_t / (1 - d^T)``. The
    starting weights get no weight, so d = 0 is the last iterate and d → 1 the plain mean
    of the round's iterates. Free post-processing: it reads only the released iterates.
    """

    def __init__(self, params: Iterable[nn.Parameter], *, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay = {decay!r} is invalid; expected a number in [0, 1)")
        self.params = [p for p in params if p.requires_grad]
        self.decay, self.steps = decay, 0
        self.shadow = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """Fold in the current iterate (call after every optimizer step)."""
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, [p.float() for p in self.params], alpha=1.0 - self.decay)
        self.steps += 1

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Write the average into the parameters (nothing before the first step)."""
        if not self.steps:
            return
        correction = 1.0 - self.decay**self.steps
        for param, average in zip(self.params, self.shadow, strict=True):
            param.copy_(average / correction)
