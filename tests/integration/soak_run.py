"""A deployed run under faults, and the checks of what it leaves: each round once, exact DP ledgers, checkpoints.

``benchmarks/soak.py`` drives 100 rounds of it with a seeded fault schedule; ``test_deployment.py``
a shortened one on the module's consortium. The run is README step 6 less its HE settings (the
hospitals' updates are aggregated in plaintext; DP-SGD is on), started and resumed as an operator
would: ``flwr run``, ``flwr stop``, the same ``flwr run`` with ``resume-from``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dp_accounting
import psutil
from deployment import Consortium
from dp_accounting.rdp import RdpAccountant
from flower_env import processes_of
from safetensors.numpy import load_file

from client.privacy import LEDGER_FILE
from common.models import load_model_dir
from common.privacy.accounting import PrivacyLedger
from server.run_directory import SERVER_STATE_FILE

__all__ = ["FaultedRun", "dp_accounting_epsilon", "soak_outcome"]

HE_SETTINGS = "he-enabled=true he-keys-dir='$PWD/server-keys' "
DP_ROUND = "DP round:"
"""What a hospital logs after each DP-SGD round it has added to its ledger (``client.privacy``)."""
EPSILON_TOLERANCE = 0.03
"""How far below dp-accounting's epsilon the ledger's (Opacus) may be. Both are RDP bounds and agree at
integer orders; at fractional ones Opacus matches numerical integration while dp-accounting is looser,
up to 2.0 % here (sigma 1.5, q 1/3, measured over 3-459 steps). Above it, never."""


def dp_accounting_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Google's dp-accounting (RDP), independent of Opacus: epsilon of ``(sigma, q, steps)`` Poisson-sampled steps."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = RdpAccountant()
    for sigma, q, steps in history:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return float(accountant.get_epsilon(delta))


class FaultedRun:
    """README step 6 (less HE) with ``training``, and the faults done to it, each noted in ``events``."""

    def __init__(self, site: Consortium, training: str, *, run_name: str) -> None:
        if HE_SETTINGS not in site.commands["run"]:
            raise ValueError(f"README step 6 no longer sets {HE_SETTINGS.strip()!r}: {site.commands['run']}")
        self.site = site
        self.command = site.commands["run"].replace(HE_SETTINGS, "")
        self.training = f"{training} run-name='{run_name}'"
        self.run_dir = site.checkout / "runs" / run_name
        self.started = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.segments = 0
        self.log_offsets = {h: len(site.log(h)) for h in site.hospitals}
        self.unreadable: set[str] = set()
        self._proc: Any = None
        self._restarts: dict[str, threading.Thread] = {}
        self._errors: list[str] = []

    @property
    def log_name(self) -> str:
        """The consortium log of the current ``flwr run``."""
        return f"{self.run_dir.name}-{self.segments}"

    def note(self, event: str, **details: Any) -> None:
        """Add an event with its time (s since the start) and the round under way."""
        at = round(time.monotonic() - self.started, 1)
        self.events.append({"at_s": at, "round": self.under_way(), "event": event, **details})

    def launch(self) -> None:
        """Start the run; after a stop, the same command with ``resume-from`` = its run directory."""
        resume = f" resume-from='{self.run_dir}'" if self.segments else ""
        if resume:
            self.note("resume", after_round=self.under_way() - 1)
        self.segments += 1
        self._proc = self.site.start(self.log_name, self.command, TRAINING=self.training + resume)

    def history(self) -> dict[str, Any]:
        """``history.json`` as it is now (written atomically after each round); empty before round 0."""
        path = self.run_dir / "history.json"
        return json.loads(path.read_text()) if path.is_file() else {"rounds": []}

    def recorded_at(self) -> float:
        """When ``history.json`` was last written (``time.time()``): the next round's messages come after it."""
        return (self.run_dir / "history.json").stat().st_mtime

    def under_way(self) -> int:
        """The round after the last one ``history.json`` records as done (centrally evaluated, or failing to be).

        A round's record can exist before it is done: a node that fails to describe itself is recorded
        in the first round of the run (or of the resumed run) at once.
        """
        done = [int(r["round"]) for r in self.history()["rounds"] if r.get("central") or "central_error" in r]
        return max(done, default=-1) + 1

    def finished(self) -> bool:
        """The ``flwr run`` has exited; check :meth:`history` for how."""
        return self._proc is not None and self._proc.poll() is not None

    def wait_for_round(self, server_round: int, timeout: float = 300) -> None:
        """Wait until ``history.json`` records ``server_round``; fail if the run ends first."""
        deadline = time.monotonic() + timeout
        while self.under_way() <= server_round:
            if self.finished() or time.monotonic() > deadline:
                raise RuntimeError(f"round {server_round} never came:\n{self.site.log(self.log_name)[-3000:]}")
            time.sleep(0.5)

    def wait_until_done(self, timeout: float) -> int:
        """Wait for the ``flwr run`` to exit; its exit code."""
        return int(self._proc.wait(timeout=timeout))

    def stop(self) -> None:
        """``flwr stop`` the run, as its operator would, and wait until its ServerApp has gone."""
        found = re.search(r"Successfully started run (\d+)", self.site.log(self.log_name))
        if found is None:
            raise RuntimeError(f"no run id in the output of {self.command}")
        self.site.sh(f"flwr stop {found.group(1)} consortium", timeout=120)
        self.note("stop", run_id=found.group(1))
        self._proc.wait(timeout=120)
        deadline = time.monotonic() + 120
        while any("flwr-serverapp" in " ".join(p.cmdline()) for p in _alive(processes_of(self.site.home))):
            if time.monotonic() > deadline:
                raise RuntimeError("the stopped run's ServerApp is still running after 120 s")
            time.sleep(0.5)

    def busy(self, hospital: str) -> bool:
        """Whether a ClientApp of ``hospital``'s SuperNode is running now (its SuperExec always is)."""
        for proc in _alive(psutil.Process(self.site.procs[hospital].pid).children(recursive=True)):
            try:
                if "flwr-clientapp" in " ".join(proc.cmdline()):
                    return True
            except psutil.NoSuchProcess:
                continue
        return False

    def kill(self, hospital: str) -> None:
        """SIGKILL ``hospital``'s SuperNode and its ClientApp, noting whether it was training."""
        busy = self.busy(hospital)
        self.site.kill(hospital)
        self.note("kill", hospital=hospital, busy=busy)

    def restart(self, hospital: str) -> None:
        """Start ``hospital`` again in the background with its README line; rounds go on meanwhile."""

        def restart() -> None:
            try:
                self.site.restart(hospital, timeout=240)
                self.note("restarted", hospital=hospital)
            except Exception as err:  # reported by join_restarts
                self._errors.append(f"{hospital}: {err}")

        self.note("restart", hospital=hospital)
        self._restarts[hospital] = threading.Thread(target=restart, daemon=True)
        self._restarts[hospital].start()

    def down(self) -> set[str]:
        """Hospitals killed and not yet re-admitted."""
        restarting = {h for h, thread in self._restarts.items() if thread.is_alive()}
        return {h for h in self.site.hospitals if h not in self.site.procs} | restarting

    def join_restarts(self) -> None:
        """Wait for every restart under way; fail if one was never re-admitted."""
        for thread in self._restarts.values():
            thread.join()
        if self._errors:
            raise RuntimeError("; ".join(self._errors))

    def check_checkpoints(self) -> None:
        """Load every kept checkpoint with the project's loaders; remember those that fail."""
        for folder in sorted((self.run_dir / "checkpoints").glob("round-*")):
            try:
                load_model_dir(folder)
                if (folder / SERVER_STATE_FILE).is_file():
                    load_file(str(folder / SERVER_STATE_FILE))
            except Exception:  # safetensors' own error type is not exported
                self.unreadable.add(folder.name)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def _ledger_check(run: FaultedRun, hospital: str, delta: float) -> dict[str, Any]:
    """``hospital``'s ledger against its own log, dp-accounting and every epsilon ``history.json`` reports."""
    state = Path(run.site.env["NODE_STATE"]) / hospital / run.run_dir.name / LEDGER_FILE
    ledger = PrivacyLedger.load(state)
    logged = run.site.log(hospital)[run.log_offsets[hospital] :].count(DP_ROUND)
    records = [r["hospitals"].get(hospital, {}) for r in run.history()["rounds"]]
    reported = [h for h in records if h.get("epsilon") is not None]
    cut_short = sum(1 for e in run.events if e["event"] == "kill" and e["hospital"] == hospital and e["busy"])
    problems: list[str] = []
    steps = {int(h["steps"]) for h in reported}
    settings = {(float(h["noise_multiplier"]), float(h["sample_rate"])) for h in reported}
    if len(ledger.history) > 1 or len(steps) > 1 or len(settings) > 1 or {h["delta"] for h in reported} - {delta}:
        problems.append(f"mixed DP settings: ledger {ledger.history}, reported steps {steps} and {settings}")
    per_round = next(iter(steps), 1)
    trained, left = divmod(ledger.steps, per_round)
    if left or not logged <= trained <= logged + cut_short:  # a kill may fall between its ledger write and its log line
        problems.append(f"the ledger holds {ledger.steps} steps; it logged {logged} rounds of {per_round}")
    epsilon = ledger.epsilon(delta) if len(ledger) else 0.0
    independent = dp_accounting_epsilon(ledger.history, delta) if len(ledger) else 0.0
    if not (1 - EPSILON_TOLERANCE) * independent <= epsilon <= independent * (1 + 1e-6):
        problems.append(f"epsilon {epsilon:.4f} against dp-accounting's {independent:.4f}")
    sigma, q = next(iter(settings), (0.0, 0.0))
    cache: dict[int, float] = {}

    def after(rounds: int) -> float:  # the epsilon the hospital reports once it has trained ``rounds`` rounds
        if rounds not in cache:
            projected = PrivacyLedger()
            projected.record(noise_multiplier=sigma, sample_rate=q, steps=rounds * per_round)
            cache[rounds] = projected.epsilon(delta)
        return cache[rounds]

    done = 0  # each reported epsilon is the ledger's after a later training than the one before
    for record in reported:
        done += 1
        while done < trained and after(done) < record["epsilon"] * (1 - 1e-9):
            done += 1
        if abs(after(done) - record["epsilon"]) > 1e-9 * record["epsilon"]:
            problems.append(f"reported epsilon {record['epsilon']:.6f} is no ledger state after training {done}")
            break
    return {
        "trained": trained,
        "logged": logged,
        "in_history": len(reported),
        "not_in_history": trained - len(reported),
        "ledger_steps": ledger.steps,
        "epsilon": epsilon,
        "epsilon_dp_accounting": independent,
        "last_reported_epsilon": reported[-1]["epsilon"] if reported else None,
        "problems": problems,
    }


def soak_outcome(run: FaultedRun, *, rounds: int, delta: float) -> dict[str, Any]:
    """The soak's figures: rounds completed and lost, ledger mismatches, unreadable checkpoints, faults.

    A round is completed when ``history.json`` holds it exactly once, centrally evaluated; lost when it
    is missing or held more than once (round 0, the initial model, included).
    """
    run.check_checkpoints()
    history = run.history()
    counts = Counter(int(r["round"]) for r in history["rounds"])
    evaluated = {int(r["round"]) for r in history["rounds"] if r.get("central")}
    lost = [r for r in range(rounds + 1) if counts[r] != 1] + sorted(r for r in counts if not 0 <= r <= rounds)
    hospitals = {h: _ledger_check(run, h, delta) for h in run.site.hospitals}
    kinds = Counter(e["event"] for e in run.events)
    return {
        "rounds_completed": sum(1 for r in range(1, rounds + 1) if counts[r] == 1 and r in evaluated),
        "lost_rounds": len(lost),
        "lost": lost,
        "ledger_mismatches": sum(1 for h in hospitals.values() if h["problems"]),
        "unreadable_checkpoints": len(run.unreadable),
        "unreadable": sorted(run.unreadable),
        "kills": kinds["kill"],
        "kills_while_training": sum(1 for e in run.events if e["event"] == "kill" and e["busy"]),
        "restarts": kinds["restarted"],
        "stops": kinds["stop"],
        "resumes": kinds["resume"],
        "resumed_after": [r["after_round"] for r in history.get("resumed", [])],
        "stopped_by_itself": [r["stopped"] for r in history.get("resumed", []) if "stopped" in r],
        "hospitals": hospitals,
    }
