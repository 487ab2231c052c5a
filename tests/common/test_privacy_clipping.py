"""Ghost clipping against per-example autograd: the Conv2d norms and the book-keeping clipped sums."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.models import build_model
from common.privacy.clipping import BookKeepingClipper, conv2d_norm_sample, uses_gram
from common.privacy.compat import make_dp_compatible


def _per_example_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each example's gradient, one autograd call per example (the same batched forward pass)."""
    params = [p for p in model.parameters() if p.requires_grad]
    losses = F.cross_entropy(model(x), y, reduction="none")
    return [list(torch.autograd.grad(losses[i], params, retain_graph=True)) for i in range(len(y))]


@pytest.mark.parametrize(
    ("size", "conv", "gram"),
    [
        (4, nn.Conv2d(16, 32, 3, padding=1), True),  # few positions, many weights: the Gram form
        (16, nn.Conv2d(2, 4, 3, padding=1), False),  # many positions, few weights: per-sample gradients
        (9, nn.Conv2d(3, 8, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), bias=False), False),
        (6, nn.Conv2d(32, 64, 1, stride=2), True),
    ],
)
def test_conv2d_norms_equal_per_example_gradient_norms(size: int, conv: nn.Conv2d, gram: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, conv.in_channels, size, size)
    out = conv(x)
    t = out.shape[2] * out.shape[3]
    fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert uses_gram(positions=t, fan_in=fan_in, out_channels=conv.out_channels) is gram
    g = torch.randn_like(out)
    norms = conv2d_norm_sample(conv, [x], g)
    for i in range(len(x)):
        expected = torch.autograd.grad(conv(x[i : i + 1]), list(conv.parameters()), g[i : i + 1])
        for param, grad in zip(conv.parameters(), expected, strict=True):
            torch.testing.assert_close(norms[param][i], grad.norm(), rtol=1e-4, atol=1e-6)


def test_conv2d_norms_of_an_empty_batch_are_empty_and_groups_are_refused() -> None:
    conv = nn.Conv2d(4, 4, 3)
    norms = conv2d_norm_sample(conv, [torch.zeros(0, 4, 5, 5)], torch.zeros(0, 4, 3, 3))
    assert {tuple(n.shape) for n in norms.values()} == {(0,)} and len(norms) == 2
    grouped = nn.Conv2d(4, 4, 3, groups=2)
    with pytest.raises(NotImplementedError, match="groups=2"):
        conv2d_norm_sample(grouped, [torch.randn(2, 4, 5, 5)], torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("arch", ["cnn3", "resnet18", "densenet121"])
def test_book_keeping_gives_the_per_example_clipped_sum(arch: str, one_thread: None) -> None:
    torch.manual_seed(1)
    model = make_dp_compatible(build_model(arch, num_classes=4, in_channels=1, seed=0))
    x, y = torch.randn(6, 1, 40, 40), torch.randint(0, 4, (6,))
    per_example = _per_example_grads(model, x, y)
    norms = torch.stack([torch.sqrt(sum(g.square().sum() for g in grads)) for grads in per_example])
    max_grad_norm = float(norms.median())  # some examples are clipped, some are not
    coef = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    expected = [
        sum(c * grads[k] for c, grads in zip(coef, per_example, strict=True)) for k in range(len(per_example[0]))
    ]

    clipper = BookKeepingClipper(model, max_grad_norm=max_grad_norm)
    inputs = x.clone().requires_grad_(True)
    got_norms = clipper.backward(F.cross_entropy(model(inputs), y, reduction="none"), inputs)
    clipper.remove()

    torch.testing.assert_close(got_norms, norms, rtol=1e-4, atol=1e-7)
    params = [p for p in model.parameters() if p.requires_grad]
    for param, want in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, want, rtol=1e-4, atol=1e-6)
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_book_keeping_refuses_layers_it_cannot_clip() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="cannot handle trainable BatchNorm2d"):
        BookKeepingClipper(model, max_grad_norm=1.0)


def test_book_keeping_needs_inputs_that_require_grad_and_refuses_shared_weights() -> None:
    linear = nn.Linear(3, 3)
    clipper = BookKeepingClipper(nn.Sequential(linear), max_grad_norm=1.0)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="inputs must require grad"):
        clipper.backward(linear(x).sum(dim=1), x)
    clipper.remove()

    shared = BookKeepingClipper(nn.Sequential(linear), max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match="ran twice"):
        linear(linear(x.requires_grad_(True)))
    shared.remove()
