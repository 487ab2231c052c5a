"""The fewest updates each robust strategy needs, and its refusals."""

from __future__ import annotations

import pytest

from common.robust import ROBUST_STRATEGIES, updates_needed


@pytest.mark.parametrize(
    ("strategy", "f", "beta", "fewest"),
    [
        ("fedmedian", 0, 0.2, 3),
        ("fedtrimmedavg", 0, 0.2, 5),
        ("fedtrimmedavg", 0, 0.1, 10),
        ("fedtrimmedavg", 0, 0.3, 4),
        ("fedtrimmedavg", 0, 0.49, 3),
        ("krum", 0, 0.2, 3),
        ("krum", 2, 0.2, 7),
        ("multikrum", 1, 0.2, 5),
        ("bulyan", 1, 0.2, 7),
        ("bulyan", 3, 0.2, 15),
    ],
)
def test_updates_needed(strategy: str, f: int, beta: float, fewest: int) -> None:
    needed, rule = updates_needed(strategy, num_malicious_nodes=f, trim_fraction=beta)
    assert needed == fewest and rule
    if strategy == "fedtrimmedavg":  # Flower cuts int(beta * n) from each end: one at the fewest, none below
        assert int(beta * needed) == 1 and int(beta * (needed - 1)) == 0


def test_every_robust_strategy_has_a_rule() -> None:
    for strategy in ROBUST_STRATEGIES:
        assert updates_needed(strategy, num_malicious_nodes=1, trim_fraction=0.2)[0] >= 3


@pytest.mark.parametrize(
    ("strategy", "beta", "match"),
    [
        ("fedavg", 0.2, "strategy 'fedavg' is not one of fedmedian, fedtrimmedavg, krum, multikrum, bulyan"),
        ("fedtrimmedavg", 0.0, r"trim-fraction 0.0; expected a fraction in \(0, 0.5\)"),
        ("fedtrimmedavg", 0.5, r"trim-fraction 0.5; expected a fraction in \(0, 0.5\)"),
    ],
)
def test_bad_inputs_are_refused(strategy: str, beta: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        updates_needed(strategy, num_malicious_nodes=1, trim_fraction=beta)
