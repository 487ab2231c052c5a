"""Numeric precision of training and inference: which one a device runs fast, and its autocast.

``precision = "auto"`` picks bf16 autocast where the hardware has native bf16 (CUDA GPUs that
support it; CPUs with AMX or avx512_bf16), fp16 with a gradient scaler on older GPUs, and
float32 elsewhere: on a CPU without native bf16, bf16 is emulated and slower than float32.
Weights, losses, messages and ciphertexts stay float32 in every mode; autocast only runs the
matrix products and convolutions in the lower precision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from common.config import ConfigError

__all__ = [
    "CPU_BF16_FLAGS",
    "PRECISIONS",
    "Precision",
    "channels_last",
    "cpu_bf16_flags",
    "native_bf16",
    "resolve_precision",
]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The values of the ``precision`` run-config key."""
CPU_BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")
"""The CPU features that make bf16 native (AMX tiles on Sapphire Rapids and later; avx512_bf16)."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_FP32_CHANNELS_LAST_FROM = 112
"""Image size from which float32 training on a CPU is no slower in channels_last. Measured on a 2-core
Sapphire Rapids, ResNet-18 (1 channel), batch 32, one thread, channels_last time over contiguous: 1.28 at
48 px, 1.20 at 64, 1.15 at 80, 1.02 at 96, 0.97 at 112, 0.90 at 128. Under bf16 autocast it was faster at
every size (0.94 at 48 px, 0.87 at 96, 0.83 at 128), and it is on GPUs."""


@dataclass(frozen=True)
class Precision:
    """A resolved precision on one device type.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device_type: ``"cpu"`` or ``"cuda"``.
    """

    name: str
    device_type: str

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast to this precision (a no-op for fp32); losses are computed outside it, in float32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.name])

    def channels_last(self, image_size: int) -> bool:
        """Whether convolutions at ``image_size`` px run faster in channels_last layout here."""
        return self.name != "fp32" or self.device_type == "cuda" or image_size >= CPU_FP32_CHANNELS_LAST_FROM

    def memory_format(self, image_size: int) -> torch.memory_format:
        """The layout a batch of ``image_size`` px images is moved to the device in."""
        return torch.channels_last if self.channels_last(image_size) else torch.contiguous_format

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A gradient scaler for fp16 (its small range underflows gradients); ``None`` otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def backward_step(
    objective: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Backpropagate ``objective`` and step ``optimizer``; through ``scaler`` when there is one.

    Under fp16 the loss is scaled so that small gradients do not underflow, and a step whose
    gradients overflowed is skipped.
    """
    if scaler is None:
        objective.backward()
        optimizer.step()
        return
    scaler.scale(objective).backward()
    scaler.step(optimizer)
    scaler.update()


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """Which of :data:`CPU_BF16_FLAGS` this CPU has.

    Asks ``torch.cpu.get_capabilities()`` where this torch has it, then torch's private
    probes, then ``/proc/cpuinfo``. (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not
    used: it says oneDNN can run bf16, not that bf16 is fast.)
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        capabilities = get_capabilities()
        return tuple(flag for flag in CPU_BF16_FLAGS if capabilities.get(flag))
    probes = {"amx_tile": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    if all(hasattr(torch.cpu, probe) for probe in probes.values()):
        found = {flag for flag, probe in probes.items() if getattr(torch.cpu, probe)()}
        return tuple(flag for flag in CPU_BF16_FLAGS if flag in found or (flag == "amx_bf16" and "amx_tile" in found))
    cpuinfo = Path("/proc/cpuinfo")
    words = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in words)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (fast), not by emulation."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    flags = set(cpu_bf16_flags())
    return "avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags


def resolve_precision(preference: str, device: torch.device) -> Precision:
    """The precision ``preference`` (one of :data:`PRECISIONS`) means on ``device``.

    Raises:
        ConfigError: ``"fp16"`` on a CPU, ``"bf16"`` on a GPU without bf16, or an unknown value
            (one line naming the key, the value and what is expected).
    """
    if preference not in PRECISIONS:
        raise ConfigError(
            f"run config: 'precision' = {preference!r} is invalid; expected one of {', '.join(map(repr, PRECISIONS))}"
        )
    kind = device.type
    if preference == "auto":
        if native_bf16(device):
            return Precision("bf16", kind)
        return Precision("fp16" if kind == "cuda" else "fp32", kind)
    if preference == "fp16" and kind != "cuda":
        raise ConfigError(
            f"run config: 'precision' = 'fp16' is invalid on this node's {kind.upper()}; expected 'auto', 'fp32' "
            "or 'bf16' (fp16 autocast is for GPUs)"
        )
    if preference == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(
            "run config: 'precision' = 'bf16' is invalid on this node's GPU (no native bf16); "
            "expected 'auto', 'fp32' or 'fp16'"
        )
    if preference == "bf16" and not native_bf16(device):
        log.warning("precision 'bf16' on a CPU without native bf16 (%s): emulated, slower than fp32", kind)
    return Precision(preference, kind)


@contextlib.contextmanager
def channels_last(model: nn.Module, *, enabled: bool = True) -> Iterator[nn.Module]:
    """``model`` with its 4-D weights in channels_last layout inside the block, contiguous again after.

    Convolutions mostly run faster on NHWC (oneDNN on CPUs, Tensor Cores on GPUs; see
    :meth:`Precision.channels_last`). The parameters stay the same objects, so an optimizer
    built inside the block steps them; state dicts, safetensors files and ciphertexts are
    taken after the block, from contiguous tensors. ``enabled=False`` leaves the model as it is.
    """
    if not enabled:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
