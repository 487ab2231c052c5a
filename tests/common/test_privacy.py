"""Tests for common.privacy: DP-compatible models, RDP ledger, noise calibration, DP-SGD rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.data.images import ImageSet
from common.data.transforms import normalize
from common.models import build_model
from common.privacy.accounting import PrivacyLedger, default_delta, fits_budget, noise_multiplier_for, poisson_schedule
from common.privacy.compat import make_dp_compatible
from common.privacy.dpsgd import GRAD_SAMPLE_MODES, PrivateTrainResult, train_private

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Opacus: secure RNG off, torch.func notes
    pytest.mark.usefixtures("one_thread"),
]

CPU = torch.device("cpu")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _google_epsilon(entries: list[tuple[float, float, int]], delta: float) -> float:
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    for sigma, q, steps in entries:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return accountant.get_epsilon(delta)


def _ledger(entries: list[tuple[float, float, int]]) -> PrivacyLedger:
    ledger = PrivacyLedger()
    for sigma, q, steps in entries:
        ledger.record(noise_multiplier=sigma, sample_rate=q, steps=steps)
    return ledger


def _images(n: int, size: int = 32, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return ImageSet(images, labels, tuple(f"{i}.png" for i in range(n)), ("a", "b", "c", "d"))


# --------------------------------------------------------------------------- accounting


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [
        (1.0, 0.01, 1000, 1e-5),
        (0.8, 0.05, 300, 1e-5),
        (2.0, 0.004, 10_000, 1e-6),
        (1.1, 1.0, 10, 1e-5),
        (5.0, 0.1, 5, 1e-5),
        (0.6, 0.02, 2000, 1e-6),
    ],
)
def test_ledger_epsilon_matches_google_dp_accounting(sigma: float, q: float, steps: int, delta: float) -> None:
    ours = _ledger([(sigma, q, steps)]).epsilon(delta)
    google = _google_epsilon([(sigma, q, steps)], delta)
    assert ours == pytest.approx(google, rel=0.02)


def test_ledger_multi_entry_history_matches_google_dp_accounting() -> None:
    entries = [(1.0, 0.01, 100), (1.5, 0.02, 200), (0.9, 0.03, 50), (1.0, 0.01, 100)]
    ledger = _ledger(entries)
    assert len(ledger) == 4 and ledger.steps == 450
    assert ledger.epsilon(1e-5) == pytest.approx(_google_epsilon(entries, 1e-5), rel=0.02)


def test_ledger_merges_consecutive_identical_entries_and_grows() -> None:
    ledger = PrivacyLedger()
    assert ledger.epsilon(1e-5) == 0.0
    ledger.record(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    first = ledger.epsilon(1e-5)
    ledger.record(noise_multiplier=1.0, sample_rate=0.01, steps=100)
    assert ledger.history == [(1.0, 0.01, 200)]
    assert ledger.epsilon(1e-5) > first > 0
    assert ledger.epsilon(1e-5) == _ledger([(1.0, 0.01, 200)]).epsilon(1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": float("nan"), "sample_rate": 0.1, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 2.0},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": True},
    ],
)
def test_ledger_record_rejects_bad_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="is invalid"):
        PrivacyLedger().record(**kwargs)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, float("nan")])
def test_ledger_epsilon_rejects_bad_delta(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        _ledger([(1.0, 0.1, 10)]).epsilon(delta)


@pytest.mark.parametrize(
    ("target", "q", "steps", "delta"),
    [(0.5, 0.02, 1500, 1e-5), (1.0, 0.05, 400, 1e-5), (3.0, 0.01, 5000, 1e-6), (8.0, 0.1, 200, 1e-5)],
)
def test_noise_multiplier_for_hits_the_target(target: float, q: float, steps: int, delta: float) -> None:
    sigma = noise_multiplier_for(target_epsilon=target, delta=delta, sample_rate=q, steps=steps)
    epsilon = _ledger([(sigma, q, steps)]).epsilon(delta)
    assert epsilon <= target
    assert epsilon >= 0.97 * target


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": -1.0},
        {"delta": 0.0},
        {"delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.01},
        {"steps": 0},
    ],
)
def test_noise_multiplier_for_rejects_bad_inputs(kwargs: dict[str, float]) -> None:
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100} | kwargs
    with pytest.raises(ValueError, match="is invalid"):
        noise_multiplier_for(**args)


def test_noise_multiplier_for_unreachable_target() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        noise_multiplier_for(target_epsilon=1e-6, delta=1e-5, sample_rate=1.0, steps=10_000)


def test_default_delta_is_below_one_over_n() -> None:
    assert default_delta(100) == 1e-5
    assert default_delta(1_000_000) == pytest.approx(1e-7)
    for n in (1, 10, 5000, 10**7):
        assert default_delta(n) < 1 / n
    with pytest.raises(ValueError):
        default_delta(0)


def test_fits_budget_declines_the_round_that_would_exceed_the_target() -> None:
    q, per_round, rounds, delta, target = 0.05, 40, 5, 1e-5, 2.0
    sigma = noise_multiplier_for(target_epsilon=target, delta=delta, sample_rate=q, steps=rounds * per_round)
    ledger = PrivacyLedger()
    budget = {"noise_multiplier": sigma, "sample_rate": q, "steps": per_round, "delta": delta, "target_epsilon": target}
    for _ in range(rounds):  # the planned rounds all fit...
        fits, projected = fits_budget(ledger, **budget)
        assert fits and projected <= target
        ledger.record(noise_multiplier=sigma, sample_rate=q, steps=per_round)
        assert ledger.epsilon(delta) == pytest.approx(projected)
    fits, projected = fits_budget(ledger, **budget)  # ...one more does not
    assert not fits and projected > target
    assert ledger.steps == rounds * per_round  # fits_budget never records


def test_poisson_schedule() -> None:
    assert poisson_schedule(num_examples=100, batch_size=32, epochs=2) == (0.25, 8)
    assert poisson_schedule(num_examples=10, batch_size=64) == (1.0, 1)
    # a fraction of an epoch is that share of the steps, at least one: 1000 examples are 32 steps an epoch
    assert poisson_schedule(num_examples=1000, batch_size=32, epochs=0.25) == (1 / 32, 8)
    assert poisson_schedule(num_examples=100, batch_size=32, epochs=0.01) == (0.25, 1)
    with pytest.raises(ValueError, match="batch_size"):
        poisson_schedule(num_examples=10, batch_size=0)
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match=r"^epochs = .* is invalid; expected a finite number > 0$"):
            poisson_schedule(num_examples=10, batch_size=4, epochs=bad)


# --------------------------------------------------------------------------- persistence


def test_ledger_save_load_round_trip_and_growth_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "privacy.json"
    assert len(PrivacyLedger.load(path)) == 0  # missing file: an empty ledger
    epsilons = []
    for round_ in range(3):  # each round is a fresh process: load, record, save
        ledger = PrivacyLedger.load(path)
        assert ledger.steps == 50 * round_
        ledger.record(noise_multiplier=1.0 + (round_ == 2), sample_rate=0.02, steps=50)
        ledger.save(path)
        epsilons.append(PrivacyLedger.load(path).epsilon(1e-5))
    assert epsilons[0] < epsilons[1] < epsilons[2]
    loaded = PrivacyLedger.load(path)
    assert loaded.history == [(1.0, 0.02, 100), (2.0, 0.02, 50)]
    assert json.loads(path.read_text()) == loaded.state_dict()
    assert [p.name for p in path.parent.iterdir()] == ["privacy.json"]  # no temp file left behind


def test_ledger_state_dict_round_trip() -> None:
    ledger = _ledger([(1.0, 0.01, 10), (0.7, 1.0, 3)])
    clone = PrivacyLedger()
    clone.load_state_dict(ledger.state_dict())
    assert clone.history == ledger.history
    assert clone.epsilon(1e-5) == ledger.epsilon(1e-5)


GOOD_ENTRY = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 5}


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"history": []},
        {"mechanism": "prv", "history": []},
        {"mechanism": "rdp", "history": {}},
        {"mechanism": "rdp", "history": [[1.0, 0.1, 5]]},
        {"mechanism": "rdp", "history": [GOOD_ENTRY, {"noise_multiplier": 1.0, "sample_rate": 0.1}]},
        {"mechanism": "rdp", "history": [GOOD_ENTRY | {"steps": -1}]},
        {"mechanism": "rdp", "history": [GOOD_ENTRY | {"steps": 1.5}]},
        {"mechanism": "rdp", "history": [GOOD_ENTRY | {"sample_rate": "0.1"}]},
        {"mechanism": "rdp", "history": [GOOD_ENTRY | {"noise_multiplier": None}]},
        {"mechanism": "rdp", "history": [GOOD_ENTRY], "extra": 1},
    ],
)
def test_ledger_load_state_dict_rejects_bad_state_and_keeps_history(state: object) -> None:
    ledger = _ledger([(1.0, 0.5, 2)])
    with pytest.raises(ValueError, match="privacy ledger") as info:
        ledger.load_state_dict(state)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert ledger.history == [(1.0, 0.5, 2)]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"null",
        b'{"mechanism": "rdp", "history": [{"noise_multiplier": 1, "sample_rate": 2, "steps": 1}]}',
        b'{"mechanism": "rdp", "history": [{"noise_multiplier": NaN, "sample_rate": 0.1, "steps": 1}]}',
    ],
)
def test_ledger_load_of_a_corrupt_file_raises_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "privacy.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="privacy.json") as info:
        PrivacyLedger.load(path)
    assert "\n" not in str(info.value)


def test_ledger_load_of_a_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="corrupt or invalid"):
        PrivacyLedger.load(tmp_path)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("arch", ["cnn3", "resnet18", "resnet50", "densenet121"])
def test_make_dp_compatible_is_clean_and_deterministic(arch: str) -> None:
    plain = build_model(arch, num_classes=4, in_channels=1, seed=3)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    dp_a = make_dp_compatible(plain)
    dp_b = make_dp_compatible(build_model(arch, num_classes=4, in_channels=1, seed=3))
    assert ModuleValidator.validate(dp_a, strict=False) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in dp_a.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in dp_a.modules())
    assert [n for n, m in dp_a.named_modules() if getattr(m, "inplace", False)] == []
    state_a, state_b = dp_a.state_dict(), dp_b.state_dict()
    assert list(state_a) == list(state_b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    # Same names as the plain model, less the BatchNorm running statistics; the argument is untouched.
    assert set(state_a) == {k for k in before if not k.endswith(BN_BUFFERS)}
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


@pytest.mark.parametrize("arch", ["cnn3", "resnet18", "densenet121"])
def test_opacus_training_step_works_on_dp_compatible_models(arch: str) -> None:
    torch.manual_seed(0)
    model = make_dp_compatible(build_model(arch, num_classes=4, in_channels=1, seed=0))
    data = TensorDataset(torch.randn(8, 1, 32, 32), torch.randint(0, 4, (8,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    dp_model, dp_optimizer, batches = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    before = [p.detach().clone() for p in model.parameters()]
    for x, y in batches:
        dp_optimizer.zero_grad()
        F.cross_entropy(dp_model(x), y).backward()
        dp_optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    dp_model.cleanup()


def test_the_plain_torchvision_models_break_opacus_hooks() -> None:
    """Why make_dp_compatible exists: GroupNorm alone leaves ``+=`` and in-place ReLUs on hooked outputs."""
    model = ModuleValidator.fix(build_model("resnet18", num_classes=4, in_channels=1, seed=0))
    dp_model, _, _ = PrivacyEngine().make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(TensorDataset(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long)), 2),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    with pytest.raises(RuntimeError, match="modified inplace"):
        F.cross_entropy(dp_model(torch.randn(2, 1, 32, 32)), torch.zeros(2, dtype=torch.long)).backward()


# --------------------------------------------------------------------------- train_private

TRAIN = {
    "transform": normalize([0.5], [0.25]),
    "batch_size": 4,
    "epochs": 2,
    "lr": 0.05,
    "optimizer_name": "sgd",
    "noise_multiplier": 1.0,
    "max_grad_norm": 1.0,
    "seed": 7,
    "device": CPU,
}


def test_train_private_reports_the_round_and_keeps_plain_keys() -> None:
    model = make_dp_compatible(build_model("resnet18", num_classes=4, in_channels=1, seed=0))
    keys = list(model.state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_private(model, _images(10), **TRAIN)
    assert isinstance(result, PrivateTrainResult)
    assert set(vars(result)) == {
        "num_examples",
        "loss",
        "accuracy",
        "seconds",
        "steps",
        "sample_rate",
        "noise_multiplier",
        "max_grad_norm",
        "optimizer_state",
        "precision",
    }
    assert result.optimizer_state is None  # not asked to keep it
    assert result.precision == "fp32"  # DP-SGD never runs under autocast
    assert (result.num_examples, result.steps, result.sample_rate) == (10, 6, pytest.approx(1 / 3))
    assert (result.noise_multiplier, result.max_grad_norm) == (1.0, 1.0)
    assert result.loss > 0 and 0 <= result.accuracy <= 1 and result.seconds > 0
    assert list(model.state_dict()) == keys  # no "_module." prefix
    assert not any(k.startswith("_module") for k in keys)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained in place


def test_train_private_takes_a_fraction_of_an_epoch() -> None:
    """Half an epoch of 10 images in batches of 4 is 2 of the epoch's 3 Poisson steps; 1.5 epochs is 4 or 5 (round)."""
    model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0))
    assert train_private(model, _images(10), **(TRAIN | {"epochs": 0.5})).steps == 2
    assert train_private(model, _images(10), **(TRAIN | {"epochs": 1.5})).steps == round(1.5 * 3)
    for module in model.modules():  # Opacus' hooks and per-parameter attributes are gone
        assert not module._forward_hooks and not module._backward_hooks
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad") and p.grad is None
    model(torch.randn(2, 1, 32, 32)).sum().backward()  # and the model is an ordinary model again


def test_a_kept_optimizer_state_continues_into_the_next_dp_round() -> None:
    model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0))
    keys = {**TRAIN, "optimizer_name": "adam", "lr": 1e-3, "keep_optimizer_state": True}
    first = train_private(model, _images(10), **keys)
    assert first.optimizer_state is not None
    assert {int(s["step"]) for s in first.optimizer_state["state"].values()} == {first.steps}
    second = train_private(model, _images(10), **keys, optimizer_state=first.optimizer_state)
    assert second.optimizer_state is not None
    assert {int(s["step"]) for s in second.optimizer_state["state"].values()} == {first.steps + second.steps}


def test_train_private_is_reproducible_and_modes_agree_with_empty_batches() -> None:
    """3 images at batch 1: Poisson batches are often empty; every mode must still take every step."""
    images = _images(3)
    args = TRAIN | {"batch_size": 1, "epochs": 3, "optimizer_name": "adam", "lr": 0.01}
    states = {}
    for mode in GRAD_SAMPLE_MODES:
        model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0))
        result = train_private(model, images, grad_sample_mode=mode, **args)
        assert result.steps == 9
        states[mode] = model.state_dict()
    for mode in set(GRAD_SAMPLE_MODES) - {"hooks"}:
        for key, value in states["hooks"].items():
            torch.testing.assert_close(states[mode][key], value, rtol=1e-4, atol=1e-5, msg=f"{mode}: {key}")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"grad_sample_mode": "fast"}, "grad_sample_mode"),
        ({"optimizer_name": "lbfgs"}, "optimizer = 'lbfgs' is invalid"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_train_private_rejects_bad_arguments(change: dict[str, object], match: str) -> None:
    model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0))
    args = TRAIN | change
    mode = args.pop("grad_sample_mode", "hooks")
    with pytest.raises(ValueError, match=match):
        train_private(model, _images(4), grad_sample_mode=mode, **args)  # type: ignore[arg-type]
    assert not any(m._forward_hooks for m in model.modules())


def test_train_private_refuses_an_empty_image_set() -> None:
    model = make_dp_compatible(build_model("cnn3", num_classes=4, in_channels=1, seed=0))
    with pytest.raises(ValueError, match="no training images"):
        train_private(model, _images(0), **TRAIN)
