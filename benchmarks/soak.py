"""The soak: a real loopback deployment kept running for 100 rounds under a seeded schedule of faults.

The consortium is the deployment guide's (``docs/how-to/deploy.md``, set up as the deployment test
sets it up: a test PKI, a TLS SuperLink with SuperNode authentication, every node enrolled with
``flwr supernode register``), with four hospitals enrolled and started like its two: six hospitals
and the evaluator, each a SuperNode of its own with its own images and ``state-dir``. The run is
the guide's step 6 without HE (an encrypted round takes about 25 s here, which would make 100 rounds
hours long): cnn3 at 32 px, DP-SGD on (sigma 1.5, one local epoch of Poisson sampling: 3 steps of
q = 1/3), a seeded half of the hospitals training each round. The faults, from ``--seed``:

- about every 5 rounds a random hospital is SIGKILLed (SuperNode and ClientApp, at a random moment
  of the round) and restarted 1-3 rounds later with its README line (same key, same state-dir);
  one hospital is down at a time, and the rounds go on meanwhile;
- about every 25 rounds the run is stopped with ``flwr stop`` at a random moment of a round, every
  hospital is brought back, and the run is resumed with the same command plus ``resume-from``.

At the end (``tests/integration/soak_run.py``): every round in ``history.json`` exactly once, every
hospital's DP ledger against its own log, Google's dp-accounting and each epsilon the history
reports, and every kept checkpoint loaded.

    python benchmarks/soak.py            # 100 rounds: about 70 minutes on 2 busy cores
    python benchmarks/soak.py --quick    # 8 rounds, a kill or two, a stop
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from deployment import open_consortium  # noqa: E402
from provenance import provenance, result_path  # noqa: E402
from soak_run import FaultedRun, dp_accounting_epsilon, soak_outcome  # noqa: E402

EXTRA_HOSPITALS = ("hospital-c", "hospital-d", "hospital-e", "hospital-f")
SIGMA, Q, STEPS_PER_ROUND, DELTA = 1.5, 1 / 3, 3, 1e-5  # 36 training images per hospital, batch 12 (dp-sample-rate 0)
ROUND_TIMEOUT = 60  # s: a describe of 7 nodes at once took 30-40 s here; a dead node is declared so after ~50 s
STALL = 600  # s without a new round: the soak has failed


@dataclass(frozen=True)
class Kill:
    """SIGKILL ``hospital`` ``delay_s`` into round ``round``; restart it ``restart_after`` rounds later."""

    round: int
    hospital: str
    restart_after: int
    delay_s: float


def fault_schedule(
    *, seed: int, rounds: int, hospitals: tuple[str, ...], kill_every: int, stop_every: int
) -> tuple[list[Kill], dict[int, float]]:
    """Kills about every ``kill_every`` rounds, and stops (round -> seconds into it) about every ``stop_every``."""
    rng = random.Random(seed)
    stops = {}
    for k in range(1, (rounds - 1) // stop_every + 1):
        stops[min(max(2, k * stop_every + rng.randint(-2, 2)), rounds - 1)] = round(rng.uniform(0, 12), 1)
    kills, at = [], rng.randint(2, kill_every)
    while at < rounds:
        if at not in stops:
            kills.append(Kill(at, rng.choice(hospitals), rng.randint(1, 3), round(rng.uniform(0, 10), 1)))
        at += rng.randint(max(1, kill_every - 2), kill_every + 2)
    return kills, stops


def training(rounds: int) -> str:
    """The run config (README step 6's ``TRAINING``); the budget fits every round twice over."""
    target = dp_accounting_epsilon([(SIGMA, Q, 2 * rounds * STEPS_PER_ROUND)], DELTA)
    return (
        f"model='cnn3' image-size=32 local-epochs=1 batch-size=12 num-server-rounds={rounds} fraction-train=0.5 "
        f"min-train-nodes=2 fraction-evaluate=0.0 round-timeout={ROUND_TIMEOUT} dp-enabled=true "
        f"dp-sample-rate=0 dp-noise-multiplier={SIGMA} dp-delta={DELTA} dp-target-epsilon={target:.1f}"
    )


def _say(run: FaultedRun, text: str) -> None:
    print(f"[{time.monotonic() - run.started:7.1f} s] {text}", flush=True)


def _resume(run: FaultedRun, restarts: dict[str, int]) -> None:
    """Bring every hospital back, check the kept checkpoints, and resume the stopped run."""
    for hospital in list(restarts):
        run.restart(hospital)
        del restarts[hospital]
    run.join_restarts()
    run.check_checkpoints()
    _say(run, f"stopped in round {run.under_way()}; resuming")
    run.launch()


def drive(run: FaultedRun, *, rounds: int, kills: list[Kill], stops: dict[int, float]) -> None:
    """Run to the last round, doing each fault when its round is under way."""
    pending, stops = list(kills), dict(stops)
    restarts: dict[str, int] = {}  # hospital -> the round it comes back in
    handled, progress = -1, time.monotonic()
    run.launch()
    while True:
        if run.finished():
            stopped = run.history().get("stopped")
            if not stopped:
                break
            run.note("stopped by itself", reason=stopped)  # too few hospitals: resumed, as an operator would
            _resume(run, restarts)
            continue
        current = run.under_way()
        if current == handled:
            if time.monotonic() - progress > STALL:
                raise RuntimeError(f"no round for {STALL} s after round {current - 1}")
            time.sleep(0.5)
            continue
        handled, progress = current, time.monotonic()
        _say(run, f"round {current} under way")
        for hospital, back in list(restarts.items()):
            if back <= current:
                run.restart(hospital)
                del restarts[hospital]
        if current in stops:
            time.sleep(stops.pop(current))
            run.stop()
            _resume(run, restarts)
        elif pending and pending[0].round <= current < rounds and not run.down():
            kill = pending.pop(0)
            time.sleep(kill.delay_s)
            run.kill(kill.hospital)
            restarts[kill.hospital] = current + kill.restart_after
            _say(run, f"killed {kill.hospital} in round {current}")
    code = run.wait_until_done(60)
    run.join_restarts()
    if code != 0 or run.under_way() != rounds + 1:
        raise RuntimeError(f"the run ended with code {code} after round {run.under_way() - 1}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 rounds, a kill or two and a stop")
    parser.add_argument("--seed", type=int, default=0, help="the fault schedule's seed")
    parser.add_argument("--out", type=Path, help="the JSON to write (default: results/soak.json)")
    args = parser.parse_args()
    rounds, kill_every, stop_every = (8, 3, 4) if args.quick else (100, 5, 25)
    hospitals = ("hospital-a", "hospital-b", *EXTRA_HOSPITALS)
    kills, stops = fault_schedule(
        seed=args.seed, rounds=rounds, hospitals=hospitals, kill_every=kill_every, stop_every=stop_every
    )
    config = training(rounds)
    os.environ["OMP_NUM_THREADS"] = "1"  # every process it starts: 7 nodes on 2 cores, where torch's spinning threads
    start = time.monotonic()  # cost about a third of each round (8 rounds: 353 s against 547 s)
    with tempfile.TemporaryDirectory(prefix="medsilo-soak-") as tmp:
        with open_consortium(
            Path(tmp), extra_hospitals=EXTRA_HOSPITALS, misconfigured_node=False, free_ports=True
        ) as site:
            setup_s = time.monotonic() - start
            run = FaultedRun(site, config, run_name="soak")
            try:
                drive(run, rounds=rounds, kills=kills, stops=stops)
            finally:
                run.join_restarts()
            seconds = time.monotonic() - run.started
            outcome = soak_outcome(run, rounds=rounds, delta=DELTA)
            durations = [r["timings"].get("train_s", 0.0) for r in run.history()["rounds"] if r["round"] > 0]
    result: dict[str, Any] = {
        **provenance(),
        "command": "python benchmarks/soak.py" + (" --quick" if args.quick else "") + f" --seed {args.seed}",
        "rounds": rounds,
        "hospitals": len(hospitals),
        "run_config": config,
        "he": "off: an encrypted round takes about 25 s here; the soak is about faults, not encryption",
        "environment": "OMP_NUM_THREADS=1 for every process (seven SuperNodes share the machine)",
        **{k: v for k, v in outcome.items() if k != "hospitals"},
        "seconds": round(seconds, 1),
        "setup_seconds": round(setup_s, 1),
        "seconds_per_round": round(seconds / rounds, 1),
        "mean_train_phase_s": round(sum(durations) / max(1, len(durations)), 1),
        "schedule": {"seed": args.seed, "kills": [asdict(k) for k in kills], "stops": stops},
        "per_hospital": outcome["hospitals"],
        "events": run.events,
    }
    out = result_path("soak", quick=args.quick, out=args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"rounds completed {outcome['rounds_completed']}/{rounds}, lost {outcome['lost_rounds']}, "
        f"ledger mismatches {outcome['ledger_mismatches']}, "
        f"unreadable checkpoints {outcome['unreadable_checkpoints']}; "
        f"{outcome['kills']} kills ({outcome['kills_while_training']} while training), {outcome['resumes']} resumes; "
        f"{seconds:.0f} s ({seconds / rounds:.1f} s a round) on {result['machine']} -> {out}"
    )


if __name__ == "__main__":
    main()
