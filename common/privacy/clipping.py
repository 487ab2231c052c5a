"""Ghost clipping for CNNs: per-sample clipped gradients without per-sample gradients.

DP-SGD needs, per step, the sum over examples b of ``c_b ∇ℓ_b`` with ``c_b = min(1, C / ‖∇ℓ_b‖)``.
Opacus 1.6's ghost clipping has norm samplers for ``Linear`` and ``Embedding`` only: on a
CNN every ``Conv2d`` falls back to materialising per-sample gradients, and a second full
backward pass applies the ``c_b``, which makes ``ghost`` its slowest mode here. This module
adds two things:

- **Mixed ghost norms for ``Conv2d``** (Bu et al., 2022, "Scalable and Efficient Training of
  Large Convolutional Neural Networks with Differential Privacy"). With unfolded input
  ``A_b`` (d × T: d = in-channels × kernel area, T output positions) and output gradient
  ``G_b`` (p × T), the per-sample weight gradient is ``G_b A_bᵀ`` and
  ``‖G_b A_bᵀ‖²_F = Σ_{t,s} (A_bᵀ A_b)_{ts} (G_bᵀ G_b)_{ts}``, which costs T²(d + p) per
  example instead of T·d·p. Each layer takes the cheaper form: the Gram form in deep layers
  (few positions, many weights), the per-sample gradient in the stem and early layers.
  Registered in Opacus' ghost-clipping registry on import, so Opacus' ``ghost`` mode uses it.
- **Book-keeping** (:class:`BookKeepingClipper`, Bu et al., 2023, "Differentially Private
  Optimization on Large Model at Small Cost"). One backward pass that only propagates
  gradients keeps every layer's input and output gradient; the norms give ``c_b``, and each
  layer's clipped gradient sum is then one ordinary weight-gradient computation with its
  output gradient scaled by ``c_b``. No second backward pass.

Both compute exactly DP-SGD's clipped sum (tests check them against per-example autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.grad_sample import register_norm_sampler
from opacus.utils.tensor_utils import unfold2d
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

__all__ = ["BookKeepingClipper", "conv2d_norm_sample", "uses_gram"]

SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.GroupNorm)
ClippedSums = Callable[[Tensor], dict[nn.Parameter, Tensor]]
"""A layer's clipped gradient sums, given the clipping factors ``c``."""


def uses_gram(*, positions: int, fan_in: int, out_channels: int) -> bool:
    """Whether the Gram (ghost) form, T²(d + p), costs less than the per-sample gradient, T·d·p."""
    return positions * (fan_in + out_channels) < fan_in * out_channels


@register_norm_sampler(nn.Conv2d)
def conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-example L2 norms of the gradients of ``layer.weight`` and ``layer.bias``."""
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    if n == 0:  # an empty Poisson batch
        return {p: backprops.new_zeros(0) for p in layer.parameters() if p.requires_grad}
    g = backprops.reshape(n, backprops.shape[1], -1)
    norms: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        norms[layer.weight] = _conv_weight_sq_norms(layer, x, backprops).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = g.sum(dim=2).norm(2, dim=1)
    return norms


def _conv_weight_sq_norms(layer: nn.Conv2d, x: Tensor, grad_out: Tensor) -> Tensor:
    """Squared per-example norms of the gradient of ``layer.weight`` (groups = 1)."""
    if layer.groups != 1 or isinstance(layer.padding, str):
        raise NotImplementedError(f"ghost clipping supports Conv2d with groups=1 and numeric padding, not {layer}")
    a = unfold2d(x, kernel_size=layer.kernel_size, padding=layer.padding, stride=layer.stride, dilation=layer.dilation)
    g = grad_out.reshape(len(x), grad_out.shape[1], -1)
    if uses_gram(positions=a.shape[2], fan_in=a.shape[1], out_channels=g.shape[1]):  # Σ_ts (AᵀA)_ts (GᵀG)_ts
        return (torch.bmm(a.transpose(1, 2), a) * torch.bmm(g.transpose(1, 2), g)).sum(dim=(1, 2)).clamp(min=0)
    return torch.bmm(g, a.transpose(1, 2)).square().sum(dim=(1, 2))


class BookKeepingClipper:
    """DP-SGD's clipped gradient sum for a model of ``Conv2d``, ``Linear`` and ``GroupNorm`` layers.

    Hooks keep each trainable layer's input (forward) and output gradient (backward).
    :meth:`backward` then sets every parameter's ``.grad`` to ``Σ_b c_b ∇ℓ_b``, what Opacus'
    ghost-clipping optimizer (``DPOptimizerFastGradientClipping``) adds its noise to.
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self.layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        unsupported = sorted({type(m).__name__ for m in self.layers if not isinstance(m, SUPPORTED_LAYERS)})
        if unsupported:
            raise ValueError(
                f"book-keeping clipping cannot handle trainable {', '.join(unsupported)}; "
                f"expected only {', '.join(t.__name__ for t in SUPPORTED_LAYERS)}"
            )
        self._inputs: dict[nn.Module, Tensor] = {}
        self._grads: dict[nn.Module, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for layer in self.layers:
            self._handles.append(layer.register_forward_hook(self._keep_input))
            self._handles.append(layer.register_full_backward_hook(self._keep_grad_output))

    def _keep_input(self, layer: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
        if torch.is_grad_enabled() and layer.training:
            if layer in self._inputs:
                raise NotImplementedError(f"{type(layer).__name__} ran twice in one forward pass (shared weights)")
            self._inputs[layer] = inputs[0].detach().float()  # under autocast a layer's input may be bf16

    def _keep_grad_output(self, layer: nn.Module, _grad_input: object, grad_output: tuple[Tensor, ...]) -> None:
        self._grads[layer] = grad_output[0].detach().float()

    def remove(self) -> None:
        """Remove the hooks; the model is an ordinary model again."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()
        self._grads.clear()

    def backward(self, loss_per_sample: Tensor, inputs: Tensor) -> Tensor:
        """Set each parameter's ``.grad`` to the clipped sum; return the per-example gradient norms.

        ``inputs`` is the batch the loss came from; it is made to require a gradient so that
        the backward pass reaches every layer while skipping every weight gradient.
        """
        if not inputs.requires_grad:
            raise ValueError("inputs must require grad (inputs.requires_grad_() before the forward pass)")
        try:
            torch.autograd.grad(loss_per_sample.sum(), inputs)
            missing = [type(m).__name__ for m in self.layers if m not in self._grads]
            if missing:
                raise RuntimeError(f"no output gradient reached {', '.join(missing)}; is every layer used?")
            per_layer = {m: self._per_sample_parts(m) for m in self.layers}
            sq = torch.stack([part for parts in per_layer.values() for part in parts[0]]).sum(dim=0)
            norms = sq.sqrt()
            coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            for _, clipped_sum in per_layer.values():
                for param, grad in clipped_sum(coef).items():
                    param.grad = grad
            return norms
        finally:
            self._inputs.clear()
            self._grads.clear()

    def _per_sample_parts(self, layer: nn.Module) -> tuple[list[Tensor], ClippedSums]:
        """The layer's squared per-example norms (one per parameter) and a function of ``c`` giving its sums."""
        x, g = self._inputs[layer], self._grads[layer]
        weight, bias = layer.weight, layer.bias
        sq: list[Tensor] = []
        if isinstance(layer, nn.Conv2d):
            sq.append(_conv_weight_sq_norms(layer, x, g))
            if bias is not None:
                sq.append(g.sum(dim=(2, 3)).square().sum(dim=1))

            def sums(c: Tensor) -> dict[nn.Parameter, Tensor]:
                scaled = g * c.view(-1, 1, 1, 1)
                out = {
                    weight: torch.nn.grad.conv2d_weight(
                        x, weight.shape, scaled, layer.stride, layer.padding, layer.dilation, layer.groups
                    )
                }
                if bias is not None:
                    out[bias] = scaled.sum(dim=(0, 2, 3))
                return out

        elif isinstance(layer, nn.Linear):
            if x.dim() != 2:
                raise NotImplementedError(f"book-keeping supports Linear on (batch, features) inputs, not {x.dim()}-D")
            sq.append(g.square().sum(dim=1) * x.square().sum(dim=1))
            if bias is not None:
                sq.append(g.square().sum(dim=1))

            def sums(c: Tensor) -> dict[nn.Parameter, Tensor]:
                scaled = g * c[:, None]
                out = {weight: scaled.T @ x}
                if bias is not None:
                    out[bias] = scaled.sum(dim=0)
                return out

        else:  # GroupNorm: per-example gradients are (batch, channels), cheap to hold
            spatial = tuple(range(2, x.dim()))
            normalized = F.group_norm(x, layer.num_groups, eps=layer.eps)
            per_weight = (normalized * g).sum(dim=spatial)
            per_bias = g.sum(dim=spatial)
            sq.append(per_weight.square().sum(dim=1))
            sq.append(per_bias.square().sum(dim=1))

            def sums(c: Tensor) -> dict[nn.Parameter, Tensor]:
                return {weight: c @ per_weight, bias: c @ per_bias}

        return sq, sums
