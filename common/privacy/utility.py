"""The privacy–utility trade-off across runs: epsilon spent against central accuracy."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["compare_runs", "comparison_note", "config_differences", "epsilon_spent", "plot"]

# Keys that differ between runs of one comparison by design, or that do not change the model.
_EXPECTED_TO_DIFFER = frozenset(
    {"dp-enabled", "dp-target-epsilon", "dp-noise-multiplier", "dp-delta", "run-name", "output-dir", "he-keys-dir"}
)


def _read(run_dir: Path, name: str) -> Any:
    path = run_dir / name
    if not path.is_file():
        raise ValueError(f"{run_dir} has no {name}; expected a finished medsilo run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


def epsilon_spent(history: dict[str, Any]) -> float | None:
    """The largest epsilon any hospital reported (its latest report counts)."""
    latest: dict[str, float] = {}
    for record in history.get("rounds", []):
        for name, hospital in record.get("hospitals", {}).items():
            if hospital.get("epsilon") is not None:
                latest[name] = float(hospital["epsilon"])
    return max(latest.values()) if latest else None


def compare_runs(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per run: DP setting, epsilon spent (max over hospitals) and central metrics.

    Rows come back in reading order of the trade-off: runs without DP first, then by
    decreasing target epsilon (weaker to stronger privacy).

    Raises:
        ValueError: fewer than two runs, or a directory that is not a finished run.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"a privacy–utility comparison needs at least 2 run directories; got {len(run_dirs)}")
    rows = []
    for run_dir in map(Path, run_dirs):
        config, report, history = (_read(run_dir, n) for n in ("config.json", "report.json", "history.json"))
        dp = bool(config.get("dp-enabled", False))
        rows.append(
            {
                "run": run_dir.name,
                "dp_enabled": dp,
                "target_epsilon": float(config["dp-target-epsilon"]) if dp else None,
                "epsilon_spent": epsilon_spent(history) if dp else None,
                "accuracy": report["accuracy"],
                "balanced_accuracy": report["balanced_accuracy"],
                "macro_f1": report["macro"]["f1"],
                "config": config,
            }
        )
    rows.sort(key=lambda r: (r["dp_enabled"], -(r["target_epsilon"] or 0.0)))
    return rows


def config_differences(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Run-config keys, other than the DP ones, on which the compared runs disagree."""
    keys = sorted({k for r in rows for k in r["config"]} - _EXPECTED_TO_DIFFER)
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in rows}) > 1]


def comparison_note(rows: Sequence[dict[str, Any]]) -> str:
    """One sentence: whether the compared runs differ only in their DP keys."""
    differs = config_differences(rows)
    if differs:
        return f"Not a like-for-like comparison: the runs also differ in {', '.join(differs)}."
    return "The runs share every setting except the DP keys."


def plot(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Central accuracy against epsilon spent (log scale); runs without DP as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    private = [r for r in rows if r["dp_enabled"] and r["epsilon_spent"] is not None]
    if private:
        private = sorted(private, key=lambda r: r["epsilon_spent"])
        ax.plot([r["epsilon_spent"] for r in private], [r["accuracy"] for r in private], "o-", label="DP-SGD")
        for r in private:
            ax.annotate(r["run"], (r["epsilon_spent"], r["accuracy"]), textcoords="offset points", xytext=(4, 4))
        ax.set_xscale("log")
    for r in rows:
        if not r["dp_enabled"]:
            ax.axhline(r["accuracy"], linestyle="--", color="gray", label=f"{r['run']} (no DP)")
    ax.set_xlabel("ε spent (max over hospitals, log scale)")
    ax.set_ylabel("central accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Privacy–utility trade-off")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
