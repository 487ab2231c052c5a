"""Local training across rounds: the learning-rate schedule, kept optimizer state, divergence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from client.optimizer_state import load_optimizer_state, save_optimizer_state
from client.training import balanced_class_weights, class_log_prior, non_finite_reason, train_local
from common.config import parse_run_config
from common.data import build_transform, load_split
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model, preset_for
from common.inference import predict
from common.optimizers import lr_factor
from common.precision import Precision
from common.tasks import task_loss

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = write_synthetic_tree(
        tmp_path_factory.mktemp("data"), modality="brain-mri", train_per_class=6, test_per_class=1, size=32, seed=0
    )
    cfg = parse_run_config({"model": "cnn3", "image-size": 32})
    return load_split(root, "train", classes=cfg.class_names, channels=1, size=32)


def _cfg(**keys: object):  # type: ignore[no-untyped-def]
    """A tiny config at a constant learning rate (the tests that schedule it say so)."""
    plain = {"lr-schedule": "constant", "lr-warmup-rounds": 0}
    return parse_run_config({"model": "cnn3", "image-size": 32, "batch-size": 8, "local-epochs": 1, **plain, **keys})


def test_warm_up_then_cosine_to_zero() -> None:
    cfg = _cfg(**{"num-server-rounds": 4, "lr-schedule": "cosine", "lr-warmup-rounds": 1})
    factors = [lr_factor(cfg, step=s, steps_per_round=10) for s in range(40)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    decay = factors[10:]
    assert decay[0] == pytest.approx(1.0) and all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[15] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert lr_factor(_cfg(), step=123, steps_per_round=10) == 1.0


@pytest.mark.parametrize("steps", [3, 5])
def test_local_steps_train_exactly_that_many_batches(images, steps: int) -> None:  # type: ignore[no-untyped-def]
    """24 images in batches of 8 give 3 per pass; 5 steps run one whole pass and 2 batches of the next."""
    cfg = _cfg(**{"local-steps": steps, "local-epochs": 4, "optimizer-state": "keep"})
    result = _train(initial_model(cfg), images, cfg, 1)
    assert result.optimizer_state is not None and int(result.optimizer_state["state"][0]["step"]) == steps
    assert result.num_examples == len(images) == 24


@pytest.mark.parametrize(("epochs", "steps"), [(0.25, 1), (0.5, 2), (1.0, 3), (1.5, 4), (0.01, 1)])
def test_a_fraction_of_an_epoch_trains_that_share_of_the_batches(images, epochs: float, steps: int) -> None:  # type: ignore[no-untyped-def]
    """24 images in batches of 8 are 3 batches an epoch: round(epochs x 3) of them, at least one."""
    cfg = _cfg(**{"local-epochs": epochs, "optimizer-state": "keep"})
    result = _train(initial_model(cfg), images, cfg, 1)
    assert int(result.optimizer_state["state"][0]["step"]) == steps


def test_a_round_of_local_steps_carries_the_schedule_on(images) -> None:  # type: ignore[no-untyped-def]
    """With warm-up over round 1 of 2 steps, round 2 trains at the full rate: the step count is per round."""
    cfg = _cfg(**{"local-steps": 2, "lr-warmup-rounds": 1, "num-server-rounds": 2})
    model = initial_model(cfg)
    seen: list[float] = []
    original = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", recording_step)
        _train(model, images, cfg, 1)
        _train(model, images, cfg, 2)
    assert seen == pytest.approx([0.0005, 0.001, 0.001, 0.001])


def test_class_log_prior_is_the_smoothed_log_frequency() -> None:
    prior = class_log_prior(torch.tensor([0, 0, 0, 2]), 3)
    assert prior.tolist() == pytest.approx([math.log(4 / 7), math.log(1 / 7), math.log(2 / 7)])


@pytest.mark.slow
def test_logit_adjusted_training_leaves_a_skewed_shards_prior_out(tmp_path: Path) -> None:
    """On a shard of 95 % one class, plain cross-entropy learns that prior; the adjusted loss much less."""
    root = write_synthetic_tree(tmp_path, modality="brain-mri", train_per_class=40, test_per_class=1, size=32, seed=3)
    cfg = _cfg(**{"local-epochs": 3})
    full = load_split(root, "train", classes=cfg.class_names, channels=1, size=32)
    labels = full.labels.tolist()
    skewed = full.subset([i for i, y in enumerate(labels) if y == 0] + [i for i, y in enumerate(labels) if y == 1][:2])
    predicted = {}
    for loss in ("cross-entropy", "logit-adjusted"):
        cfg = _cfg(**{"local-epochs": 3, "loss": loss})
        torch.manual_seed(0)
        model = initial_model(cfg)
        _train(model, skewed, cfg, 1)
        others = full.subset([i for i, y in enumerate(labels) if y == 1][2:])
        probs, _ = predict(model, others, build_transform(preset_for(cfg), train=False), batch_size=64, device=CPU)
        predicted[loss] = float(probs[:, 0].mean())
    # The class-1 images it did not train on: plain cross-entropy leans to the shard's majority class.
    assert predicted["logit-adjusted"] < 0.6 * predicted["cross-entropy"], predicted


def _train(model: torch.nn.Module, images, cfg, server_round: int, state=None):  # type: ignore[no-untyped-def]
    return train_local(
        model,
        images,
        cfg=cfg,
        preset=preset_for(cfg),
        device=CPU,
        seed=server_round,
        server_round=server_round,
        optimizer_state=state,
    )


def test_kept_optimizer_state_continues_adams_moments(images, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(**{"optimizer-state": "keep", "num-server-rounds": 2})
    model = initial_model(cfg)
    first = _train(model, images, cfg, 1)
    assert first.optimizer_state is not None
    save_optimizer_state(tmp_path, server_round=1, state=first.optimizer_state)
    save_optimizer_state(tmp_path, server_round=2, state={"state": {}, "param_groups": []})  # an interrupted round 2
    restored = load_optimizer_state(tmp_path, before_round=2)
    assert restored is not None and int(restored["state"][0]["step"]) == int(first.optimizer_state["state"][0]["step"])
    kept = initial_model(cfg)
    kept.load_state_dict(model.state_dict())
    fresh = initial_model(cfg)
    fresh.load_state_dict(model.state_dict())
    _train(kept, images, cfg, 2, restored)
    _train(fresh, images, _cfg(**{"num-server-rounds": 2}), 2)
    # Adam's moments carried over: round 2 differs from a fresh Adam's round 2
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(kept.parameters(), fresh.parameters(), strict=True))
    assert diff > 1e-4
    assert load_optimizer_state(tmp_path, before_round=1) is None
    save_optimizer_state(tmp_path, server_round=3, state=first.optimizer_state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optimizer-round-0002.pt", "optimizer-round-0003.pt"]


def test_a_corrupt_optimizer_state_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "optimizer-round-0001.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="optimizer state .* is corrupt"):
        load_optimizer_state(tmp_path, before_round=2)


def test_a_diverged_model_is_named(images) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg()
    model = initial_model(cfg)
    assert non_finite_reason(1.0, model) is None
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    result = _train(model, images, cfg, 1)
    assert non_finite_reason(result.loss, model) == f"training diverged: loss is {result.loss}"
    assert "holds NaN or Inf values" in str(non_finite_reason(0.5, model))


@pytest.mark.parametrize("strategy", ["fedprox", "auto"])
def test_the_proximal_term_pulls_towards_the_global_model_under_any_server_step(images, strategy) -> None:  # type: ignore[no-untyped-def]
    start = initial_model(_cfg())
    distances = []
    for mu in (0.0, 10.0):
        cfg = _cfg(strategy=strategy, **{"proximal-mu": mu, "learning-rate": 0.01})
        model = initial_model(cfg)
        _train(model, images, cfg, 1)
        pairs = zip(model.parameters(), start.parameters(), strict=True)
        distances.append(sum(float(((p.detach() - q.detach()) ** 2).sum()) for p, q in pairs))
    assert distances[1] < distances[0]


def test_step_schedule_multiplies_after_each_listed_round() -> None:
    cfg = _cfg(**{"lr-schedule": "step", "lr-step-rounds": "2,4", "lr-step-factor": 0.1, "num-server-rounds": 6})
    factors = [lr_factor(cfg, step=s, steps_per_round=3) for s in range(18)]  # rounds 1..6, 3 steps each
    assert factors == pytest.approx([1.0] * 6 + [0.1] * 6 + [0.01] * 6)


def test_balanced_class_weights_match_scikit_learn() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3, 3, 3])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels.numpy())
    np.testing.assert_allclose(balanced_class_weights(labels, 4).numpy(), expected, rtol=1e-6)
    lacking = balanced_class_weights(torch.tensor([0, 0, 2]), 4)  # classes 1 and 3 absent from this shard
    np.testing.assert_allclose(lacking.numpy(), [0.75, 1.0, 1.5, 1.0], rtol=1e-6)


def test_balanced_class_weights_change_the_training_loss(images) -> None:  # type: ignore[no-untyped-def]
    skewed = images.subset([i for i, y in enumerate(images.labels.tolist()) if y != 3 or i % 3 == 0])
    losses = {}
    for mode in ("none", "balanced"):
        cfg = _cfg(**{"class-weights": mode})
        result = train_local(initial_model(cfg), skewed, cfg=cfg, preset=preset_for(cfg), device=CPU, seed=1)
        losses[mode] = result.loss
    assert math.isfinite(losses["balanced"]) and losses["balanced"] != losses["none"]


# ---------------------------------------------------------------- precision


def _first_step(images, precision: Precision):  # type: ignore[no-untyped-def]
    cfg = _cfg(**{"local-steps": 1, "seed": 5})
    model = initial_model(cfg)
    result = train_local(model, images, cfg=cfg, preset=preset_for(cfg), device=CPU, seed=2, precision=precision)
    return model, result


def test_bf16_training_matches_fp32_to_bf16_rounding_and_keeps_float32_weights(images) -> None:  # type: ignore[no-untyped-def]
    reference_model, reference = _first_step(images, Precision("fp32", "cpu"))
    model, result = _first_step(images, Precision("bf16", "cpu"))
    assert (reference.precision, result.precision) == ("fp32", "bf16")
    assert result.loss == pytest.approx(reference.loss, rel=2e-2)  # the same batch, 8 bits of mantissa
    state = model.state_dict()
    assert all(t.dtype == reference_model.state_dict()[k].dtype for k, t in state.items())  # float32 stays float32
    assert all(t.is_contiguous() for t in state.values())  # what ArrayRecord, safetensors and HE read
    initial = initial_model(_cfg(**{"local-steps": 1, "seed": 5})).state_dict()
    assert any(not torch.equal(initial[k], t) for k, t in state.items())  # it did train


def test_fp16_trains_through_the_gradient_scaler(images) -> None:  # type: ignore[no-untyped-def]
    reference_model, reference = _first_step(images, Precision("fp32", "cpu"))
    model, result = _first_step(images, Precision("fp16", "cpu"))  # built directly: resolve refuses fp16 on a CPU
    assert result.precision == "fp16" and result.loss == pytest.approx(reference.loss, rel=1e-2)
    weights = [k for k, t in model.state_dict().items() if t.is_floating_point()]
    assert all(torch.isfinite(model.state_dict()[k]).all() for k in weights)
    assert all(model.state_dict()[k].dtype == torch.float32 for k in weights)


def test_evaluation_under_bf16_is_close_to_fp32_with_float32_outputs(images) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg()
    model = initial_model(cfg)
    transform = build_transform(preset_for(cfg), train=False)
    exact, exact_loss = predict(model, images, transform, device=CPU, precision=Precision("fp32", "cpu"))
    probs, loss = predict(model, images, transform, device=CPU, precision=Precision("bf16", "cpu"))
    assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1.0)
    assert np.abs(probs - exact).max() < 0.02 and loss == pytest.approx(exact_loss, rel=2e-2)
    assert all(t.is_contiguous() for t in model.state_dict().values())


def _batchnorm_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}


def test_batchnorm_freeze_trains_late_rounds_on_the_global_statistics(images) -> None:  # type: ignore[no-untyped-def]
    """Rounds after ``batchnorm-freeze`` of the run normalise by, and keep, the running statistics."""
    cfg = _cfg(**{"batchnorm-freeze": 0.5, "num-server-rounds": 4, "local-steps": 2, "learning-rate": 0.01})
    model = initial_model(cfg)
    checked: list[bool] = []

    def against_eval_mode(layer, inputs, output) -> None:  # type: ignore[no-untyped-def]
        reference = torch.nn.functional.batch_norm(  # what an eval-mode BatchNorm computes, independently
            inputs[0], layer.running_mean, layer.running_var, layer.weight, layer.bias, training=False, eps=layer.eps
        )
        checked.append(torch.allclose(output, reference, atol=1e-5))

    layers = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert layers
    for server_round, frozen in ((2, False), (3, True), (4, True)):
        before, weights = _batchnorm_state(model), [p.detach().clone() for p in model.parameters()]
        hooks = [layer.register_forward_hook(against_eval_mode) for layer in layers]
        checked.clear()
        _train(model, images, cfg, server_round)
        for hook in hooks:
            hook.remove()
        after = _batchnorm_state(model)
        assert all(torch.equal(before[k], after[k]) for k in before) is frozen
        assert all(checked) is frozen and len(checked) == 2 * len(layers)
        assert all(not torch.equal(w, p) for w, p in zip(weights, model.parameters(), strict=True))  # all still train


def test_label_smoothing_is_the_uniform_mixture_of_targets(images, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    logits, y, eps = torch.randn(5, 4), torch.tensor([0, 3, 1, 2, 3]), 0.2
    log_p = torch.log_softmax(logits, dim=1)  # reference: (1 - eps) * NLL + eps * mean over classes of -log p
    expected = ((1 - eps) * -log_p[torch.arange(5), y] + eps * -log_p.mean(dim=1)).mean()
    assert float(task_loss(logits, y, label_smoothing=eps)) == pytest.approx(float(expected), rel=1e-6)

    seen = []
    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs["label_smoothing"])
        return task_loss(*args, **kwargs)

    monkeypatch.setattr("client.training.task_loss", recording)
    cfg = _cfg(**{"label-smoothing": eps, "local-steps": 2})
    _train(initial_model(cfg), images, cfg, 1)
    assert seen == [eps, eps]
