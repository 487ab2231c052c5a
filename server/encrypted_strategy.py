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
from collections.abc import Sequence

import tenseal as ts
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from common import records as rk
from common.he.codec import ParamLayout
from common.he.keys import HEContext
from common.he.payload import EncryptedPayload
from server.history import RunHistory
from server.roster import NodeRoster
from server.strategy import MedsiloFedAvg, reply_problem

__all__ = ["EncryptedFedAvg"]

log = logging.getLogger(__name__)


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
        **kwargs: object,
    ) -> None:
        if public.secret or public.context.is_private():
            raise RuntimeError("the aggregation server must never hold a secret key: give it public.ctx only")
        super().__init__(history=history, roster=roster, **kwargs)  # type: ignore[arg-type]
        self.public = public
        self.layout = layout
        self.base_config = base_config

    def _messages(self, arrays: ArrayRecord, config: ConfigRecord, nodes: Sequence[int], kind: str) -> list[Message]:
        """The plain messages, with the run's HE keys, key id and n_total merged into the config."""
        merged = ConfigRecord({**dict(self.base_config), **dict(config)})
        return super()._messages(arrays, merged, nodes, kind)

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
