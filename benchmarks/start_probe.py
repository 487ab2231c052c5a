"""How far a DP benchmark start's frozen features go on a dataset, without DP: a linear probe.

Each start of ``dp_utility.py`` (``dp_starts``, pretrained once and kept) is run frozen over the
hospitals' part of ``train/`` and over ``test/``; scikit-learn's ``LogisticRegression`` is fitted on
the features that the classifier head receives. Its inverse regularisation ``C`` is chosen on a
stratified 15 % of that train part (the carve ``dp_utility --validation`` scores), then the probe
is refitted on the whole part and scored once on ``test/``. The probe's macro AUROC is what the
start's features give to a linear head trained without noise, which is what a DP run that trains
only the head (``train-from-block`` = the head's block) starts from.

    python benchmarks/start_probe.py --data-dir DATA --datasets chest-xray --starts public-slice
    python benchmarks/start_probe.py --quick     # generated data, cnn3 at 32 px
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_starts import CHAINED, hospital_tree, quick_data, starting_weights  # noqa: E402
from dp_utility import PRETRAIN, PRETRAIN_BY_START, QUICK_PRETRAIN  # noqa: E402
from provenance import provenance  # noqa: E402

from common.config import RunConfig  # noqa: E402
from common.data import build_transform  # noqa: E402
from common.experiment import initial_model, load_run_split, preset_for  # noqa: E402
from common.feature_standardization import classifier_head  # noqa: E402
from common.inference import loader  # noqa: E402

RESULTS = Path(__file__).parent / "results"
C_GRID = (0.01, 0.1, 1.0, 10.0)


def features(model: torch.nn.Module, cfg: RunConfig, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """What ``model``'s classifier head receives for every image of ``split`` (in eval mode), and the labels."""
    model.eval()
    head = classifier_head(model, cfg.model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0].flatten(1)))
    images = load_run_split(cfg, root, split)
    with torch.no_grad():
        for batch, _ in loader(images, build_transform(preset_for(cfg), train=False), batch_size=256,
                               device=torch.device("cpu")):  # fmt: skip
            model(batch)
    hook.remove()
    return torch.cat(seen).numpy(), images.labels.numpy()


def _auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def probe(train: tuple[np.ndarray, np.ndarray], held: tuple[np.ndarray, np.ndarray],
          whole: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """``C`` chosen by AUROC on ``held`` (fitted on ``train``), then refitted on ``whole`` and scored on ``test``."""

    def fit(data: tuple[np.ndarray, np.ndarray], c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=5000).fit(*data)

    validation = {c: _auroc(held[1], fit(train, c).predict_proba(held[0])) for c in C_GRID}
    chosen = max(validation, key=validation.__getitem__)
    model = fit(whole, chosen)
    probs = model.predict_proba(test[0])
    return {"C": chosen, "validation_auroc_by_C": {str(c): round(a, 4) for c, a in validation.items()},
            "test_auroc_macro": _auroc(test[1], probs),
            "test_accuracy": float(accuracy_score(test[1], probs.argmax(1))),
            "features": int(test[0].shape[1])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="folder holding brain-mri/ and chest-xray/")
    parser.add_argument("--datasets", default="chest-xray")
    parser.add_argument("--starts", default="public-slice")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "medsilo" / "dp_utility",
                        help="where dp_utility keeps its starts")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="generated data, cnn3 at 32 px")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pretrain = {**PRETRAIN, **(QUICK_PRETRAIN if args.quick else {})}

    def pretraining(start: str) -> dict[str, Any]:
        return {**pretrain, **({} if args.quick else PRETRAIN_BY_START.get(start, {}))}

    work = args.work / ("quick" if args.quick else "full")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = quick_data(Path(tmp) / "data") if args.quick else args.data_dir
        if data is None:
            parser.error("--data-dir is required (or --quick)")
        slice_tree = Path(tmp) / "public-slice-data"
        hospital_tree(data, "brain-mri", slice_tree, validation=False, carve_public=True)
        for dataset in args.datasets.split(","):
            trees = {kind: Path(tmp) / f"{dataset}-{kind}" for kind in ("validation", "test")}
            for kind, tree in trees.items():
                hospital_tree(data, dataset, tree, validation=kind == "validation", carve_public=dataset == "brain-mri")
            for start in args.starts.split(","):
                if start == "scratch" or start in CHAINED:
                    parser.error(f"--starts: {start!r} has no probe here; expected public-slice or public-xray")
                weights = starting_weights(start, work=work, public_slice=slice_tree / "public-slice",
                                           xray=data / "chest-xray", pretrain=pretraining)  # fmt: skip
                cfg = RunConfig(dataset=dataset, model=pretrain["model"], norm_layer="group",
                                image_size=pretrain["image-size"], pretrained_weights=weights)  # fmt: skip
                model = initial_model(cfg)
                fit_part = features(model, cfg, trees["validation"] / "hospitals", "train")
                held = features(model, cfg, trees["validation"] / "hospitals", "test")
                whole = features(model, cfg, trees["test"] / "hospitals", "train")
                test = features(model, cfg, trees["test"] / "hospitals", "test")
                row = probe(fit_part, held, whole, test)
                results.setdefault(dataset, {})[start] = row
                print(f"{dataset} {start}: C {row['C']}, test macro AUROC {row['test_auroc_macro']:.4f}, "
                      f"test accuracy {row['test_accuracy']:.4f} (validation {row['validation_auroc_by_C']})",
                      flush=True)  # fmt: skip
    out = RESULTS / ("start_probe-quick.json" if args.quick else "start_probe.json")
    out.write_text(json.dumps({**provenance(), "pretraining": pretrain, **results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
