"""The Opacus-compatible model every party builds when DP is on: GroupNorm, no in-place operation.

Optionally with weight-standardised convolutions (:class:`WSConv2d`), as in De et al. (2022).
"""

from __future__ import annotations

import copy
import math

import torch
from opacus.validators import ModuleValidator
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.densenet import DenseNet
from torchvision.models.inception import BasicConv2d
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["WS_EPS", "WSConv2d", "make_dp_compatible", "standardize"]

WS_EPS = 1e-5
"""Added to each filter's squared norm before the division (:func:`standardize`)."""


def standardize(weight: Tensor) -> Tensor:
    """Each output filter of a ``(out, in, kh, kw)`` weight centred and scaled to unit L2 norm.

    ``ŵ_o = (w_o - mean(w_o)) / sqrt(‖w_o - mean(w_o)‖² + WS_EPS)`` over the filter's
    ``in × kh × kw`` entries: weight standardisation (Qiao et al., 2019) divided by
    ``sqrt(fan-in)`` (as Brock et al., 2021 do), so that a layer without a normalisation after
    it keeps the scale of its input.
    """
    flat = weight.flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    return (centred * (centred.square().sum(dim=1, keepdim=True) + WS_EPS).rsqrt()).view_as(weight)


class WSConv2d(nn.Conv2d):
    """``Conv2d`` that convolves with :func:`standardize` of its weight (same parameters, same state-dict keys).

    The trained parameter is the raw weight; its gradient passes through the standardisation.
    Book-keeping and ghost clipping compute its per-example norms exactly
    (:mod:`common.privacy.clipping`); Opacus' other modes take per-sample gradients with torch.func.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in, H, W)`` → ``(batch, out, H', W')``."""
        return self._conv_forward(x, standardize(self.weight), self.bias)


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


def _group_norm(model: nn.Module, groups: int) -> None:
    """Replace every BatchNorm of ``model`` (in place) by GroupNorm with ``gcd(groups, channels)`` groups."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            norm = nn.GroupNorm(math.gcd(groups, child.num_features), child.num_features, affine=child.affine)
            setattr(model, name, norm)
        else:
            _group_norm(child, groups)


def make_dp_compatible(model: nn.Module, *, groups: int = 32, weight_standardization: bool = False) -> nn.Module:
    """The Opacus-compatible variant of ``model`` that every party builds when DP is on.

    BatchNorm mixes examples of a batch, so it becomes GroupNorm with ``gcd(groups,
    channels)`` groups (weight 1, bias 0; 32 is Opacus' ``ModuleValidator.fix``). Opacus'
    per-sample-gradient hooks wrap each layer's output in a ``BackwardHookFunction`` view,
    which torch refuses to modify in place, so every in-place operation goes: modules with
    an ``inplace`` flag (ReLU, Dropout, ...) get ``inplace=False``, and the torchvision
    forwards that use ``+=`` or ``F.relu(..., inplace=True)`` (ResNet blocks, DenseNet's
    head, Inception's ``BasicConv2d``) are swapped for out-of-place subclasses.

    With ``weight_standardization`` every ``Conv2d`` becomes a :class:`WSConv2d`.

    Deterministic: two models built with the same seed give identical state dicts after
    this call, so the server's initial model and the hospitals' models match exactly.

    Args:
        model: any model of :data:`common.models.MODELS`, left untouched.
        groups: GroupNorm's group count, cut to a divisor of each layer's channels.
        weight_standardization: standardise every convolution's filters.

    Returns:
        A new model with the DP-compatible layers.

    Raises:
        ValueError: the model still holds a layer Opacus cannot train.
    """
    if groups < 1:
        raise ValueError(f"groups = {groups} is invalid; expected an integer >= 1")
    fixed = copy.deepcopy(model)  # the argument is left as it was
    _group_norm(fixed, groups)
    fixed = ModuleValidator.fix(fixed)
    for module in fixed.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
        if weight_standardization and type(module) is nn.Conv2d:
            module.__class__ = WSConv2d
        replacement = _OUT_OF_PLACE.get(type(module))
        if replacement is not None:
            module.__class__ = replacement
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ValueError(f"{type(model).__name__} is not DP-compatible: {str(errors[0]).splitlines()[0]}")
    return fixed
