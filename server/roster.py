"""Which SuperNodes take part in a run: hospitals with their example counts, and the evaluator."""

from __future__ import annotations

import logging
import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import records as rk

__all__ = ["NodeRoster"]

log = logging.getLogger(__name__)


class NodeRoster:
    """Which SuperNodes are hospitals (with their n_k) and which one is the evaluator."""

    def __init__(
        self,
        hospitals: dict[int, int],
        names: dict[int, str],
        evaluator: int | None,
        *,
        failed: dict[int, str] | None = None,
        deployed: bool = False,
    ) -> None:
        self.hospitals = hospitals
        self.names = names
        self.evaluator = evaluator
        self.failed = failed or {}
        """Nodes that did not describe themselves, with the reason: they take no part in the run."""
        self.deployed = deployed
        """Every node that answered trains on its own node-config ``data-path`` (no simulated partition)."""

    def to_json(self) -> dict[str, object]:
        """The node-id -> name map for ``history.json``: every node, its role and n_k, and the failed ones."""
        nodes = [
            {"node_id": n, "name": self.names.get(n, ""), "role": "hospital", "examples": k}
            for n, k in sorted(self.hospitals.items())
        ]
        if self.evaluator is not None:
            nodes.append({"node_id": self.evaluator, "name": self.names.get(self.evaluator, ""), "role": "evaluator"})
        failed = [{"node_id": n, "reason": reason} for n, reason in sorted(self.failed.items())]
        return {"data": "own" if self.deployed else "simulated", "nodes": nodes, "failed": failed}

    @property
    def total_examples(self) -> int:
        """n_total: the training examples of every hospital."""
        return sum(self.hospitals.values())

    @classmethod
    def discover(cls, grid: Grid, *, min_hospitals: int, timeout: float, evaluator: bool = True) -> NodeRoster:
        """Wait for enough nodes, then ask each for its role and n_k.

        With ``evaluator`` (encrypted FedAvg) exactly one evaluator node must answer;
        without, an evaluator node is optional (deployment keeps the test set there).
        """
        needed = min_hospitals + 1 if evaluator else min_hospitals
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < needed:
            if time.monotonic() > deadline:
                connected = len(list(grid.get_node_ids()))
                what = f"min-train-nodes is {needed}"
                if evaluator:
                    what = (f"encrypted FedAvg needs at least min-train-nodes + 1 = {needed} "
                            "(the hospitals and one evaluator)")
                raise RuntimeError(f"only {connected} SuperNode(s) connected after {timeout:.0f}s; {what}")
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
        hospitals, names, evaluators, failed, sources = {}, {}, [], {}, set()
        replies = grid.send_and_receive(query, timeout=timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failed[node] = reply.error.reason
                log.warning("node %d did not describe itself: %s", node, reply.error.reason)
                continue
            info = reply.content[rk.HOSPITAL]
            names[node] = str(info["name"])
            sources.add(str(info.get(rk.DATA_SOURCE, "simulated")))
            if info[rk.ROLE] == "evaluator":
                evaluators.append(node)
            else:
                hospitals[node] = int(next(iter(reply.content.metric_records.values()))[rk.NUM_EXAMPLES])
        for node in sorted(set(node_ids) - {r.metadata.src_node_id for r in replies}):
            failed[node] = f"no reply within {timeout:.0f}s"
            log.warning("node %d did not describe itself: no reply within %.0fs", node, timeout)
        if len(evaluators) > 1 or (evaluator and not evaluators):
            raise RuntimeError(
                f"found {len(evaluators)} evaluator node(s); expected {'exactly' if evaluator else 'at most'} one "
                "(encrypted FedAvg in simulation: num-supernodes = hospitals + 1)"
            )
        if len(hospitals) < min_hospitals:
            left_out = "".join(f"; node {n} did not describe itself: {why}" for n, why in sorted(failed.items()))
            raise RuntimeError(f"found {len(hospitals)} hospital(s); min-train-nodes is {min_hospitals}{left_out}")
        log.info(
            "roster: %d hospitals (%d training examples), evaluator node %s%s",
            len(hospitals),
            sum(hospitals.values()),
            evaluators[0] if evaluators else "none",
            f"; {len(failed)} node(s) left out: " + ", ".join(map(str, sorted(failed))) if failed else "",
        )
        return cls(hospitals, names, evaluators[0] if evaluators else None, failed=failed, deployed=sources == {"own"})
