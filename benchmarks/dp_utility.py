"""Privacy against utility: DP-SGD at epsilon 8, 3 and 1 against no DP, from three starting points.

GroupNorm ResNet-18 at 64 px (the model every DP run builds), 4 IID hospitals, the same rounds,
local epochs and recipe for every setting; only the DP keys and the starting weights differ:

- ``scratch``: random weights;
- ``public-slice``: pretrained (``medsilo pretrain``, no DP) on a stratified 20 % of
  ``brain-mri/train`` that no hospital holds;
- ``public-xray``: pretrained on the chest X-ray set's ``train/``.

Settings: ``no-dp``, ``eps-8``, ``eps-3``, ``eps-1``, with delta 1e-5 per hospital and every round
counted by the accountant. Each run is medsilo's own ServerApp ``main`` and ClientApp in this process
(``in_process_grid``), and its central accuracy is the mean of the last 2 rounds on ``test/``
(``--validation``: a held-out 15 % of the hospitals' part, for choosing the recipe).

Each (dataset, start, setting, seed) is written as its own piece under ``results/dp_utility/``
as it lands, and a rerun skips every piece made by the same request; ``dp_utility.json`` and
its figure are assembled from the pieces.

    python benchmarks/dp_utility.py --data-dir DATA                      # brain MRI, 3 starts x 4 settings
    python benchmarks/dp_utility.py --data-dir DATA --datasets chest-xray --starts public-slice --settings eps-8
    python benchmarks/dp_utility.py --quick                              # generated data, a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy_store import load_piece, piece_path, trained_keys, write_piece  # noqa: E402
from dp_starts import CHAINED, STARTS, hospital_tree, quick_data, starting_weights  # noqa: E402
from dp_utility_figure import plot_utility  # noqa: E402
from in_process_run import run_federation  # noqa: E402
from provenance import provenance  # noqa: E402

from common.privacy.utility import epsilon_spent  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DOCS_FIGURE = Path(__file__).parents[1] / "docs" / "dp-utility.png"  # the results page shows it
HOSPITALS = 4
DELTA = 1e-5
SETTINGS: dict[str, dict[str, Any]] = {
    "no-dp": {"dp-enabled": False},
    "eps-8": {"dp-enabled": True, "dp-target-epsilon": 8.0},
    "eps-3": {"dp-enabled": True, "dp-target-epsilon": 3.0},
    "eps-1": {"dp-enabled": True, "dp-target-epsilon": 1.0},
}
BASE: dict[str, Any] = {
    "model": "resnet18",
    "norm-layer": "group",
    "image-size": 64,
    "partitioner": "iid",
    "num-server-rounds": 10,
    "local-epochs": 0.5,
    "batch-size": 128,
    "learning-rate": 1e-3,
    "optimizer": "adam",
    "lr-warmup-rounds": 1,
    "train-from-block": 3,  # layer3, layer4 and the head train; chosen on the validation split with the DP keys
    "loss": "cross-entropy",  # DP cannot adjust logits by the private class frequencies, so no setting does
    "dp-optimizer": "sgd",
    "dp-learning-rate": 0.2,
    "dp-sample-rate": 0.5,  # one Poisson batch of half a shard per round: few steps, each with little noise
    "dp-delta": DELTA,
    "dp-max-grad-norm": 1.0,
    "dp-clipping": "clip",
    "dp-ema-decay": 0.9,
    "dp-lr-schedule": "run",  # warm-up, then cosine by round: at eps-1 the constant rate collapsed in the last rounds
    "dp-augmentation-multiplicity": 1,
    "min-train-nodes": HOSPITALS,
    "fraction-evaluate": 0.0,
    "update-norm-limit": 0.0,
    "calibrate": False,
    "device": "cpu",
}
START_KEYS: dict[str, dict[str, Any]] = {"scratch": {"train-from-block": 0}}
"""Per start: from random weights every block trains (a frozen block would stay random)."""
PRETRAIN = {"model": "resnet18", "norm-layer": "group", "image-size": 64, "epochs": 90, "batch-size": 64,
            "learning-rate": 1e-3, "seed": 0}  # fmt: skip
"""90 epochs of the slice: chosen on the validation split (30 left the start under-fitted)."""
PRETRAIN_BY_START: dict[str, dict[str, Any]] = {"public-xray": {"epochs": 20}}
"""Per start: the chest X-ray train/ (5,216 images) in 20 epochs is about the slice's (1,141) 90 in images seen."""
QUICK = {"model": "cnn3", "image-size": 32, "num-server-rounds": 3, "batch-size": 32}
QUICK_PRETRAIN = {"model": "cnn3", "image-size": 32, "epochs": 2, "batch-size": 32}


def run_one(keys: dict[str, Any], *, out_dir: Path) -> dict[str, Any]:
    """One federation: the central accuracy per round, its mean over the last 2, macro AUROC and epsilon spent."""
    nodes = [{"partition-id": i, "num-partitions": HOSPITALS} for i in range(HOSPITALS)]
    outcome, history, seconds = run_federation(nodes, {**keys, "run-name": "run"}, out_dir=out_dir, label="dp_utility")
    if outcome.get("status") != "completed":
        raise SystemExit(f"the run did not complete: {outcome['line']}")
    central = [r["central"] for r in history["rounds"] if r["round"] > 0 and r["central"] is not None]
    curve = [c["accuracy"] for c in central]
    aurocs = [c["macro_auroc"] for c in central[-2:] if c.get("macro_auroc") is not None]
    before = next((r["central"]["accuracy"] for r in history["rounds"] if r["round"] == 0 and r["central"]), None)
    return {
        "last2_mean": statistics.fmean(curve[-2:]),
        "final": curve[-1],
        "auroc_macro": statistics.fmean(aurocs) if aurocs else None,
        "epsilon_spent": epsilon_spent(history),
        "start_accuracy": before,  # the starting weights' own score, before any round
        "per_round": [round(a, 4) for a in curve],
        "seconds": round(seconds, 1),
    }


def assemble(folder: Path, out: Path, recipe: dict[str, Any], pretraining: dict[str, Any]) -> dict[str, Any]:
    """``{dataset: {"<start>/<setting>": {last2_mean, seeds, epsilon_spent, auroc_macro, ...}}}`` from the pieces.

    With several seeds, ``last2_mean``, ``auroc_macro`` and ``epsilon_spent`` are their means and
    ``by_seed`` holds each seed's run. A plain piece made by another ``recipe`` than today's, or
    from a start pretrained otherwise than today's ``pretraining`` ({start: options}), is no row:
    ``stale`` names it, until a rerun replaces it.
    """
    runs: dict[str, dict[str, dict[int, Any]]] = {}
    made: dict[str, Any] = {}
    stale = []
    for path in sorted(folder.glob("*--seed*.json")):
        piece = json.loads(path.read_text())
        request = piece["request"]
        variant = request.get("variant")
        today = recipe if SETTINGS[request["setting"]]["dp-enabled"] else trained_keys(recipe)
        if not variant and (request["recipe"] != today or request["pretraining"] != pretraining.get(request["start"])):
            stale.append(path.name)
            continue
        name = f"{request['start']}/{request['setting']}" + (f" · {variant}" if variant else "")
        runs.setdefault(request["keys"]["dataset"], {}).setdefault(name, {})[request["keys"]["seed"]] = {
            **piece["results"]["run"], **{k: piece[k] for k in ("commit", "date", "machine")},
            "pretrained_on": request.get("pretrained_on"), "scored_on": request["scored_on"],
        }  # fmt: skip
        if not variant:  # the recipe every plain row ran
            made.update({k: request[k] for k in ("hospitals", "scored_on")}, recipe=recipe)  # every plain row's
            if request["pretraining"]:
                made.setdefault("pretraining", {})[request["start"]] = request["pretraining"]
    assembled: dict[str, Any] = {**provenance(), **made, **({"stale": stale} if stale else {})}
    for dataset, named in runs.items():
        rows = {}
        for name, seeds in named.items():
            first = seeds[min(seeds)]
            mean = {key: _mean([run[key] for run in seeds.values()])
                    for key in ("last2_mean", "auroc_macro", "epsilon_spent")}  # fmt: skip
            rows[name] = {**first, **mean, "seeds": sorted(seeds), "by_seed": {str(s): seeds[s] for s in sorted(seeds)}}
        assembled[dataset] = dict(sorted(rows.items(), key=lambda item: _order(item[0])))
    out.write_text(json.dumps(assembled, indent=1, allow_nan=False) + "\n")
    return assembled


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _order(name: str) -> tuple[int, int, str]:
    start, setting = name.split("/")
    setting, _, variant = setting.partition(" · ")
    return (STARTS.index(start) if start in STARTS else len(STARTS), list(SETTINGS).index(setting), variant)


def _keys(items: list[str]) -> dict[str, Any]:
    return {k: v for item in items for k, v in tomllib.loads(item.replace("=", " = ", 1)).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="folder holding brain-mri/ and chest-xray/")
    parser.add_argument("--datasets", default="brain-mri")
    parser.add_argument("--starts", default=",".join(STARTS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--validation", action="store_true", help="score a held-out 15%% of the hospitals' part")
    parser.add_argument("--base", action="append", default=[], help="override a run-config key: key=value (TOML)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "medsilo" / "dp_utility",
                        help="where the pretrained starts are kept between runs")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="generated data, cnn3 at 32 px, 3 rounds")
    parser.add_argument(
        "--pretrain",
        action="append",
        default=[],
        help="override a `medsilo pretrain` option of every start: key=value (TOML); needs --variant",
    )
    parser.add_argument("--variant", default="", help="a label for the --base changes: its pieces and rows carry it")
    args = parser.parse_args()
    if args.pretrain and not args.variant:
        parser.error("--pretrain needs --variant: the variant's starts are kept beside the plain ones")
    for handler in logging.getLogger("flwr").handlers:  # the apps log through Flower's handlers: warnings only
        handler.setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    base = {**BASE, **(QUICK if args.quick else {}), **_keys(args.base)}
    pretrain = {**PRETRAIN, **(QUICK_PRETRAIN if args.quick else {})}

    def pretraining(start: str) -> dict[str, Any]:
        return {**pretrain, **({} if args.quick else PRETRAIN_BY_START.get(start, {})), **_keys(args.pretrain)}

    def pretrained_as(start: str) -> dict[str, Any] | None:
        """What a piece records of its start's pretraining (None: scratch)."""
        chained = {"after": CHAINED[start]} if start in CHAINED else {}
        return None if start == "scratch" else pretraining(start) | chained

    name = "dp_utility-quick" if args.quick else "dp_utility-validation" if args.validation else "dp_utility"
    folder, work = RESULTS / name, args.work / ("quick" if args.quick else "full")
    with tempfile.TemporaryDirectory() as tmp:
        data = quick_data(Path(tmp) / "data") if args.quick else args.data_dir
        if data is None:
            parser.error("--data-dir is required (or --quick)")
        slice_tree = Path(tmp) / "public-slice-data"  # each process its own: runs may go side by side
        if {"public-slice", *CHAINED} & set(args.starts.split(",")):
            hospital_tree(data, "brain-mri", slice_tree, validation=False, carve_public=True)
        for dataset in args.datasets.split(","):
            tree = Path(tmp) / f"tree-{dataset}"
            counts = hospital_tree(data, dataset, tree, validation=args.validation, carve_public=dataset == "brain-mri")
            for start in args.starts.split(","):
                weights = starting_weights(start, work=work, public_slice=slice_tree / "public-slice",
                                           xray=data / "chest-xray", pretrain=pretraining,
                                           tag=args.variant if args.pretrain else "")  # fmt: skip
                for setting in args.settings.split(","):
                    for seed in map(int, args.seeds.split(",")):
                        keys = {**base, **START_KEYS.get(start, {}), **SETTINGS[setting], "dataset": dataset,
                                "seed": seed, "data-root": str(tree / "hospitals"),
                                "pretrained-weights": weights}  # fmt: skip
                        recorded = {k: v for k, v in trained_keys(keys).items()
                                    if k not in ("data-root", "pretrained-weights")}  # fmt: skip
                        request = {"keys": recorded, "start": start, "setting": setting, "hospitals": HOSPITALS,
                                   "scored_on": counts["scored_on"], "images": counts,
                                   "recipe": base if SETTINGS[setting]["dp-enabled"] else trained_keys(base),
                                   "pretraining": pretrained_as(start),
                                   "pretrained_on": None if start == "scratch" else start}  # fmt: skip
                        if args.variant:
                            request["variant"] = args.variant
                        tag = f"--{args.variant}" if args.variant else ""
                        path = piece_path(folder, dataset, f"{start}--{setting}{tag}", seed)
                        if load_piece(path, request) is not None:
                            print(f"{dataset} {start}/{setting} seed {seed}: kept ({path.name})", flush=True)
                            continue
                        with tempfile.TemporaryDirectory() as runs:
                            result = run_one(keys, out_dir=Path(runs))
                        write_piece(path, request, {"run": result})
                        eps = "n/a" if result["epsilon_spent"] is None else f"{result['epsilon_spent']:.2f}"
                        print(f"{dataset} {start}/{setting} seed {seed}: last 2 {result['last2_mean']:.4f}, "
                              f"epsilon {eps}, {result['seconds']:.0f} s, per round {result['per_round']}",
                              flush=True)  # fmt: skip
    assembled = assemble(folder, RESULTS / f"{name}.json", base, {start: pretrained_as(start) for start in STARTS})
    figure = plot_utility(assembled, DOCS_FIGURE if name == "dp_utility" else RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / f'{name}.json'} and {figure}")


if __name__ == "__main__":
    main()
