"""Which layers train (``train-from-block``, ``trainable-params``): earlier blocks are frozen, later ones train.

With ``trainable-params = "norm"`` only the normalisation layers' scales and shifts train in
the trained blocks, with the whole head: FiLM-style tuning, a few thousand parameters, which
DP-SGD's noise barely touches (Tobaben et al. 2023).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from common.architectures import BLOCKS

__all__ = ["block_of", "freeze_batchnorm_statistics", "freeze_blocks", "train_mode"]


def block_of(name: str, architecture: str) -> int:
    """The index in :data:`~common.architectures.BLOCKS` of the block that holds parameter ``name``.

    Raises:
        ValueError: no block of ``architecture`` holds ``name``.
    """
    for index, (_, prefixes) in enumerate(BLOCKS[architecture]):
        if any(name.startswith(f"{prefix}.") for prefix in prefixes):
            return index
    raise ValueError(f"parameter {name!r} is in no block of {architecture}")


NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)
"""The layers whose scale and shift train under ``trainable-params = "norm"``."""


def _norm_parameters(model: nn.Module) -> set[str]:
    """The names of every normalisation layer's parameters."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, NORM_LAYERS)
        for name, _ in module.named_parameters(recurse=False)
    }


def freeze_blocks(model: nn.Module, *, architecture: str, train_from: int, norm_only: bool = False) -> int:
    """Let only blocks ``train_from`` onwards train: every parameter before them stops requiring a gradient.

    With ``norm_only``, only the normalisation layers' parameters of those blocks train, and
    the last block (the head) whole.

    Sets ``requires_grad`` on every parameter (a model reused across rounds or runs is reset),
    so an optimizer built over the trainable parameters, and Opacus, see only those.

    Returns:
        The number of frozen parameter tensors.

    Raises:
        ValueError: ``train_from`` is not a block of ``architecture``.
    """
    blocks = BLOCKS[architecture]
    if not 0 <= train_from < len(blocks):
        raise ValueError(f"train_from = {train_from} is invalid; expected 0 to {len(blocks) - 1} for {architecture}")
    head = len(blocks) - 1
    norms = _norm_parameters(model) if norm_only else set()
    frozen = 0
    for name, param in model.named_parameters():
        block = block_of(name, architecture)
        param.requires_grad_(block >= train_from and (not norm_only or block == head or name in norms))
        frozen += not param.requires_grad
    return frozen


def train_mode(model: nn.Module) -> None:
    """``model.train()``, with every layer whose parameters are all frozen in eval mode.

    A frozen block then does not change at all: its BatchNorm statistics stay as they were.
    """
    model.train()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own and not any(p.requires_grad for p in own):
            module.eval()


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: it normalises by its running statistics and stops updating them.

    Its scale and shift still train. This is FixBN's second phase (Zhong et al., 2023): under
    label skew, each hospital's batch statistics differ from the federation's, so late in a run
    every hospital trains with the global model's statistics instead, as the model is then used.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.eval()
