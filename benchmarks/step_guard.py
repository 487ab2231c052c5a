"""Ordinary global steps against the hospitals' guard: the ratios that set ``update-norm-limit``'s default.

One process, no Flower runtime (as ``benchmarks/accuracy.py``): four simulated hospitals, each
with the ClientApp's own data split of ``data/samples/brain-mri`` (``client.site``), train with
``train_local``; the server step is medsilo's strategy, called as the ServerApp calls it. Every
new global model then goes through ``client.step_guard.guard_global_step`` as a hospital's would
(no limit): each step's norm per round and its ratio to the median of the recent earlier steps.

At round ``PLANTED_ROUND`` the benchmark also aggregates, off the run's own timeline, the replies
with the largest hospital's update boosted ``b`` times its inverse weight (``b = 1``: the global
model becomes that hospital's model, a model replacement; ``b = 10``: the global step is ten times
that hospital's own update) and records the ratio the hospitals' guard would see next round.

    python benchmarks/step_guard.py            # every setting, about 40 minutes on 2 busy cores
    python benchmarks/step_guard.py --quick    # cnn3 at 32 px, a few minutes
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.task_identity import TaskIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provenance import provenance, result_path  # noqa: E402

from client.site import hospital_data  # noqa: E402
from client.step_guard import MIN_EARLIER_STEPS, WINDOW, guard_global_step  # noqa: E402
from client.training import train_local  # noqa: E402
from common import records as rk  # noqa: E402
from common.config import RunConfig, parse_run_config  # noqa: E402
from common.experiment import initial_model, preset_for  # noqa: E402
from common.inference import resolve_device  # noqa: E402
from common.models import state_dict_to_cpu  # noqa: E402
from server.history import RunHistory  # noqa: E402
from server.server_steps import make_strategy  # noqa: E402

HOSPITALS = 4
PLANTED_ROUND, BOOSTS = 10, (1.0, 3.0, 10.0)
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "brain-mri"
SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},  # the run-config defaults: ResNet-18 at 96 px, kept Adam, warm-up 4 then cosine over 20 rounds
    "default-iid": {"partitioner": "iid"},
    "make-run-20-rounds": {"image-size": 48, "local-steps": 8, "lr-warmup-rounds": 1},  # the Makefile's, longer
    "no-warm-up": {"lr-warmup-rounds": 0},
    "sgd-constant": {
        "optimizer": "sgd",
        "learning-rate": 0.01,
        "lr-schedule": "constant",
        "lr-warmup-rounds": 0,
        "optimizer-state": "reset",
    },
    "fedavgm": {"strategy": "fedavgm", "server-momentum": 0.9, "update-norm-limit": 0.0},  # ratios judged here
    "half-sampled": {"fraction-train": 0.5},
}


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _load(model: torch.nn.Module, arrays: ArrayRecord) -> None:
    model.cpu().load_state_dict({k: torch.from_numpy(a.numpy().copy()) for k, a in arrays.items()})


def _scaled(trained: dict[str, torch.Tensor], base: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """``base + scale * (trained - base)`` on the floating-point arrays: a scaled update."""
    return {k: base[k] + scale * (v - base[k]) if v.is_floating_point() else v for k, v in trained.items()}


def _reply(msg: Message, state: dict[str, torch.Tensor], examples: int) -> Message:
    return Message(
        RecordDict(
            {
                rk.ARRAYS: ArrayRecord(state),
                rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: examples, rk.TRAIN_LOSS: 0.0}),
                rk.HOSPITAL: ConfigRecord({"name": f"hospital-{msg.metadata.dst_node_id}"}),
            }
        ),
        reply_to=msg,
    )


def _planted(
    cfg: RunConfig,
    sent: list[Message],
    states: list[dict[str, torch.Tensor]],
    examples: list[int],
    base: dict[str, torch.Tensor],
    folder: Path,
) -> dict[str, float | None]:
    """The ratio the guard would see after the largest hospital's update is boosted ``b`` times its inverse weight.

    The planted round is averaged as FedAvg does, off the run's timeline (a server optimiser's state is untouched).
    """
    model = initial_model(cfg)
    largest = max(range(len(sent)), key=lambda i: examples[i])
    ratios: dict[str, float | None] = {}
    for boost in BOOSTS:
        replies = [
            _reply(m, _scaled(s, base, boost * sum(examples) / n) if i == largest else s, n)
            for i, (m, s, n) in enumerate(zip(sent, states, examples, strict=True))
        ]
        _load(model, aggregate_arrayrecords([r.content for r in replies], rk.NUM_EXAMPLES))
        seen = []
        for guard in sorted(folder.glob("guard-*")):  # every hospital's guard, each from its own last base
            trial = folder / f"planted-{boost:g}-{guard.name}"
            shutil.copytree(guard, trial)
            check = guard_global_step(trial, model.state_dict(), server_round=PLANTED_ROUND + 1, limit=math.inf)
            seen.append(check.ratio)
        ratios[f"boost {boost:g}"] = max((r for r in seen if r is not None), default=None)
    return ratios


def run_setting(cfg: RunConfig, *, folder: Path) -> dict[str, Any]:
    """``cfg.num_server_rounds`` rounds; each global step's norm and ratio as the sampled hospitals' guards see them.

    Each hospital keeps its own guard state and judges only the rounds it is sampled for (a hospital sampled
    out of rounds measures its step per round since its last one); a round records the largest ratio seen.
    """
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what a ServerApp process has
    shards = [hospital_data(cfg, {"partition-id": i, "num-partitions": HOSPITALS}).train for i in range(HOSPITALS)]
    model = initial_model(cfg)
    arrays = ArrayRecord(state_dict_to_cpu(model))
    strategy = make_strategy(
        cfg,
        history=RunHistory(folder / "history.json"),
        min_train_nodes=1,
        min_evaluate_nodes=0,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=0.0,
        seed=cfg.seed,
    )
    kept: dict[int, Any] = {}
    rounds, planted = [], {}
    for server_round in range(1, cfg.num_server_rounds + 1):
        _load(model, arrays)
        base = state_dict_to_cpu(model)
        sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid(list(range(1, 5)))))
        checks = [
            guard_global_step(
                folder / f"guard-{m.metadata.dst_node_id}", base, server_round=server_round, limit=math.inf
            )
            for m in sent
        ]
        scored = [c for c in checks if c.ratio is not None]
        worst = max(scored, key=lambda c: c.ratio or 0.0) if scored else checks[0]
        rounds.append({"round": server_round, "norm": worst.norm, "ratio": worst.ratio})
        states, examples = [], []
        for msg in sent:
            node = msg.metadata.dst_node_id
            _load(model, arrays)
            result = train_local(
                model,
                shards[node - 1],
                cfg=cfg,
                preset=preset_for(cfg),
                device=resolve_device(cfg.device),
                seed=cfg.seed + 7919 * server_round + node,
                server_round=server_round,
                optimizer_state=kept.get(node),
            )
            kept[node] = result.optimizer_state if cfg.optimizer_state == "keep" else None
            states.append(state_dict_to_cpu(model))
            examples.append(result.num_examples)
        if server_round == PLANTED_ROUND:
            planted = _planted(cfg, sent, states, examples, base, folder)
        replies = [_reply(m, s, n) for m, s, n in zip(sent, states, examples, strict=True)]
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        arrays = aggregated if aggregated is not None else arrays
    judged = [r["ratio"] for r in rounds if r["ratio"] is not None]
    return {"rounds": rounds, "max_ratio": max(judged), "planted_ratio": planted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="cnn3 at 32 px")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = {"data-root": str(SAMPLE), "min-train-nodes": 1, "device": "cpu"}
    if args.quick:
        base.update({"model": "cnn3", "image-size": 32})
    results: dict[str, Any] = {}
    for name in args.settings.split(","):
        cfg = parse_run_config({**base, **SETTINGS[name]})
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = run_setting(cfg, folder=Path(tmp))
        keys = {k: v for k, v in cfg.to_run_config().items() if k in SETTINGS[name] or k in base}
        results[name] = {"keys": keys, "seconds": round(time.perf_counter() - start, 1), **result}
        ratios = [round(r["ratio"], 2) for r in result["rounds"] if r["ratio"] is not None]
        planted = ", ".join(f"{k} {v:.1f}" for k, v in result["planted_ratio"].items() if v is not None)
        print(
            f"{name:20s} max {result['max_ratio']:.2f} ratios {ratios}; planted at round {PLANTED_ROUND}: "
            f"{planted} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    out = result_path("step_guard", quick=args.quick, out=args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "hospitals": HOSPITALS,
        "min_earlier_steps": MIN_EARLIER_STEPS,
        "window": WINDOW,
        "largest_ordinary_ratio": max(r["max_ratio"] for r in results.values()),
        "planted_round": PLANTED_ROUND,
    }
    out.write_text(json.dumps({**provenance(), **summary, "settings": results}, indent=1) + "\n")
    print(f"largest ordinary ratio {summary['largest_ordinary_ratio']:.2f}; wrote {out}")


if __name__ == "__main__":
    main()
