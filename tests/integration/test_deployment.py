"""Deployment on loopback: TLS, SuperNode authentication, roles from the node config, faults.

Each test starts its own TLS SuperLink (with SuperNode authentication) and SuperNodes that
read only their own synthetic data folder; the evaluator node holds the central test set.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from deployment import HOSPITALS, Deployment

TIMEOUT = 30  # round-timeout (s): a healthy round here takes about 15 s
SMALL = "model='cnn3' image-size=32 local-epochs=1 batch-size=16 fraction-evaluate=0.0"


def _dropped_out(reason: str, round_timeout: int) -> bool:
    """Our timeout, or Flower's own verdict on a dead node (its heartbeat expires after about 50 s)."""
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


def test_an_encrypted_private_run_rides_out_a_dropout_stops_when_none_remain_and_resumes(
    deployment: Deployment,
) -> None:
    """HE + DP, 3 rounds, min-train-nodes 1, round-timeout 30 s.

    Round 2: hospital-b crashes while it trains; the round goes on with hospital-a.
    Round 3: hospital-a crashes too; nothing replies, so round-timeout (not Flower's ~50 s
    heartbeat verdict) ends the round, and with no hospital left the run stops, keeping its
    round-2 checkpoint. Both SuperNodes restart (same key, same state-dir) and ``resume-from``
    completes round 3, each hospital's privacy ledger continuing where it was.
    """
    _start_all(deployment)
    run_dir = deployment.root / "runs" / "fault"
    config = (
        f"{SMALL} num-server-rounds=3 min-train-nodes=1 round-timeout={TIMEOUT} he-enabled=true dp-enabled=true "
        f"dp-noise-multiplier=1.0 dp-target-epsilon=50.0 he-keys-dir='{deployment.root / 'server-keys'}' "
        f"output-dir='{run_dir.parent}' run-name='fault' data-root='{deployment.root / 'nowhere'}'"
    )
    run = deployment.start_run("run", config)
    _wait_for(run_dir / "checkpoints" / "round-0001", run)
    deployment.wait_busy("hospital-b", since=time.time())  # it has taken round 2's message...
    deployment.kill("hospital-b")  # ...and dies with it: round 2 never gets its reply
    _wait_for(run_dir / "checkpoints" / "round-0002", run)
    deployment.wait_busy("hospital-a", since=time.time())  # round 3's message
    deployment.kill("hospital-a")
    killed = time.monotonic()
    run.wait(timeout=TIMEOUT + 60 + 30)
    assert time.monotonic() - killed < TIMEOUT + 60, "the run did not stop within round-timeout + 60 s"
    out = deployment.log("run")
    assert "run stopped: round 3: 0 valid hospital update(s) (0 declined), below min-train-nodes 1" in out
    assert f"no reply within round-timeout ({TIMEOUT} s): hospital-a dropped out" in out
    assert f"resume-from='{run_dir}'" in out
    history = json.loads((run_dir / "history.json").read_text())
    assert history["stopped"].startswith("round 3: 0 valid hospital update(s)")
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert sorted(rounds[2]["hospitals"]) == ["hospital-a"]
    dropped = [f for f in rounds[2]["failures"] if f["stage"] == "train"]
    assert len(dropped) == 1 and _dropped_out(dropped[0]["reason"], TIMEOUT)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["round-0002"]

    for node in HOSPITALS:
        deployment.restart(node)
    resumed = deployment.start_run("resumed", f"{config} resume-from='{run_dir}'")
    assert resumed.wait(timeout=300) == 0, deployment.log("resumed")[-4000:]
    history = json.loads((run_dir / "history.json").read_text())
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3] and "stopped" not in history
    assert history["resumed"][-1]["after_round"] == 2
    assert sorted(rounds[1]["hospitals"]) == sorted(rounds[3]["hospitals"]) == list(HOSPITALS)
    assert rounds[3]["failures"] == []  # the stopped attempt at round 3 was replaced
    eps = {r["round"]: {n: h["epsilon"] for n, h in r["hospitals"].items()} for r in rounds[1:]}
    # hospital-b trained in rounds 1 and 3: after its crash the ledger continues (2 rounds spent, not 1),
    # exactly what hospital-a (same data size, same noise) had spent after its second round.
    assert eps[3]["hospital-b"] > eps[1]["hospital-b"]
    assert abs(eps[3]["hospital-b"] - eps[2]["hospital-a"]) < 1e-9
    assert eps[3]["hospital-a"] > eps[2]["hospital-a"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n"] == 24  # the evaluator's own test folder
    assert (run_dir / "report.html").is_file() and (run_dir / "model" / "encrypted.json").is_file()
    assert not (run_dir / "model" / "model.safetensors").exists()  # the server only holds the encrypted model
