"""Deployment on loopback, set up by the README's own steps: TLS, SuperNode authentication, faults.

The module's consortium (``deployment.consortium``) is the README's "Deploy across hospitals"
section run as written; the encrypted private run below is its step 6, run as written with the
tests' ``TRAINING``, and resumed with the same command after the faults.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from pathlib import Path

import dp_accounting
import pytest
from deployment import HOSPITALS, TINY, Consortium
from dp_accounting.rdp import RdpAccountant
from flower_env import free_port
from soak_run import FaultedRun, soak_outcome

TIMEOUT = 45  # round-timeout (s): a healthy encrypted private round here took 23-29 s, idle
# DP-SGD at each hospital: 36 training images (40 less the 10% local validation split), expected batch 12
# (q from the batch: dp-sample-rate = 0).
SIGMA, Q, STEPS_PER_ROUND, DELTA = 1.5, 1 / 3, 3, 1e-5
# The DP recipe's free options: 2 views per image and the EMA of the iterates leave q and the steps as they are.
RECIPE = "dp-sample-rate=0 dp-augmentation-multiplicity=2 dp-ema-decay=0.9"


def _epsilon(steps: int, sigma: float = SIGMA, q: float = Q, delta: float = DELTA) -> float:
    """Google's dp-accounting (RDP), independent of Opacus: epsilon after ``steps`` Poisson-sampled steps."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def _dropped_out(reason: str, round_timeout: int) -> bool:
    """Our timeout, or Flower's own verdict on a dead node (its heartbeat expires after 44-50 s)."""
    return f"no reply within round-timeout ({round_timeout} s)" in reason or "Node Unavailable" in reason


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.3)


def _written_at(checkpoint: Path) -> float:
    """When the server wrote ``checkpoint`` (``time.time()``): the next round's ClientApps start after it.

    Not the moment the test sees the folder: a hospital can take the next round's message before then.
    """
    return max(f.stat().st_mtime for f in checkpoint.iterdir())


def _supernode(consortium: Consortium, like: str, *, key: str, ca: bool = True) -> str:
    """A ``flower-supernode`` line like the README's for ``like``, with another key and port, and maybe no CA."""
    command = consortium.commands[like].replace(f"pki/nodes/{like}/node.key", key)
    command = re.sub(r"--port \d+", f"--port {free_port()}", command)
    return command if ca else command.replace("--root-certificates pki/ca.crt", "")


def test_only_enrolled_nodes_that_trust_the_ca_can_join(consortium: Consortium) -> None:
    consortium.sh('ssh-keygen -q -t ecdsa -b 384 -N "" -f rogue.key')  # a key nobody registered
    retries = " --max-retries 2 --max-wait-time 20"
    rogue = consortium.start("rogue", _supernode(consortium, "hospital-a", key="rogue.key") + retries)
    # enrolled, but without the CA certificate
    no_ca = consortium.start(
        "no-ca", _supernode(consortium, "hospital-a", key="pki/nodes/hospital-a/node.key", ca=False) + retries
    )
    assert rogue.wait(timeout=90) != 0 and no_ca.wait(timeout=90) != 0
    assert "Failed to activate SuperNode" in consortium.log("rogue")
    assert "CERTIFICATE_VERIFY_FAILED" in consortium.log("no-ca")


def test_the_server_refuses_a_keys_folder_that_holds_the_secret(consortium: Consortium) -> None:
    """``he-keys-dir`` pointed at the consortium's key folder (secret.ctx beside public.ctx): one line, no round."""
    out = consortium.sh(
        "flwr run . consortium --stream --run-config "
        f"\"he-enabled=true he-keys-dir='$PWD/keys' output-dir='$PWD/runs' run-name='secret' {TINY}\"",
        timeout=180,
        check=False,
    )
    refusals = [line for line in out.splitlines() if "holds 'secret.ctx'" in line]
    assert len(refusals) == 1 and "expected public.ctx only: move secret.ctx" in refusals[0], out
    assert "round 1" not in out and not (consortium.checkout / "runs" / "secret").exists()


def test_the_readme_run_rides_out_a_crash_stops_when_none_remain_and_resumes_within_budget(
    consortium: Consortium,
) -> None:
    """README step 6 as written: HE + DP (with augmentation multiplicity and EMA), 2 rounds, min-train-nodes 1,
    a budget of one round per hospital.

    A fourth, misconfigured node (started with the consortium) fails to describe itself: the run goes on without it, and
    records it. Round 1: hospital-b crashes (SIGKILL) as its ClientApp starts; round-timeout, or
    Flower's heartbeat verdict (about as soon), ends the wait for it and the round goes on with
    hospital-a. Round 2: hospital-a's operator shuts its SuperNode down (SIGTERM); with no
    hospital left the run stops, keeping its round-1 checkpoint. Both SuperNodes restart with
    their README command lines (same key, same state-dir) and the same run command with
    ``resume-from`` runs round 2: hospital-a's ledger survived, so it declines (its budget is
    spent); hospital-b has spent nothing and trains.
    """
    run_dir = consortium.checkout / "runs" / "fault"
    target = (_epsilon(STEPS_PER_ROUND) + _epsilon(2 * STEPS_PER_ROUND)) / 2  # one round fits, two do not
    training = (
        f"{TINY} batch-size=12 num-server-rounds=2 min-train-nodes=1 round-timeout={TIMEOUT} dp-enabled=true "
        f"dp-noise-multiplier={SIGMA} dp-delta={DELTA} dp-target-epsilon={target} {RECIPE} run-name='fault'"
    )
    run = consortium.start("run", consortium.commands["run"], TRAINING=training)
    checkpoints = run_dir / "checkpoints"
    _wait_for(checkpoints / "round-0000", run)  # round 0's central evaluation: training comes next
    consortium.wait_busy("hospital-b", since=_written_at(checkpoints / "round-0000"))  # round 1's message...
    consortium.kill("hospital-b")  # ...and dies with it: round 1 never gets its reply
    _wait_for(checkpoints / "round-0001", run)
    consortium.wait_busy("hospital-a", since=_written_at(checkpoints / "round-0001"))  # round 2's message
    consortium.shut_down("hospital-a")
    stopped = time.monotonic()
    run.wait(timeout=TIMEOUT + 60 + 30)
    assert time.monotonic() - stopped < TIMEOUT + 60, "the run did not stop within round-timeout + 60 s"
    out = consortium.log("run")
    # hospital-a's round-2 ClientApp declines at once (its budget is spent): on a fast host its reply can
    # beat the SIGTERM, so the run stops with 0 valid updates, of which 0 or 1 declined.
    stop_line = r"run stopped: round 2: 0 valid hospital update\(s\) \([01] declined\), below min-train-nodes 1"
    assert re.search(stop_line, out), out[-4000:]
    assert f"resume-from='{run_dir}'" in out
    history = json.loads((run_dir / "history.json").read_text())
    assert history["stopped"].startswith("round 2: 0 valid hospital update(s)")
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert sorted(rounds[1]["hospitals"]) == ["hospital-a"]
    dropped = [f for f in rounds[1]["failures"] if f["stage"] == "train"]
    assert len(dropped) == 1 and _dropped_out(dropped[0]["reason"], TIMEOUT)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["round-0000", "round-0001"]

    consortium.restart(*HOSPITALS)
    resumed = consortium.start("resumed", consortium.commands["run"], TRAINING=f"{training} resume-from='{run_dir}'")
    assert resumed.wait(timeout=300) == 0, consortium.log("resumed")[-4000:]
    history = json.loads((run_dir / "history.json").read_text())
    rounds = history["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and "stopped" not in history
    assert history["resumed"][-1]["after_round"] == 1
    first, second = rounds[1]["hospitals"]["hospital-a"], rounds[2]["hospitals"]
    assert "privacy budget" in second["hospital-a"]["declined"]  # a lost ledger would have let it train
    trained = [f["reason"] for f in rounds[2]["failures"] if f["stage"] == "train"]
    assert trained == [f"declined: {second['hospital-a']['declined']}"]
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

    # The misconfigured node: in the node map, each run's failures and the report; one line in its own log.
    nodes = history["nodes"]
    assert nodes["data"] == "own"
    assert sorted((n["name"], n["role"], n.get("examples")) for n in nodes["nodes"]) == [
        ("evaluator", "evaluator", None),
        ("hospital-a", "hospital", 36),
        ("hospital-b", "hospital", 36),
    ]
    (failed,) = nodes["failed"]
    assert "unknown key 'data-pth'; did you mean 'data-path'?" in failed["reason"]
    for number in (1, 2):  # the first run's first round, and the resumed run's
        described = [f for f in rounds[number]["failures"] if f["stage"] == "describe"]
        assert described == [{"node_id": failed["node_id"], "stage": "describe", "reason": failed["reason"]}]
    assert "each hospital's own data-path" in report_md and "1 of 3 node(s) took no part" in report_md
    assert "partitioner" not in report_md
    config = json.loads((run_dir / "config.json").read_text())
    assert config["he-enabled"] is True and config["dp-enabled"] is True
    assert config["dp-augmentation-multiplicity"] == 2 and config["dp-ema-decay"] == 0.9
    assert not {"data-root", "partitioner", "dirichlet-alpha"} & set(config)
    typo = consortium.log("hospital-c")
    assert "Traceback" not in typo and typo.count("unknown key 'data-pth'") == 2, typo[-3000:]  # once per run


def test_a_short_soak_keeps_every_round_once_and_every_ledger_exact(consortium: Consortium) -> None:
    """``benchmarks/soak.py`` in brief: README step 6 less HE, DP on, 2 rounds, one kill and one stop.

    hospital-b is SIGKILLed as its round-1 ClientApp starts, and restarted with its README line once
    round 1 is over; the run is stopped (``flwr stop``) as hospital-a starts round 2, then resumed
    with ``resume-from``. history.json holds each round once; each hospital's ledger matches its own
    log, dp-accounting and every epsilon the history reports (hospital-a's stopped round 2 spent
    budget the history never saw); every kept checkpoint loads.
    """
    training = (
        f"{TINY} batch-size=12 num-server-rounds=2 min-train-nodes=1 round-timeout={TIMEOUT} dp-enabled=true "
        f"dp-sample-rate=0 dp-noise-multiplier={SIGMA} dp-delta={DELTA} dp-target-epsilon=20"
    )
    consortium.restart(*(h for h in HOSPITALS if h not in consortium.procs))  # should an earlier test stop early
    run = FaultedRun(consortium, training, run_name="soak")
    run.launch()
    run.wait_for_round(0)
    consortium.wait_busy("hospital-b", since=run.recorded_at())
    run.kill("hospital-b")
    run.wait_for_round(1)
    run.restart("hospital-b")
    consortium.wait_busy("hospital-a", since=run.recorded_at())
    run.stop()
    run.join_restarts()
    run.launch()
    assert run.wait_until_done(300) == 0, consortium.log(run.log_name)[-4000:]
    outcome = soak_outcome(run, rounds=2, delta=DELTA)
    figures = ("rounds_completed", "lost_rounds", "ledger_mismatches", "unreadable_checkpoints", "kills", "resumes")
    assert [outcome[k] for k in figures] == [2, 0, 0, 0, 1, 1], outcome
    assert outcome["resumed_after"] == [1] and outcome["restarts"] == 1
    assert outcome["hospitals"]["hospital-a"]["not_in_history"] == 1, outcome["hospitals"]
