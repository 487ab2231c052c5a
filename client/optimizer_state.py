"""A hospital's optimizer state across rounds (``optimizer-state = "keep"``), in its state folder.

One file per round, ``optimizer-round-NNNN.pt``; round r continues from the latest round
before r. A run resumed after round k therefore continues from round k's state even if an
interrupted round k+1 had already saved its own, which keeps a resumed run equal to an
uninterrupted one. Files are read with ``torch.load(weights_only=True)``: never unpickled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_optimizer_state", "save_optimizer_state"]

log = logging.getLogger(__name__)

_PREFIX = "optimizer-round-"
_KEEP = 2  # the latest two rounds: enough to redo an interrupted round


def _rounds(folder: Path) -> dict[int, Path]:
    found = {}
    for path in folder.glob(f"{_PREFIX}*.pt"):
        number = path.stem.removeprefix(_PREFIX)
        if number.isdigit():
            found[int(number)] = path
    return found


def load_optimizer_state(folder: Path, *, before_round: int) -> dict[str, Any] | None:
    """The state saved by the latest round before ``before_round``, or ``None`` (a fresh optimizer).

    Raises:
        ValueError: the file is corrupt (never silently reset: the run would no longer be reproducible).
    """
    earlier = [r for r in _rounds(folder) if r < before_round]
    if not earlier:
        return None
    path = _rounds(folder)[max(earlier)]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(f"optimizer state {str(path)!r} is corrupt: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        raise ValueError(f"optimizer state {str(path)!r} is not an optimizer state_dict")
    return state


def save_optimizer_state(folder: Path, *, server_round: int, state: dict[str, Any]) -> Path:
    """Save round ``server_round``'s state atomically; keep only the latest few rounds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_PREFIX}{server_round:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(_rounds(folder))[:-_KEEP]:
        _rounds(folder)[old].unlink(missing_ok=True)
    return path
