"""The key-holders' guard: a hospital declines a global model whose step from the last one jumps.

After decoding the global model (decrypting it, under HE, where only key-holders can look), a
hospital takes the norm of the global step: this round's model minus the one it last trained
from, over every floating-point array (weights and BatchNorm statistics), divided by the rounds
between the two (a hospital sampled out of a round sees two rounds' steps at once). It declines
to train when that norm exceeds ``update-norm-limit`` times the median of its last
:data:`WINDOW` earlier steps' norms, once it has :data:`MIN_EARLIER_STEPS` of them; 0 turns the
guard off. Recent steps, not all of them: steps shrink as the learning rate decays, and a jump
late in a run must stand out against the steps just before it.

State, one file in the hospital's state folder (``global-step.safetensors``): the model it last
trained from, and in the metadata that model's round and the earlier steps' norms by round. A
declined step is never recorded, so the next round is measured from the same base and a jump
stays a jump. Norms from a round at or after the current one belong to a timeline a resumed run
abandoned and are dropped; a base from such a round is not a base (that round is not checked).
Zero steps (a round that kept the global model) are not recorded.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["GUARD_FILE", "MIN_EARLIER_STEPS", "WINDOW", "StepCheck", "guard_global_step", "step_norm", "step_ratio"]

GUARD_FILE = "global-step.safetensors"
MIN_EARLIER_STEPS = 3
"""Earlier step norms a hospital needs before it judges a step (the median of fewer says little)."""
WINDOW = 5
"""The latest earlier steps whose median a step is compared with."""


@dataclass(frozen=True)
class StepCheck:
    """This round's global step as a hospital saw it."""

    norm: float | None
    """The step's norm per round, or ``None`` when there was no earlier model to measure from."""
    ratio: float | None
    """``norm`` over the median of the recent earlier norms, or ``None`` with fewer than :data:`MIN_EARLIER_STEPS`."""
    declined: str | None
    """Why the hospital declines this global model (one line), or ``None`` when it trains on it."""


def _floating(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in state.items() if value.is_floating_point()}


def step_norm(new: Mapping[str, torch.Tensor], old: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of ``new - old`` over the floating-point arrays of ``new``, in float64.

    Raises:
        ValueError: ``old`` lacks one of those arrays or holds it in another shape.
    """
    total = 0.0
    for key, value in _floating(new).items():
        if key not in old or tuple(old[key].shape) != tuple(value.shape):
            raise ValueError(f"the global-step base has no array {key!r} of shape {tuple(value.shape)}")
        total += float(torch.sum((value.detach().double().cpu() - old[key].double()) ** 2))
    return math.sqrt(total)


def step_ratio(norm: float, earlier: list[float]) -> float | None:
    """``norm`` over the median of the last :data:`WINDOW` ``earlier`` norms (oldest first).

    ``None`` with fewer than :data:`MIN_EARLIER_STEPS` of them.
    """
    if len(earlier) < MIN_EARLIER_STEPS:
        return None
    return norm / statistics.median(earlier[-WINDOW:])


def _load(path: Path) -> tuple[dict[str, torch.Tensor], int, dict[int, float]]:
    """The base model, its round and the earlier norms by round.

    Raises:
        ValueError: the file is corrupt (never silently reset: the guard would forget every step).
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            base = {key: handle.get_tensor(key) for key in handle.keys()}
        norms = {int(r): float(n) for r, n in json.loads(meta["norms"]).items()}
        return base, int(meta["round"]), norms
    except Exception as err:  # safetensors, json and the casts raise several types
        raise ValueError(f"global-step state {str(path)!r} is corrupt: {str(err).splitlines()[0]}") from None


def _save(path: Path, state: Mapping[str, torch.Tensor], server_round: int, norms: dict[int, float]) -> None:
    """Write the base and the norms atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous().clone() for key, value in _floating(state).items()}
    metadata = {"round": str(server_round), "norms": json.dumps({str(r): n for r, n in sorted(norms.items())})}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def guard_global_step(folder: Path, state: Mapping[str, torch.Tensor], *, server_round: int, limit: float) -> StepCheck:
    """Judge round ``server_round``'s global model ``state``; keep it as the base unless declined.

    Args:
        folder: the hospital's state folder for this run.
        state: the decoded global model (the model's ``state_dict``).
        server_round: the round this global model was sent for.
        limit: ``update-norm-limit`` (> 0).

    Raises:
        ValueError: the state file is corrupt or holds another model's arrays.
    """
    path = folder / GUARD_FILE
    base, base_round, norms = _load(path) if path.is_file() else ({}, 0, {})
    norms = {r: n for r, n in norms.items() if r < server_round}
    norm = ratio = None
    if base and base_round < server_round:
        norm = step_norm(state, base) / (server_round - base_round)
        ratio = step_ratio(norm, [norms[r] for r in sorted(norms)])
    if ratio is not None and ratio > limit:
        reason = (
            f"the global step's norm {norm:.4g} is {ratio:.1f} times the median of its recent earlier steps, "
            f"above update-norm-limit {limit:g}: the global model may carry a hostile or broken update"
        )
        return StepCheck(norm, ratio, reason)
    if norm:  # a zero step (the model was kept) says nothing about the size of a step
        norms[server_round] = norm
    _save(path, state, server_round, norms)
    return StepCheck(norm, ratio, None)
