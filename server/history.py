"""``history.json``: what happened in every round, written after each round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.reporting import write_json

__all__ = ["RunHistory"]


class RunHistory:
    """Per-round records: central metrics, federated metrics, hospitals, failures, timings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rounds: dict[int, dict[str, Any]] = {}

    def round(self, server_round: int) -> dict[str, Any]:
        """The (mutable) record of ``server_round``, created on first use."""
        return self.rounds.setdefault(
            server_round,
            {
                "round": server_round,
                "central": None,
                "federated_train": None,
                "federated_evaluate": None,
                "hospitals": {},
                "failures": [],
                "timings": {},
            },
        )

    def hospital(self, server_round: int, name: str) -> dict[str, Any]:
        """The (mutable) record of hospital ``name`` in ``server_round``."""
        return self.round(server_round)["hospitals"].setdefault(name, {})

    def fail(self, server_round: int, *, node_id: int, stage: str, reason: str) -> None:
        """Record a hospital that errored, timed out or sent an invalid reply."""
        self.round(server_round)["failures"].append({"node_id": node_id, "stage": stage, "reason": reason})

    def to_json(self) -> dict[str, Any]:
        """The ``history.json`` content, rounds in order (round 0 = the initial model)."""
        return {"rounds": [self.rounds[r] for r in sorted(self.rounds)]}

    def flush(self) -> None:
        """Write ``history.json`` atomically."""
        write_json(self.path, self.to_json())
