"""The DP recipe against independent computations: views averaged before clipping, normalised clipping,
the EMA of the iterates, the sample rate and batches split into forward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.data.images import ImageSet
from common.data.transforms import normalize
from common.models import build_model
from common.privacy.accounting import poisson_schedule
from common.privacy.clipping import NORMALIZE_GAMMA, BookKeepingClipper
from common.privacy.compat import make_dp_compatible
from common.privacy.dpsgd import train_private
from common.privacy.recipe import DPRecipe, IterateEMA, MultiViewDataset

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Opacus: secure RNG off, torch.func notes
    pytest.mark.usefixtures("one_thread"),
]

CPU = torch.device("cpu")
TRAIN = {
    "transform": normalize([0.5], [0.25]),
    "batch_size": 4,
    "epochs": 1,
    "lr": 0.05,
    "optimizer_name": "sgd",
    "noise_multiplier": 0.0,
    "max_grad_norm": 1.0,
    "seed": 7,
    "device": CPU,
}


def _model(ws: bool = False) -> nn.Module:
    return make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0), weight_standardization=ws)


def _images(n: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return ImageSet(images, labels, tuple(f"{i}.png" for i in range(n)), ("a", "b", "c", "d"))


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The gradient of the loss of one image ``x`` ``(C, H, W)``, by plain autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(F.cross_entropy(model(x[None]), y[None]), params))


def _clipper_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **clipper: object) -> list[torch.Tensor]:
    """What the book-keeping clipper puts into ``.grad`` for a batch of views ``x`` ``(B·K, C, H, W)``."""
    bk = BookKeepingClipper(model, **clipper)  # type: ignore[arg-type]
    inputs = x.clone().requires_grad_(True)
    bk.backward(F.cross_entropy(model(inputs), y, reduction="none"), inputs)
    bk.remove()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("ws", [False, True])
def test_multiplicity_clips_the_mean_of_each_examples_view_gradients(ws: bool) -> None:
    """Σ_b min(1, C/‖ḡ_b‖) ḡ_b with ḡ_b the mean over b's K views, by one autograd call per view."""
    torch.manual_seed(3)
    model, examples, views = _model(ws), 3, 4
    x, y = torch.randn(examples * views, 1, 32, 32), torch.randint(0, 4, (examples,)).repeat_interleave(views)
    means = []
    for b in range(examples):
        per_view = [_grad(model, x[b * views + k], y[b * views + k]) for k in range(views)]
        means.append([sum(grads) / views for grads in zip(*per_view, strict=True)])
    norms = torch.stack([torch.sqrt(sum(g.square().sum() for g in mean)) for mean in means])
    c = float(norms.median())  # one example clipped, one not
    factors = (c / (norms + 1e-6)).clamp(max=1.0)
    expected = [sum(f * mean[i] for f, mean in zip(factors, means, strict=True)) for i in range(len(means[0]))]
    got = _clipper_grads(model, x, y, max_grad_norm=c, views=views)
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)


def test_normalized_clipping_scales_every_example_to_c_over_norm_plus_gamma() -> None:
    """One example at a time: the clipped gradient is C·g/(‖g‖ + γ), so its norm is C‖g‖/(‖g‖ + γ) < C."""
    torch.manual_seed(4)
    model, c = _model(), 0.5
    x, y = torch.randn(3, 1, 32, 32), torch.randint(0, 4, (3,))
    total = None
    for i in range(3):
        g = _grad(model, x[i], y[i])
        norm = torch.sqrt(sum(t.square().sum() for t in g))
        got = _clipper_grads(model, x[i : i + 1], y[i : i + 1], max_grad_norm=c, clipping="normalize")
        got_norm = torch.sqrt(sum(t.square().sum() for t in got))
        torch.testing.assert_close(got_norm, c * norm / (norm + NORMALIZE_GAMMA), rtol=1e-4, atol=1e-7)
        assert got_norm < c
        for want, have in zip(g, got, strict=True):
            torch.testing.assert_close(have, want * c / (norm + NORMALIZE_GAMMA), rtol=1e-4, atol=1e-7)
        total = got if total is None else [a + b for a, b in zip(total, got, strict=True)]
    for want, have in zip(total, _clipper_grads(model, x, y, max_grad_norm=c, clipping="normalize"), strict=True):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-6)  # a batch is the sum of its examples


def test_multi_view_items_are_independent_augmentations() -> None:
    flip = lambda t: torch.flip(t, dims=(2,)) if torch.rand(()) < 0.5 else t  # noqa: E731
    torch.manual_seed(0)
    views, label = MultiViewDataset(_images(2), lambda t: flip(t.float()), views=16)[1]
    assert views.shape == (16, 1, 32, 32) and isinstance(label, int)
    assert len({tuple(v.flatten()[:32].tolist()) for v in views}) == 2  # both draws of the flip occur


def test_ema_is_the_bias_corrected_average_of_the_rounds_iterates() -> None:
    """The iterate after t steps is the same as a t-step round's result (same seed), so the EMA can be recomputed."""
    images, decay, steps = _images(12), 0.6, 4
    args = TRAIN | {"epochs": steps / 3, "noise_multiplier": 1.0}  # 12 images at batch 4: 3 steps an epoch
    iterates = []
    for t in range(1, steps + 1):
        model = _model()
        train_private(model, images, **(args | {"epochs": t / 3}))
        iterates.append({k: v.clone() for k, v in model.state_dict().items()})
    ema_model = _model()
    result = train_private(ema_model, images, **args, recipe=DPRecipe(ema_decay=decay))
    assert result.steps == steps
    weights = [(1 - decay) * decay ** (steps - t) for t in range(1, steps + 1)]
    for key, value in ema_model.state_dict().items():
        expected = sum(w * it[key] for w, it in zip(weights, iterates, strict=True)) / sum(weights)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(ema_model.state_dict()[k], v) for k, v in iterates[-1].items())  # not the last iterate


def test_ema_of_decay_zero_is_the_last_iterate_and_nothing_before_a_step() -> None:
    param = nn.Parameter(torch.zeros(3))
    ema = IterateEMA([param], decay=0.0)
    ema.copy_to_params()
    assert torch.equal(param, torch.zeros(3))
    for value in (1.0, 5.0):
        param.data.fill_(value)
        ema.update()
    param.data.fill_(-1.0)
    ema.copy_to_params()
    assert torch.equal(param, torch.full((3,), 5.0))


def test_a_sample_rate_sets_q_and_an_epoch_of_round_one_over_q_steps() -> None:
    assert poisson_schedule(num_examples=100, batch_size=32, epochs=2, sample_rate=0.3) == (0.3, 6)
    assert poisson_schedule(num_examples=100, batch_size=32, epochs=0.5, sample_rate=0.5) == (0.5, 1)
    assert poisson_schedule(num_examples=100, batch_size=32, sample_rate=1.0) == (1.0, 1)
    assert poisson_schedule(num_examples=100, batch_size=32, sample_rate=0.0) == (0.25, 4)  # 0: from the batch size
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"^sample_rate = .* is invalid; expected a number in \[0, 1\]"):
            poisson_schedule(num_examples=10, batch_size=4, sample_rate=bad)


def test_a_batch_split_into_forward_passes_gives_the_same_round() -> None:
    """q = 0.5 of 16 images; passes of at most 3 images hold one example's 2 views; noise is added once per step."""
    images, states = _images(16), {}
    for name, recipe in {
        "whole": DPRecipe(augmentation_multiplicity=2),
        "passes": DPRecipe(augmentation_multiplicity=2, max_physical_batch=3),
    }.items():
        model = _model()
        result = train_private(model, images, **(TRAIN | {"noise_multiplier": 1.0}), sample_rate=0.5, recipe=recipe)
        assert (result.sample_rate, result.steps) == (0.5, 2)
        states[name] = model.state_dict()
    for key, value in states["whole"].items():
        torch.testing.assert_close(states["passes"][key], value, rtol=1e-4, atol=1e-6)


def test_the_recipe_leaves_the_accounted_rate_and_steps_as_they_are() -> None:
    images = _images(10)
    plain = train_private(_model(), images, **TRAIN)
    recipe = DPRecipe(augmentation_multiplicity=3, clipping="normalize", ema_decay=0.9)
    full = train_private(_model(), images, **TRAIN, recipe=recipe)
    assert (full.sample_rate, full.steps) == (plain.sample_rate, plain.steps) == (pytest.approx(1 / 3), 3)
    assert full.loss > 0 and 0 <= full.accuracy <= 1


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ({"augmentation_multiplicity": 0}, "augmentation_multiplicity = 0 is invalid"),
        ({"augmentation_multiplicity": True}, "augmentation_multiplicity = True is invalid"),
        ({"clipping": "auto"}, "clipping = 'auto' is invalid"),
        ({"ema_decay": 1.0}, "ema_decay = 1.0 is invalid"),
        ({"ema_decay": float("nan")}, "ema_decay = nan is invalid"),
        ({"max_physical_batch": -1}, "max_physical_batch = -1 is invalid"),
    ],
)
def test_a_bad_recipe_is_one_line(recipe: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        DPRecipe(**recipe)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_only_book_keeping_takes_views_normalize_or_passes() -> None:
    model = _model()
    with pytest.raises(ValueError, match="grad_sample_mode = 'hooks' is invalid with augmentation multiplicity"):
        train_private(model, _images(4), **TRAIN, grad_sample_mode="hooks", recipe=DPRecipe(clipping="normalize"))
    assert not any(m._forward_hooks for m in model.modules())


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_an_lr_factor_scales_each_step_as_a_smaller_rate_would() -> None:
    images = _images(24)
    halved, scaled = _model(), _model()
    train_private(halved, images, **{**TRAIN, "lr": TRAIN["lr"] / 2})
    asked: list[tuple[int, int]] = []

    def half(step: int, steps: int) -> float:
        asked.append((step, steps))
        return 0.5

    train_private(scaled, images, **TRAIN, lr_factor=half)
    for a, b in zip(_weights(halved), _weights(scaled), strict=True):
        torch.testing.assert_close(a, b)
    _, steps = poisson_schedule(num_examples=24, batch_size=4, epochs=1)
    assert asked == [(s, steps) for s in range(steps)]


def test_a_zero_factor_leaves_the_weights_as_they_were() -> None:
    frozen = _model()
    before = _weights(frozen)
    train_private(frozen, _images(24), **{**TRAIN, "noise_multiplier": 1.0}, lr_factor=lambda step, steps: 0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(frozen), strict=True))


@pytest.mark.slow
def test_dp_lr_schedule_run_follows_the_runs_warm_up_by_round(tmp_path, monkeypatch) -> None:
    import client.privacy
    from common.config import parse_run_config

    keys = {"model": "cnn3", "image-size": 32, "batch-size": 4, "local-epochs": 1, "num-server-rounds": 3,
            "dp-enabled": True, "dp-target-epsilon": 8.0, "lr-warmup-rounds": 2, "lr-schedule": "constant"}  # fmt: skip
    factors: dict[str, object] = {}

    def record(*args: object, lr_factor: object = None, **kwargs: object) -> object:
        factors[schedule] = lr_factor
        return train_private(*args, lr_factor=lr_factor, **kwargs)

    monkeypatch.setattr(client.privacy, "train_private", record)
    for schedule in ("run", "constant"):
        cfg = parse_run_config({**keys, "dp-lr-schedule": schedule})
        outcome = client.privacy.train_within_budget(_model(), _images(24), cfg=cfg, ledger_dir=tmp_path / schedule,
                                                     seed=3, device=CPU, server_round=2)  # fmt: skip
        assert not isinstance(outcome, str)
    assert factors["constant"] is None
    # round 2 of a 2-round linear warm-up, written out: step s of n trains at (n + s + 1) / 2n of the rate
    run = factors["run"]
    assert callable(run)
    assert [run(s, 6) for s in range(6)] == pytest.approx([(6 + s + 1) / 12 for s in range(6)])
