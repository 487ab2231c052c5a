"""After the last round (``local-baseline = true``): what each hospital gains by joining.

Each hospital gets the final global model (encrypted under HE, as in every round), the run's
starting weights and the rounds it trained; it trains a local-only model for those rounds and
sends back two validation accuracies and its image count. The server checks the replies and
records one row per hospital in ``history.json``, named as the run's node map names it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import records as rk
from common.config import RunConfig
from server.history import RunHistory
from server.roster import NodeRoster

__all__ = ["LocalBaseline", "rounds_trained"]

log = logging.getLogger(__name__)


def rounds_trained(history: RunHistory, name: str) -> list[int]:
    """The rounds whose aggregate took hospital ``name``'s update (resumed runs included)."""
    return [
        r
        for r, record in sorted(history.rounds.items())
        if r > 0 and "examples" in record.get("hospitals", {}).get(name, {})
    ]


def _problem(reply: Message) -> str | None:
    """Why a hospital's reply cannot be recorded, or ``None``."""
    if reply.has_error():
        return f"error reply: {reply.error.reason}"
    metrics = reply.content.metric_records.get(rk.METRICS)
    if metrics is None:
        return f"no '{rk.METRICS}' record"
    for key in (rk.LOCAL_ONLY_ACCURACY, rk.GLOBAL_ACCURACY):
        value = metrics.get(key)
        if not isinstance(value, float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
            return f"'{key}' is {value!r}; expected an accuracy in [0, 1]"
    images = metrics.get(rk.NUM_EXAMPLES)
    if not isinstance(images, int) or images <= 0:
        return f"'{rk.NUM_EXAMPLES}' is {images!r}; expected a positive count of validation images"
    return None


class LocalBaseline:
    """Asks every hospital for its local-only against global comparison and records the table."""

    def __init__(self, cfg: RunConfig, grid: Grid, *, roster: NodeRoster, base_config: ConfigRecord) -> None:
        self.cfg = cfg
        self.grid = grid
        self.roster = roster
        self.base_config = base_config

    def compare(self, final: ArrayRecord, starting: ArrayRecord, history: RunHistory) -> dict[str, Any]:
        """The ``history.json`` record: one row per hospital that answered, and why the others are missing."""
        start = time.perf_counter()
        messages, names, trained = [], {}, {}
        for node in sorted(self.roster.hospitals):
            name = names[node] = self.roster.names.get(node, f"node-{node}")
            trained[node] = rounds_trained(history, name)
            config = ConfigRecord({**dict(self.base_config), rk.BASELINE_ROUNDS: trained[node]})
            content = RecordDict({rk.ARRAYS: final, rk.STARTING_WEIGHTS: starting, rk.CONFIG: config})
            message_type = f"{MessageType.QUERY}.{rk.LOCAL_BASELINE}"
            messages.append(Message(content, dst_node_id=node, message_type=message_type))
        # A hospital trains again for as many rounds as it trained in the run: allow it that long.
        timeout = self.cfg.round_timeout * (self.cfg.num_server_rounds + 1)
        log.info("local baseline: %d hospitals train a local-only model (up to %.0f s)", len(messages), timeout)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        rows, failures = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            problem = _problem(reply) if node in names else "not a hospital of this run"
            if problem is not None:
                log.warning("local baseline: node %d left out: %s", node, problem)
                failures.append({"node_id": node, "reason": problem})
                continue
            metrics = reply.content[rk.METRICS]
            local, joined = float(metrics[rk.LOCAL_ONLY_ACCURACY]), float(metrics[rk.GLOBAL_ACCURACY])
            rows.append(
                {
                    "hospital": names[node],
                    "node_id": node,
                    "validation_images": int(metrics[rk.NUM_EXAMPLES]),
                    "rounds": len(trained[node]),
                    "local_only_accuracy": local,
                    "global_accuracy": joined,
                    "gain": joined - local,
                }
            )
        answered = {r.metadata.src_node_id for r in replies}
        failures += [{"node_id": n, "reason": f"no reply within {timeout:.0f}s"} for n in sorted(set(names) - answered)]
        rows.sort(key=lambda row: row["hospital"])
        for row in rows:
            log.info(
                "local baseline: %s validation accuracy %.4f local-only, %.4f global (%+.4f)",
                row["hospital"],
                row["local_only_accuracy"],
                row["global_accuracy"],
                row["gain"],
            )
        return {"hospitals": rows, "failures": failures, "seconds": time.perf_counter() - start}
