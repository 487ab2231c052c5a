"""A long benchmark setting's state after its last scored round, so that a stopped run goes on from there.

A setting of the accuracy benchmark can take hours on a CPU without native bf16. After every
scored round it writes the global weights, the server optimiser's state, each hospital's kept
optimiser state, the curve so far, the seconds spent and the machines that trained it to one
file (``torch.save``, read back with ``weights_only=True``: nothing is unpickled). A rerun of
the same request goes on after the saved round with the same per-round seeds, so the resumed
curve is the one an uninterrupted run draws; a checkpoint of another request is ignored (a
non-private run's DP keys, and keys the run config gained since at their defaults, aside:
:func:`accuracy_store.same_request`).
The file is removed once the setting's piece is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accuracy_store import same_request
from provenance import provenance

__all__ = ["RoundCheckpoint", "SavedRounds"]

log = logging.getLogger(__name__)

SavedRounds = dict[str, Any]
"""``round``, ``arrays`` (state dict), ``server_state`` (named arrays), ``optimizer_states`` ({hospital: state}),
``curve``, ``seconds`` and ``parts`` ([{machine, first_round, last_round}])."""


class RoundCheckpoint:
    """The checkpoint file of one training loop of one request."""

    def __init__(self, path: Path, request: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
        self.path = path
        self.request = request
        self._defaults = defaults or {}

    def load(self) -> SavedRounds | None:
        """The saved state when the file holds this request's; else ``None`` (start afresh).

        As for a piece (:func:`accuracy_store.same_request`), rounds saved before the run config
        gained a key are this request's when the key is at its default (``defaults``).
        """
        if not self.path.is_file():
            return None
        saved = torch.load(self.path, weights_only=True)
        if not same_request(json.loads(saved.get("request", "{}")), self.request, self._defaults):
            log.warning("%s holds another request's rounds; starting afresh", self.path)
            return None
        saved["server_state"] = {k: v.numpy() for k, v in saved["server_state"].items()}
        return saved

    def save(
        self,
        *,
        server_round: int,
        arrays: dict[str, torch.Tensor],
        server_state: dict[str, np.ndarray],
        optimizer_states: dict[int, Any],
        curve: list[dict[str, Any]],
        seconds: float,
        parts: list[dict[str, Any]],
    ) -> None:
        """Write the state after ``server_round`` (atomically: a stop mid-write keeps the previous one)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(
            {
                "request": json.dumps(self.request, sort_keys=True),
                "round": server_round,
                "arrays": arrays,
                "server_state": {k: torch.from_numpy(np.array(v)) for k, v in server_state.items()},
                "optimizer_states": optimizer_states,
                "curve": curve,
                "seconds": seconds,
                "parts": parts,
            },
            tmp,
        )
        tmp.replace(self.path)

    def discard(self) -> None:
        """Remove the file (the setting's piece is written)."""
        self.path.unlink(missing_ok=True)

    @staticmethod
    def part(first_round: int, last_round: int) -> dict[str, Any]:
        """One stretch of rounds trained by one process, with its machine and the commit it ran."""
        made = provenance()
        stretch = {"first_round": first_round, "last_round": last_round}
        return {"machine": made["machine"], "commit": made["commit"], **stretch}
