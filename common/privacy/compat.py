"""The Opacus-compatible model every party builds when DP is on: GroupNorm, no in-place operation."""

from __future__ import annotations

import torch
from opacus.validators import ModuleValidator
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.densenet import DenseNet
from torchvision.models.inception import BasicConv2d
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["make_dp_compatible"]

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
