"""Deployment on loopback: TLS, SuperNode authentication, roles from the node config, faults.

The tests share one TLS SuperLink (with SuperNode authentication); the SuperNodes read only
their own synthetic data folder, and the evaluator node holds the central test set.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import dp_accounting
import pytest
from deployment import HOSPITALS, Deployment
from dp_accounting.rdp import RdpAccountant

TIMEOUT = 45  # round-timeout (s): a healthy encrypted private round here took 23-29 s, idle
SMALL = "model='cnn3' image-size=32 local-epochs=1 fraction-evaluate=0.0"
# DP-SGD at each hospital: 36 training images (40 less the 10% local validation split), expected batch 12.
SIGMA, Q, STEPS_PER_ROUND, DELTA = 1.5, 1 / 3, 3, 1e-5


def _epsilon(steps: int, sigma: float = SIGMA, q: float = Q, delta: float = DELTA) -> float:
    """Google's dp-accounting (RDP), independent of Opacus: epsilon after ``steps`` Poisson-sampled steps."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def _dropped_out(reason: str, round_timeout: int) -> bool:
    """Our timeout, or Flower's own verdict on a dead node (its heartbeat expires after 44-50 s)."""
    return f"no reply within round-timeout ({round_timeout} s)" in reason or "Node Unavailable" in reason


def _start_all(deployment: Deployment) -> None:
    for node in (*HOSPITALS, "evaluator"):
        deployment.start_supernode(node)
    for node in (*HOSPITALS, "evaluator"):
        deployment.wait_connected(node)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.3)


def test_only_enrolled_nodes_that_trust_the_ca_can_join(deployment: Deployment) -> None:
    deployment.start_supernode("rogue", retries=2)  # a key nobody registered
    assert deployment.procs["rogue"].wait(timeout=90) != 0
    assert "Failed to activate SuperNode" in deployment.log("rogue")

    deployment.start_supernode("hospital-a", ca=False, retries=1)  # enrolled, but without the CA certificate
    assert deployment.procs["hospital-a"].wait(timeout=90) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in deployment.log("hospital-a")


def test_an_encrypted_private_run_rides_out_a_crash_stops_when_none_remain_and_resumes_within_budget(
    deployment: Deployment,
) -> None:
    """HE + DP, 2 rounds, min-train-nodes 1, round-timeout 45 s, a budget of one round per hospital.

    Round 1: hospital-b crashes (SIGKILL) as its ClientApp starts; round-timeout, or Flower's
    heartbeat verdict (about as soon), ends the wait for it and the round goes on with hospital-a.
    Round 2: hospital-a's operator shuts its SuperNode down (SIGTERM); with no hospital left the run
    stops, keeping its round-1 checkpoint. Both SuperNodes restart (same key, same state-dir) and
    ``resume-from`` runs round 2: hospital-a's ledger survived, so it declines (its budget is spent);
    hospital-b has spent nothing and trains.
    """
    _start_all(deployment)
    run_dir = deployment.root / "runs" / "fault"
    target = (_epsilon(STEPS_PER_ROUND) + _epsilon(2 * STEPS_PER_ROUND)) / 2  # one round fits, two do not
    config = (
        f"{SMALL} batch-size=12 num-server-rounds=2 min-train-nodes=1 round-timeout={TIMEOUT} he-enabled=true "
        f"dp-enabled=true dp-noise-multiplier={SIGMA} dp-delta={DELTA} dp-target-epsilon={target} "
        f"he-keys-dir='{deployment.root / 'server-keys'}' output-dir='{run_dir.parent}' run-name='fault' "
        f"data-root='{deployment.root / 'nowhere'}'"
    )
    run = deployment.start_run("run", config)
    _wait_for(run_dir / "checkpoints" / "round-0000", run)  # round 0's central evaluation: training comes next
    deployment.wait_busy("hospital-b", since=time.time())  # it has taken round 1's message...
    deployment.kill("hospital-b")  # ...and dies with it: round 1 never gets its reply
    _wait_for(run_dir / "checkpoints" / "round-0001", run)
    deployment.wait_busy("hospital-a", since=time.time())  # round 2's message
    deployment.shut_down("hospital-a")
    stopped = time.monotonic()
    run.wait(timeout=TIMEOUT + 60 + 30)
    assert time.monotonic() - stopped < TIMEOUT + 60, "the run did not stop within round-timeout + 60 s"
    out = deployment.log("run")
    assert "run stopped: round 2: 0 valid hospital update(s) (0 declined), below min-train-nodes 1" in out
    assert f"resume-from='{run_dir}'" in out
    history = json.loads((run_dir / "history.json").read_text())
    assert history["stopped"].startswith("round 2: 0 valid hospital update(s)")
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert sorted(rounds[1]["hospitals"]) == ["hospital-a"]
    dropped = [f for f in rounds[1]["failures"] if f["stage"] == "train"]
    assert len(dropped) == 1 and _dropped_out(dropped[0]["reason"], TIMEOUT)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-0001"]

    deployment.restart(*HOSPITALS)
    resumed = deployment.start_run("resumed", f"{config} resume-from='{run_dir}'")
    assert resumed.wait(timeout=300) == 0, deployment.log("resumed")[-4000:]
    history = json.loads((run_dir / "history.json").read_text())
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and "stopped" not in history
    assert history["resumed"][-1]["after_round"] == 1
    first, second = rounds[1]["hospitals"]["hospital-a"], rounds[2]["hospitals"]
    assert "privacy budget" in second["hospital-a"]["declined"]  # a lost ledger would have let it train
    assert [f["reason"] for f in rounds[2]["failures"]] == [f"declined: {second['hospital-a']['declined']}"]
    for logged in (first, second["hospital-b"]):  # one round each, checked against dp-accounting
        assert logged["noise_multiplier"] == pytest.approx(SIGMA) and logged["sample_rate"] == pytest.approx(Q)
        assert int(logged["steps"]) == STEPS_PER_ROUND and logged["delta"] == DELTA
        assert abs(logged["epsilon"] - _epsilon(STEPS_PER_ROUND)) <= 0.02 * _epsilon(STEPS_PER_ROUND)
    assert abs(second["hospital-b"]["epsilon"] - first["epsilon"]) < 1e-9
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n"] == 24  # the evaluator's own test folder
    report_md = (run_dir / "report.md").read_text()
    assert "## Privacy: epsilon spent per hospital" in report_md and "| 2 | declined |" in report_md
    assert (run_dir / "report.html").is_file() and (run_dir / "model" / "encrypted.json").is_file()
    assert not (run_dir / "model" / "model.safetensors").exists()  # the server only holds the encrypted model


def test_the_server_refuses_a_keys_folder_that_holds_the_secret(deployment: Deployment) -> None:
    """``he-keys-dir`` pointed at the consortium's key folder (secret.ctx beside public.ctx): one line, no round."""
    run_dir = deployment.root / "runs" / "secret"
    config = (
        f"{SMALL} he-enabled=true he-keys-dir='{deployment.root / 'keys'}' output-dir='{run_dir.parent}' "
        f"run-name='secret' data-root='{deployment.root / 'nowhere'}'"
    )
    run = deployment.start_run("secret", config)
    run.wait(timeout=180)
    refusals = [line for line in deployment.log("secret").splitlines() if "holds 'secret.ctx'" in line]
    assert len(refusals) == 1 and "expected public.ctx only: move secret.ctx" in refusals[0], deployment.log("secret")
    assert "round 1" not in deployment.log("secret") and not run_dir.exists()
