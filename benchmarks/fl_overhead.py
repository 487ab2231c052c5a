"""What federation costs over centralised training of the same work, back to back in one run.

- ``centralised``: in this process, medsilo's ``train_local`` on the union of the training set
  for R x E epochs (one optimizer throughout), the test set scored after every E epochs as the
  server scores it after every round; its time includes decoding the images and building the model.
- ``federated``: a real ``flwr run`` of K simulated hospitals (IID shards of the same set, no
  local validation hold-out, no hospital-side evaluation), R rounds of E local epochs, central
  evaluation after every round; ``client-resources-num-cpus=1`` so every core trains a hospital.

The federated time is split as the run's ``history.json`` and ``report.html`` allow: ``launch``
(``flwr run`` to the ServerApp starting: SuperLink, simulation engine, Ray), ``server_setup``
(ServerApp time outside the rounds' steps: describing the hospitals, actor start-up, checkpoints),
``hospitals_training`` (the hospitals' own training seconds, divided by how many train at once),
``round_fixed`` (the rest of each round's training step: messages, model decoding, set-up),
``aggregation``, ``evaluation`` (central, rounds 0..R) and ``report`` (writing the report and exit).
Writes ``benchmarks/results/fl_overhead.json`` with ``wall_ratio`` = federated / centralised.

    python benchmarks/fl_overhead.py                    # the shipped sample, ResNet-18 96 px, 4 x 10 x 2
    python benchmarks/fl_overhead.py --data-dir DATA    # another folder dataset
    python benchmarks/fl_overhead.py --quick            # synthetic 32 px, cnn3, 2 rounds (about a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_home import ROOT, flwr_run  # noqa: E402
from provenance import provenance, result_path  # noqa: E402

from client.training import train_local  # noqa: E402
from common.config import RunConfig, parse_run_config  # noqa: E402
from common.data import build_transform  # noqa: E402
from common.data.synth import write_synthetic_tree  # noqa: E402
from common.experiment import initial_model, load_run_split, preset_for  # noqa: E402
from common.inference import predict, resolve_device  # noqa: E402
from common.tasks import evaluation_report  # noqa: E402

WORKLOAD_KEYS = ("dataset", "model", "size", "batch", "hospitals", "rounds", "epochs", "seed")


def run_config(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """The run-config keys both sides share."""
    return {
        "dataset": args.dataset,
        "data-root": str(data),
        "model": args.model,
        "image-size": args.size,
        "batch-size": args.batch,
        "local-epochs": args.epochs,
        "num-server-rounds": args.rounds,
        "partitioner": "iid",
        "local-val-fraction": 0.0,
        "fraction-evaluate": 0.0,
        "min-train-nodes": args.hospitals,
        "seed": args.seed,
        "device": "cpu",
    }


def centralised(cfg: RunConfig) -> dict[str, Any]:
    """R blocks of E epochs on the whole training set, the test set scored after each; seconds per part."""
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    train = load_run_split(cfg, cfg.data_root, "train")
    test = load_run_split(cfg, cfg.data_root, "test")
    model = initial_model(cfg)
    setup_s = time.perf_counter() - start
    preset, device = preset_for(cfg), resolve_device(cfg.device)
    transform = build_transform(preset, train=False)
    state, train_s, evaluate_s, accuracy = None, 0.0, 0.0, float("nan")
    for block in range(1, cfg.num_server_rounds + 1):
        t0 = time.perf_counter()
        result = train_local(
            model, train, cfg=cfg, preset=preset, device=device, seed=cfg.seed + block, server_round=block,
            optimizer_state=state,
        )
        state = result.optimizer_state
        t1 = time.perf_counter()
        probabilities, loss = predict(model, test, transform, batch_size=cfg.batch_size, device=device)
        accuracy = evaluation_report(test.labels.numpy(), probabilities, test.classes, loss=loss)["accuracy"]
        evaluate_s += time.perf_counter() - t1
        train_s += t1 - t0
        print(f"centralised block {block}: loss {result.loss:.4f}, test accuracy {accuracy:.4f}", flush=True)
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "setup_s": round(setup_s, 2),
        "training_s": round(train_s, 2),
        "evaluation_s": round(evaluate_s, 2),
        "images": len(train),
        "final_accuracy": accuracy,
    }


def federated(args: argparse.Namespace, keys: dict[str, Any], work: Path) -> dict[str, Any]:
    """One real ``flwr run`` of the same work; its wall time and where it went."""
    run_dir = work / "runs" / "federated"
    config = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in keys.items())
    config += f" output-dir={json.dumps(str(work / 'runs'))} run-name='federated' round-timeout=3600"
    launched = datetime.now().astimezone()
    run = flwr_run(
        work / "flwr",
        federation=f"num-supernodes={args.hospitals} client-resources-num-cpus=1",
        config=config,
        cwd=work,
        timeout=args.timeout,
    )
    if not (run_dir / "report.html").is_file():
        raise SystemExit(f"the federated run did not finish:\n{run.output[-3000:]}")
    history = json.loads((run_dir / "history.json").read_text())
    rounds = history["rounds"]
    concurrency = min(args.hospitals, os.cpu_count() or 1)
    steps = sum(v for r in rounds for k, v in r["timings"].items() if k.endswith("_s"))
    train_step = sum(r["timings"].get("train_s", 0.0) for r in rounds)
    hospitals = sum(
        h.get("train_seconds") or 0.0 for r in rounds for h in r["hospitals"].values()
    ) / concurrency
    launch = (datetime.fromisoformat(history["started_at"]) - launched).total_seconds()
    report = datetime.fromtimestamp((run_dir / "report.html").stat().st_mtime).astimezone()
    report_s = (report - datetime.fromisoformat(history["finished_at"])).total_seconds()
    accuracy = rounds[-1]["central"]["accuracy"]
    return {
        "wall_s": round(run.wall_s, 2),
        "launch_s": round(launch, 2),
        "server_setup_s": round(history["duration_s"] - steps, 2),
        "hospitals_training_s": round(hospitals, 2),
        "round_fixed_s": round(train_step - hospitals, 2),
        "aggregation_s": round(sum(r["timings"].get("aggregate_s", 0.0) for r in rounds), 2),
        "evaluation_s": round(sum(r["timings"].get("central_evaluate_s", 0.0) for r in rounds), 2),
        "report_s": round(report_s, 2),
        "exit_s": round(run.wall_s - launch - history["duration_s"] - report_s, 2),
        "hospitals_training_at_once": concurrency,
        "final_accuracy": accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "samples" / "brain-mri")
    parser.add_argument("--dataset", default="brain-mri")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hospitals", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds for the federated run")
    parser.add_argument("--quick", action="store_true", help="synthetic 32 px data, cnn3, 2 rounds of 1 epoch")
    parser.add_argument("--out", type=Path, help="default results/fl_overhead.json (--quick: fl_overhead-quick.json)")
    args = parser.parse_args()
    args.out = result_path("fl_overhead", quick=args.quick, out=args.out)
    work = Path(tempfile.mkdtemp(prefix="medsilo-overhead-"))
    try:
        data = args.data_dir.resolve()
        if args.quick:
            data = write_synthetic_tree(work / "data", modality="brain-mri", train_per_class=32, test_per_class=8,
                                        size=32, seed=1)
            args.dataset, args.model, args.size, args.rounds, args.epochs = "brain-mri", "cnn3", 32, 2, 1
        keys = run_config(args, data)
        central = centralised(parse_run_config(keys))
        print(f"centralised: {central['wall_s']} s", flush=True)
        fed = federated(args, keys, work)
        print(f"federated: {fed['wall_s']} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "wall_ratio": round(fed["wall_s"] / central["wall_s"], 3),
        "centralised_s": central["wall_s"],
        "federated_s": fed["wall_s"],
        "centralised": central,
        "federated": fed,
        "workload": {k: getattr(args, k) for k in WORKLOAD_KEYS} | {"data": str(args.data_dir), "quick": args.quick},
        **provenance(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in fed.items() if k.endswith("_s")}, indent=1))
    print(f"wall_ratio (federated / centralised): {result['wall_ratio']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
