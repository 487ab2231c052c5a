"""The robust strategies and the fewest hospital updates each needs for its setting to protect anything.

One rule for both checks: the run config's (against ``min-train-nodes``, before a run starts)
and the server's (against the valid updates that actually arrived in a round).
"""

from __future__ import annotations

import itertools

__all__ = ["ROBUST_STRATEGIES", "updates_needed"]

ROBUST_STRATEGIES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Flower's aggregations that tolerate hostile hospitals; each must see every update, so none runs under HE."""


def updates_needed(strategy: str, *, num_malicious_nodes: int, trim_fraction: float) -> tuple[int, str]:
    """The fewest updates ``strategy`` needs, and its rule as a phrase for a one-line message.

    Args:
        strategy: one of :data:`ROBUST_STRATEGIES`.
        num_malicious_nodes: f, the hostile hospitals Krum, MultiKrum and Bulyan tolerate.
        trim_fraction: FedTrimmedAvg's cut from each end, in (0, 0.5).

    Raises:
        ValueError: ``strategy`` is not a robust strategy, or ``trim_fraction`` is outside (0, 0.5).
    """
    f = num_malicious_nodes
    if strategy == "fedmedian":
        return 3, "the median of two updates is their mean"
    if strategy == "fedtrimmedavg":
        if not 0.0 < trim_fraction < 0.5:
            raise ValueError(f"trim-fraction {trim_fraction}; expected a fraction in (0, 0.5)")
        # Flower cuts int(trim_fraction * n) updates from each end: at least one, or it is a plain mean
        n = next(n for n in itertools.count(1) if int(trim_fraction * n) >= 1)
        return n, f"trim-fraction {trim_fraction} must cut at least one update from each end"
    if strategy in ("krum", "multikrum"):
        return 2 * f + 3, f"Krum needs n > 2f + 2 with f = num-malicious-nodes = {f}"
    if strategy == "bulyan":
        return 4 * f + 3, f"Bulyan needs n >= 4f + 3 with f = num-malicious-nodes = {f}"
    raise ValueError(f"strategy {strategy!r} is not one of {', '.join(ROBUST_STRATEGIES)}")
