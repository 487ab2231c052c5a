"""``history.json``: what happened in every round, written after each round."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import records as rk
from common.run_files import write_json

__all__ = ["RunHistory"]


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


class RunHistory:
    """Per-round records: central metrics, federated metrics, hospitals, failures, timings.

    The run's start is stamped on construction, its end by :meth:`finish`.
    """

    def __init__(self, path: Path, *, multilabel: bool = False) -> None:
        self.path = path
        self.multilabel = multilabel
        """A multi-label run's round lines lead with macro AUROC and macro F1, not label-wise accuracy."""
        self.rounds: dict[int, dict[str, Any]] = {}
        self.started_at = datetime.now(UTC)
        self.finished_at: datetime | None = None
        self.duration_s: float | None = None
        self.resumed: list[dict[str, Any]] = []
        self.stopped: str | None = None
        self.nodes: dict[str, Any] | None = None
        self.early_stopping: dict[str, Any] | None = None
        self.calibration: dict[str, Any] | None = None
        self.local_baseline: dict[str, Any] | None = None
        self._clock = time.monotonic()

    def restore(
        self,
        rounds: list[dict[str, Any]],
        *,
        after_round: int,
        resumed: Sequence[dict[str, Any]] = (),
        abandoned: dict[str, Any] | None = None,
    ) -> None:
        """Continue a stopped run: keep its rounds up to ``after_round`` and note the resume.

        Args:
            rounds: the stopped run's rounds.
            after_round: the checkpointed round this run continues from.
            resumed: the stopped run's own earlier resumes, kept in order.
            abandoned: what the stopped run did after ``after_round`` that must stay on record
                (``stopped``, ``declined``); noted with this resume.
        """
        self.rounds = {int(r["round"]): r for r in rounds if int(r["round"]) <= after_round}
        self.resumed = [*resumed, {"after_round": after_round, "at": _iso(datetime.now(UTC)), **(abandoned or {})}]

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

    def set_nodes(self, roster: dict[str, Any], *, first_round: int) -> None:
        """The run's nodes (id, name, role, n_k); a node that failed to describe itself fails ``first_round``."""
        self.nodes = roster
        for failure in roster["failed"]:
            self.fail(first_round, node_id=failure["node_id"], stage="describe", reason=failure["reason"])

    def fail(self, server_round: int, *, node_id: int, stage: str, reason: str) -> None:
        """Record a hospital that errored, timed out or sent an invalid reply."""
        self.round(server_round)["failures"].append({"node_id": node_id, "stage": stage, "reason": reason})

    def stop(self, reason: str) -> None:
        """Record why the run stopped before its last round (it can be resumed)."""
        self.stopped = reason
        self.finish()

    def finish(self) -> None:
        """Stamp the end of the run: ``finished_at`` and ``duration_s``."""
        self.finished_at = datetime.now(UTC)
        self.duration_s = time.monotonic() - self._clock

    def round_summary(self, server_round: int, num_rounds: int) -> str:
        """One log line: what happened in ``server_round`` and how long each step took."""
        record = self.round(server_round)
        timings = record["timings"]
        central = record["central"]
        parts = []
        if server_round > 0:
            trained = sum(1 for h in record["hospitals"].values() if h.get("examples"))
            failed = len(record["failures"])
            parts.append(
                f"{trained} hospital(s) trained in {timings.get('train_s', 0.0):.1f} s"
                + (f" ({failed} failed or declined)" if failed else "")
                + f", aggregated in {timings.get('aggregate_s', 0.0):.2f} s"
            )
            federated = record["federated_evaluate"]
            if federated is not None:
                parts.append(
                    f"hospital evaluation accuracy {federated.get(rk.EVAL_ACCURACY, float('nan')):.3f} "
                    f"({timings.get('federated_evaluate_s', 0.0):.1f} s)"
                )
        if central is not None:
            macro_f1, macro_auroc = central.get("macro_f1"), central.get("macro_auroc")
            f1 = f"macro F1 {macro_f1:.3f}" if macro_f1 is not None else "macro F1 n/a"
            auroc = f"macro AUROC {macro_auroc:.3f}" if macro_auroc is not None else "macro AUROC n/a"
            accuracy = f"accuracy {central['accuracy']:.3f}"
            order = (auroc, f1, f"label-wise {accuracy}") if self.multilabel else (accuracy, f1, auroc)
            parts.append(f"central {', '.join(order)} ({timings.get('central_evaluate_s', 0.0):.1f} s)")
        else:
            parts.append("no central evaluation")
        return f"round {server_round}/{num_rounds}: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The ``history.json`` content: run timing, then rounds in order (round 0 = the initial model)."""
        return {
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "duration_s": self.duration_s,
            **({"resumed": self.resumed} if self.resumed else {}),
            **({"stopped": self.stopped} if self.stopped else {}),
            **({"nodes": self.nodes} if self.nodes is not None else {}),
            **({"early_stopping": self.early_stopping} if self.early_stopping is not None else {}),
            **({"calibration": self.calibration} if self.calibration is not None else {}),
            **({"local_baseline": self.local_baseline} if self.local_baseline is not None else {}),
            "rounds": [self.rounds[r] for r in sorted(self.rounds)],
        }

    def flush(self) -> None:
        """Write ``history.json`` atomically."""
        write_json(self.path, self.to_json())
