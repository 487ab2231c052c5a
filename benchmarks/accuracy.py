"""Federated against pooled training, side by side at equal epochs of data.

One process, no Flower runtime: every hospital trains with medsilo's own ``train_local``
(the ClientApp's code) and every aggregation is medsilo's strategy (Flower's FedAvg and
server optimisers behind the reply vetting), called exactly as the ServerApp calls them.
Settings, per dataset, all from the same seed, model, augmentation and epochs of data:

- ``centralised``: the union of the hospitals' data, one optimizer for the whole run, with the
  best configuration's loss and learning-rate schedule (its warm-up in epochs of data);
- ``fedavg-iid`` / ``fedavg-dirichlet``: the defaults of a plain FedAvg run (fresh Adam
  each round, constant learning rate, BatchNorm averaged);
- ``local-only-mean`` / ``local-only-worst``: each hospital alone (Dirichlet split);
- ``best-iid`` / ``best-dirichlet``: the best configuration found, which is what ``flwr run .``
  runs by default (``BEST``: the run-config defaults of ``BEST_KEYS``).

Central accuracy is recorded after every epoch of data (every round, or every ``1 / local-epochs``
rounds when the best configuration trains a fraction of an epoch per round), on ``test/``
and on its near-twin-clean part (``last2_mean_clean``: the test images with no duplicate or
near-twin in ``train/``, by ``medsilo data check``'s audit); chest X-ray adds the PNEUMONIA
``sensitivity`` and NORMAL ``specificity``. With ``--operating-point``, the hospitals hold out
``local-val-fraction`` of their shards as a run does, and each score adds the decision at the
threshold picked there for that sensitivity (what ``target-sensitivity`` deploys).
Hyperparameters are chosen with ``--validation`` (15 % of ``train/`` held out, stratified,
seeded); ``test/`` is scored only once they are fixed.

It runs in pieces: each (dataset, setting, seed) is written to its own file under
``results/accuracy/`` (``accuracy-validation/``, ``accuracy-quick/``) with the request that
made it, the commit and the seconds taken, and ``accuracy.json`` is assembled from the pieces.
A rerun skips every setting whose piece was made by the same request, and a setting that was
stopped goes on from its last scored round (``--checkpoints``, :mod:`round_checkpoint`).

    python benchmarks/accuracy.py --data-dir DATA          # brain-mri and chest-xray, 128 px, 20 epochs
    python benchmarks/accuracy.py --data-dir DATA --validation --settings best-iid --set "norm-layer='group'"
    python benchmarks/accuracy.py --data-dir DATA --datasets chest-xray --operating-point 0.95
    python benchmarks/accuracy.py --quick                  # synthetic data, under 5 minutes
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy_scoring import OperatingPoint, clean_index, score_sets, split_validation, summarise_curve  # noqa: E402
from accuracy_store import assemble, load_piece, piece_path, write_piece  # noqa: E402
from round_checkpoint import RoundCheckpoint  # noqa: E402

from client.site import local_split  # noqa: E402
from client.training import train_local  # noqa: E402
from common import records as rk  # noqa: E402
from common.config import RunConfig, parse_run_config  # noqa: E402
from common.data import ImageSet, load_split  # noqa: E402
from common.data.partition import partition_indices  # noqa: E402
from common.data.synth import write_synthetic_tree  # noqa: E402
from common.experiment import initial_model, preset_for  # noqa: E402
from common.inference import resolve_device  # noqa: E402
from common.models import state_dict_to_cpu  # noqa: E402
from server.history import RunHistory  # noqa: E402
from server.server_steps import load_server_state, make_strategy, server_state  # noqa: E402

log = logging.getLogger("accuracy")
RESULTS = Path(__file__).parent / "results"
HOSPITALS = 4
BASE = {
    "model": "resnet18",
    "image-size": 128,
    "batch-size": 32,
    "learning-rate": 1e-3,
    "optimizer": "adam",
    "local-epochs": 1,
    "seed": 0,
    "min-train-nodes": 1,
    "dirichlet-alpha": 0.5,
    # plain FedAvg as the issue measured it, whatever the run-config defaults: a fresh Adam every
    # round, whole local epochs, plain cross-entropy, a constant learning rate
    "strategy": "fedavg",
    "optimizer-state": "reset",
    "local-steps": 0,
    "loss": "cross-entropy",
    "lr-schedule": "constant",
    "lr-warmup-rounds": 0,
    "server-learning-rate": 1.0,
    "server-momentum": 0.0,
    "proximal-mu": 0.0,
    "norm-layer": "batch",
}
BEST_KEYS = ("optimizer-state", "loss", "local-epochs", "lr-schedule", "lr-warmup-rounds", "strategy",
             "server-learning-rate", "server-momentum", "proximal-mu", "norm-layer", "batchnorm-freeze")
BEST = {key: value for key, value in RunConfig().to_run_config().items() if key in BEST_KEYS}
"""The best federated configuration, chosen on the validation split: the run-config defaults of these keys."""
SETTINGS = ("centralised", "fedavg-iid", "fedavg-dirichlet", "local-only", "best-iid", "best-dirichlet")


class _Grid:
    """The one call the strategy makes on Flower's Grid when it samples hospitals."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


@dataclass
class Trained:
    """A training loop's curve (central metrics after every scored round), its seconds and who trained it."""

    curve: list[dict[str, Any]]
    seconds: float
    parts: list[dict[str, Any]]

    def summary(self, epochs: int, **extra: Any) -> dict[str, Any]:
        """The piece's row: the last-2 means and the curve (:func:`summarise_curve`)."""
        return summarise_curve(self.curve, epochs=epochs, seconds=self.seconds, parts=self.parts, **extra)


def _train_rounds(
    cfg: RunConfig,
    shards: list[ImageSet],
    evaluation: dict[str, Any],
    rounds: int,
    score_every: int = 1,
    checkpoint: RoundCheckpoint | None = None,
) -> Trained:
    """``rounds`` rounds of medsilo's federated training; the central metrics after every ``score_every``.

    With ``checkpoint``, the state after every scored round is saved, and a saved state of the
    same request is gone on from.
    """
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what a ServerApp process has
    started = time.perf_counter()
    model = initial_model(cfg)
    arrays = ArrayRecord(state_dict_to_cpu(model))
    nodes = list(range(1, len(shards) + 1))
    with tempfile.TemporaryDirectory() as tmp:
        strategy = make_strategy(cfg, history=RunHistory(Path(tmp) / "history.json"), min_train_nodes=1,
                                 min_evaluate_nodes=0, fraction_evaluate=0.0, seed=cfg.seed)
        optimizer_states: dict[int, Any] = {}
        curve: list[dict[str, Any]] = []
        first, earlier, parts = 1, 0.0, []
        saved = checkpoint.load() if checkpoint else None
        if saved is not None:
            arrays = ArrayRecord(saved["arrays"])
            load_server_state(strategy, saved["server_state"])
            optimizer_states, curve = saved["optimizer_states"], saved["curve"]
            first, earlier, parts = saved["round"] + 1, saved["seconds"], saved["parts"]
            log.warning("going on after round %d of %d from %s", saved["round"], rounds, checkpoint.path)
        for server_round in range(first, rounds + 1):
            sent = list(strategy.configure_train(server_round, arrays, ConfigRecord(), _Grid(nodes)))
            replies = []
            for msg in sent:
                node = msg.metadata.dst_node_id
                model.cpu().load_state_dict({k: torch.from_numpy(a.numpy().copy()) for k, a in arrays.items()})
                result = train_local(
                    model, shards[node - 1], cfg=cfg, preset=preset_for(cfg), device=resolve_device(cfg.device),
                    seed=cfg.seed + 7919 * server_round + node, server_round=server_round,
                    optimizer_state=optimizer_states.get(node),
                )
                optimizer_states[node] = result.optimizer_state
                content = RecordDict({
                    rk.ARRAYS: ArrayRecord(state_dict_to_cpu(model)),
                    rk.METRICS: MetricRecord({rk.NUM_EXAMPLES: result.num_examples, rk.TRAIN_LOSS: result.loss}),
                    rk.HOSPITAL: ConfigRecord({"name": f"hospital-{node}"}),
                })
                replies.append(Message(content, reply_to=msg))
            aggregated, _ = strategy.aggregate_train(server_round, replies)
            arrays = aggregated if aggregated is not None else arrays
            if server_round % score_every:
                continue
            model.cpu().load_state_dict({k: torch.from_numpy(a.numpy().copy()) for k, a in arrays.items()})
            curve.append(score_sets(model, evaluation, cfg))
            log.info("%s: round %d/%d, accuracy %.4f, %.0f s", checkpoint.path.stem if checkpoint else cfg.dataset,
                     server_round, rounds, curve[-1]["accuracy"], earlier + time.perf_counter() - started)
            if checkpoint is not None:
                checkpoint.save(server_round=server_round, arrays=state_dict_to_cpu(model),
                                server_state=server_state(strategy), optimizer_states=optimizer_states, curve=curve,
                                seconds=earlier + time.perf_counter() - started,
                                parts=[*parts, RoundCheckpoint.part(first, server_round)])  # fmt: skip
    return Trained(curve, earlier + time.perf_counter() - started, [*parts, RoundCheckpoint.part(first, rounds)])


def _recipe_for_one_optimizer() -> dict[str, Any]:
    """The best configuration's loss and learning-rate schedule, for pooled training (a round is an epoch).

    The warm-up lasts as many epochs of data as the federated one does (``BEST``'s warm-up
    rounds times its ``local-epochs``), and at least one.
    """
    warmup_epochs = BEST["lr-warmup-rounds"] * min(BEST["local-epochs"], 1.0)
    return {"loss": BEST["loss"], "lr-schedule": BEST["lr-schedule"], "lr-warmup-rounds": max(1, round(warmup_epochs))}


def _setting_config(
    setting: str, *, base: dict[str, Any], overrides: dict[str, Any], epochs: int
) -> tuple[RunConfig, int]:
    """The run config of one setting, and its rounds per epoch of data (``1 / local-epochs``)."""
    partitioner = "iid" if setting.endswith("iid") else "dirichlet"
    keys = {**base, "partitioner": partitioner}
    if setting.startswith("best"):
        keys.update(BEST)
        keys.update(overrides)
    if setting == "centralised":
        keys.update(_recipe_for_one_optimizer())
    if setting in ("centralised", "local-only"):
        return parse_run_config({**keys, "optimizer-state": "keep", "num-server-rounds": epochs}), 1
    per_epoch = round(1 / keys["local-epochs"]) if keys["local-epochs"] < 1 else 1
    if keys["local-epochs"] * per_epoch != 1 and keys["local-epochs"] < 1:
        raise SystemExit(f"local-epochs = {keys['local-epochs']} is not 1/k; the curve is scored per epoch of data")
    return parse_run_config({**keys, "num-server-rounds": epochs * per_epoch}), per_epoch


def _run_setting(
    setting: str,
    cfg: RunConfig,
    per_epoch: int,
    *,
    train: ImageSet,
    evaluation: dict[str, Any],
    epochs: int,
    checkpoint: Callable[[str], RoundCheckpoint | None],
    target_sensitivity: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Train one setting; ``{name: summary}`` (``local-only`` reports a mean and a worst hospital).

    ``checkpoint(label)`` gives each training loop of the setting its checkpoint ('' for the one loop).
    With ``target_sensitivity``, every hospital trains on all but its ``local-val-fraction`` (pooled
    training on the union of what they train on) and each score adds the operating point picked
    on the held-out images for that pooled validation sensitivity.
    """
    parts = partition_indices(train.labels.tolist(), num_partitions=HOSPITALS, partitioner=cfg.partitioner,
                              alpha=cfg.dirichlet_alpha, seed=cfg.seed)
    pooled = train
    if target_sensitivity is not None:  # as a run does: each hospital holds out local-val-fraction of its shard
        if setting == "local-only":
            raise SystemExit("--operating-point scores the federated and pooled settings, not local-only")
        splits = [local_split(cfg, train, p, cfg.seed + i) for i, p in enumerate(parts)]  # client/site.py's own
        parts = [kept for kept, _ in splits]
        held = train.subset(sorted(i for _, val in splits for i in val))
        evaluation = {**evaluation, "operating_point": OperatingPoint(held, target_sensitivity)}
        pooled = train.subset(sorted(i for p in parts for i in p))
    if setting == "centralised":
        return {setting: _train_rounds(cfg, [pooled], evaluation, epochs, checkpoint=checkpoint("")).summary(epochs)}
    if setting == "local-only":
        finals = [_train_rounds(cfg, [train.subset(p)], evaluation, epochs, checkpoint=checkpoint(f"h{i}")).summary(
            epochs) for i, p in enumerate(parts)]  # fmt: skip
        worst = min(finals, key=lambda r: r["last2_mean"])
        mean_curve = [float(np.mean(c)) for c in zip(*(r["per_round"] for r in finals), strict=True)]
        averaged = ("final", "last2_mean", "balanced_accuracy", "macro_f1", "last2_mean_clean")
        mean: dict[str, Any] = {key: float(np.mean([r[key] for r in finals])) for key in averaged if key in worst}
        mean.update(epochs=epochs, per_round=[round(v, 4) for v in mean_curve], hospitals=[len(p) for p in parts],
                    seconds=round(sum(r["seconds"] for r in finals), 1))  # fmt: skip
        return {"local-only-mean": mean, "local-only-worst": worst}
    trained = _train_rounds(cfg, [train.subset(p) for p in parts], evaluation, epochs * per_epoch,
                            score_every=per_epoch, checkpoint=checkpoint(""))  # fmt: skip
    return {setting: trained.summary(epochs, rounds=epochs * per_epoch)}


def run_dataset(
    root: Path, dataset: str, *, settings: list[str], epochs: int, overrides: dict[str, Any], validation: bool,
    base: dict[str, Any], folder: Path, checkpoints: Path | None, target_sensitivity: float | None = None,
) -> None:
    """Every requested setting on one dataset, each written as its own piece; a piece with the same request is kept.

    With ``checkpoints``, each setting saves its rounds there, and a stopped one goes on from its last scored round.
    """
    base = {**base, "dataset": dataset, "data-root": str(root)}
    cfg0 = parse_run_config(base)
    preset = preset_for(cfg0)
    kwargs = {"classes": cfg0.class_names, "channels": preset.channels, "size": cfg0.image_size}
    train, test = load_split(root, "train", **kwargs), load_split(root, "test", **kwargs)
    evaluation: dict[str, Any] = {"evaluation": test}
    if validation:
        train, evaluation["evaluation"] = split_validation(train, fraction=0.15, seed=cfg0.seed)
    else:
        evaluation["clean_index"] = clean_index(root, test, folder, dataset)
    for setting in settings:
        cfg, per_epoch = _setting_config(setting, base=base, overrides=overrides, epochs=epochs)
        keys = {k: v for k, v in cfg.to_run_config().items() if k != "data-root"}
        request = {"keys": keys, "data": root.name, "epochs": epochs, "rounds_per_epoch": per_epoch,
                   "scored_on": "validation (15% of train/)" if validation else "test/", "hospitals": HOSPITALS}
        if target_sensitivity is not None:
            request["operating_point"] = {"target_sensitivity": target_sensitivity, "hospitals_hold_out": True}
        path = piece_path(folder, dataset, setting, cfg.seed)
        results = load_piece(path, request, defaults=RunConfig().to_run_config())
        if results is not None:
            print(f"{dataset:12s} {setting:18s} kept ({path.name}: same request)", flush=True)
            continue
        def checkpoint(label: str, stem: str = path.stem, request: dict[str, Any] = request) -> RoundCheckpoint | None:
            name = f"{folder.name}--{stem}{'--' + label if label else ''}.pt"
            return RoundCheckpoint(checkpoints / name, request, RunConfig().to_run_config()) if checkpoints else None

        results = _run_setting(setting, cfg, per_epoch, train=train, evaluation=evaluation, epochs=epochs,
                               checkpoint=checkpoint, target_sensitivity=target_sensitivity)  # fmt: skip
        for name, result in results.items():
            if name.startswith("best"):  # the recipe's keys and those --set changed
                shown = {**BEST, **overrides}
                result["config"] = " ".join(f"{k}={v!r}" for k, v in cfg.to_run_config().items() if k in shown)
            clean = f" clean {result['last2_mean_clean']:.4f}" if "last2_mean_clean" in result else ""
            if point := result.get("operating_point"):
                clean += (f" (at the operating point: sensitivity {point['sensitivity']:.3f}, "
                          f"specificity {point['specificity']:.3f})")
            print(f"{dataset:12s} {name:18s} last2 {result['last2_mean']:.4f}{clean} final {result['final']:.4f} "
                  f"per round {result['per_round']}", flush=True)
        write_piece(path, request, results)
        for label in ("", *(f"h{i}" for i in range(HOSPITALS))):
            if (saved := checkpoint(label)) is not None:
                saved.discard()


def checkpoint_folder(text: str) -> Path | None:
    """``--checkpoints``: a folder, or nowhere for '' (``Path('')`` would be the working directory)."""
    return Path(text) if text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="folder holding brain-mri/ and chest-xray/")
    parser.add_argument("--datasets", default="brain-mri,chest-xray")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--epochs", type=int, default=20, help="epochs of data (the recipe: 20)")
    parser.add_argument("--validation", action="store_true", help="score a held-out 15%% of train/, not test/")
    parser.add_argument("--set", action="append", default=[], help="override a BEST key: key=value (TOML value)")
    parser.add_argument("--base", action="append", default=[], help="override a key of every setting: key=value")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--operating-point", type=float, metavar="SENSITIVITY",
                        help="hospitals hold out local-val-fraction, as a run does, and each score adds the "
                             "decision at the threshold picked there for this pooled sensitivity (target-sensitivity)")
    parser.add_argument("--quick", action="store_true", help="synthetic data, cnn3 at 32 px: under 5 minutes")
    parser.add_argument("--out", type=Path, help="the folder of pieces (default results/accuracy[-validation|-quick])")
    parser.add_argument("--checkpoints", type=checkpoint_folder,
                        default=Path.home() / ".cache" / "medsilo" / "accuracy",
                        help="where a setting saves its rounds, to go on after a stop ('' : nowhere)")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)  # a line per epoch of data: a long setting shows its progress
    torch.set_num_threads(args.threads)
    import tomllib

    def keys(items: list[str]) -> dict[str, Any]:
        return {k: v for item in items for k, v in tomllib.loads(item.replace("=", " = ", 1)).items()}

    overrides = keys(args.set)
    base, epochs = {**BASE, **keys(args.base)}, args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            base.update({"model": "cnn3", "image-size": 32, "batch-size": 16})
            epochs = min(epochs, 3)
            roots = {
                "brain-mri": write_synthetic_tree(Path(tmp) / "mri", modality="brain-mri", train_per_class=60,
                                                  test_per_class=20, size=32, seed=1)
            }
        else:
            if args.data_dir is None:
                parser.error("--data-dir is required (or --quick)")
            roots = {name: args.data_dir / name for name in args.datasets.split(",")}
        name = "accuracy-quick" if args.quick else "accuracy-validation" if args.validation else "accuracy"
        folder = args.out or RESULTS / name
        for dataset, root in roots.items():
            run_dataset(root, dataset, settings=args.settings.split(","), epochs=epochs, overrides=overrides,
                        validation=args.validation, base=base, folder=folder,
                        checkpoints=None if args.quick else args.checkpoints,
                        target_sensitivity=args.operating_point)
    out = folder.parent / f"{folder.name}.json"
    results = assemble(folder, out)
    for dataset, rows in results.items():
        central = rows.get("centralised", {}).get("last2_mean")
        for setting, row in rows.items():
            gap = f"{100 * (row['last2_mean'] - central):+.1f} pt vs centralised" if central else ""
            print(f"{dataset:12s} {setting:18s} {row['last2_mean']:.4f} {gap}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
