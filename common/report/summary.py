"""The run summary, derived from ``config.json`` and ``history.json`` alone (so a report can be rebuilt)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.report.content import fmt

__all__ = [
    "dp_enabled",
    "he_enabled",
    "hospital_names",
    "latest_epsilon",
    "pretraining_text",
    "privacy_summary",
    "run_summary",
]

Rounds = Sequence[Mapping[str, Any]]


def hospital_names(rounds: Rounds) -> list[str]:
    """Every hospital that appears in any round, sorted."""
    return sorted({name for r in rounds for name in r.get("hospitals", {})})


def latest_epsilon(rounds: Rounds) -> dict[str, float]:
    """The epsilon each hospital reported last."""
    spent: dict[str, float] = {}
    for record in rounds:
        for name, hospital in record.get("hospitals", {}).items():
            if hospital.get("epsilon") is not None:
                spent[name] = float(hospital["epsilon"])
    return spent


def dp_enabled(config: Mapping[str, Any] | None, rounds: Rounds) -> bool:
    """DP-SGD was on: the config says so, or a hospital reported an epsilon."""
    return bool(config and config.get("dp-enabled")) or bool(latest_epsilon(rounds))


def he_enabled(config: Mapping[str, Any] | None) -> bool:
    """Encrypted FedAvg was on."""
    return bool(config and config.get("he-enabled"))


def privacy_summary(config: Mapping[str, Any] | None, rounds: Rounds) -> str:
    """DP settings and the epsilon each hospital has spent (its latest report)."""
    if not dp_enabled(config, rounds):
        return "DP off"
    settings = config or {}
    spent = latest_epsilon(rounds)
    per_hospital = ", ".join(f"{name} ε={eps:.2f}" for name, eps in sorted(spent.items())) or "no DP round completed"
    return (
        f"DP-SGD, target ε={settings.get('dp-target-epsilon', 'n/a')}, clip {settings.get('dp-max-grad-norm', 'n/a')}: "
        f"{per_hospital}"
    )


def pretraining_text(record: Mapping[str, Any]) -> str:
    """What a model was pretrained on (``model.json``'s ``pretrained_on``), as text.

    E.g. ``public-mri (800 images; 4 classes: a, b, c, d; 10 epochs; 96 px; 2026-05-01)``.
    """
    classes = list(record.get("classes") or [])
    parts = [
        f"{record.get('images')} images" if record.get("images") else "",
        f"{len(classes)} classes: {', '.join(classes)}" if classes else "",
        f"{record.get('epochs')} epochs" if record.get("epochs") else "",
        f"{record.get('image_size')} px" if record.get("image_size") else "",
        str(record.get("date") or ""),
        f"after {record['started_from']}" if record.get("started_from") else "",
    ]
    details = "; ".join(part for part in parts if part)
    return str(record.get("data", "unrecorded data")) + (f" ({details})" if details else "")


def _starting_weights(config: Mapping[str, Any], pretrained_on: Mapping[str, Any] | None) -> str:
    """``pretrained-weights`` and, where the run's ``model.json`` records it, what they were trained on."""
    value = config.get("pretrained-weights")
    if not value:
        return f"fresh (seed {config.get('seed', 'n/a')})"
    return f"{value}, pretrained on {pretraining_text(pretrained_on)}" if pretrained_on else str(value)


def _duration(history: Mapping[str, Any] | None) -> str:
    if not history or history.get("duration_s") is None:
        return "n/a (history.json has no run timing)"
    return f"{history['duration_s']:.1f} s ({history.get('started_at')} to {history.get('finished_at')})"


def run_summary(
    config: Mapping[str, Any] | None,
    history: Mapping[str, Any] | None,
    report: Mapping[str, Any],
    *,
    pretrained_on: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Dataset, hospitals, rounds, model and its starting weights, training, DP, HE and duration, as text.

    ``pretrained_on`` is the run's ``model.json`` record of what its starting weights were trained on.
    """
    if config is None:
        return {
            "classes": ", ".join(report["classes"]),
            "test images": str(report["n"]),
            "run settings": "unknown: no config.json in this directory",
        }
    rounds: Rounds = history["rounds"] if history else []
    names = hospital_names(rounds)
    central = [r["round"] for r in rounds if r.get("central")]
    last = f"round {central[-1]}" if central else "an unrecorded round"
    nodes = (history or {}).get("nodes")
    deployed = bool(nodes and nodes.get("data") == "own")
    return {
        "dataset": f"{config.get('dataset')} ("
        + ("each hospital's own data-path" if deployed else str(config.get("data-root")))
        + ")",
        "hospitals": _hospitals(names, nodes, None if deployed else _split(config, report)),
        "rounds": f"{config.get('num-server-rounds')} (report from {last})",
        "model": f"{config.get('model')} at {config.get('image-size')} px",
        "starting weights": _starting_weights(config, pretrained_on),
        "local training": f"{_local_work(config)}, {config.get('optimizer')} "
        f"lr {config.get('learning-rate')}, batch {config.get('batch-size')}",
        "precision": _precision(config, rounds),
        "privacy": privacy_summary(config, rounds),
        "encryption": "CKKS encrypted FedAvg (TenSEAL)" if he_enabled(config) else "HE off",
        "central test set": f"{report['n']} images, {fmt(_central_skipped(rounds))} unreadable or skipped",
        "duration": _duration(history),
    }


def _split(config: Mapping[str, Any], report: Mapping[str, Any]) -> str | None:
    """How the simulated hospitals were split: the partitioner, or whole patients (multi-label)."""
    if report.get("task") == "multilabel":
        return "whole patients at random"
    return config.get("partitioner")


def _hospitals(names: list[str], nodes: Mapping[str, Any] | None, partitioner: str | None) -> str:
    """How many hospitals took part, by name; with the node list, how many were expected and why any failed."""
    examples = {n["name"]: n["examples"] for n in (nodes or {}).get("nodes", []) if n["role"] == "hospital"}
    listed = [f"{name}: {examples[name]} images" if name in examples else name for name in names]
    text = f"{len(names)} ({', '.join(listed) or 'none recorded'})"
    if partitioner is not None:
        text += f", partitioner {partitioner}"
    failed = (nodes or {}).get("failed") or []
    if failed:
        expected = len([n for n in nodes["nodes"] if n["role"] == "hospital"]) + len(failed)  # type: ignore[index]
        reasons = "; ".join(f"node {f['node_id']}: {f['reason']}" for f in failed)
        text += f"; {len(failed)} of {expected} node(s) took no part ({reasons})"
    return text


def _local_work(config: Mapping[str, Any]) -> str:
    """What one hospital trains per round: ``local-steps`` batches, else ``local-epochs`` epochs."""
    steps = config.get("local-steps")
    return f"{steps} step(s) per round" if steps else f"{config.get('local-epochs')} epoch(s) per round"


def _precision(config: Mapping[str, Any], rounds: Rounds) -> str:
    """The ``precision`` key and what each hospital trained in (its latest round), e.g. ``auto: bf16 (hospital-0)``."""
    chosen: dict[str, str] = {}
    for record in rounds:
        for name, hospital in record.get("hospitals", {}).items():
            if hospital.get("precision"):
                chosen[name] = str(hospital["precision"])
    setting = str(config.get("precision", "fp32 (the run predates the precision key)"))
    if not chosen:
        return setting
    by_precision: dict[str, list[str]] = {}
    for name in sorted(chosen):
        by_precision.setdefault(chosen[name], []).append(name)
    return f"{setting}: " + "; ".join(f"{p} ({', '.join(names)})" for p, names in sorted(by_precision.items()))


def _central_skipped(rounds: Rounds) -> int | None:
    skipped = [r["central"].get("skipped_images") for r in rounds if r.get("central")]
    return skipped[-1] if skipped and skipped[-1] is not None else None
