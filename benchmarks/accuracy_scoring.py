"""What ``accuracy.py`` scores a setting on: test/ and its near-twin-clean part, or a validation hold-out of train/.

With an operating point, it also scores the decision a run with ``target-sensitivity`` makes:
the threshold on the abnormal classes' summed probability picked on the hospitals' own
validation images (``pick_threshold``, the product's code), applied to the evaluation set.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.calibration_fit import histogram_statistics, pick_threshold, positive_scores  # noqa: E402
from common.config import RunConfig  # noqa: E402
from common.data import ImageSet, build_transform  # noqa: E402
from common.data.check import check_data_root  # noqa: E402
from common.experiment import preset_for  # noqa: E402
from common.inference import predict, resolve_device  # noqa: E402
from common.metrics import classification_report  # noqa: E402

__all__ = ["OperatingPoint", "clean_index", "score_sets", "split_validation", "summarise_curve"]


@dataclass(frozen=True)
class OperatingPoint:
    """The hospitals' pooled validation images and the sensitivity their threshold is picked for."""

    validation: ImageSet
    target_sensitivity: float


def _probabilities(model: torch.nn.Module, images: ImageSet, cfg: RunConfig) -> tuple[np.ndarray, float]:
    transform = build_transform(preset_for(cfg), train=False)
    probs, loss = predict(model, images, transform, batch_size=64, device=resolve_device(cfg.device))
    return probs, float(loss)


def _at_operating_point(
    model: torch.nn.Module, probs: np.ndarray, images: ImageSet, point: OperatingPoint, cfg: RunConfig
) -> dict[str, float]:
    """Sensitivity and specificity (abnormal against normal) on ``images`` at the threshold the validation images give.

    Two-class sets add the accuracy of that decision (``op_accuracy``).
    """
    positive = cfg.positive_classes
    val_probs, _ = _probabilities(model, point.validation, cfg)
    val_abnormal = np.isin(point.validation.labels.numpy(), [images.classes.index(c) for c in positive])
    histograms = histogram_statistics(positive_scores(val_probs, images.classes, positive), val_abnormal)
    picked = pick_threshold(histograms["positives"], histograms["negatives"], target=point.target_sensitivity)
    if picked is None:
        raise SystemExit("the hospitals' validation images are not both normal and abnormal: no operating point")
    abnormal = np.isin(images.labels.numpy(), [images.classes.index(c) for c in positive])
    called = positive_scores(probs, images.classes, positive) >= picked["threshold"]
    scores = {"op_threshold": picked["threshold"], "op_validation_sensitivity": picked["sensitivity"],
              "op_sensitivity": float(called[abnormal].mean()), "op_specificity": float((~called[~abnormal]).mean())}
    if len(images.classes) == 2:
        scores["op_accuracy"] = float((called == abnormal).mean())
    return scores


def score_sets(model: torch.nn.Module, sets: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """The scores on the evaluation set, its accuracy on the near-twin-clean subset (``clean_accuracy``)
    and, with ``sets["operating_point"]``, the ``op_*`` scores at that operating point."""
    images = sets["evaluation"]
    probs, loss = _probabilities(model, images, cfg)
    report = classification_report(images.labels.numpy(), probs, images.classes, loss=loss)
    recall = {c: report["per_class"][c]["recall"] for c in images.classes}
    scores = {"accuracy": report["accuracy"], "loss": loss, "balanced_accuracy": report["balanced_accuracy"],
              "macro_f1": report["macro"]["f1"], "recall": recall}
    clean = sets.get("clean_index")
    if clean is not None and len(clean):
        labels = images.labels.numpy()
        scores["clean_accuracy"] = float((probs.argmax(axis=1)[clean] == labels[clean]).mean())
    if (point := sets.get("operating_point")) is not None:
        scores.update(_at_operating_point(model, probs, images, point, cfg))
    return scores


def split_validation(train: ImageSet, *, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A stratified, seeded hold-out of ``train`` for choosing hyperparameters."""
    rng = np.random.default_rng(seed)
    labels = train.labels.numpy()
    held = sorted(int(i) for c in np.unique(labels) for i in
                  rng.permutation(np.flatnonzero(labels == c))[: int(round(fraction * (labels == c).sum()))])
    keep = sorted(set(range(len(train))) - set(held))
    return train.subset(keep), train.subset(held)


def clean_index(root: Path, test: ImageSet, folder: Path, dataset: str) -> np.ndarray:
    """Positions of the test images with no duplicate or near-twin in ``train/`` (``medsilo data check``'s groups).

    The audit of the whole root is cached in ``folder/<dataset>-near-twins.json``.
    """
    cache = folder / f"{dataset}-near-twins.json"
    if cache.is_file():
        across = json.loads(cache.read_text())["across"]
    else:
        audit = check_data_root(root)
        across = audit["near_twins"]["across"] + audit["duplicates_across"]
        folder.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"root": root.name, "across": across}, indent=1))
    twinned = {path for group in across for path in group}
    return np.array([i for i, path in enumerate(test.paths) if path not in twinned], dtype=np.int64)


def summarise_curve(
    curve: list[dict[str, Any]], *, epochs: int, seconds: float, parts: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A setting's row from its curve of :func:`score_sets` results: the last scores and the means of the last 2.

    ``parts`` are the stretches a stopped run was trained in (kept when there are several).
    """
    last = curve[-1]
    summary = {
        "final": last["accuracy"],
        "last2_mean": statistics.fmean(c["accuracy"] for c in curve[-2:]),
        "balanced_accuracy": last["balanced_accuracy"],
        "macro_f1": last["macro_f1"],
        "epochs": epochs,
        "per_round": [round(c["accuracy"], 4) for c in curve],
        "recall_last2_mean": {k: statistics.fmean(c["recall"][k] for c in curve[-2:]) for k in last["recall"]},
        "seconds": round(seconds, 1),
        **extra,
    }
    if len(parts) > 1:  # a stopped run that went on, maybe on another machine
        summary["parts"] = parts
    if "clean_accuracy" in last:
        summary["last2_mean_clean"] = statistics.fmean(c["clean_accuracy"] for c in curve[-2:])
        summary["per_round_clean"] = [round(c["clean_accuracy"], 4) for c in curve]
    if set(last["recall"]) == {"NORMAL", "PNEUMONIA"}:  # chest X-ray: the clinical pair, mean of the last 2
        summary["sensitivity"] = summary["recall_last2_mean"]["PNEUMONIA"]
        summary["specificity"] = summary["recall_last2_mean"]["NORMAL"]
    if "op_sensitivity" in last:  # at the threshold fitted on the hospitals' validation images, mean of the last 2
        point = {key[3:]: statistics.fmean(c[key] for c in curve[-2:]) for key in last if key.startswith("op_")}
        summary["operating_point"] = {**point, "threshold": last["op_threshold"],
                                      "validation_sensitivity": last["op_validation_sensitivity"]}
    return summary
