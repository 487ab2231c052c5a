"""Central evaluation of the global model after every round, on the central test set.

Without HE the server scores the plaintext model itself (:class:`LocalScorer`). Under HE
the evaluator node decrypts and scores it and returns predictions, never weights
(:class:`EvaluatorNodeScorer`). Either way the server computes the metric suite, records
the round and checkpoints the global model (encrypted under HE).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common import records as rk
from common.config import RunConfig
from common.data import ImageSet, build_transform
from common.experiment import load_run_split, preset_for, resolve_path, saved_spec
from common.inference import predict, resolve_device
from common.models import ModelSpec, build_from_spec
from common.precision import resolve_precision
from common.tasks import evaluation_report
from server.history import RunHistory
from server.run_directory import RunDirectory

__all__ = [
    "AggregateRejected",
    "CentralEvaluation",
    "CentralEvaluator",
    "EvaluatorNodeScorer",
    "LocalScorer",
    "Scored",
    "Scorer",
]

log = logging.getLogger(__name__)


class AggregateRejected(RuntimeError):
    """A key-holder found the decrypted aggregate not finite: the previous global model is kept."""


@dataclass(frozen=True)
class Scored:
    """Per-image results on the central test set: ``probabilities`` is ``(N, K)``, ``y_true`` ``(N,)`` or ``(N, K)``."""

    paths: tuple[str, ...]
    y_true: np.ndarray
    probabilities: np.ndarray
    loss: float
    skipped: int
    decrypt_seconds: float | None = None


@dataclass(frozen=True)
class CentralEvaluation:
    """One evaluation of the global model: the report and the per-image results."""

    server_round: int
    report: dict[str, object]
    scored: Scored


class Scorer(Protocol):
    """Scores the global arrays on the central test set."""

    def __call__(self, arrays: ArrayRecord) -> Scored: ...


class LocalScorer:
    """The server scores the plaintext global model itself (no HE)."""

    def __init__(self, cfg: RunConfig, spec: ModelSpec) -> None:
        preset = preset_for(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.transform = build_transform(preset, train=False)
        self.test: ImageSet = load_run_split(cfg, resolve_path(cfg.data_root), "test")
        if len(self.test) == 0:
            raise ValueError(f"data-root {cfg.data_root!r} has no readable central test images under test/")
        self.model = build_from_spec(spec)
        log.info("central test set: %d images, %d skipped", len(self.test), len(self.test.skipped))

    def __call__(self, arrays: ArrayRecord) -> Scored:
        self.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        probs, loss = predict(
            self.model,
            self.test,
            self.transform,
            batch_size=self.cfg.batch_size,
            device=self.device,
            precision=self.precision,
        )
        return Scored(self.test.paths, self.test.labels.numpy(), probs, loss, len(self.test.skipped))


class EvaluatorNodeScorer:
    """Under HE: the evaluator node decrypts, scores and returns per-image predictions."""

    def __init__(self, grid: Grid, *, node_id: int, base_config: ConfigRecord, timeout: float) -> None:
        self.grid = grid
        self.node_id = node_id
        self.base_config = base_config
        self.timeout = timeout

    def __call__(self, arrays: ArrayRecord) -> Scored:
        message = Message(
            RecordDict({rk.ARRAYS: arrays, rk.CONFIG: self.base_config}),
            dst_node_id=self.node_id,
            message_type=f"{MessageType.EVALUATE}.{rk.CENTRAL}",
        )
        replies = list(self.grid.send_and_receive([message], timeout=self.timeout))
        if not replies:
            raise RuntimeError(f"the evaluator node {self.node_id} did not reply within {self.timeout:.0f}s")
        reply = replies[0]
        if reply.has_error():
            raise RuntimeError(f"the evaluator node {self.node_id} failed: {reply.error.reason}")
        metrics = reply.content[rk.METRICS]
        info = reply.content[rk.HOSPITAL]
        if rk.DECLINED in info:
            raise AggregateRejected(f"the evaluator node {self.node_id} declined the aggregate: {info[rk.DECLINED]}")
        predictions = reply.content[rk.PREDICTIONS]
        return Scored(
            paths=tuple(str(p) for p in info["paths"]),
            y_true=predictions["labels"].numpy().astype(np.int64),
            probabilities=predictions["probabilities"].numpy().astype(np.float64),
            loss=float(metrics[rk.EVAL_LOSS]),
            skipped=int(info["skipped"]),
            decrypt_seconds=float(metrics[rk.DECRYPT_SECONDS]),
        )


class CentralEvaluator:
    """Flower ``evaluate_fn``: scores each round's global model, records and checkpoints it."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        scorer: Scorer,
        history: RunHistory,
        run_dir: RunDirectory,
        server_state: Callable[[], dict[str, np.ndarray]] = dict,
    ) -> None:
        self.spec = saved_spec(cfg)  # checkpoints record what the starting weights were trained on
        self.thresholds = cfg.thresholds if cfg.multilabel else None
        self.server_state = server_state
        self.scorer = scorer
        self.history = history
        self.run_dir = run_dir
        self.latest: CentralEvaluation | None = None
        self.latest_arrays: ArrayRecord | None = None

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Score ``arrays``, record the round, write history, then checkpoint the model.

        The checkpoint comes last: a run stopped in between resumes from the round before
        (``resume-from`` keeps the history up to its checkpoint), so no round that
        ``history.json`` lacks is ever skipped.

        Raises:
            AggregateRejected: under HE, the evaluator found the decrypted aggregate not finite.
        """
        start = time.perf_counter()
        record = self.history.round(server_round)
        try:
            scored = self.scorer(arrays)
            if not np.isfinite(scored.probabilities).all():  # finite weights, but e.g. a negative variance
                raise AggregateRejected("the global model's predictions on the central test set are not finite")
        except AggregateRejected as err:
            log.warning("round %d: %s; the previous global model is kept", server_round, err)
            record["aggregate_rejected"] = str(err)
            self.history.flush()
            raise
        except RuntimeError as err:
            log.error("round %d central evaluation failed: %s", server_round, err)
            record["central_error"] = str(err)
            self.history.flush()
            self._checkpoint(server_round, arrays)
            return None
        report = evaluation_report(
            scored.y_true, scored.probabilities, self.spec.classes, loss=scored.loss, thresholds=self.thresholds
        )
        self.latest = CentralEvaluation(server_round, report, scored)
        record["central"] = {
            "accuracy": report["accuracy"],
            "balanced_accuracy": report["balanced_accuracy"],
            "loss": report["loss"],
            "macro_f1": report["macro"]["f1"],
            "macro_auroc": report["macro"]["auroc"],
            "skipped_images": scored.skipped,
        }
        record["timings"]["central_evaluate_s"] = time.perf_counter() - start
        if scored.decrypt_seconds is not None:
            record["timings"]["evaluator_decrypt_s"] = scored.decrypt_seconds
        self.history.flush()
        self._checkpoint(server_round, arrays)
        return MetricRecord({"accuracy": float(report["accuracy"]), "loss": float(scored.loss)})

    def _checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        self.run_dir.checkpoint(server_round, arrays, self.spec, server_state=self.server_state())
        self.latest_arrays = arrays
