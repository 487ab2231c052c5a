"""The DP-utility figure: central accuracy against the epsilon spent, one line per starting point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_utility"]


def plot_utility(assembled: dict[str, Any], path: Path) -> Path:
    """One panel per dataset: each start's private runs as a line over epsilon, its run without DP dashed."""
    datasets = [name for name, rows in assembled.items() if isinstance(rows, dict) and "/" in next(iter(rows), "")]
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(6 * max(len(datasets), 1), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=False):
        starts: dict[str, dict[str, Any]] = {}
        for name, row in assembled[dataset].items():
            if " · " in name:  # a recipe variant: the table shows it
                continue
            start, setting = name.split("/")
            starts.setdefault(start, {})[setting] = row
        for i, (start, settings) in enumerate(starts.items()):
            colour = f"C{i}"
            private = sorted((row["epsilon_spent"], row["last2_mean"]) for setting, row in settings.items()
                             if setting != "no-dp" and row.get("epsilon_spent") is not None)  # fmt: skip
            if private:
                ax.plot(*zip(*private, strict=True), "o-", color=colour, label=f"{start}, DP-SGD")
            if "no-dp" in settings:
                ax.axhline(settings["no-dp"]["last2_mean"], color=colour, linestyle="--", label=f"{start}, no DP")
            alone = next((row["start_accuracy"] for row in settings.values() if row.get("start_accuracy")), None)
            if alone is not None and start != "scratch":
                ax.axhline(alone, color=colour, linestyle=":", label=f"{start}, the start alone")
        ax.set_xscale("log")
        ax.set_xlabel("ε spent (max over hospitals, δ = 1e-5, log scale)")
        ax.set_ylabel("central accuracy, mean of the last 2 rounds")
        ax.set_ylim(0, 1)
        ax.set_title(dataset)
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
