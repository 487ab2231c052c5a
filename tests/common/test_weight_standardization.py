"""Weight-standardised convolutions and the GroupNorm group count of the DP-compatible model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn import functional as F

from common.data.images import ImageSet
from common.data.transforms import normalize
from common.models import ModelSpec, build_from_spec, build_model, load_model_dir, save_model_dir
from common.privacy.clipping import conv2d_norm_sample
from common.privacy.compat import WS_EPS, WSConv2d, make_dp_compatible, standardize
from common.privacy.dpsgd import train_private

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Opacus: secure RNG off, torch.func notes
    pytest.mark.usefixtures("one_thread"),
]


def _ws_conv(conv: nn.Conv2d) -> WSConv2d:
    conv.__class__ = WSConv2d
    return conv  # type: ignore[return-value]


def test_a_ws_convolution_uses_centred_unit_norm_filters() -> None:
    torch.manual_seed(0)
    conv = _ws_conv(nn.Conv2d(3, 5, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight.detach().double().numpy().reshape(5, -1)
    centred = w - w.mean(axis=1, keepdims=True)
    expected = centred / np.sqrt((centred**2).sum(axis=1, keepdims=True) + WS_EPS)  # the formula, in float64
    weight = torch.from_numpy(expected.reshape(conv.weight.shape)).float()
    torch.testing.assert_close(conv(x), F.conv2d(x, weight, conv.bias, padding=1), rtol=1e-5, atol=1e-6)
    flat = standardize(conv.weight).flatten(1)
    torch.testing.assert_close(flat.mean(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.norm(dim=1), torch.ones(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("size", "conv"),
    [
        (4, nn.Conv2d(16, 32, 3, padding=1)),  # the Gram form
        (16, nn.Conv2d(2, 4, 3, padding=1)),  # per-sample gradients
        (9, nn.Conv2d(3, 8, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2), bias=False)),
    ],
)
def test_ws_weight_norms_equal_per_example_gradient_norms(size: int, conv: nn.Conv2d) -> None:
    """The norms of the gradient of the raw weight, through the standardisation, against per-example autograd."""
    torch.manual_seed(0)
    conv = _ws_conv(conv)
    x = torch.randn(5, conv.in_channels, size, size)
    g = torch.randn_like(conv(x))
    norms = conv2d_norm_sample(conv, [x], g)
    for i in range(len(x)):
        expected = torch.autograd.grad(conv(x[i : i + 1]), list(conv.parameters()), g[i : i + 1])
        for param, grad in zip(conv.parameters(), expected, strict=True):
            torch.testing.assert_close(norms[param][i], grad.norm(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("groups", [32, 16, 1])
def test_group_norm_takes_the_gcd_of_groups_and_channels(groups: int) -> None:
    plain = build_model("resnet18", num_classes=4, in_channels=1, seed=0)
    model = make_dp_compatible(plain, groups=groups, weight_standardization=True)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == math.gcd(groups, m.num_channels) for m in norms)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is WSConv2d for m in convs)
    assert list(model.state_dict()) == list(make_dp_compatible(plain).state_dict())  # the same keys
    if groups == 32:  # the default is Opacus' own conversion
        fixed = [m.num_groups for m in ModuleValidator.fix(plain).modules() if isinstance(m, nn.GroupNorm)]
        assert [m.num_groups for m in norms] == fixed
    with pytest.raises(ValueError, match="groups = 0 is invalid"):
        make_dp_compatible(plain, groups=0)


def _images(n: int) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.randint(0, 4, (n,), generator=g), tuple(map(str, range(n))), ("a", "b", "c", "d"))


def test_every_clipping_mode_trains_a_ws_model_alike() -> None:
    """Book-keeping (exact ws norms), ghost (its norm sampler) and hooks (torch.func) give the same weights."""
    images = _images(8)
    states = {}
    for mode in ("bk", "ghost", "hooks"):
        model = make_dp_compatible(
            build_model("cnn3", num_classes=4, in_channels=1, seed=0), weight_standardization=True
        )
        train_private(
            model, images, transform=normalize([0.5], [0.25]), batch_size=4, epochs=1, lr=0.5, optimizer_name="sgd",
            noise_multiplier=0.0, max_grad_norm=0.05, seed=3, device=torch.device("cpu"), grad_sample_mode=mode,
        )  # fmt: skip
        states[mode] = model.state_dict()
    for mode in ("ghost", "hooks"):
        for key, value in states["bk"].items():
            torch.testing.assert_close(states[mode][key], value, rtol=1e-4, atol=1e-5, msg=f"{mode}: {key}")


def test_expanded_weights_cannot_train_a_ws_model() -> None:
    model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0), weight_standardization=True)
    with pytest.raises(ValueError, match="grad_sample_mode = 'ew' is invalid with weight-standardised convolutions"):
        train_private(
            model, _images(4), transform=normalize([0.5], [0.25]), batch_size=4, epochs=1, lr=0.5,
            optimizer_name="sgd", noise_multiplier=0.0, max_grad_norm=1.0, seed=0, device=torch.device("cpu"),
            grad_sample_mode="ew",
        )  # fmt: skip


def test_a_saved_model_rebuilds_its_groups_and_standardisation(tmp_path: Path) -> None:
    spec = ModelSpec("cnn3", ("a", "b"), 32, 1, (0.5,), (0.25,), dp_compatible=True, norm_groups=8,
                     weight_standardization=True)  # fmt: skip
    model = build_from_spec(spec, seed=0)
    loaded, loaded_spec = load_model_dir(save_model_dir(tmp_path / "m", model, spec))
    assert loaded_spec == spec
    assert [m.num_groups for m in loaded.modules() if isinstance(m, nn.GroupNorm)] == [8, 8, 8]
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(loaded(x), model.eval()(x))
