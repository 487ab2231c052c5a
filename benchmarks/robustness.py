"""A hospital that sends harm: plain FedAvg against Flower's robust strategies, and HE with the hospitals' guard.

Five IID hospitals share ``data/samples/brain-mri``; hospital 0 is hostile through the node-config
fixture ``hostile`` (``client.hostile``):

- ``label-flip``: it trains on wrong labels (class ``c`` as ``c + 1``) from the first round;
- ``scaled``: from round 4 it sends ``global + 10 x (its update - global)``.

Each run is medsilo's own ServerApp ``main`` and ClientApp, connected in this process by
``in_process_grid.InProcessGrid`` (Flower's simulation gives every node the same node config). The
plaintext strategies run with the guard off (``update-norm-limit = 0``) so that each is measured on
its own; ``he-fedavg-guard`` is FedAvg under HE (the server cannot look at any update) with the
guard at its default. The learning rate is constant after a one-round warm-up: a cosine rate near
zero in the last rounds would shrink every update, the hostile one too, and hide its harm. Every
run has the same seed, data, model and rounds; a ``clean`` run (five
honest hospitals, FedAvg) is the reference.

    python benchmarks/robustness.py            # 11 runs, ResNet-18 at 48 px, 10 rounds
    python benchmarks/robustness.py --quick    # cnn3 at 32 px, 4 rounds: a smoke run

Each run's result is written as soon as it lands; a rerun skips the runs already in the file
with the same keys (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from in_process_run import run_federation  # noqa: E402
from provenance import provenance, result_path  # noqa: E402

from client.hostile import SCALE, SCALED_FROM_ROUND  # noqa: E402
from common.config import RunConfig  # noqa: E402

HOSPITALS, HOSTILE = 5, 0
GUARD = RunConfig().update_norm_limit  # the guard's default
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "brain-mri"
BASE: dict[str, Any] = {
    "data-root": str(SAMPLE),
    "model": "resnet18",
    "image-size": 48,
    "num-server-rounds": 10,
    "local-epochs": 1.0,
    "lr-warmup-rounds": 1,
    "lr-schedule": "constant",  # a cosine rate near zero in the last rounds would shrink any update, hostile or not
    "partitioner": "iid",
    "min-train-nodes": HOSPITALS,  # Krum's n > 2f + 2 is checked against it
    "fraction-evaluate": 0.0,
    "device": "cpu",
    "seed": 0,
    "update-norm-limit": 0.0,
}
QUICK = {"model": "cnn3", "image-size": 32, "num-server-rounds": 4 + SCALED_FROM_ROUND - 1}
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "clean": ("", {"strategy": "fedavg"}),
    **{
        f"{attack}/{strategy}": (attack, {"strategy": strategy})
        for attack in ("scaled", "label-flip")
        for strategy in ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
    },
    **{
        f"{attack}/he-fedavg-guard": (attack, {"strategy": "fedavg", "he-enabled": True, "update-norm-limit": GUARD})
        for attack in ("scaled", "label-flip")
    },
}


def _node_configs(attack: str, *, he: bool) -> list[dict[str, Any]]:
    """Simulation's node configs, hospital ``HOSTILE`` with the fixture on; under HE the last node is the evaluator."""
    nodes = HOSPITALS + 1 if he else HOSPITALS
    configs: list[dict[str, Any]] = [{"partition-id": i, "num-partitions": nodes} for i in range(nodes)]
    if attack:
        configs[HOSTILE]["hostile"] = attack
    return configs


def _declines(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Each round some hospital declined: the round and who declined, with the first reason."""
    found = []
    for record in history["rounds"]:
        declined = {name: h["declined"] for name, h in record["hospitals"].items() if "declined" in h}
        if declined:
            reason = next(iter(declined.values()))
            found.append({"round": record["round"], "hospitals": sorted(declined), "reason": reason})
    return found


def _max_ratio(record: dict[str, Any]) -> float | None:
    """The largest global-step ratio a hospital's guard saw in this round (None before it judges)."""
    ratios = [h["step_ratio"] for h in record["hospitals"].values() if h.get("step_ratio") is not None]
    return round(max(ratios), 2) if ratios else None


def run_one(attack: str, keys: dict[str, Any], *, out_dir: Path, name: str) -> dict[str, Any]:
    """One run: central accuracy per round, final and mean of the last 2, the declines and how the run ended."""
    run_config = {**keys, "run-name": name.replace("/", "-")}
    nodes = _node_configs(attack, he=bool(keys.get("he-enabled")))
    outcome, history, seconds = run_federation(nodes, run_config, out_dir=out_dir, label=name)
    curve = [r["central"]["accuracy"] for r in history["rounds"] if r["round"] > 0 and r["central"] is not None]
    return {
        "hostile": attack or None,
        "keys": {k: v for k, v in keys.items() if k not in ("data-root",)},
        "status": outcome["status"],
        "line": outcome["line"],
        "rounds_completed": len(curve),
        "final": curve[-1] if curve else None,
        "last2_mean": statistics.fmean(curve[-2:]) if curve else None,
        "per_round": [round(a, 4) for a in curve],
        "declined_rounds": _declines(history),
        "max_step_ratio": [_max_ratio(r) for r in history["rounds"] if r["round"] > 0],
        "seconds": round(seconds, 1),
        "machine": provenance()["machine"],  # runs land in pieces, on whichever machine a session has
    }


def _verdicts(runs: dict[str, Any]) -> dict[str, Any]:
    """The issue's questions, answered from the runs present."""
    clean = runs.get("clean", {}).get("last2_mean")
    verdicts: dict[str, Any] = {"clean_last2_mean": clean}
    if clean is None:
        return verdicts
    for attack in ("scaled", "label-flip"):
        robust = {k.split("/")[1]: r["last2_mean"] for k, r in runs.items()
                  if k.startswith(f"{attack}/") and k.split("/")[1] not in ("fedavg", "he-fedavg-guard")}  # fmt: skip
        best = max(robust, key=lambda k: robust[k], default=None)
        fedavg = runs.get(f"{attack}/fedavg", {}).get("last2_mean")
        verdicts[attack] = {
            "fedavg_drop_points": None if fedavg is None else round(100 * (clean - fedavg), 1),
            "best_robust": best,
            "best_robust_gap_points": None if best is None else round(100 * (clean - robust[best]), 1),
        }
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="cnn3 at 32 px, a few rounds")
    parser.add_argument("--fresh", action="store_true", help="forget the runs already in the output file")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--verbose", action="store_true", help="every round's log lines, as a run prints them")
    args = parser.parse_args()
    if not args.verbose:  # the apps log through Flower's handlers (common.logs); keep their warnings only
        for handler in logging.getLogger("flwr").handlers:
            handler.setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    out = result_path("robustness", quick=args.quick, out=args.out)
    stored = json.loads(out.read_text()) if out.is_file() and not args.fresh else {}
    runs: dict[str, Any] = stored.get("runs", {})
    base = {**BASE, **(QUICK if args.quick else {})}
    for name in args.runs.split(","):
        attack, extra = RUNS[name]
        keys = {**base, **extra}
        recorded = {k: v for k, v in keys.items() if k != "data-root"}
        if name in runs and runs[name]["keys"] == recorded:
            print(f"{name:28s} kept from {out.name}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            runs[name] = run_one(attack, keys, out_dir=Path(tmp), name=name)
        row = runs[name]
        last2 = "n/a" if row["last2_mean"] is None else f"{row['last2_mean']:.4f}"
        print(f"{name:28s} last 2 {last2}, {len(row['declined_rounds'])} round(s) with declines, "
              f"{row['status']} ({row['seconds']:.0f} s)", flush=True)  # fmt: skip
        summary = {
            "hospitals": HOSPITALS,
            "hostile_hospital": f"hospital-{HOSTILE}",
            "scale": SCALE,
            "scaled_from_round": SCALED_FROM_ROUND,
            "data": "data/samples/brain-mri (1,040 training images, 240 test images), IID over 5 hospitals",
            "verdicts": _verdicts(runs),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**provenance(), **summary, "runs": runs}, indent=1) + "\n")
    print(json.dumps(_verdicts(runs), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
