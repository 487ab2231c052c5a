"""Fitting a temperature and thresholds from sums: what a hospital sends, and how the sums are read.

A hospital never sends a logit, a score or anything per image. For the temperature it sends
its validation negative log-likelihood summed at every temperature of the fixed grid
:data:`TEMPERATURES`; for a threshold, its histograms of the calibrated score over the fixed
bins :data:`SCORE_EDGES`, for its positive and its negative images apart. The shapes depend on
the grid, the bins and the labels only (:func:`statistic_shapes`), never on how many images a
hospital holds. The sums over hospitals are read by :func:`pick_temperature` (the minimum of
the pooled NLL, refined by a parabola through its neighbours) and :func:`pick_threshold`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "HISTOGRAMS",
    "NLL",
    "PICK_PREFIX",
    "SCORE_EDGES",
    "STAGES",
    "STATISTICS_KIND",
    "STATISTICS_SUM_KIND",
    "TEMPERATURES",
    "histogram_statistics",
    "nll_statistics",
    "pick_temperature",
    "pick_threshold",
    "positive_scores",
    "read_sums",
    "statistic_shapes",
]

TEMPERATURES = np.geomspace(0.05, 20.0, 161)
"""The temperatures every hospital scores its validation NLL at: 0.05 to 20, each 3.8% above the last."""

SCORE_EDGES = np.concatenate([[0.0], 1.0 / (1.0 + np.exp(-np.linspace(-10.0, 10.0, 999)))])
"""The histogram bins' lower edges, the candidate thresholds: 0, then 999 steps even in logit from 4.5e-5
to 1 - 4.5e-5 (0.005 apart around 0.5, finer towards 0 and 1). Bin ``b`` holds the scores in
``[SCORE_EDGES[b], SCORE_EDGES[b + 1])``, the last one those up to 1."""

STATISTICS_KIND = "statistics"
"""The kind of a hospital's encrypted statistics payload (under HE)."""
STATISTICS_SUM_KIND = "statistics-sum"
"""The kind of the server's encrypted sum of them, which only a key-holder reads."""

NLL = "nll"
HISTOGRAMS = "histograms"
STAGES = (NLL, HISTOGRAMS)
"""What a hospital is asked for: its NLL at every temperature, or its score histograms."""
PICK_PREFIX = "pick-"
"""Under HE, the stage ``pick-<stage>`` asks the evaluator to read the sum of ``<stage>``'s statistics."""


def statistic_shapes(stage: str, *, outputs: int, multilabel: bool) -> dict[str, tuple[int, ...]]:
    """The arrays a hospital sends at ``stage`` and their shapes: fixed by the grid, the bins and the labels.

    ``nll``: ``nll-sum`` ``(G,)`` (per label ``(L, G)``) and ``count`` ``(1,)``; ``histograms``:
    ``positives`` and ``negatives``, ``(B,)`` (per label ``(L, B)``).
    """
    rows = (outputs,) if multilabel else ()
    if stage == NLL:
        return {"nll-sum": (*rows, len(TEMPERATURES)), "count": (1,)}
    if stage == HISTOGRAMS:
        return {"positives": (*rows, len(SCORE_EDGES)), "negatives": (*rows, len(SCORE_EDGES))}
    raise ValueError(f"calibration stage {stage!r}; expected one of {', '.join(STAGES)}")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of logits ``z`` against 0/1 ``y``, elementwise and stable."""
    return np.maximum(z, 0.0) - z * y + np.log1p(np.exp(-np.abs(z)))


def nll_statistics(logits: np.ndarray, targets: np.ndarray, *, multilabel: bool) -> dict[str, np.ndarray]:
    """The validation NLL summed over images at every temperature of :data:`TEMPERATURES`, and the image count.

    Args:
        logits: ``(N, K)`` validation logits.
        targets: ``(N,)`` class indices, or ``(N, L)`` 0/1 flags.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets)
    sums = []
    for t in TEMPERATURES:
        if multilabel:
            sums.append(_bce(z / t, y.astype(np.float64)).sum(axis=0))
        else:
            sums.append(np.array(-_log_softmax(z / t)[np.arange(len(y)), y].sum()))
    return {"nll-sum": np.stack(sums, axis=-1), "count": np.array([float(len(z))])}


def _histogram(scores: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(SCORE_EDGES, scores, side="right") - 1
    return np.bincount(bins, minlength=len(SCORE_EDGES)).astype(np.float64)


def histogram_statistics(scores: np.ndarray, positive: np.ndarray) -> dict[str, np.ndarray]:
    """Histograms over :data:`SCORE_EDGES` of the scores of the positive and of the negative images.

    Args:
        scores: ``(N,)`` calibrated scores in [0, 1], or ``(N, L)`` one per label.
        positive: the same shape: whether each image (each image's label) is positive.
    """
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    flags = np.asarray(positive, dtype=bool)
    if s.ndim == 1:
        return {"positives": _histogram(s[flags]), "negatives": _histogram(s[~flags])}
    columns = [histogram_statistics(s[:, i], flags[:, i]) for i in range(s.shape[1])]
    return {key: np.stack([c[key] for c in columns]) for key in ("positives", "negatives")}


def pick_temperature(nll_sum: np.ndarray) -> float:
    """The temperature minimising a pooled NLL curve ``(G,)`` over :data:`TEMPERATURES`.

    The grid's minimum is refined by the vertex of the parabola through it and its two
    neighbours, in log temperature; at either end of the grid the end is kept.
    """
    f = np.asarray(nll_sum, dtype=np.float64)
    i = int(np.argmin(f))
    if i in (0, len(f) - 1):
        return float(TEMPERATURES[i])
    step = float(np.log(TEMPERATURES[1] / TEMPERATURES[0]))
    curvature = f[i - 1] - 2.0 * f[i] + f[i + 1]
    offset = 0.5 * step * (f[i - 1] - f[i + 1]) / curvature if curvature > 0 else 0.0
    return float(np.exp(np.log(TEMPERATURES[i]) + np.clip(offset, -step, step)))


def pick_threshold(positives: np.ndarray, negatives: np.ndarray, *, target: float | None) -> Mapping[str, float] | None:
    """The operating point on pooled score histograms ``(B,)``; ``None`` without both positives and negatives.

    With ``target``, the largest candidate threshold (a bin edge) whose pooled sensitivity is at
    least ``target``; without, the one with the best F1 (the largest on a tie). An image is
    positive when its score is at or above the threshold.

    Returns:
        ``threshold`` and, at it on the pooled validation images, ``sensitivity``, ``specificity``,
        ``positives`` and ``negatives`` (counts).
    """
    pos = np.rint(np.asarray(positives, dtype=np.float64))
    neg = np.rint(np.asarray(negatives, dtype=np.float64))
    tp = np.cumsum(pos[::-1])[::-1]  # positives at or above each edge
    fp = np.cumsum(neg[::-1])[::-1]
    n_pos, n_neg = float(tp[0]), float(fp[0])
    if n_pos == 0 or n_neg == 0:
        return None
    if target is not None:
        b = int(np.flatnonzero(tp / n_pos >= target)[-1])
    else:
        f1 = 2 * tp / (2 * tp + fp + (n_pos - tp))
        b = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return {
        "threshold": float(SCORE_EDGES[b]),
        "sensitivity": float(tp[b] / n_pos),
        "specificity": float(1.0 - fp[b] / n_neg),
        "positives": n_pos,
        "negatives": n_neg,
    }


def positive_scores(probabilities: np.ndarray, classes: Sequence[str], positive: Sequence[str]) -> np.ndarray:
    """``(N,)``: the summed probability of the ``positive`` classes of ``(N, K)`` class probabilities."""
    index = [classes.index(c) for c in positive]
    return np.asarray(probabilities, dtype=np.float64)[:, index].sum(axis=1)


def read_sums(stage: str, sums: Mapping[str, np.ndarray], *, target: float | None) -> dict[str, list[float]]:
    """What the summed statistics of every hospital say, per label (one entry without labels).

    ``nll``: ``temperature`` and ``images`` (the pooled validation images). ``histograms``:
    ``threshold``, ``sensitivity``, ``specificity`` (on the pooled validation images, at the
    threshold), ``positives`` and ``negatives``; the first three are NaN for a label whose pooled
    images are not both positive and negative.
    """
    if stage == NLL:
        rows = np.atleast_2d(sums["nll-sum"])
        return {"temperature": [pick_temperature(row) for row in rows], "images": [float(np.rint(sums["count"][0]))]}
    out: dict[str, list[float]] = {k: [] for k in ("threshold", "sensitivity", "specificity", "positives", "negatives")}
    for pos, neg in zip(np.atleast_2d(sums["positives"]), np.atleast_2d(sums["negatives"]), strict=True):
        point = pick_threshold(pos, neg, target=target)
        nan = float("nan")
        chosen = point or {"threshold": nan, "sensitivity": nan, "specificity": nan}
        for key in ("threshold", "sensitivity", "specificity"):
            out[key].append(float(chosen[key]))
        out["positives"].append(float(np.rint(pos).sum()))
        out["negatives"].append(float(np.rint(neg).sum()))
    return out
