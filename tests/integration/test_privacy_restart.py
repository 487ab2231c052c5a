"""A hospital killed between rounds keeps its privacy accounting when it comes back."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord

from client.privacy import train_within_budget
from client.site import state_dir
from common import records as rk
from common.config import parse_run_config
from common.data import load_split
from common.data.synth import write_synthetic_tree
from common.experiment import initial_model


def one_round(root: Path, ledger_dir: Path, **recipe: object) -> dict[str, float]:
    """One DP round of a hospital whose ledger lives in ``ledger_dir``; its privacy metrics."""
    cfg = parse_run_config(
        {"model": "cnn3", "image-size": 32, "batch-size": 8, "local-epochs": 1, "num-server-rounds": 4,
         "dp-enabled": True, "dp-target-epsilon": 5.0, "data-root": str(root), **recipe}
    )  # fmt: skip
    images = load_split(root, "train", classes=cfg.class_names, channels=1, size=32)
    outcome = train_within_budget(
        initial_model(cfg), images, cfg=cfg, ledger_dir=ledger_dir, seed=1, device=torch.device("cpu")
    )
    assert not isinstance(outcome, str), outcome
    return outcome.metrics


# The same round in a process of its own that stays alive until it is killed.
SCRIPT = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_privacy_restart import one_round
print(json.dumps(one_round(Path(sys.argv[1]), Path(sys.argv[2]))), flush=True)
sys.stdin.read()
"""


def _killed_round(root: Path, ledger_dir: Path) -> dict[str, float]:
    """``one_round`` in a subprocess, SIGKILLed right after it reports."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(root), str(ledger_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert line, "the hospital process printed nothing"
    return json.loads(line)


def test_epsilon_keeps_growing_across_a_killed_hospital(tmp_path: Path) -> None:
    root = write_synthetic_tree(
        tmp_path / "data", modality="brain-mri", train_per_class=8, test_per_class=1, size=32, seed=2
    )
    ledger_dir = tmp_path / "state" / "hospital-0"
    first = _killed_round(root, ledger_dir)
    second = one_round(root, ledger_dir)  # the hospital after its restart
    assert second["epsilon"] > first["epsilon"] > 0
    ledger = json.loads((ledger_dir / "privacy-ledger.json").read_text())
    assert sum(entry["steps"] for entry in ledger["history"]) == first["steps"] + second["steps"]
    assert second["epsilon"] <= 5.0


RECIPE = {
    "dp-sample-rate": 0.3, "dp-augmentation-multiplicity": 3, "dp-ema-decay": 0.9, "dp-clipping": "normalize",
    "dp-optimizer": "sgd", "dp-learning-rate": 0.5, "norm-groups": 8, "weight-standardization": True,
    "train-from-block": 1,
}  # fmt: skip


def _google_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Google's dp-accounting (RDP), independent of Opacus."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def test_every_recipe_option_at_once_logs_the_epsilon_dp_accounting_gives(tmp_path: Path) -> None:
    """Views, EMA, normalised clipping, frozen blocks, ws: q and the steps are the sample rate's, and ε is exact."""
    root = write_synthetic_tree(
        tmp_path / "data", modality="brain-mri", train_per_class=8, test_per_class=1, size=32, seed=2
    )
    ledger_dir = tmp_path / "state"
    for number in (1, 2):
        logged = one_round(root, ledger_dir, **RECIPE)
        assert logged[rk.SAMPLE_RATE] == 0.3 and logged[rk.STEPS] == 3  # an epoch is round(1 / 0.3) steps
        google = _google_epsilon(logged[rk.NOISE_MULTIPLIER], 0.3, number * 3, logged[rk.DELTA])
        assert logged[rk.EPSILON] == pytest.approx(google, rel=0.02)
    assert logged[rk.EPSILON] <= 5.0


def test_the_ledger_is_per_hospital_and_run(tmp_path: Path) -> None:
    run_a, run_b = ConfigRecord({"run-dir": "/srv/runs/a"}), ConfigRecord({"run-dir": "/srv/runs/b"})
    deployed = {"role": "hospital", "data-path": str(tmp_path), "state-dir": str(tmp_path / "state")}
    assert state_dir(deployed, run_a, "hospital-a") == tmp_path / "state" / "a"
    assert state_dir(deployed, run_b, "hospital-a") == tmp_path / "state" / "b"
    simulated = {"partition-id": 0, "num-partitions": 2}
    assert state_dir(simulated, run_a, "hospital-0") == Path("/srv/runs/a/state/hospital-0")


def test_a_train_message_without_run_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'run-dir' is missing"):
        state_dir({"partition-id": 0, "num-partitions": 2}, ConfigRecord(), "hospital-0")
