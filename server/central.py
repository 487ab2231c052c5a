"""Central evaluation of the global model on the central test set, after every round."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, MetricRecord

from common.config import RunConfig
from common.data import ImageSet, build_transform, load_split
from common.experiment import model_spec, preset_for, resolve_path
from common.inference import predict, resolve_device
from common.metrics import classification_report
from common.models import build_model
from server.history import RunHistory
from server.run_directory import RunDirectory

__all__ = ["CentralEvaluation", "CentralEvaluator"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CentralEvaluation:
    """One evaluation of the global model: the report and the per-image probabilities."""

    server_round: int
    report: dict[str, object]
    probabilities: np.ndarray


class CentralEvaluator:
    """Flower ``evaluate_fn``: scores each round's global model, records and checkpoints it."""

    def __init__(self, cfg: RunConfig, *, history: RunHistory, run_dir: RunDirectory) -> None:
        preset = preset_for(cfg)
        self.cfg = cfg
        self.spec = model_spec(cfg)
        self.history = history
        self.run_dir = run_dir
        self.device = resolve_device(cfg.device)
        self.transform = build_transform(preset, train=False)
        self.test: ImageSet = load_split(
            resolve_path(cfg.data_root, key="data-root"),
            "test",
            classes=cfg.class_names,
            channels=preset.channels,
            size=cfg.image_size,
        )
        if len(self.test) == 0:
            raise ValueError(f"data-root {cfg.data_root!r} has no readable central test images under test/")
        self.model = build_model(
            self.spec.architecture, num_classes=len(self.spec.classes), in_channels=self.spec.channels
        )
        self.latest: CentralEvaluation | None = None
        log.info("central test set: %d images, %d skipped", len(self.test), len(self.test.skipped))

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate ``arrays``, record the round, checkpoint the model, write history."""
        start = time.perf_counter()
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        probs, loss = predict(self.model, self.test, self.transform, batch_size=self.cfg.batch_size, device=self.device)
        report = classification_report(self.test.labels.numpy(), probs, self.spec.classes, loss=loss)
        self.latest = CentralEvaluation(server_round, report, probs)
        self.history.round(server_round)["central"] = {
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
            "loss": report["loss"],
            "macro_f1": report["macro"]["f1"],
            "macro_auroc": report["macro"]["auroc"],
        }
        self.history.round(server_round)["timings"]["central_evaluate_s"] = time.perf_counter() - start
        self.run_dir.checkpoint(server_round, self.model, self.spec)
        self.history.flush()
        log.info(
            "round %d central evaluation: accuracy %.4f, macro F1 %s, %.1fs",
            server_round,
            report["accuracy"],
            f"{report['macro']['f1']:.4f}" if report["macro"]["f1"] is not None else "n/a",
            time.perf_counter() - start,
        )
        return MetricRecord({"accuracy": float(report["accuracy"]), "loss": float(loss)})
