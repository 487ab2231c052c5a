"""Early stopping on the validation loss, with patience counted in rounds.

The monitored loss is the hospitals' validation loss, weighted by their validation images
(Flower's federated evaluation of each round's global model on the images every hospital
holds out of its training shard). The central test set never drives the choice. The best
round's model and its central evaluation are kept, and become ``model/`` and ``report.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, MetricRecord

from common import records as rk
from server.central import CentralEvaluation

__all__ = ["EarlyStopping"]

log = logging.getLogger(__name__)


@dataclass
class EarlyStopping:
    """Tracks the best round; :meth:`should_stop` once ``patience`` rounds bring no lower loss."""

    patience: int
    best_round: int | None = None
    best_loss: float = math.inf
    best_arrays: ArrayRecord | None = None
    best_evaluation: CentralEvaluation | None = None
    stopped_after: int | None = None

    def should_stop(
        self,
        server_round: int,
        federated: MetricRecord | None,
        arrays: ArrayRecord,
        evaluation: CentralEvaluation | None,
    ) -> bool:
        """Record ``server_round``'s validation loss; ``True`` when the run should stop after it.

        A round without a validation loss (no hospital replied) counts as no improvement.
        """
        loss = float(federated[rk.EVAL_LOSS]) if federated is not None and rk.EVAL_LOSS in federated else math.nan
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_round, self.best_loss = server_round, loss
            self.best_arrays, self.best_evaluation = arrays, evaluation
            return False
        since = server_round - (self.best_round if self.best_round is not None else 0)
        if since >= self.patience:
            self.stopped_after = server_round
            log.info(
                "early stopping after round %d: no lower validation loss for %d round(s); keeping round %s (%.4f)",
                server_round,
                since,
                self.best_round,
                self.best_loss,
            )
            return True
        return False

    def to_json(self) -> dict[str, Any]:
        """What ``history.json`` records: the patience, the best round and its loss, where the run stopped."""
        return {
            "monitored": "hospitals' validation loss (weighted by images)",
            "patience": self.patience,
            "best_round": self.best_round,
            "best_validation_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "stopped_after_round": self.stopped_after,
        }
