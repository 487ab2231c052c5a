"""Tests for common.precision: what ``auto`` picks on each kind of device, refusals, and the layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common import precision as precision_module
from common.config import ConfigError, parse_run_config
from common.precision import (
    CPU_BF16_FLAGS,
    Precision,
    backward_step,
    channels_last,
    cpu_bf16_flags,
    resolve_precision,
)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch):
    """Set the CPU's native-bf16 flags as the precision module sees them."""

    def use(*flags: str) -> None:
        monkeypatch.setattr(precision_module, "cpu_bf16_flags", lambda: tuple(flags))

    return use


@pytest.fixture
def gpu_bf16(monkeypatch: pytest.MonkeyPatch):
    """A mocked CUDA GPU with or without native bf16 (nothing here touches a real GPU)."""

    def use(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: supported)

    return use


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("amx_bf16", "amx_tile", "avx512_bf16"), "bf16"),  # Sapphire Rapids and later
        (("avx512_bf16",), "bf16"),  # Cooper Lake, AMD Zen 4
        (("amx_bf16", "amx_tile"), "bf16"),
        (("amx_tile",), "fp32"),  # tiles without their bf16 instructions
        ((), "fp32"),  # bf16 would be emulated, slower than float32
    ],
)
def test_auto_on_a_cpu_follows_its_native_bf16(cpu_flags, flags: tuple[str, ...], expected: str) -> None:
    cpu_flags(*flags)
    chosen = resolve_precision("auto", CPU)
    assert chosen == Precision(expected, "cpu")
    assert chosen.grad_scaler() is None


def test_auto_on_a_gpu_with_bf16_is_bf16_without_a_scaler(gpu_bf16) -> None:
    gpu_bf16(True)
    chosen = resolve_precision("auto", CUDA)
    assert chosen == Precision("bf16", "cuda") and chosen.grad_scaler() is None


@pytest.mark.filterwarnings("ignore:.*CUDA is not available.*")
def test_auto_on_an_older_gpu_is_fp16_with_a_gradient_scaler(gpu_bf16) -> None:
    gpu_bf16(False)
    chosen = resolve_precision("auto", CUDA)
    assert chosen == Precision("fp16", "cuda")
    assert isinstance(chosen.grad_scaler(), torch.amp.GradScaler)


def test_bf16_asked_of_a_gpu_without_it_is_refused_in_one_line(gpu_bf16) -> None:
    gpu_bf16(False)
    with pytest.raises(ConfigError, match=r"^run config: 'precision' = 'bf16' is invalid on this node's GPU") as info:
        resolve_precision("bf16", CUDA)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("flags", [("avx512_bf16",), ()])
def test_fp16_on_a_cpu_is_refused_in_one_line(cpu_flags, flags: tuple[str, ...]) -> None:
    cpu_flags(*flags)
    with pytest.raises(ConfigError) as info:
        resolve_precision("fp16", CPU)
    message = str(info.value)
    assert message.startswith("run config: 'precision' = 'fp16' is invalid on this node's CPU; expected 'auto'")
    assert "\n" not in message


def test_fp16_with_device_cpu_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError, match=r"^run config: 'precision' = 'fp16' is invalid; expected 'auto', 'fp32'"):
        parse_run_config({"precision": "fp16", "device": "cpu"})


def test_an_unknown_precision_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=r"'precision' = 'fp8' is invalid; expected one of 'auto', 'fp32', 'bf16'"):
        parse_run_config({"precision": "fp8"})


def test_explicit_choices_are_kept(cpu_flags, caplog: pytest.LogCaptureFixture) -> None:
    cpu_flags()
    assert resolve_precision("fp32", CPU).name == "fp32"
    assert resolve_precision("bf16", CPU).name == "bf16"  # asked for: allowed, with a warning that it is slow
    assert "emulated, slower than fp32" in caplog.text


def test_the_cpu_flags_agree_with_proc_cpuinfo() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    words = set(cpuinfo.read_text().split())
    assert set(cpu_bf16_flags()) == {flag for flag in CPU_BF16_FLAGS if flag in words}


def test_autocast_runs_matmuls_in_bf16_and_fp32_is_untouched() -> None:
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with Precision("bf16", "cpu").autocast():
        assert (a @ b).dtype == torch.bfloat16
    with Precision("fp32", "cpu").autocast():
        assert (a @ b).dtype == torch.float32


def test_channels_last_inside_contiguous_after_with_the_same_parameters() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    before = list(model.parameters())
    with channels_last(model):
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert not model[0].weight.is_contiguous()
    assert all(p is q for p, q in zip(before, model.parameters(), strict=True))  # an optimizer keeps stepping them
    assert all(t.is_contiguous() for t in model.state_dict().values())


@pytest.mark.parametrize(
    ("precision", "size", "expected"),
    [
        (Precision("bf16", "cpu"), 48, True),  # faster under autocast at every size
        (Precision("fp32", "cpu"), 48, False),  # float32 on a CPU: slower below the crossover
        (Precision("fp32", "cpu"), 96, False),
        (Precision("fp32", "cpu"), 128, True),
        (Precision("fp32", "cuda"), 48, True),
        (Precision("fp16", "cuda"), 32, True),
    ],
)
def test_channels_last_where_it_is_faster(precision: Precision, size: int, expected: bool) -> None:
    assert precision.channels_last(size) is expected
    assert precision.memory_format(size) == (torch.channels_last if expected else torch.contiguous_format)


def test_channels_last_disabled_leaves_the_model_alone() -> None:
    model = torch.nn.Conv2d(3, 4, 3)
    with channels_last(model, enabled=False):
        assert model.weight.is_contiguous()


@pytest.mark.parametrize("scaled", [False, True])
def test_backward_step_takes_the_plain_sgd_step(scaled: bool) -> None:
    """With or without a gradient scaler, the step is w - lr * d(loss)/dw, worked out by hand."""
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    x = torch.tensor([3.0, 0.5])
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
    backward_step((weight * x).sum() ** 2, optimizer, scaler)
    # d/dw (w.x)^2 = 2 (w.x) x, with w.x = 3 - 1 = 2
    assert torch.allclose(weight.detach(), torch.tensor([1.0 - 0.1 * 12.0, -2.0 - 0.1 * 2.0]))


def test_backward_step_skips_a_step_whose_gradients_overflowed() -> None:
    """Under a scaler, an infinite gradient leaves the weights as they were and lowers the scale."""
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    backward_step((weight * float("inf")).sum(), optimizer, scaler)
    assert weight.item() == 1.0 and scaler.get_scale() < 1024.0
