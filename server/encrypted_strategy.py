"""Encrypted FedAvg: the server adds CKKS ciphertexts it cannot decrypt.

Built on :class:`MedsiloFedAvg` (and so on Flower's ``FedAvg``): only node sampling, reply
vetting and the aggregation step differ. Protocol (DESIGN, "Encrypted FedAvg"):

1. Before round 1 a ``query.describe`` learns every node's role and example count n_k.
2. Hospitals pre-weight their weights by n_k / n_total and encrypt them in slot-sized
   chunks. The server checks each reply as it arrives (kind, codec, parameters, key id,
   layout, chunk count, declared n_k), adds the ciphertexts of a valid one to the running
   sum and drops them, so it holds the sum and one reply's ciphertexts at a time.
3. The aggregate carries the factor n_total / Σ(n_k that arrived); key-holders apply it
   after decrypting, so dropouts are renormalised without any plaintext on the server.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from common import records as rk
from common.he.ckks import CiphertextSum
from common.he.codec import ParamLayout
from common.he.keys import HEContext
from common.he.payload import EncryptedPayload
from server.history import RunHistory
from server.replies import reply_problem
from server.roster import NodeRoster
from server.strategy import MedsiloFedAvg

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
        self._sum = CiphertextSum(public.codec)
        self._arrived = 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Start the round's running sum empty, then send as :class:`MedsiloFedAvg` does."""
        self._sum, self._arrived = CiphertextSum(self.public.codec), 0
        return list(super().configure_train(server_round, arrays, config, grid))

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

    def _absorb(self, server_round: int, msg: Message) -> str | None:
        """Add a vetted reply's ciphertexts to the running sum, then drop them from the reply."""
        (key,) = msg.content.array_records
        payload = EncryptedPayload.from_record(msg.content.array_records[key])  # reads one chunk at a time
        try:
            self._sum.add(payload.chunks)
        except ValueError as err:
            return f"undecodable ciphertext: {err}"
        finally:
            del msg.content[key]  # the metrics stay; the ciphertexts are in the sum now
        self._arrived += self.roster.hospitals[msg.metadata.src_node_id]
        return None

    def _aggregate(self, server_round: int, valid: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The running sum as the encrypted aggregate, with the dropout factor; never decrypts."""
        if self._sum.chunks is None:
            return None, None
        factor = self.roster.total_examples / self._arrived
        aggregate = EncryptedPayload(
            kind="aggregate",
            params_fingerprint=self.public.params.fingerprint(),
            key_id=self.public.key_id,
            layout=self.layout,
            chunks=self._sum.release(),  # written chunk by chunk into the record, each freed as it goes
            factor=factor,
            extra={"server_round": server_round, "hospitals": len(valid)},
        )
        log.info(
            "round %d: summed %d encrypted updates (%d chunks), factor %.4f",
            server_round,
            len(valid),
            len(aggregate.chunks),
            factor,
        )
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        return aggregate.to_record(), metrics
