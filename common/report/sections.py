"""The report sections built from ``predictions.csv`` and ``history.json``, each with its figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import records as rk
from common.privacy.utility import comparison_note, plot
from common.report import figures
from common.report.content import Block, Cell, Figure, Note, Paragraph, Section, Table, fmt
from common.report.inputs import Predictions
from common.report.summary import hospital_names, privacy_summary

__all__ = [
    "confusion_section",
    "curves_section",
    "data_section",
    "declines_section",
    "encryption_section",
    "has_declines_or_steps",
    "learning_section",
    "privacy_section",
    "privacy_utility_section",
]

Rounds = Sequence[Mapping[str, Any]]


def _cells(*values: float | int | None, digits: int = 3) -> tuple[Cell, ...]:
    return tuple(Cell(fmt(v, digits)) for v in values)


def confusion_section(report: Mapping[str, Any], out: Path) -> Section:
    """The confusion matrix as counts and row-normalised."""
    figure = figures.confusion_matrices(report["confusion_matrix"], report["classes"], out / "confusion_matrix.png")
    return Section("Confusion matrix", (figure,))


def curves_section(classes: Sequence[str], predictions: Predictions | None, out: Path) -> Section:
    """One-vs-rest ROC and precision–recall curves, from ``predictions.csv``."""
    title = "ROC and precision–recall curves"
    if predictions is None:
        return Section(title, (Note("Left out: this directory has no predictions.csv."),))
    y, probs = predictions.y_true, predictions.probabilities
    return Section(
        title,
        (
            figures.roc_curves(y, probs, classes, out / "roc_curves.png"),
            figures.pr_curves(y, probs, classes, out / "pr_curves.png"),
        ),
    )


def learning_section(rounds: Rounds, out: Path) -> Section:
    """Per-round metrics and timings, and the learning curves."""
    header = (
        "round",
        "central accuracy",
        "balanced accuracy",
        "central loss",
        "macro F1",
        "macro AUROC",
        "hospitals' accuracy",
        "hospitals trained",
        "failures",
        "train s",
        "aggregate s",
        "hospital eval s",
        "central eval s",
    )
    rows = []
    for record in rounds:
        central = record.get("central") or {}
        timings = record.get("timings", {})
        trained = sum(1 for h in record.get("hospitals", {}).values() if h.get("examples"))
        rows.append(
            (
                Cell(str(record["round"])),
                *_cells(
                    central.get("accuracy"),
                    central.get("balanced_accuracy"),
                    central.get("loss"),
                    central.get("macro_f1"),
                    central.get("macro_auroc"),
                    (record.get("federated_evaluate") or {}).get(rk.EVAL_ACCURACY),
                    trained,
                    len(record.get("failures", [])),
                ),
                *_cells(
                    *(timings.get(k) for k in ("train_s", "aggregate_s", "federated_evaluate_s", "central_evaluate_s")),
                    digits=1,
                ),
            )
        )
    return Section(
        "Learning curves",
        (
            Note("Round 0 is the initial model. Timings are wall-clock seconds on the server."),
            Table(header, tuple(rows)),
            figures.learning_curves(rounds, out / "learning_curves.png"),
        ),
    )


def data_section(rounds: Rounds, classes: Sequence[str], out: Path) -> Section:
    """Class histogram per hospital (the non-IID split) and unreadable or skipped files."""
    counts: dict[str, list[int]] = {}
    skipped: dict[str, int] = {}
    for record in rounds:
        for name, hospital in record.get("hospitals", {}).items():
            if hospital.get("class_counts") is not None:
                counts.setdefault(name, [int(c) for c in hospital["class_counts"]])
            if hospital.get("skipped_images") is not None:
                skipped[name] = int(hospital["skipped_images"])
    title = "Data"
    if not counts:
        return Section(title, (Note("Left out: no hospital reported its class counts in history.json."),))
    bad = [name for name, c in counts.items() if len(c) != len(classes)]
    if bad:
        raise ValueError(f"history.json: class counts of {', '.join(bad)} do not have {len(classes)} entries")
    rows = tuple((Cell(name), *_cells(sum(c), *c, skipped.get(name))) for name, c in sorted(counts.items()))
    return Section(
        title,
        (
            Paragraph(("Training images per class at each hospital; unreadable or skipped files are counted.",)),
            Table(("hospital", "training images", *classes, "unreadable or skipped"), rows),
            figures.class_distribution(counts, classes, out / "class_distribution.png", skipped=skipped),
        ),
    )


def _declines(history: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Every decline on record: ``(round, hospital, reason)``, those of rounds a resume abandoned included."""
    found = []
    for resume in history.get("resumed", []):
        for d in resume.get("declined", []):
            found.append(
                (f"{d['round']} (abandoned: resumed after {resume['after_round']})", d["hospital"], d["reason"])
            )
    for record in history.get("rounds", []):
        for name, hospital in sorted(record.get("hospitals", {}).items()):
            if hospital.get("declined"):
                found.append((str(record["round"]), name, str(hospital["declined"])))
    return found


def has_declines_or_steps(history: Mapping[str, Any] | None) -> bool:
    """Whether a run declined any round or its hospitals reported global steps (``update-norm-limit`` on)."""
    if history is None:
        return False
    steps = any("step_ratio" in h for r in history.get("rounds", []) for h in r.get("hospitals", {}).values())
    return steps or bool(_declines(history))


def declines_section(config: Mapping[str, Any] | None, history: Mapping[str, Any]) -> Section:
    """Every round a hospital declined, with why, and the largest global step the hospitals' guard saw."""
    ratios = [
        float(h["step_ratio"])
        for r in history.get("rounds", [])
        for h in r.get("hospitals", {}).values()
        if h.get("step_ratio") is not None
    ]
    limit = (config or {}).get("update-norm-limit")
    guard = f"Global-step guard: update-norm-limit {limit if limit is not None else 'n/a'}" + (
        f"; the largest step ratio a hospital saw was {max(ratios):.2f}." if ratios else "; no step was judged yet."
    )
    declines = _declines(history)
    rows = tuple((Cell(r), Cell(name), Cell(reason)) for r, name, reason in declines)
    listing: Block = Table(("round", "hospital", "reason"), rows) if rows else Note("No hospital declined a round.")
    why = (
        "A hospital declines a round when its privacy budget is spent, its training diverged, or the global model's "
        "step from the one it last trained from exceeds update-norm-limit times the median of its last 5 steps."
    )
    return Section("Declined rounds", (Paragraph((why,)), Paragraph((guard,)), listing))


def privacy_section(config: Mapping[str, Any] | None, rounds: Rounds, out: Path) -> Section:
    """DP-SGD: the settings and the epsilon each hospital spent after each round."""
    trained = [r for r in rounds if r["round"] > 0]
    names = hospital_names(trained)
    rows = []
    for record in trained:
        cells = []
        for name in names:
            hospital = record.get("hospitals", {}).get(name, {})
            eps = hospital.get("epsilon")
            cells.append(Cell("declined" if hospital.get("declined") else (f"{eps:.3f}" if eps is not None else "-")))
        rows.append((Cell(str(record["round"])), *cells))
    latest = [h for r in trained for h in r.get("hospitals", {}).values() if h.get("noise_multiplier") is not None]
    settings = Paragraph((privacy_summary(config, rounds) + ".",))
    blocks: list[Block] = [settings]
    if latest:
        h = latest[-1]
        blocks.append(
            Paragraph(
                (
                    f"Noise multiplier {fmt(h.get('noise_multiplier'))}, sample rate {fmt(h.get('sample_rate'), 4)}, "
                    f"delta {h.get('delta')}, clipping norm {h.get('max_grad_norm')}.",
                )
            )
        )
    target = (config or {}).get("dp-target-epsilon")
    blocks += [
        Table(("round", *names), tuple(rows)),
        figures.privacy_curve(rounds, out / "privacy_epsilon.png", target_epsilon=target),
    ]
    return Section("Privacy: epsilon spent per hospital", tuple(blocks))


def encryption_section(rounds: Rounds, out: Path) -> Section:
    """Encrypted FedAvg: bytes sent and seconds spent per round."""
    trained = [r for r in rounds if r["round"] > 0]
    rows = []
    for record in trained:
        hospitals = list(record.get("hospitals", {}).values())
        sent = [h["bytes_sent"] for h in hospitals if h.get("bytes_sent") is not None]
        enc = [h["encrypt_seconds"] for h in hospitals if h.get("encrypt_seconds") is not None]
        dec = [h["decrypt_seconds"] for h in hospitals if h.get("decrypt_seconds") is not None]
        timings = record.get("timings", {})
        rows.append(
            (
                Cell(str(record["round"])),
                *_cells(
                    len(sent),
                    sum(sent) / 1e6,
                    sum(enc) / len(enc) if enc else None,
                    sum(dec) / len(dec) if dec else None,
                    timings.get("aggregate_s"),
                    timings.get("evaluator_decrypt_s"),
                    digits=2,
                ),
            )
        )
    header = (
        "round",
        "updates",
        "MB sent",
        "encrypt s (mean)",
        "hospital decrypt s (mean)",
        "server aggregate s",
        "evaluator decrypt s",
    )
    return Section(
        "Encryption",
        (
            Paragraph(
                (
                    "CKKS encrypted FedAvg (TenSEAL): the server summed the hospitals' ciphertexts and never held a "
                    "plaintext update or the secret key.",
                )
            ),
            Table(header, tuple(rows)),
            figures.encryption_costs(rounds, out / "encryption.png"),
        ),
    )


def privacy_utility_section(rows: Sequence[dict[str, Any]], out: Path) -> Section:
    """Central metrics against the epsilon spent, one row per run (``compare_runs``' rows)."""
    baseline = next((r["accuracy"] for r in rows if not r["dp_enabled"]), None)
    table = tuple(
        (
            Cell(r["run"]),
            Cell("on" if r["dp_enabled"] else "off"),
            *_cells(r["target_epsilon"], digits=1),
            *_cells(r["epsilon_spent"], r["accuracy"]),
            *_cells(r["accuracy"] / baseline if baseline else None, digits=2),
            *_cells(r["balanced_accuracy"], r["macro_f1"]),
        )
        for r in rows
    )
    header = (
        "run",
        "DP",
        "target ε",
        "ε spent (max over hospitals)",
        "accuracy",
        "vs no DP",
        "balanced accuracy",
        "macro F1",
    )
    note = comparison_note(rows)
    points = "; ".join(f"{r['run']}: ε spent {fmt(r['epsilon_spent'])}, accuracy {fmt(r['accuracy'])}" for r in rows)
    figure = Figure(plot(rows, out / "privacy_utility.png"), f"Central accuracy against epsilon spent: {points}.")
    return Section("Privacy–utility trade-off", (Table(header, table), Note(note), figure))
