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
Both handle :class:`~common.privacy.compat.WSConv2d`, whose parameter is the weight before
standardisation. Book-keeping also takes an example as ``views`` augmented copies whose
gradients it averages before clipping (augmentation multiplicity, De et al., 2022), and
clips as ``clip`` (``min(1, C / ‖g‖)``) or ``normalize`` (``C / (‖g‖ + γ)``, Bu et al., 2022).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.grad_sample import register_norm_sampler
from opacus.utils.tensor_utils import unfold2d
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from common.privacy.compat import WS_EPS, WSConv2d, standardize

__all__ = ["CLIPPING", "NORMALIZE_GAMMA", "BookKeepingClipper", "clip_factors", "conv2d_norm_sample", "uses_gram"]

CLIPPING = ("clip", "normalize")
"""How a per-example gradient g becomes at most C long: ``clip`` scales it by ``min(1, C / ‖g‖)``;
``normalize`` by ``C / (‖g‖ + γ)`` (Bu et al., 2022, "automatic clipping"), every example."""
NORMALIZE_GAMMA = 0.01
"""γ of ``normalize``: the stability constant of Bu et al. (2022); a tiny gradient is not blown up to length C."""
SUPPORTED_LAYERS = (nn.Conv2d, nn.Linear, nn.GroupNorm)
ClippedSums = Callable[[Tensor], dict[nn.Parameter, Tensor]]
"""A layer's clipped gradient sums, given the clipping factors ``c`` of its views."""


def clip_factors(norms: Tensor, *, max_grad_norm: float, clipping: str) -> Tensor:
    """The factor ``c_b`` each example's gradient is multiplied by; ``‖c_b g_b‖ <= max_grad_norm`` always.

    Raises:
        ValueError: ``clipping`` is not one of :data:`CLIPPING`.
    """
    if clipping == "clip":
        return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    if clipping == "normalize":
        return max_grad_norm / (norms + NORMALIZE_GAMMA)
    raise ValueError(f"clipping = {clipping!r} is invalid; expected one of {CLIPPING}")


def uses_gram(*, positions: int, fan_in: int, out_channels: int) -> bool:
    """Whether the Gram (ghost) form, T²(d + p), costs less than the per-sample gradient, T·d·p."""
    return positions * (fan_in + out_channels) < fan_in * out_channels


def _by_example(t: Tensor, views: int) -> Tensor:
    """``(B·K, c, T)`` → ``(B, c, K·T)``: each example's K views side by side, as positions of one example."""
    if views == 1:
        return t
    rows, channels, positions = t.shape
    return t.view(rows // views, views, channels, positions).transpose(1, 2).reshape(rows // views, channels, -1)


def _sq_norms(a: Tensor, g: Tensor) -> Tensor:
    """``‖g_b a_bᵀ‖²_F`` per example for ``a`` ``(B, d, T)`` and ``g`` ``(B, p, T)``, in the cheaper form."""
    if uses_gram(positions=a.shape[2], fan_in=a.shape[1], out_channels=g.shape[1]):  # Σ_ts (AᵀA)_ts (GᵀG)_ts
        return (torch.bmm(a.transpose(1, 2), a) * torch.bmm(g.transpose(1, 2), g)).sum(dim=(1, 2)).clamp(min=0)
    return torch.bmm(g, a.transpose(1, 2)).square().sum(dim=(1, 2))


def _conv_weight_sq_norms(layer: nn.Conv2d, x: Tensor, grad_out: Tensor, views: int = 1) -> Tensor:
    """Squared per-example norms of the gradient of ``layer.weight`` (groups = 1), views summed first.

    For a :class:`WSConv2d` the weight is the one before standardisation. Per filter o, with
    ``ĝ_o`` the gradient for the standardised filter ``ŵ_o``, d its entries and ``s_o`` its
    norm before scaling, the standardisation's Jacobian is ``(I - 11ᵀ/d - ŵ_o ŵ_oᵀ) / s_o``, so
    ``‖g_o‖² = (‖ĝ_o‖² - (1·ĝ_o)²/d - (2 - ‖ŵ_o‖²)(ŵ_o·ĝ_o)²) / s_o²``: the ghost norm of ĝ/s
    and two (B, out) corrections.
    """
    if layer.groups != 1 or isinstance(layer.padding, str):
        raise NotImplementedError(f"ghost clipping supports Conv2d with groups=1 and numeric padding, not {layer}")
    a = unfold2d(x, kernel_size=layer.kernel_size, padding=layer.padding, stride=layer.stride, dilation=layer.dilation)
    a = _by_example(a, views)
    g = _by_example(grad_out.reshape(len(x), grad_out.shape[1], -1), views)
    if not isinstance(layer, WSConv2d):
        return _sq_norms(a, g)
    flat = layer.weight.detach().flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    scale = (centred.square().sum(dim=1) + WS_EPS).sqrt()
    w_hat = centred / scale[:, None]
    g = g / scale[None, :, None]
    ones = (g * a.sum(dim=1, keepdim=True)).sum(dim=2)  # 1·ĝ_o = Σ_t g_ot Σ_j a_jt
    along = (g * torch.matmul(w_hat, a)).sum(dim=2)  # ŵ_o·ĝ_o = Σ_t g_ot (ŵ_o·a_t)
    fan_in = flat.shape[1]
    correction = ones.square().sum(dim=1) / fan_in + (along.square() * (2 - w_hat.square().sum(dim=1))).sum(dim=1)
    return (_sq_norms(a, g) - correction).clamp(min=0)


@register_norm_sampler([nn.Conv2d, WSConv2d])
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


class BookKeepingClipper:
    """DP-SGD's clipped gradient sum for a model of ``Conv2d``, ``Linear`` and ``GroupNorm`` layers.

    Hooks keep each trainable layer's input (forward) and output gradient (backward).
    :meth:`backward` then adds ``Σ_b c_b ∇ℓ_b`` to every parameter's ``.grad``, what Opacus'
    ghost-clipping optimizer (``DPOptimizerFastGradientClipping``) adds its noise to. With
    ``views`` = K, the batch holds each example's K views in a row, and ``∇ℓ_b`` is the mean of
    its views' gradients (augmentation multiplicity: one example, one clipped contribution).
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float, views: int = 1, clipping: str = "clip") -> None:
        if clipping not in CLIPPING:
            raise ValueError(f"clipping = {clipping!r} is invalid; expected one of {CLIPPING}")
        if views < 1:
            raise ValueError(f"views = {views} is invalid; expected an integer >= 1")
        self.max_grad_norm, self.views, self.clipping = max_grad_norm, views, clipping
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

    def backward(self, loss_per_view: Tensor, inputs: Tensor) -> Tensor:
        """Add the clipped sum to each parameter's ``.grad``; return the per-example gradient norms ``(B,)``.

        ``loss_per_view`` is ``(B·K,)``: example b's views are rows ``b·K`` to ``b·K + K - 1``, and
        its loss is their mean. ``inputs`` is the batch the loss came from; it is made to require a
        gradient so that the backward pass reaches every layer while skipping every weight gradient.
        """
        if not inputs.requires_grad:
            raise ValueError("inputs must require grad (inputs.requires_grad_() before the forward pass)")
        if len(loss_per_view) % self.views:
            raise ValueError(f"{len(loss_per_view)} losses are not whole examples of {self.views} views")
        try:
            torch.autograd.grad(loss_per_view.sum() / self.views, inputs)
            missing = [type(m).__name__ for m in self.layers if m not in self._grads]
            if missing:
                raise RuntimeError(f"no output gradient reached {', '.join(missing)}; is every layer used?")
            per_layer = {m: self._per_sample_parts(m) for m in self.layers}
            sq = torch.stack([part for parts in per_layer.values() for part in parts[0]]).sum(dim=0)
            norms = sq.sqrt()
            coef = clip_factors(norms, max_grad_norm=self.max_grad_norm, clipping=self.clipping)
            per_view = coef.repeat_interleave(self.views)
            for _, clipped_sum in per_layer.values():
                for param, grad in clipped_sum(per_view).items():
                    param.grad = grad if param.grad is None else param.grad + grad
            return norms
        finally:
            self._inputs.clear()
            self._grads.clear()

    def _per_example(self, per_view: Tensor) -> Tensor:
        """``(B·K, ...)`` → ``(B, ...)``: each example's views summed."""
        return per_view.reshape(-1, self.views, *per_view.shape[1:]).sum(dim=1)

    def _per_sample_parts(self, layer: nn.Module) -> tuple[list[Tensor], ClippedSums]:
        """The layer's squared per-example norms (one per parameter) and a function of ``c`` giving its sums."""
        x, g = self._inputs[layer], self._grads[layer]
        weight, bias = layer.weight, layer.bias
        sq: list[Tensor] = []
        if isinstance(layer, nn.Conv2d):
            sq.append(_conv_weight_sq_norms(layer, x, g, self.views))
            if bias is not None:
                sq.append(self._per_example(g.sum(dim=(2, 3))).square().sum(dim=1))

            def sums(c: Tensor) -> dict[nn.Parameter, Tensor]:
                scaled = g * c.view(-1, 1, 1, 1)
                out = {
                    weight: torch.nn.grad.conv2d_weight(
                        x, weight.shape, scaled, layer.stride, layer.padding, layer.dilation, layer.groups
                    )
                }
                if isinstance(layer, WSConv2d):  # the sum for ŵ, through the standardisation's Jacobian
                    with torch.enable_grad():
                        raw = weight.detach().requires_grad_(True)
                        (out[weight],) = torch.autograd.grad(standardize(raw), raw, out[weight])
                if bias is not None:
                    out[bias] = scaled.sum(dim=(0, 2, 3))
                return out

        elif isinstance(layer, nn.Linear):
            if x.dim() != 2:
                raise NotImplementedError(f"book-keeping supports Linear on (batch, features) inputs, not {x.dim()}-D")
            xs, gs = x.reshape(-1, self.views, x.shape[1]), g.reshape(-1, self.views, g.shape[1])
            if self.views == 1:  # ‖g‖²‖x‖²
                sq.append(g.square().sum(dim=1) * x.square().sum(dim=1))
            else:  # Σ_kl (g_k·g_l)(x_k·x_l)
                sq.append((torch.bmm(gs, gs.transpose(1, 2)) * torch.bmm(xs, xs.transpose(1, 2))).sum(dim=(1, 2)))
            if bias is not None:
                sq.append(gs.sum(dim=1).square().sum(dim=1))

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
            sq.append(self._per_example(per_weight).square().sum(dim=1))
            sq.append(self._per_example(per_bias).square().sum(dim=1))

            def sums(c: Tensor) -> dict[nn.Parameter, Tensor]:
                return {weight: c @ per_weight, bias: c @ per_bias}

        return sq, sums
