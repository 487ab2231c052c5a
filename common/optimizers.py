"""The local optimizers (SGD, Adam, AdamW), shared by plain and DP-SGD training."""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("sgd", "adam", "adamw")

_FUSED_DEVICES = {"cpu", "cuda"}
"""Devices with PyTorch's fused optimizer kernels: one kernel for every tensor, not a Python loop.

On this 2-core CPU a ResNet-18 Adam step takes 16 ms fused against 86 ms unfused (SGD 13 ms
against 17 ms), which is about 10 % of a 48 px training step.
"""


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """``name`` (sgd, adam, adamw) over ``params``; with ``fused``, fused kernels where the device has them."""
    params = [p for p in params if p.requires_grad]
    fused = True if fused and params and all(p.device.type in _FUSED_DEVICES for p in params) else None
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"optimizer = {name!r} is invalid; expected one of: {', '.join(OPTIMIZERS)}")
