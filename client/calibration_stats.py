"""Calibration on the key-holders' side: a hospital's statistics of its validation split, and under HE
the evaluator's reading of their encrypted sum.

A hospital scores its validation split once per request and sends fixed-size sums only
(``common.calibration_fit``): its NLL at every temperature of the grid, or histograms of its
calibrated scores. Under HE it encrypts them, scaled by 1 / n_total, so the server only adds
them; the evaluator, a key-holder, decrypts the sum and answers with the temperature or the
thresholds it reads there.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from client.crypto import decrypt_statistics, encrypt_statistics
from common import records as rk
from common.calibration_fit import (
    HISTOGRAMS,
    NLL,
    histogram_statistics,
    nll_statistics,
    positive_scores,
    read_sums,
    statistic_shapes,
)
from common.config import RunConfig
from common.data import ImageSet, build_transform
from common.experiment import preset_for
from common.he.codec import ParamLayout
from common.he.keys import HEContext
from common.inference import predict_logits
from common.precision import Precision

__all__ = ["hospital_statistics", "read_statistics_sum", "statistics_record"]


def _probabilities(logits: np.ndarray, temperature: list[float], *, multilabel: bool) -> np.ndarray:
    """The calibrated probabilities of logits ``(N, K)``: softmax(z / T), or sigmoid(z_l / T_l) per label."""
    z = logits / np.asarray(temperature, dtype=np.float64)
    if multilabel:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hospital_statistics(
    model: torch.nn.Module,
    val: ImageSet,
    *,
    cfg: RunConfig,
    config: ConfigRecord,
    device: torch.device,
    precision: Precision,
) -> dict[str, np.ndarray]:
    """This hospital's statistics for the message's stage, of the shapes :func:`statistic_shapes` fixes.

    Args:
        val: the hospital's validation split (may be empty: the sums are then zero).
        config: the message's config: the stage, ``nll`` (the NLL at every grid temperature) or
            ``histograms`` (score histograms after dividing the logits by its ``temperature``,
            one per label, or one).
    """
    stage = str(config[rk.CALIBRATION_STAGE])
    if stage not in (NLL, HISTOGRAMS):
        raise ValueError(f"calibration stage {stage!r}; expected {NLL!r} or {HISTOGRAMS!r}")
    transform = build_transform(preset_for(cfg), train=False)
    logits = predict_logits(model, val, transform, batch_size=cfg.batch_size, device=device, precision=precision)
    targets = val.labels.numpy()
    if stage == NLL:
        return nll_statistics(logits, targets, multilabel=cfg.multilabel)
    temperature = config.get(rk.TEMPERATURE, [1.0])
    probabilities = _probabilities(logits, list(temperature), multilabel=cfg.multilabel)  # type: ignore[arg-type]
    if cfg.multilabel:
        return histogram_statistics(probabilities, targets > 0)
    if not cfg.positive_classes:
        raise ValueError(f"score histograms asked for, but the classes {', '.join(cfg.class_names)} have no positive")
    positive = np.isin(targets, [cfg.class_names.index(c) for c in cfg.positive_classes])
    return histogram_statistics(positive_scores(probabilities, cfg.class_names, cfg.positive_classes), positive)


def statistics_record(stats: dict[str, np.ndarray], *, ctx: HEContext | None, config: ConfigRecord) -> ArrayRecord:
    """The statistics as the reply sends them: plaintext arrays, or (under HE) one encrypted payload.

    Under HE the values are scaled by 1 / n_total, the run's training images (the message's
    ``num-examples-total``).
    """
    if ctx is None:
        return ArrayRecord({name: Array(np.ascontiguousarray(v, dtype=np.float64)) for name, v in stats.items()})
    return encrypt_statistics(stats, ctx=ctx, scale=1.0 / float(config[rk.NUM_EXAMPLES_TOTAL]))  # type: ignore[arg-type]


def read_statistics_sum(arrays: ArrayRecord, *, ctx: HEContext, cfg: RunConfig, stage: str) -> ConfigRecord:
    """The evaluator's side under HE: decrypt the server's sum of ``stage``'s statistics and read it.

    Returns:
        What :func:`read_sums` reads there (the temperature or the thresholds and their
        validation figures): aggregates only.
    """
    shapes = statistic_shapes(stage, outputs=len(cfg.class_names), multilabel=cfg.multilabel)
    sums = decrypt_statistics(arrays, ctx=ctx, layout=ParamLayout.of_shapes(shapes))
    target = cfg.target_sensitivity or None
    return ConfigRecord(read_sums(stage, sums, target=target))
