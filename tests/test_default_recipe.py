"""`flwr run .` with no run config trains the best federated configuration the accuracy benchmark found."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from common.config import parse_run_config

ROOT = Path(__file__).resolve().parents[1]


def _defaults() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_the_defaults_are_the_best_configuration() -> None:
    """Kept optimiser state, logit-adjusted loss and rounds of a quarter epoch, under warm-up and cosine decay."""
    defaults = _defaults()
    assert defaults["optimizer-state"] == "keep"
    assert defaults["local-epochs"] == 0.25 and defaults["local-steps"] == 0
    assert defaults["lr-schedule"] == "cosine" and defaults["lr-warmup-rounds"] == 4  # one epoch of warm-up
    assert defaults["loss"] == "auto"
    assert defaults["strategy"] == "auto" and defaults["server-momentum"] == 0.5  # FedAvgM, or FedAvg under HE
    cfg = parse_run_config(defaults, source="pyproject.toml")
    assert cfg.logit_adjusted  # brain MRI: one class per image
    assert not parse_run_config({**defaults, "dataset": "nih-chestxray", "data-root": "x"}).logit_adjusted
    assert cfg.server_step == "fedavgm" and parse_run_config({**defaults, "he-enabled": True}).server_step == "fedavg"


def test_the_benchmarked_best_configuration_is_the_default() -> None:
    """Every best-* row of accuracy.json was trained with the defaults of the keys that define the recipe."""
    defaults = _defaults()
    results = json.loads((ROOT / "benchmarks" / "results" / "accuracy.json").read_text())
    rows = [(dataset, name, row) for dataset, table in results.items() for name, row in table.items()
            if name.startswith("best-")]
    assert {(dataset, name) for dataset, name, _ in rows} >= {("brain-mri", "best-dirichlet")}
    for dataset, name, row in rows:
        recipe = dict(item.split("=", 1) for item in row["config"].split())
        for key, value in recipe.items():
            default = repr(defaults[key])
            assert value == default, f"{dataset} {name}: {key}={value}, pyproject.toml has {default}"


def test_the_centralised_baseline_trains_with_the_recipes_loss_and_schedule() -> None:
    """Pooled training gets the defaults' loss and schedule, its warm-up as many epochs of data as theirs."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import accuracy

    defaults = _defaults()
    cfg, rounds_per_epoch = accuracy._setting_config("centralised", base=accuracy.BASE, overrides={}, epochs=20)
    assert rounds_per_epoch == 1 and cfg.num_server_rounds == 20
    assert (cfg.loss, cfg.lr_schedule) == (defaults["loss"], defaults["lr-schedule"])
    assert cfg.lr_warmup_rounds == defaults["lr-warmup-rounds"] * defaults["local-epochs"] == 1
    plain, _ = accuracy._setting_config("fedavg-dirichlet", base=accuracy.BASE, overrides={}, epochs=20)
    assert (plain.loss, plain.lr_schedule, plain.lr_warmup_rounds) == ("cross-entropy", "constant", 0)
