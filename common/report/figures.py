"""The report's figures: one function per PNG under ``figures/``, drawn with matplotlib's Agg.

Figures are built on their own Agg canvas, never through ``pyplot``'s global state. Each
function returns a :class:`Figure`: the PNG path and its text alternative, which holds
the legend entries (so the HTML states in words what the legend shows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from common import records as rk
from common.report.content import Figure, fmt

__all__ = [
    "class_distribution",
    "confusion_matrices",
    "encryption_costs",
    "learning_curves",
    "new_figure",
    "pr_curves",
    "privacy_curve",
    "reliability_diagram",
    "roc_curves",
    "row_normalised",
    "save",
]

DPI = 100


def new_figure(width: float, height: float, *, rows: int = 1, cols: int = 1) -> tuple[MplFigure, Any]:
    """A figure on its own Agg canvas and its ``(rows, cols)`` array of axes."""
    fig = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def save(fig: MplFigure, path: Path, alt: str) -> Figure:
    """Write ``fig`` as a PNG at ``path`` and describe it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return Figure(path, alt)


def row_normalised(matrix: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall of each true class); an empty row stays 0."""
    counts = np.asarray(matrix, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _heatmap(ax: Any, values: np.ndarray, classes: Sequence[str], *, title: str, text: Sequence[str]) -> None:
    ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-12))
    k = len(classes)
    ax.set_xticks(range(k), classes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = values.max() / 2
    for (i, j), label in zip(np.ndindex(k, k), text, strict=True):
        ax.text(
            j, i, label, ha="center", va="center", fontsize=8, color="white" if values[i, j] > threshold else "black"
        )


def confusion_matrices(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Figure:
    """Counts and the row-normalised matrix side by side (rows = true class)."""
    counts = np.asarray(matrix, dtype=np.int64)
    normalised = row_normalised(counts)
    fig, axes = new_figure(10, 4.6, cols=2)
    _heatmap(axes[0, 0], counts.astype(float), classes, title="counts", text=[str(v) for v in counts.ravel()])
    _heatmap(axes[0, 1], normalised, classes, title="row-normalised", text=[f"{v:.2f}" for v in normalised.ravel()])
    return save(fig, path, "Confusion matrix: counts and row-normalised (each true class's row sums to 1).")


def _colour(i: int, n: int) -> Any:
    """Distinct line colours: matplotlib's 10-colour cycle, its 20-colour map beyond 10 curves."""
    return colormaps["tab20"](i % 20) if n > 10 else f"C{i}"


def _positive(y_true: np.ndarray, i: int) -> np.ndarray:
    """The images of class ``i`` (one vs rest), or those carrying label ``i`` (multi-label flags)."""
    return y_true[:, i] == 1 if y_true.ndim == 2 else y_true == i


def roc_curves(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], path: Path) -> Figure:
    """One-vs-rest ROC curve per class, AUC in the legend; classes without both outcomes are listed as n/a."""
    fig, axes = new_figure(5, 4.4)
    ax = axes[0, 0]
    labels = []
    for i, name in enumerate(classes):
        positive = _positive(y_true, i)
        if not 0 < positive.sum() < len(y_true):
            labels.append(f"{name} (AUC n/a)")
            continue
        fpr, tpr, _ = roc_curve(positive, probabilities[:, i])
        labels.append(f"{name} (AUC {roc_auc_score(positive, probabilities[:, i]):.3f})")
        ax.plot(fpr, tpr, label=labels[-1], color=_colour(i, len(classes)))
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)")
    kind = "per label" if y_true.ndim == 2 else "one vs rest"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), title=f"ROC curves, {kind}")
    ax.legend(loc="lower right", fontsize=8 if len(classes) <= 6 else 6)
    return save(fig, path, f"ROC curves, {kind}: " + "; ".join(labels) + ".")


def pr_curves(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str], path: Path) -> Figure:
    """One-vs-rest precision–recall curve per class, average precision (AP) in the legend."""
    fig, axes = new_figure(5, 4.4)
    ax = axes[0, 0]
    labels = []
    for i, name in enumerate(classes):
        positive = _positive(y_true, i)
        if not positive.any():
            labels.append(f"{name} (AP n/a)")
            continue
        precision, recall, _ = precision_recall_curve(positive, probabilities[:, i])
        labels.append(f"{name} (AP {average_precision_score(positive, probabilities[:, i]):.3f})")
        ax.step(recall, precision, where="post", label=labels[-1], color=_colour(i, len(classes)))
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("Precision–recall curves, one vs rest")
    ax.legend(loc="lower left", fontsize=8)
    return save(fig, path, "One-vs-rest precision–recall curves: " + "; ".join(labels) + ".")


def _series(rounds: Sequence[Mapping[str, Any]], get: Any) -> tuple[list[int], list[float]]:
    """``(round, value)`` pairs where ``get(record)`` is defined."""
    points = [(r["round"], get(r)) for r in rounds]
    kept = [(x, y) for x, y in points if y is not None]
    return [x for x, _ in kept], [float(y) for _, y in kept]


def _hospital_names(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({name for r in rounds for name in r.get("hospitals", {})})


def _hospital_value(name: str, key: str) -> Any:
    return lambda record: record.get("hospitals", {}).get(name, {}).get(key)


def learning_curves(rounds: Sequence[Mapping[str, Any]], path: Path) -> Figure:
    """Per round: central accuracy and loss, hospital-side accuracy, and each hospital's train loss."""
    fig, axes = new_figure(10, 7, rows=2, cols=2)
    central = [r for r in rounds if r.get("central")]
    acc, loss, fed, train = axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]
    for key, label in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy")):
        acc.plot(*_series(central, lambda r, k=key: r["central"].get(k)), marker="o", label=label)
    acc.set(title="central test set", ylabel="accuracy", ylim=(0, 1.02))
    loss.plot(*_series(central, lambda r: r["central"].get("loss")), marker="o", color="tab:red")
    loss.set(title="central test loss", ylabel="cross-entropy")
    fed.plot(
        *_series(rounds, lambda r: (r.get("federated_evaluate") or {}).get(rk.EVAL_ACCURACY)),
        marker="o",
        color="black",
        label="weighted mean",
    )
    names = _hospital_names(rounds)
    for name in names:
        fed.plot(*_series(rounds, _hospital_value(name, "eval_accuracy")), marker=".", alpha=0.6, label=name)
        train.plot(*_series(rounds, _hospital_value(name, "train_loss")), marker=".", label=name)
    fed.set(title="federated evaluation (hospitals' validation splits)", ylabel="accuracy", ylim=(0, 1.02))
    train.set(title="local training loss per hospital", ylabel="cross-entropy")
    for ax in (acc, loss, fed, train):
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    for ax in (acc, fed, train):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    final = central[-1]["central"] if central else {}
    alt = (
        f"Learning curves over {len(rounds) - 1} round(s): central accuracy, central loss, the hospitals' "
        f"validation accuracy and their training loss ({', '.join(names) or 'no hospital'}). "
        f"Final central accuracy {fmt(final.get('accuracy'))}."
    )
    return save(fig, path, alt)


def class_distribution(
    counts: Mapping[str, Sequence[int]], classes: Sequence[str], path: Path, *, skipped: Mapping[str, int]
) -> Figure:
    """Training images per class at each hospital, stacked (the non-IID split), skipped files in the labels."""
    names = sorted(counts)
    fig, axes = new_figure(max(6.0, 1.2 * len(names) + 3), 4.5)
    ax = axes[0, 0]
    bottom = np.zeros(len(names))
    for i, name in enumerate(classes):
        heights = np.array([counts[h][i] for h in names], dtype=float)
        ax.bar(names, heights, bottom=bottom, label=name)
        bottom += heights
    ax.set_xticks(range(len(names)), [f"{h}\n{skipped.get(h, 0)} skipped" for h in names], fontsize=8)
    ax.set(ylabel="training images", title="Class histogram per hospital")
    ax.legend(fontsize=8, title="class", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    described = "; ".join(
        f"{h}: " + ", ".join(f"{c} {n}" for c, n in zip(classes, counts[h], strict=True)) for h in names
    )
    return save(fig, path, f"Training images per class at each hospital: {described}.")


def privacy_curve(rounds: Sequence[Mapping[str, Any]], path: Path, *, target_epsilon: float | None) -> Figure:
    """Epsilon spent by each hospital after each round; a cross where it declined to train."""
    fig, axes = new_figure(7, 4.5)
    ax = axes[0, 0]
    for name in _hospital_names(rounds):
        line = ax.plot(*_series(rounds, _hospital_value(name, "epsilon")), marker="o", label=name)
        declined = [r["round"] for r in rounds if r.get("hospitals", {}).get(name, {}).get("declined")]
        if declined:
            spent = _series(rounds, _hospital_value(name, "epsilon"))[1]
            ax.scatter(declined, [spent[-1] if spent else 0.0] * len(declined), marker="x", color=line[0].get_color())
    if target_epsilon is not None:
        ax.axhline(target_epsilon, linestyle="--", color="gray", label=f"target ε = {target_epsilon:g}")
    ax.set(xlabel="round", ylabel="ε spent", title="Privacy budget spent per hospital (× = declined)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path, "Epsilon spent by each hospital after each round; a cross marks a round it declined.")


def encryption_costs(rounds: Sequence[Mapping[str, Any]], path: Path) -> Figure:
    """Per round: bytes the hospitals sent, and the seconds spent encrypting, aggregating and decrypting."""
    trained = [r for r in rounds if r["round"] > 0]
    fig, axes = new_figure(10, 4, cols=2)
    size, seconds = axes[0, 0], axes[0, 1]
    x = [r["round"] for r in trained]
    sent = [sum(h.get("bytes_sent") or 0 for h in r.get("hospitals", {}).values()) / 1e6 for r in trained]
    size.bar(x, sent, color="tab:purple")
    size.set(xlabel="round", ylabel="MB", title="update bytes sent by all hospitals")
    series = {
        "hospital encrypt (mean)": lambda r: _mean_of(r, "encrypt_seconds"),
        "hospital decrypt (mean)": lambda r: _mean_of(r, "decrypt_seconds"),
        "server aggregate": lambda r: r.get("timings", {}).get("aggregate_s"),
        "evaluator decrypt": lambda r: r.get("timings", {}).get("evaluator_decrypt_s"),
    }
    for label, get in series.items():
        x_s, y_s = _series(trained, get)
        if y_s:
            seconds.plot(x_s, y_s, marker="o", label=label)
    seconds.set(xlabel="round", ylabel="seconds", title="encryption and aggregation time")
    seconds.legend(fontsize=8)
    for ax in (size, seconds):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    total = sum(sent)
    return save(fig, path, f"Encrypted update size per round ({total:.1f} MB in all) and encryption timings.")


def _mean_of(record: Mapping[str, Any], key: str) -> float | None:
    values = [h[key] for h in record.get("hospitals", {}).values() if h.get(key) is not None]
    return float(np.mean(values)) if values else None


def reliability_diagram(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]],
    path: Path,
    *,
    what: tuple[str, str, str],
    bins: int,
) -> Figure:
    """Observed frequency against mean confidence per confidence bin, one panel per curve (before, after scaling).

    Args:
        curves: per panel title: the per-bin counts, mean confidences and mean outcomes (from
            ``reliability_bins``) and the ECE.
        what: the confidence, the outcome and what is counted, for the axis labels and the text alternative.
    """
    fig, axes = new_figure(4.2 * len(curves), 4.2, cols=len(curves))
    edges = np.linspace(0.0, 1.0, bins + 1)
    described = []
    for ax, (title, (count, confidence, outcome, ece)) in zip(axes[0], curves.items(), strict=True):
        used = count > 0
        ax.bar(edges[:-1][used], outcome[used], width=1.0 / bins, align="edge", color="tab:blue", alpha=0.7,
               edgecolor="white", label="observed")  # fmt: skip
        ax.plot(confidence[used], outcome[used], "o", color="tab:red", markersize=3, label="bin mean confidence")
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"confidence ({what[0]})", ylabel=f"observed ({what[1]})")
        ax.set_title(f"{title}: ECE {ece:.3f}")
        ax.legend(loc="upper left", fontsize=7)
        described.append(f"{title}: ECE {ece:.3f} over {int(count.sum())} {what[2]}")
    return save(
        fig, path, f"Reliability diagram ({bins} bins; {what[0]} against {what[1]}): " + "; ".join(described) + "."
    )
