"""Flower's robust aggregations, each behind medsilo's reply vetting: ``strategy`` = one of
``fedmedian``, ``fedtrimmedavg``, ``krum``, ``multikrum``, ``bulyan``.

Each rule needs a fewest number of updates for its setting (:func:`common.robust.updates_needed`).
The run config checks it against ``min-train-nodes``; a round whose valid updates fall short
of it (hospitals that declined, dropped out or sent a rejected reply) keeps the previous global
model, with one log line and the reason in ``history.json``, rather than aggregate what the
rule can no longer protect. Flower's own Bulyan skips such a round too; its Krum would pick
among too few. MultiKrum averages the n - f best-scored of the n updates that arrived.
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from common.config import RunConfig
from common.robust import updates_needed
from server.strategy import MedsiloFedAvg

__all__ = ["make_robust_strategy"]

log = logging.getLogger(__name__)


class _Robust(MedsiloFedAvg):
    """Skips a round's update when fewer valid updates arrived than the rule needs."""

    def __init__(self, *, name: str, needed: tuple[int, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.needed = needed

    def _aggregate(self, server_round: int, valid: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        fewest, rule = self.needed
        if len(valid) < fewest:
            reason = (
                f"{len(valid)} valid update(s), fewer than the {fewest} that {self.name} needs ({rule}); "
                "the global model is kept"
            )
            log.warning("round %d: %s", server_round, reason)
            self.history.round(server_round)["aggregate_rejected"] = reason
            return None, None
        return super()._aggregate(server_round, valid)


class MedsiloFedMedian(_Robust, FedMedian):
    """Flower's FedMedian (coordinate-wise median), vetted."""


class MedsiloFedTrimmedAvg(_Robust, FedTrimmedAvg):
    """Flower's FedTrimmedAvg (coordinate-wise trimmed mean), vetted."""


class MedsiloKrum(_Robust, Krum):
    """Flower's Krum (the update closest to its n - f - 2 nearest), vetted."""


class MedsiloMultiKrum(_Robust, MultiKrum):
    """Flower's MultiKrum, vetted: the average of the n - f best-scored updates that arrived."""

    def _aggregate(self, server_round: int, valid: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.num_nodes_to_select = max(1, len(valid) - self.num_malicious_nodes)
        return super()._aggregate(server_round, valid)


class MedsiloBulyan(_Robust, Bulyan):
    """Flower's Bulyan (MultiKrum selection, then a trimmed mean around the median), vetted."""


def make_robust_strategy(cfg: RunConfig, **kwargs: Any) -> MedsiloFedAvg:
    """The robust strategy ``cfg.strategy`` with its setting; ``kwargs`` go to every one.

    Raises:
        ValueError: ``cfg.strategy`` is not a robust strategy.
    """
    f = cfg.num_malicious_nodes
    needed = updates_needed(cfg.strategy, num_malicious_nodes=f, trim_fraction=cfg.trim_fraction)
    kwargs.update(name=cfg.strategy, needed=needed)
    if cfg.strategy == "fedmedian":
        return MedsiloFedMedian(**kwargs)
    if cfg.strategy == "fedtrimmedavg":
        return MedsiloFedTrimmedAvg(beta=cfg.trim_fraction, **kwargs)
    if cfg.strategy == "krum":
        return MedsiloKrum(num_malicious_nodes=f, **kwargs)
    if cfg.strategy == "multikrum":
        return MedsiloMultiKrum(num_malicious_nodes=f, **kwargs)
    return MedsiloBulyan(num_malicious_nodes=f, **kwargs)
