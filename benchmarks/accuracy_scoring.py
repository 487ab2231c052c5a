"""What ``accuracy.py`` scores a setting on: test/ and its near-twin-clean part, or a validation hold-out of train/."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.config import RunConfig  # noqa: E402
from common.data import ImageSet, build_transform  # noqa: E402
from common.data.check import check_data_root  # noqa: E402
from common.experiment import preset_for  # noqa: E402
from common.inference import predict, resolve_device  # noqa: E402
from common.metrics import classification_report  # noqa: E402

__all__ = ["clean_index", "score_sets", "split_validation"]


def _score(model: torch.nn.Module, images: ImageSet, cfg: RunConfig) -> dict[str, Any]:
    probs, loss = predict(
        model, images, build_transform(preset_for(cfg), train=False), batch_size=64, device=resolve_device(cfg.device)
    )
    report = classification_report(images.labels.numpy(), probs, images.classes, loss=loss)
    return {"accuracy": report["accuracy"], "loss": float(loss), "balanced_accuracy": report["balanced_accuracy"],
            "macro_f1": report["macro"]["f1"], "recall": {c: report["per_class"][c]["recall"] for c in images.classes},
            "predicted": probs.argmax(axis=1)}


def score_sets(model: torch.nn.Module, sets: dict[str, ImageSet], cfg: RunConfig) -> dict[str, Any]:
    """The scores on the evaluation set, and its accuracy on the near-twin-clean subset (``clean_accuracy``)."""
    scores = _score(model, sets["evaluation"], cfg)
    predicted = scores.pop("predicted")
    clean = sets.get("clean_index")
    if clean is not None and len(clean):
        labels = sets["evaluation"].labels.numpy()
        scores["clean_accuracy"] = float((predicted[clean] == labels[clean]).mean())
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
