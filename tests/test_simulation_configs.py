"""Every scenario in simulations/ is a valid run config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import parse_run_config

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "simulations").glob("*.toml"))


def test_the_documented_scenarios_exist() -> None:
    names = {p.stem for p in SCENARIOS}
    assert {
        "brain-mri-4-hospitals",
        "chest-xray-dirichlet",
        "synthetic-histology",
        "brain-mri-he",
        "brain-mri-dp",
        "brain-mri-dp-he",
    } <= names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_scenario_validates(path: Path) -> None:
    cfg = parse_run_config(tomllib.loads(path.read_text()), source=path.name)
    assert cfg.num_server_rounds >= 1
