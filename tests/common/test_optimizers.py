"""The shared optimizer factory: fused kernels on CPU, same steps as PyTorch's reference loop."""

from __future__ import annotations

import pytest
import torch

from common.optimizers import OPTIMIZERS, build_optimizer


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_steps_match_the_reference_loop(name: str) -> None:
    fused_model, reference_model = _model(), _model()
    fused = build_optimizer(fused_model.parameters(), name, lr=0.01, momentum=0.9, weight_decay=1e-4)
    reference_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    reference = reference_cls(reference_model.parameters(), lr=0.01, weight_decay=1e-4, foreach=False, **kwargs)
    assert fused.defaults["fused"] is True
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (reference_model, reference)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_are_left_out() -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    optimizer = build_optimizer(model.parameters(), "adam", lr=0.01, momentum=0.0, weight_decay=0.0)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(model[0].weight) not in held and len(held) == 3


def test_unknown_optimizer_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^optimizer = 'rmsprop' is invalid; expected one of: sgd, adam, adamw$"):
        build_optimizer(_model().parameters(), "rmsprop", lr=0.01, momentum=0.0, weight_decay=0.0)


def test_fused_can_be_turned_off() -> None:
    optimizer = build_optimizer(_model().parameters(), "sgd", lr=0.01, momentum=0.9, weight_decay=0.0, fused=False)
    assert not optimizer.defaults["fused"]
