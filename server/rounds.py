"""The round loop: train, central evaluation (under HE it also vets the aggregate), federated evaluation.

Flower's ``Strategy.start`` always runs rounds ``1..N`` and waits indefinitely for the
minimum number of nodes. This loop starts at any round (for ``resume-from``), bounds every
wait by ``round-timeout``, and stops the run with a clear message when fewer hospitals than
``min-train-nodes`` remain; the checkpoint of the last completed round stays on disk.
Training replies are aggregated one by one as they arrive (``server.reply_stream``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from server.central import AggregateRejected
from server.reply_stream import stream_replies
from server.strategy import MedsiloFedAvg

__all__ = ["run_rounds"]

log = logging.getLogger(__name__)


def run_rounds(
    strategy: MedsiloFedAvg,
    grid: Grid,
    *,
    arrays: ArrayRecord,
    first_round: int,
    last_round: int,
    train_config: ConfigRecord,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None],
    stop_after: Callable[[int, MetricRecord | None, ArrayRecord], bool] | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round..last_round`` from ``arrays``; return the final global model.

    Round 0 (the initial model) is scored only on a fresh start. ``stop_after(round,
    federated metrics, arrays)`` returning ``True`` ends the run after that round (early stopping).

    Raises:
        RunStopped: from the strategy, when fewer than ``min-train-nodes`` hospitals remain.
    """
    history = strategy.history
    if first_round == 1:
        evaluate_fn(0, arrays)
        log.info("%s", history.round_summary(0, last_round))
    for server_round in range(first_round, last_round + 1):
        start = time.perf_counter()
        log.info("round %d/%d: sending the global model to the hospitals", server_round, last_round)
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = stream_replies(grid, messages, timeout=strategy.round_timeout)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        previous = arrays
        if aggregated is not None:  # None: every hospital declined, or the aggregate was not finite
            arrays = aggregated
        try:
            evaluate_fn(server_round, arrays)
        except AggregateRejected:  # under HE the evaluator, a key-holder, found the aggregate not finite
            arrays = previous
            evaluate_fn(server_round, arrays)
        messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
        federated = None
        if messages:
            replies = grid.send_and_receive(messages, timeout=strategy.round_timeout)
            federated = strategy.aggregate_evaluate(server_round, replies)
        history.flush()
        log.info("%s", history.round_summary(server_round, last_round))
        log.info("round %d/%d done in %.1f s", server_round, last_round, time.perf_counter() - start)
        if stop_after is not None and stop_after(server_round, federated, arrays):
            break
    return arrays
