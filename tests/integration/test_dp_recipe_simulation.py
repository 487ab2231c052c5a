"""A real ``flwr run`` with the DP recipe's free options on logs the epsilons Google's dp-accounting gives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from flower_env import Flower

from common.data.synth import write_synthetic_tree

SIGMA = 1.2


def _google_epsilon(q: float, steps: int, delta: float) -> float:
    """Google's dp-accounting (RDP), independent of Opacus: epsilon after ``steps`` Poisson-sampled steps."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(SIGMA)), steps)
    return accountant.get_epsilon(delta)


def test_a_run_with_augmentation_multiplicity_and_ema_logs_dp_accountings_epsilons(
    flower: Flower, tmp_path: Path
) -> None:
    """2 hospitals of 18 training images at the default rate q = 1/2: 2 steps a round, views and EMA or not."""
    data = write_synthetic_tree(
        tmp_path / "data", modality="brain-mri", train_per_class=10, test_per_class=2, size=32, seed=1
    )
    out = tmp_path / "runs"
    config = (
        f"data-root='{data}' output-dir='{out}' run-name='recipe' model='cnn3' image-size=32 batch-size=8 "
        "local-epochs=1 num-server-rounds=2 fraction-evaluate=0.0 partitioner='iid' dp-enabled=true "
        f"dp-noise-multiplier={SIGMA} dp-delta=1e-5 dp-augmentation-multiplicity=2 dp-ema-decay=0.9"
    )
    flower.simulate(config, supernodes=2, cwd=tmp_path)
    history = json.loads((out / "recipe" / "history.json").read_text())
    rounds = history["rounds"][1:]
    assert [r["round"] for r in rounds] == [1, 2]
    for number, record in enumerate(rounds, start=1):
        assert len(record["hospitals"]) == 2
        for hospital in record["hospitals"].values():
            assert hospital["noise_multiplier"] == pytest.approx(SIGMA) and hospital["delta"] == 1e-5
            assert hospital["sample_rate"] == pytest.approx(0.5) and int(hospital["steps"]) == 2
            expected = _google_epsilon(0.5, 2 * number, 1e-5)
            assert hospital["epsilon"] == pytest.approx(expected, rel=0.02)
    config_json = json.loads((out / "recipe" / "config.json").read_text())
    assert config_json["dp-augmentation-multiplicity"] == 2 and config_json["dp-ema-decay"] == 0.9
