"""Flower's FedAvg, extended to vet each reply and record every hospital's figures."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM
from flwr.serverapp.strategy.fedopt import FedOpt
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common import records as rk
from server.history import RunHistory
from server.replies import declined_reason, hospital_name, payload_bytes, reply_info, reply_problem, step_fields
from server.roster import NodeRoster

__all__ = ["GlobalStepRejected", "MedsiloFedAvg", "RunStopped"]

log = logging.getLogger(__name__)


def _cast_like(values: np.ndarray, target: np.dtype) -> np.ndarray | None:
    """``values`` in the dtype that was sent (integers rounded), or ``None`` if not finite there."""
    if not np.isfinite(values).all():
        return None
    if np.issubdtype(target, np.integer):
        values = np.rint(values)
    with np.errstate(over="ignore"):
        values = np.asarray(values).astype(target, copy=False)
    if np.issubdtype(target, np.inexact) and not np.isfinite(values).all():
        return None  # overflowed in the narrower type
    return np.require(values, requirements="C")


class RunStopped(RuntimeError):
    """Fewer hospitals than the minimum remain; the run stops and can be resumed from its checkpoint."""


class GlobalStepRejected(RunStopped):
    """A majority of round ``server_round``'s hospitals declined the global model round ``rejected_round`` made."""

    def __init__(self, server_round: int, *, declined: int, sampled: int) -> None:
        self.server_round, self.rejected_round = server_round, server_round - 1
        super().__init__(
            f"round {server_round}: {declined} of {sampled} hospitals declined round {server_round - 1}'s global "
            "model (its step exceeded update-norm-limit times the median of their recent steps)"
        )


class MedsiloFedAvg(FedAvg):
    """FedAvg that rejects a bad reply (logged with the hospital) instead of the round.

    It records each hospital's metrics, payload bytes and failures (including hospitals
    that did not reply within ``round_timeout``), plus the round timings, into a
    :class:`RunHistory`. Unlike Flower's sampling it never waits forever: when fewer than
    ``min_train_nodes`` hospitals are connected or reply, it raises :class:`RunStopped`; when
    most sampled hospitals decline the global model as a jump (``update-norm-limit``), it
    raises :class:`GlobalStepRejected`.
    Only the roster's hospitals are sampled, never the evaluator node.
    """

    def __init__(
        self,
        *,
        history: RunHistory,
        roster: NodeRoster | None = None,
        round_timeout: float = 600.0,
        seed: int = 0,
        buffer_keys: frozenset[str] = frozenset(),
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.buffer_keys = buffer_keys
        self.history = history
        self.roster = roster
        self.round_timeout = round_timeout
        self.seed = seed
        self._sent: ArrayRecord | None = None
        self._sent_bytes = 0
        self._absorb_s = 0.0
        self._outbox: dict[str, list[Message]] = {}
        self._started: dict[str, float] = {}

    def _origin(self, msg: Message, stage: str) -> int:
        """The hospital a reply answers for: an error made by the SuperLink names the SuperLink as sender."""
        sent = {
            m.metadata.message_id: m.metadata.dst_node_id for m in self._outbox.get(stage, []) if m.metadata.message_id
        }
        return sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)

    def _name(self, node: int, msg: Message | None = None) -> str:
        """A hospital's name: from the roster, else from its reply, else its node id."""
        if self.roster is not None and node in self.roster.names:
            return self.roster.names[node]
        return hospital_name(msg) if msg is not None and msg.has_content() else f"node-{node}"

    def _pool(self, grid: Grid) -> list[int]:
        """The connected hospitals: the roster's, or every node when there is no roster."""
        alive = set(grid.get_node_ids())
        if self.roster is None:
            return sorted(alive)
        return sorted(n for n in self.roster.hospitals if n in alive)

    def _sample(self, grid: Grid, server_round: int, fraction: float, minimum: int, stage: str) -> list[int]:
        """Wait up to ``round_timeout`` for ``minimum`` hospitals, then draw ``fraction`` of them (seeded per round)."""
        deadline = time.monotonic() + self.round_timeout
        pool = self._pool(grid)
        while len(pool) < minimum and time.monotonic() < deadline:
            time.sleep(1.0)
            pool = self._pool(grid)
        if len(pool) < minimum:
            raise RunStopped(
                f"round {server_round} {stage}: only {len(pool)} hospital(s) connected after round-timeout "
                f"{self.round_timeout:.0f} s; the minimum is {minimum}"
            )
        size = min(len(pool), max(int(len(pool) * fraction), minimum))
        rng = np.random.default_rng([self.seed, server_round])
        picked = rng.choice(len(pool), size=size, replace=False) if size else []
        return sorted(pool[int(i)] for i in picked)  # indices: node ids exceed int64

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, nodes: Sequence[int], kind: str) -> list[Message]:
        return [
            Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: config}), dst_node_id=n, message_type=kind) for n in nodes
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample hospitals and send them the global model (the base of a server optimiser's step)."""
        self._sent = arrays
        self._sent_bytes = payload_bytes(arrays)
        if isinstance(self, FedOpt):
            self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        elif isinstance(self, FedAvgM):
            self.current_arrays = arrays
        self._started["train"] = time.perf_counter()
        nodes = self._sample(grid, server_round, self.fraction_train, self.min_train_nodes, "train")
        log.info("round %d: training on %d hospital(s)", server_round, len(nodes))
        config = ConfigRecord({**dict(config), rk.SERVER_ROUND: server_round})
        self._outbox["train"] = self._messages(arrays, config, nodes, MessageType.TRAIN)
        return self._outbox["train"]

    def _record_missing(self, server_round: int, replies: list[Message], stage: str) -> None:
        """Record every sampled hospital that sent nothing back within ``round_timeout``."""
        answered = {self._origin(m, stage) for m in replies}
        for node in (m.metadata.dst_node_id for m in self._outbox.get(stage, [])):
            if node in answered:
                continue
            reason = f"no reply within round-timeout ({self.round_timeout:.0f} s): {self._name(node)} dropped out"
            log.warning("round %d %s: %s", server_round, stage, reason)
            self.history.fail(server_round, node_id=node, stage=stage, reason=reason)

    def _vet(
        self, server_round: int, replies: Iterable[Message], *, stage: str, received: list[Message]
    ) -> list[Message]:
        """The sound replies, sorted by hospital; every reply is appended to ``received`` as it comes.

        A sound training reply is handed to :meth:`_absorb` at once and its hospital recorded.
        """
        valid: list[Message] = []
        for msg in replies:
            received.append(msg)
            declined = declined_reason(msg)
            if declined is not None:
                log.warning("round %d: %s declined to train: %s", server_round, hospital_name(msg), declined)
                record = self.history.hospital(server_round, hospital_name(msg))
                record.update({"declined": declined, **step_fields(msg)})
                self.history.fail(
                    server_round, node_id=msg.metadata.src_node_id, stage=stage, reason=f"declined: {declined}"
                )
                continue
            problem = self._reply_problem(msg, stage=stage)
            if problem is None and valid:
                keys = set(next(iter(valid[0].content.metric_records.values())).keys())
                got = set(next(iter(msg.content.metric_records.values())).keys())
                if got != keys:
                    problem = f"metric keys {sorted(got)} differ from the other hospitals' {sorted(keys)}"
            if problem is None and stage == "train":
                sent_bytes = payload_bytes(next(iter(msg.content.array_records.values())))
                start = time.perf_counter()
                problem = self._absorb(server_round, msg)
                self._absorb_s += time.perf_counter() - start
                if problem is None:
                    self._record_hospital(server_round, msg, sent_bytes)
            if problem is None:
                valid.append(msg)
                continue
            node = self._origin(msg, stage)
            log.warning(
                "round %d %s: rejected reply from %s (node %d): %s",
                server_round,
                stage,
                self._name(node, msg),
                node,
                problem,
            )
            self.history.fail(server_round, node_id=node, stage=stage, reason=problem)
        return sorted(valid, key=hospital_name)  # arrival order must not change the floating-point sum

    def _reply_problem(self, msg: Message, *, stage: str) -> str | None:
        """Why this reply cannot be aggregated (``None`` when it is sound)."""
        return reply_problem(msg, expected=self._sent if stage == "train" else None)

    def _absorb(self, server_round: int, msg: Message) -> str | None:
        """Take in a sound training reply as it arrives; the reason if it cannot be (none here)."""
        return None

    def _record_hospital(self, server_round: int, msg: Message, sent_bytes: int) -> None:
        metrics = next(iter(msg.content.metric_records.values()))
        info = reply_info(msg)
        counts = info.get(rk.CLASS_COUNTS)
        self.history.hospital(server_round, hospital_name(msg)).update(
            {
                "node_id": msg.metadata.src_node_id,
                "examples": int(metrics[rk.NUM_EXAMPLES]),
                "train_loss": metrics.get(rk.TRAIN_LOSS),
                "train_accuracy": metrics.get(rk.TRAIN_ACCURACY),
                "train_seconds": metrics.get(rk.TRAIN_SECONDS),
                "skipped_images": metrics.get(rk.SKIPPED_IMAGES),
                "class_counts": list(counts) if counts is not None else None,
                "precision": info.get(rk.PRECISION),
                "bytes_sent": sent_bytes,
                "bytes_received": self._sent_bytes,
                "encrypt_seconds": metrics.get(rk.ENCRYPT_SECONDS),
                "decrypt_seconds": metrics.get(rk.DECRYPT_SECONDS),
                "epsilon": metrics.get(rk.EPSILON),
                "delta": metrics.get(rk.DELTA),
                "noise_multiplier": metrics.get(rk.NOISE_MULTIPLIER),
                "sample_rate": metrics.get(rk.SAMPLE_RATE),
                "steps": metrics.get(rk.STEPS),
                "max_grad_norm": metrics.get(rk.MAX_GRAD_NORM),
                **step_fields(msg),
            }
        )

    def _aggregate(self, server_round: int, valid: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine the vetted replies with Flower's aggregation and server step; keep the sent dtypes.

        A server optimiser computes in float64 and turns integer buffers into floats; the result
        is cast back (integers rounded) so the next round's replies match what was sent. A
        non-finite result (a server step that diverged) keeps the previous global model.
        """
        aggregated, metrics = super().aggregate_train(server_round, valid)
        if aggregated is None or self._sent is None:
            return aggregated, metrics
        if self.buffer_keys and isinstance(self, FedOpt | FedAvgM):
            # A server optimiser steps the weights; buffers (BatchNorm statistics) are averaged,
            # or momentum would push a running variance below zero.
            average = aggregate_arrayrecords([m.content for m in valid], self.weighted_by_key)
            aggregated = ArrayRecord({k: average[k] if k in self.buffer_keys else a for k, a in aggregated.items()})
        cast = {}
        for key, sent in self._sent.items():
            values = _cast_like(aggregated[key].numpy(), np.dtype(sent.dtype))
            if values is None:
                reason = f"the aggregated {key!r} holds NaN or Inf values; the global model is kept"
                log.warning("round %d: %s", server_round, reason)
                self.history.round(server_round)["aggregate_rejected"] = reason
                return None, metrics
            cast[key] = Array(values)
        return ArrayRecord(cast), metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Vet the replies, record each hospital, then aggregate the valid ones."""
        timings = self.history.round(server_round)["timings"]
        started = self._started.pop("train", time.perf_counter())
        received: list[Message] = []
        self._absorb_s = 0.0
        valid = self._vet(server_round, replies, stage="train", received=received)
        timings["train_s"] = time.perf_counter() - started - self._absorb_s
        self._record_missing(server_round, received, "train")
        declined = sum(1 for m in received if declined_reason(m) is not None)
        refused = sum(1 for m in received if declined_reason(m) and reply_info(m).get(rk.STEP_DECLINED) is True)
        sampled = len(self._outbox.get("train", []))
        if 2 * refused > sampled:  # the key-holders' guard: most hospitals found the global step a jump
            self.history.round(server_round)["global_step_rejected"] = {"declined": refused, "sampled": sampled}
            self.history.flush()
            raise GlobalStepRejected(server_round, declined=refused, sampled=sampled)
        if len(valid) + declined < self.min_train_nodes:
            self.history.flush()
            raise RunStopped(
                f"round {server_round}: {len(valid)} valid hospital update(s) ({declined} declined), below "
                f"min-train-nodes {self.min_train_nodes}; see this round's failures in history.json"
            )
        start = time.perf_counter()
        if valid:
            aggregated, metrics = self._aggregate(server_round, valid)
        else:
            log.warning("round %d: no valid training reply; the global model is unchanged", server_round)
            aggregated, metrics = None, None
        timings["aggregate_s"] = self._absorb_s + time.perf_counter() - start
        rejected = sum(1 for f in self.history.round(server_round)["failures"] if f["stage"] == "train")
        log.info(
            "round %d: %d training replies accepted, %d rejected or declined, after %.1f s; aggregated in %.2f s",
            server_round,
            len(valid),
            rejected,
            timings["train_s"],
            timings["aggregate_s"],
        )
        self.history.round(server_round)["federated_train"] = dict(metrics) if metrics is not None else None
        return aggregated, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the new global model to hospitals for local evaluation (none when fraction-evaluate is 0)."""
        self._started["evaluate"] = time.perf_counter()
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, server_round, self.fraction_evaluate, self.min_evaluate_nodes, "evaluate")
        config = ConfigRecord({**dict(config), rk.SERVER_ROUND: server_round})
        self._outbox["evaluate"] = self._messages(arrays, config, nodes, MessageType.EVALUATE)
        return self._outbox["evaluate"]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Vet and record the hospitals' local evaluation, then average it."""
        timings = self.history.round(server_round)["timings"]
        timings["federated_evaluate_s"] = time.perf_counter() - self._started.pop("evaluate", time.perf_counter())
        received: list[Message] = []
        valid = self._vet(server_round, replies, stage="evaluate", received=received)
        self._record_missing(server_round, received, "evaluate")
        for msg in valid:
            metrics = next(iter(msg.content.metric_records.values()))
            self.history.hospital(server_round, hospital_name(msg)).update(
                {
                    "eval_examples": int(metrics[rk.NUM_EXAMPLES]),
                    "eval_loss": metrics.get(rk.EVAL_LOSS),
                    "eval_accuracy": metrics.get(rk.EVAL_ACCURACY),
                }
            )
        weighted = [m for m in valid if next(iter(m.content.metric_records.values()))[rk.NUM_EXAMPLES] > 0]
        metrics = super().aggregate_evaluate(server_round, weighted) if weighted else None
        self.history.round(server_round)["federated_evaluate"] = dict(metrics) if metrics is not None else None
        return metrics
