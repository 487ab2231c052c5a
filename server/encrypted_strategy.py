"""Encrypted FedAvg: the server adds CKKS ciphertexts it cannot decrypt.

Built on :class:`MedsiloFedAvg` (and so on Flower's ``FedAvg``): only node sampling, reply
vetting and the aggregation step differ. Protocol (DESIGN, "Encrypted FedAvg"):

1. Before round 1 a ``query.describe`` learns every node's role and example count n_k.
2. Hospitals pre-weight their weights by n_k / n_total and encrypt them in slot-sized
   chunks. The server checks each reply (kind, parameters, key id, layout, chunk count,
   declared n_k) and adds the ciphertexts of the valid ones, one reply at a time.
3. The aggregate carries the factor n_total / Σ(n_k that arrived); key-holders apply it
   after decrypting, so dropouts are renormalised without any plaintext on the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np
import tenseal as ts
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common import records as rk
from common.he.codec import ParamLayout
from common.he.keys import HEContext
from common.he.payload import EncryptedPayload
from server.history import RunHistory
from server.strategy import MedsiloFedAvg, reply_problem

__all__ = ["EncryptedFedAvg", "NodeRoster"]

log = logging.getLogger(__name__)


class NodeRoster:
    """Which SuperNodes are hospitals (with their n_k) and which one is the evaluator."""

    def __init__(self, hospitals: dict[int, int], names: dict[int, str], evaluator: int | None) -> None:
        self.hospitals = hospitals
        self.names = names
        self.evaluator = evaluator

    @property
    def total_examples(self) -> int:
        """n_total: the training examples of every hospital."""
        return sum(self.hospitals.values())

    @classmethod
    def discover(cls, grid: Grid, *, min_hospitals: int, timeout: float) -> NodeRoster:
        """Wait for ``min_hospitals`` + 1 nodes, then ask each for its role and n_k."""
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < min_hospitals + 1:
            if time.monotonic() > deadline:
                connected = len(list(grid.get_node_ids()))
                raise RuntimeError(
                    f"only {connected} SuperNode(s) connected after {timeout:.0f}s; encrypted FedAvg "
                    f"needs at least min-train-nodes + 1 = {min_hospitals + 1} (the hospitals and one evaluator)"
                )
            time.sleep(1.0)
        node_ids = sorted(grid.get_node_ids())
        query = [
            Message(
                RecordDict({rk.CONFIG: ConfigRecord()}),
                dst_node_id=n,
                message_type=f"{MessageType.QUERY}.{rk.DESCRIBE}",
            )
            for n in node_ids
        ]
        hospitals, names, evaluators = {}, {}, []
        for reply in grid.send_and_receive(query, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %d did not describe itself: %s", node, reply.error.reason)
                continue
            info = reply.content[rk.HOSPITAL]
            names[node] = str(info["name"])
            if info[rk.ROLE] == "evaluator":
                evaluators.append(node)
            else:
                hospitals[node] = int(next(iter(reply.content.metric_records.values()))[rk.NUM_EXAMPLES])
        if len(evaluators) != 1:
            raise RuntimeError(
                f"found {len(evaluators)} evaluator node(s); encrypted FedAvg needs exactly one "
                "(in simulation: num-supernodes = hospitals + 1)"
            )
        if len(hospitals) < min_hospitals:
            raise RuntimeError(f"found {len(hospitals)} hospital(s); min-train-nodes is {min_hospitals}")
        log.info(
            "roster: %d hospitals (%d training examples), evaluator node %d",
            len(hospitals),
            sum(hospitals.values()),
            evaluators[0],
        )
        return cls(hospitals, names, evaluators[0])


class EncryptedFedAvg(MedsiloFedAvg):
    """FedAvg over CKKS-encrypted, pre-weighted updates. Holds only the public context."""

    def __init__(
        self,
        *,
        history: RunHistory,
        public: HEContext,
        layout: ParamLayout,
        roster: NodeRoster,
        base_config: ConfigRecord,
        seed: int,
        **kwargs: object,
    ) -> None:
        if public.secret or public.context.is_private():
            raise RuntimeError("the aggregation server must never hold a secret key: give it public.ctx only")
        super().__init__(history=history, **kwargs)
        self.public = public
        self.layout = layout
        self.roster = roster
        self.base_config = base_config
        self.rng = np.random.default_rng(seed)

    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        alive = set(grid.get_node_ids())
        pool = sorted(n for n in self.roster.hospitals if n in alive)
        if len(pool) < minimum:
            log.warning(
                "only %d of %d hospitals are connected; the minimum is %d",
                len(pool),
                len(self.roster.hospitals),
                minimum,
            )
        size = min(len(pool), max(int(len(pool) * fraction), minimum))
        picked = self.rng.choice(len(pool), size=size, replace=False) if size else []
        return sorted(pool[int(i)] for i in picked)  # indices: node ids exceed int64

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, nodes: Sequence[int], kind: str) -> list[Message]:
        merged = ConfigRecord({**dict(self.base_config), **dict(config)})
        return [
            Message(RecordDict({rk.ARRAYS: arrays, rk.CONFIG: merged}), dst_node_id=n, message_type=kind) for n in nodes
        ]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model (plaintext in round 1, then the encrypted aggregate) to hospitals."""
        self._started["train"] = time.perf_counter()
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        log.info("round %d: training on %d hospital(s)", server_round, len(nodes))
        config = ConfigRecord({**dict(config), rk.SERVER_ROUND: server_round})
        return self._messages(arrays, config, nodes, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the encrypted aggregate to hospitals for their local evaluation."""
        self._started["evaluate"] = time.perf_counter()
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        config = ConfigRecord({**dict(config), rk.SERVER_ROUND: server_round})
        return self._messages(arrays, config, nodes, MessageType.EVALUATE)

    def _reply_problem(self, msg: Message, *, stage: str) -> str | None:
        problem = reply_problem(msg, expected=None)
        if problem is not None or stage != "train":
            return problem
        node = msg.metadata.src_node_id
        n_k = next(iter(msg.content.metric_records.values()))[rk.NUM_EXAMPLES]
        if node not in self.roster.hospitals:
            return "not a hospital of this run's roster"
        if n_k != self.roster.hospitals[node]:
            return f"'{rk.NUM_EXAMPLES}' = {n_k}; it declared {self.roster.hospitals[node]} before round 1"
        arrays = list(msg.content.array_records.values())
        if len(arrays) != 1:
            return f"expected one ArrayRecord, got {len(arrays)}"
        try:
            payload = EncryptedPayload.from_record(arrays[0])
            payload.check_against(self.public, kind="update", layout=self.layout)
        except ValueError as err:
            return f"bad encrypted update: {err}"
        return None

    def _aggregate(self, server_round: int, valid: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add the ciphertexts reply by reply; never decrypts."""
        total: list[ts.CKKSVector] | None = None
        arrived = 0
        summed: list[Message] = []
        for msg in valid:
            payload = EncryptedPayload.from_record(next(iter(msg.content.array_records.values())))
            try:
                vectors = [ts.ckks_vector_from(self.public.context, blob) for blob in payload.chunks]
            except (ValueError, RuntimeError, TypeError) as err:
                reason = f"undecodable ciphertext: {err}"
                log.warning(
                    "round %d train: rejected reply from node %d: %s", server_round, msg.metadata.src_node_id, reason
                )
                self.history.fail(server_round, node_id=msg.metadata.src_node_id, stage="train", reason=reason)
                continue
            if total is None:
                total = vectors
            else:
                for acc, vec in zip(total, vectors, strict=True):
                    acc += vec
            del vectors, payload
            arrived += self.roster.hospitals[msg.metadata.src_node_id]
            summed.append(msg)
        if total is None:
            return None, None
        factor = self.roster.total_examples / arrived
        aggregate = EncryptedPayload(
            kind="aggregate",
            params_fingerprint=self.public.params.fingerprint(),
            key_id=self.public.key_id,
            layout=self.layout,
            chunks=[vec.serialize() for vec in total],
            factor=factor,
            extra={"server_round": server_round, "hospitals": len(summed)},
        )
        log.info(
            "round %d: summed %d encrypted updates (%d chunks), factor %.4f",
            server_round,
            len(summed),
            len(total),
            factor,
        )
        metrics = self.train_metrics_aggr_fn([m.content for m in summed], self.weighted_by_key)
        return aggregate.to_record(), metrics
