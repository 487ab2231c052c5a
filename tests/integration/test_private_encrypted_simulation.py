"""DP-SGD and encrypted FedAvg together in a real ``flwr run``: accounting and declining."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant
from flower_env import Flower

from common.data.synth import write_synthetic_tree

SIGMA, Q, STEPS_PER_ROUND, DELTA = 1.5, 1 / 3, 3, 1e-5


def _epsilon(steps: int, sigma: float = SIGMA, q: float = Q, delta: float = DELTA) -> float:
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def test_dp_with_he_accounts_declines_and_completes(flower: Flower, tmp_path: Path) -> None:
    root = write_synthetic_tree(
        tmp_path / "data", modality="brain-mri", train_per_class=20, test_per_class=5, size=40, seed=4
    )
    # Two rounds fit the budget, a third would not: each hospital must decline round 3.
    target = (_epsilon(2 * STEPS_PER_ROUND) + _epsilon(3 * STEPS_PER_ROUND)) / 2
    out = tmp_path / "runs"
    overrides = (
        f"model='cnn3' image-size=32 num-server-rounds=3 local-epochs=1 batch-size=12 partitioner='iid' "
        f"min-train-nodes=2 min-evaluate-nodes=2 he-enabled=true dp-enabled=true dp-noise-multiplier={SIGMA} "
        f"dp-delta={DELTA} dp-target-epsilon={target} data-root='{root}' output-dir='{out}' run-name='dp-he'"
    )
    flower.simulate(overrides, supernodes=3, cwd=tmp_path)
    run_dir = out / "dp-he"
    assert (run_dir / "report.json").is_file() and (run_dir / "model" / "encrypted.json").is_file()
    rounds = {r["round"]: r for r in json.loads((run_dir / "history.json").read_text())["rounds"]}

    for name in ("hospital-0", "hospital-1"):
        total_steps = 0
        for server_round in (1, 2):
            logged = rounds[server_round]["hospitals"][name]
            assert logged["noise_multiplier"] == pytest.approx(SIGMA) and logged["sample_rate"] == pytest.approx(Q)
            assert logged["delta"] == DELTA and logged["max_grad_norm"] == 1.0
            total_steps += int(logged["steps"])
            independent = _epsilon(total_steps, logged["noise_multiplier"], logged["sample_rate"], logged["delta"])
            assert abs(logged["epsilon"] - independent) <= 0.02 * independent
            assert logged["epsilon"] <= target
        assert rounds[2]["hospitals"][name]["epsilon"] > rounds[1]["hospitals"][name]["epsilon"]
        assert "privacy budget" in rounds[3]["hospitals"][name]["declined"]
    declined = [f for f in rounds[3]["failures"] if f["reason"].startswith("declined: privacy budget")]
    assert len(declined) == 2
    report_md = (run_dir / "report.md").read_text()
    assert "DP-SGD" in report_md and "## Privacy: epsilon spent per hospital" in report_md
    assert "| 3 | declined | declined |" in report_md
