"""Which layers train (``train-from-block``): the earlier blocks are frozen, the later ones train."""

from __future__ import annotations

from torch import nn

from common.architectures import BLOCKS

__all__ = ["block_of", "freeze_blocks", "train_mode"]


def block_of(name: str, architecture: str) -> int:
    """The index in :data:`~common.architectures.BLOCKS` of the block that holds parameter ``name``.

    Raises:
        ValueError: no block of ``architecture`` holds ``name``.
    """
    for index, (_, prefixes) in enumerate(BLOCKS[architecture]):
        if any(name.startswith(f"{prefix}.") for prefix in prefixes):
            return index
    raise ValueError(f"parameter {name!r} is in no block of {architecture}")


def freeze_blocks(model: nn.Module, *, architecture: str, train_from: int) -> int:
    """Let only blocks ``train_from`` onwards train: every parameter before them stops requiring a gradient.

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
    frozen = 0
    for name, param in model.named_parameters():
        param.requires_grad_(block_of(name, architecture) >= train_from)
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
