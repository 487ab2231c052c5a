"""The results page's tables, built from the benchmarks' JSON: one builder per benchmark, each figure formatted by kind.

``section(name, data)`` is the Markdown that ``docs/results_hook.py`` puts where a page says
``<!-- generated: results/<name> -->``. It opens with the JSON's file name and the machine, date and
commit the JSON records (per row for the accuracy benchmark). A key or row missing from the JSON
shows as "—"; nothing here raises on a JSON of another shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BUILDERS", "builder", "section"]

MISSING = "—"
PROVENANCE = ("machine", "date", "commit")

Column = tuple[str, str, str]
"""A figure: its key (dotted for nested keys), its kind (how it is formatted) and its unit or meaning."""


def short_commit(commit: Any) -> str:
    """``195c354+uncommitted changes`` -> ``195c354 (uncommitted changes)``; a full hash to its first 7 digits."""
    head, _, rest = str(commit).partition("+")
    return head[:7] + (f" ({rest})" if rest else "")


FORMATS: dict[str, Callable[[Any], str]] = {
    "ratio": "{:.2f}".format,
    "accuracy": "{:.4f}".format,
    "seconds": "{:.1f}".format,
    "small": "{:.4f}".format,  # small quantities: seconds per hospital-round, per million values
    "rate": "{:.1f}".format,
    "amount": "{:.2f}".format,  # GiB, bytes per parameter
    "error": "{:.1e}".format,
    "epsilon": "{:.3f}".format,
    "count": "{:,.0f}".format,
    "points": "{:+.1f}".format,
    "text": str,
    "date": lambda date: str(date)[:10],
    "commit": short_commit,
}


def fmt(value: Any, kind: str) -> str:
    """``value`` as its kind is shown; ``None`` as "—", a flag as yes/no, a value of the wrong type as it is."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return FORMATS[kind](value)
    except (TypeError, ValueError):
        return str(value)


def get(data: Any, path: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; ``None`` where any step is missing."""
    for key in path.split("."):
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


def mappings(data: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """The ``(key, value)`` pairs of ``data`` whose value is an object (rows of a nested JSON), in order."""
    return [(str(k), v) for k, v in data.items() if isinstance(v, Mapping)] if isinstance(data, Mapping) else []


def labelled(data: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """:func:`mappings` with each key shown as code: the rows of a table."""
    return [(f"`{key}`", row) for key, row in mappings(data)]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (``|`` inside a cell escaped)."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def key_table(data: Any, columns: list[Column]) -> str:
    """One row per key: the key, its value and its meaning."""
    rows = [[f"`{path}`", fmt(get(data, path), kind), meaning] for path, kind, meaning in columns]
    return table(["key", "value", "unit / meaning"], rows)


def rows_table(first: str, rows: list[tuple[str, Mapping[str, Any]]], columns: list[Column]) -> str:
    """One row per object, one column per key, then a legend of what each key means."""
    header = [first, *(f"`{path}`" for path, _, _ in columns)]
    body = [[label, *(fmt(get(row, path), kind) for path, kind, _ in columns)] for label, row in rows]
    legend = "\n".join(f"- `{path}`: {meaning}" for path, _, meaning in columns)
    return f"{table(header, body or [[MISSING] * len(header)])}\n\n{legend}"


def source(name: str) -> str:
    """The opening of every section: which file its figures come from."""
    return f"From `benchmarks/results/{name}.json`: "


def provenance(name: str, data: Any) -> str:
    """``From ...: measured on <machine> (<cpus> CPUs, device <device>), <date>, commit <commit>.``"""
    data = data if isinstance(data, Mapping) else {}
    extras = [f"{data['cpus']} CPUs" if "cpus" in data else "", f"device {data['device']}" if "device" in data else ""]
    extra = ", ".join(e for e in extras if e)
    line = (
        f"{source(name)}measured on {fmt(data.get('machine'), 'text')}{f' ({extra})' if extra else ''}, "
        f"{fmt(data.get('date'), 'date')}, commit {fmt(data.get('commit'), 'commit')}."
    )
    missing = [key for key in PROVENANCE if data.get(key) is None]
    return line + (f" The JSON does not record its {', '.join(missing)}." if missing else "")


def settings(data: Any, keys: tuple[str, ...]) -> str:
    """``key=value`` for those of ``keys`` that ``data`` holds, as code."""
    return " ".join(f"`{key}={get(data, key)}`" for key in keys if get(data, key) is not None) or MISSING


TRAIN_THROUGHPUT: list[Column] = [
    ("auto_precision", "text", 'what `precision = "auto"` chose on this machine'),
    ("fp32_img_s", "rate", "images/s, medsilo's training loop in float32 (ResNet-18, fastest of the repeats)"),
    ("auto_img_s", "rate", 'images/s, the same under `precision = "auto"`'),
    ("speedup", "ratio", "ratio: `auto_img_s` ÷ `fp32_img_s`"),
    ("precision_size", "count", "px, image size of those runs"),
    ("epoch_s_fp32", "seconds", "s, the first float32 epoch of the training set, every image decoded again"),
    ("epoch_s_auto", "seconds", "s, decoding the set once plus the first `auto` epoch"),
    ("epoch_ratio", "ratio", "ratio: `epoch_s_fp32` ÷ `epoch_s_auto`"),
    ("accuracy_fp32", "accuracy", "test accuracy, mean of the last 2 epochs, float32"),
    ("accuracy_auto", "accuracy", "the same under `auto` (same seed)"),
    ("compile_ratio", "ratio", "ratio: epoch time under `torch.compile` (compiling included) ÷ plain `auto`"),
    ("ratio", "ratio", "ratio: medsilo's loop ÷ a hand-written PyTorch loop, images/s (lowest over the models)"),
    ("dp_ratio", "ratio", "ratio: the same for DP-SGD (medsilo's `bk` clipping ÷ Opacus' per-sample hooks)"),
    ("size", "count", "px, image size of the loop comparison"),
    ("batch", "count", "batch size of the loop comparison"),
]

HE_OVERHEAD: list[Column] = [
    ("model", "text", "the model whose updates are encrypted"),
    ("params", "count", "values in one update"),
    ("bytes_per_param_up", "amount", "bytes per value on the wire: one hospital's encrypted update"),
    ("bytes_per_param_down", "amount", "bytes per value: the encrypted aggregate every hospital gets"),
    ("max_abs_error_10", "error", "largest absolute error, decrypted aggregate against float64 FedAvg, 10 hospitals"),
    ("max_abs_error_100", "error", "the same, 100 hospitals"),
    ("server_peak_rss_gib", "amount", "GiB, peak RSS of a server process aggregating 10 updates pulled one at a time"),
    ("server_rss_after_imports_gib", "amount", "GiB, the same process after the ServerApp's imports"),
    ("encrypt_s_per_mparam", "small", "s per million values to encrypt (one hospital)"),
    ("decrypt_s_per_mparam", "small", "s per million values to decrypt"),
    ("round_time_ratio_full", "ratio", "ratio: one encrypted round ÷ one plaintext round, side by side (`round_full`)"),
    ("round_full.he_s", "seconds", "s, the encrypted round"),
    ("round_full.plain_s", "seconds", "s, the plaintext round"),
    ("round_full.workload", "text", "what that round trained"),
    ("round_time_ratio_default", "ratio", "ratio: the same at the default run's workload (`round_default`)"),
    ("round_default.he_s", "seconds", "s, the encrypted round"),
    ("round_default.plain_s", "seconds", "s, the plaintext round"),
    ("round_default.workload", "text", "what that round trained"),
]

WORKLOAD = ("dataset", "model", "size", "batch", "hospitals", "rounds", "epochs", "seed")
FL_OVERHEAD: list[Column] = [
    ("wall_ratio", "ratio", "ratio: federated ÷ centralised wall time, the same work back to back"),
    ("centralised.wall_s", "seconds", "s, centralised: the whole run"),
    ("centralised.training_s", "seconds", "s, centralised: training"),
    ("centralised.evaluation_s", "seconds", "s, centralised: scoring the test set"),
    ("federated.wall_s", "seconds", "s, federated: the whole `flwr run`"),
    ("federated.launch_s", "seconds", "s, `flwr run` to the ServerApp starting (SuperLink, simulation engine, Ray)"),
    ("federated.server_setup_s", "seconds", "s, ServerApp time outside the rounds (describing the hospitals, actors)"),
    ("federated.hospitals_training_s", "seconds", "s, the hospitals' own training ÷ how many train at once"),
    ("federated.hospitals_training_at_once", "count", "hospitals training at once"),
    ("federated.round_fixed_s", "seconds", "s, the rest of the rounds' training steps: messages, decoding, set-up"),
    ("federated.aggregation_s", "seconds", "s, aggregation"),
    ("federated.evaluation_s", "seconds", "s, central evaluation after every round"),
    ("federated.report_s", "seconds", "s, writing the report"),
    ("federated.exit_s", "seconds", "s, from the report to the end of `flwr run`"),
    ("centralised.final_accuracy", "accuracy", "test accuracy at the end, centralised (one seed: not a comparison)"),
    ("federated.final_accuracy", "accuracy", "the same, federated"),
]

SCALE: list[Column] = [
    ("completed", "text", "whether the run finished"),
    ("peak_rss_gib", "amount", "GiB, peak RSS summed over every process of the run's Flower home"),
    ("s_per_round", "amount", "s per round: the sum of a round's steps in `history.json`"),
    ("s_per_hospital_round", "small", "s per round ÷ hospitals"),
    ("growth", "ratio", "ratio: `s_per_hospital_round` ÷ the previous row's (computed here)"),
    ("steps_s.train_s", "amount", "s per round, the training step"),
    ("steps_s.aggregate_s", "amount", "s per round, aggregation"),
    ("steps_s.central_evaluate_s", "amount", "s per round, central evaluation"),
    ("wall_s", "seconds", "s, the whole `flwr run`"),
]

ACCURACY: list[Column] = [
    ("epochs", "count", "epochs of data"),
    ("rounds", "count", "federated rounds over those epochs"),
    ("final", "accuracy", "accuracy after the last epoch"),
    ("last2_mean", "accuracy", "accuracy, mean of the last 2 epochs"),
    ("last2_mean_clean", "accuracy", "the same on the test images with no duplicate or near-twin in `train/`"),
    ("sensitivity", "accuracy", "PNEUMONIA recall, mean of the last 2 epochs"),
    ("specificity", "accuracy", "NORMAL recall, mean of the last 2 epochs"),
    ("macro_f1", "accuracy", "macro F1 of the final model"),
    ("gap_pt", "points", "points: `last2_mean` − centralised `last2_mean` (computed here)"),
    ("machine", "text", "the CPU the row was measured on"),
    ("date", "date", "when (UTC)"),
    ("commit", "commit", "the code measured"),
]
OPTIONAL = {"rounds", "last2_mean_clean", "sensitivity", "specificity"}  # a column only where some row has it
ORDER = (
    "centralised",
    "best-iid",
    "best-dirichlet",
    "fedavg-iid",
    "fedavg-dirichlet",
    "local-only-mean",
    "local-only-worst",
)

DP_UTILITY: list[Column] = [
    ("last2_mean", "accuracy", "central accuracy, mean of the last 2 rounds (mean over `seeds`)"),
    ("gap_pt", "points", "points against the same start without DP"),
    ("start_accuracy", "accuracy", "the starting weights' own accuracy, before round 1"),
    ("auroc_macro", "accuracy", "macro AUROC, mean of the last 2 rounds"),
    ("epsilon_spent", "epsilon", "ε spent, the most over the hospitals (δ = 1e-5 each; —: no DP)"),
    ("final", "accuracy", "central accuracy, last round (first seed)"),
    ("seeds", "text", "seeds run"),
    ("machine", "text", "CPU the run trained on"),
    ("date", "date", "when it landed"),
    ("commit", "commit", "the code that ran it"),
]
START_PROBE: list[Column] = [
    ("test_auroc_macro", "accuracy", "macro AUROC of the logistic probe on `test/`"),
    ("test_accuracy", "accuracy", "its accuracy on `test/` (threshold 0.5)"),
    ("C", "text", "inverse regularisation, chosen on the validation carve"),
    ("features", "count", "features the head receives"),
]
DP_RECIPE = ("model", "norm-layer", "image-size", "num-server-rounds", "local-epochs", "batch-size", "optimizer",
             "learning-rate", "train-from-block", "dp-optimizer", "dp-learning-rate", "dp-sample-rate", "dp-clipping",
             "dp-max-grad-norm", "dp-augmentation-multiplicity", "dp-ema-decay")

ROBUSTNESS: list[Column] = [
    ("hostile", "text", "what hospital 0 sends (—: nothing harmful)"),
    ("keys.strategy", "text", "the server's aggregation"),
    ("keys.he-enabled", "text", "under HE, with the hospitals' guard at its default"),
    ("final", "accuracy", "central accuracy, last round run"),
    ("last2_mean", "accuracy", "central accuracy, mean of the last 2 rounds run"),
    ("rounds_completed", "count", "rounds with a central evaluation"),
    ("declines", "count", "rounds in which a hospital declined the global model (computed here)"),
    ("status", "text", "how the run ended (`stopped`: a majority declined, with one line)"),
    ("seconds", "seconds", "s, the whole run, on a machine shared with other jobs: not a timing"),
    ("machine", "text", "the CPU it ran on (the file's header names the last run's)"),
]

VERDICTS: list[Column] = [
    ("clean_last2_mean", "accuracy", "the clean run's accuracy, mean of the last 2 rounds"),
    ("scaled.fedavg_drop_points", "points", "points: clean − plain FedAvg under `scaled`"),
    ("scaled.best_robust", "text", "the best robust strategy under `scaled`"),
    ("scaled.best_robust_gap_points", "points", "points: clean − that strategy"),
    ("label-flip.fedavg_drop_points", "points", "points: clean − plain FedAvg under `label-flip`"),
    ("label-flip.best_robust", "text", "the best robust strategy under `label-flip`"),
    ("label-flip.best_robust_gap_points", "points", "points: clean − that strategy"),
]

DP_OVERHEAD: list[Column] = [
    ("throughput_ratio", "ratio", "ratio: images/s without DP ÷ with DP-SGD in `mode`"),
    ("mode", "text", "the DP-SGD mode medsilo trains with: the fastest that ran correctly"),
    ("non_dp_images_per_s", "rate", "images/s without DP (mean of a run before and after the DP modes)"),
]
DP_MODES: list[Column] = [
    ("correct", "text", "one noise-free step matches per-example clipping computed independently"),
    ("images_per_s", "rate", "images/s with DP-SGD"),
    ("ratio", "ratio", "ratio: non-DP images/s ÷ this mode's"),
    ("rel_error", "error", "relative max-abs error against that reference"),
]

DP_PRECISION: list[Column] = [
    ("norm_rel_err", "error", "largest relative error of the per-example gradient norms against float32"),
    ("sum_rel_err", "error", "relative error of the clipped sum against float32"),
    ("max_contribution_over_c", "small", "largest norm one example adds ÷ the clipping bound C (above 1: broken)"),
    ("exact_to_bf16_rounding", "text", "within bf16's rounding"),
]


def train_throughput(name: str, data: Any) -> str:
    """The precision and loop-comparison figures."""
    return f"{provenance(name, data)}\n\n{key_table(data, TRAIN_THROUGHPUT)}"


def he_overhead(name: str, data: Any) -> str:
    """Bytes, error, server memory and round time of encrypted FedAvg."""
    return f"{provenance(name, data)}\n\n{key_table(data, HE_OVERHEAD)}"


def fl_overhead(name: str, data: Any) -> str:
    """Centralised against federated time, step by step, and the workload both ran."""
    workload = settings(get(data, "workload"), WORKLOAD)
    return f"{provenance(name, data)} Workload: {workload}.\n\n{key_table(data, FL_OVERHEAD)}"


def scale(name: str, data: Any) -> str:
    """One row per hospital count, with the growth of the cost per hospital-round from the row before."""
    runs = [run for run in get(data, "runs") or [] if isinstance(run, Mapping)]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    for i, run in enumerate(runs):
        before, now = get(runs[i - 1], "s_per_hospital_round") if i else None, get(run, "s_per_hospital_round")
        growth = now / before if isinstance(now, int | float) and isinstance(before, int | float) and before else None
        rows.append((fmt(run.get("hospitals"), "count"), {**run, "growth": growth}))
    return f"{provenance(name, data)}\n\n{rows_table('hospitals', rows, SCALE)}"


def accuracy(name: str, data: Any) -> str:
    """One table per dataset, one row per setting, each row with its own machine, date and commit."""
    parts = [f"{source(name)}each row names the machine, date and commit it was measured at."]
    for dataset, results in mappings(data):
        ranked = sorted(mappings(results), key=lambda r: (ORDER.index(r[0]) if r[0] in ORDER else len(ORDER), r[0]))
        central = get(results, "centralised.last2_mean")
        rows = []
        for setting, row in ranked:
            last2 = row.get("last2_mean")
            gap = None
            if setting != "centralised" and isinstance(central, int | float) and isinstance(last2, int | float):
                gap = 100 * (last2 - central)
            rows.append((f"`{setting}`", {**row, "gap_pt": gap}))
        columns = [c for c in ACCURACY if c[0] not in OPTIONAL or any(c[0] in row for _, row in ranked)]
        configs = "\n".join(f"- `{setting}`: `{row['config']}`" for setting, row in ranked if "config" in row)
        parts += [f"**`{dataset}`**", rows_table("setting", rows, columns)]
        parts += [f"Configuration of the tuned settings:\n\n{configs}"] if configs else []
    return "\n\n".join(parts if len(parts) > 1 else [*parts, table(["setting"], [[MISSING]])])


def _pretraining(data: Any) -> str:
    """Each start's pretraining settings, as ``start: key=value …``."""
    keys = ("model", "image-size", "epochs", "batch-size")
    return "; ".join(f"`{start}` {settings(row, keys)}" for start, row in mappings(data)) or MISSING


def dp_utility(name: str, data: Any) -> str:
    """Per dataset, one row per start and privacy setting, each with its gap to the same start without DP."""
    parts = [f"{provenance(name, data)} Every run: {get(data, 'hospitals')} IID hospitals, scored on "
             f"{fmt(get(data, 'scored_on'), 'text')}; recipe {settings(get(data, 'recipe'), DP_RECIPE)}; "
             f"pretraining {_pretraining(get(data, 'pretraining'))}."]
    for dataset, runs in mappings(data):
        if not all("/" in key for key in runs):
            continue
        rows = []
        for key, row in mappings(runs):
            baseline = get(runs, f"{key.split('/')[0]}/no-dp")
            last2, reference = row.get("last2_mean"), get(baseline, "last2_mean")
            gap = None if key.endswith("/no-dp") or None in (last2, reference) else 100 * (last2 - reference)
            rows.append((f"`{key}`", {**row, "gap_pt": gap}))
        parts += [f"**`{dataset}`**", rows_table("start / setting", rows, DP_UTILITY)]
    stale = get(data, "stale")
    if isinstance(stale, list) and stale:
        names = ", ".join(f"`{name}`" for name in stale)
        parts.append(f"Not shown until a rerun replaces them, made by an earlier recipe: {names}.")
    return "\n\n".join(parts)


def start_probe(name: str, data: Any) -> str:
    """Per dataset, one row per start: what a linear head on its frozen features reaches without DP."""
    rows = [(f"`{dataset}` · `{start}`", row) for dataset, starts in mappings(data) if dataset != "pretraining"
            for start, row in mappings(starts)]  # fmt: skip
    pretraining = settings(get(data, "pretraining"), ("model", "image-size", "epochs"))
    table_ = rows_table("dataset · start", rows, START_PROBE)
    return f"{provenance(name, data)} Starts pretrained with {pretraining}.\n\n{table_}"


def dp_overhead(name: str, data: Any) -> str:
    """The chosen mode's ratio, then every mode checked and timed."""
    setup = settings(data, ("model", "batch_size", "image_size", "threads", "torch", "opacus"))
    modes = rows_table("mode", labelled(get(data, "modes")), DP_MODES)
    return f"{provenance(name, data)} Set-up: {setup}.\n\n{key_table(data, DP_OVERHEAD)}\n\n{modes}"


def dp_precision(name: str, data: Any) -> str:
    """Per model, clipper and precision: how far bf16 moves the norms and the clipped sum."""
    rows = [(f"{model} · {clipper} · {precision}", figures)
            for model, clippers in mappings(get(data, "models"))
            for clipper, precisions in mappings(clippers)
            for precision, figures in mappings(precisions)]  # fmt: skip
    trains = f"DP-SGD trains in {fmt(get(data, 'dp_trains_in'), 'text')}"
    return f"{provenance(name, data)} {trains}.\n\n{rows_table('model · clipper · precision', rows, DP_PRECISION)}"


def robustness(name: str, data: Any) -> str:
    """The verdicts, then one row per run: the attack, the strategy, the accuracy and the declines."""
    runs = [(f"`{run}`", {**row, "declines": len(row.get("declined_rounds") or [])})
            for run, row in mappings(get(data, "runs"))]  # fmt: skip
    verdicts = key_table(get(data, "verdicts"), VERDICTS)
    return f"{provenance(name, data)}\n\n{verdicts}\n\n{rows_table('run', runs, ROBUSTNESS)}"


SOAK: list[Column] = [
    ("rounds", "count", "rounds the run was asked for"),
    ("rounds_completed", "count", "rounds in `history.json`, each exactly once"),
    ("lost_rounds", "count", "rounds missing or recorded twice"),
    ("ledger_mismatches", "count", "hospitals whose epsilon differs from Google's dp-accounting (rounds it trained)"),
    ("unreadable_checkpoints", "count", "kept checkpoints that failed to load"),
    ("kills", "count", "hospitals SIGKILLed (SuperNode and ClientApps) and restarted later"),
    ("kills_while_training", "count", "of them, killed while their ClientApp was running"),
    ("stops", "count", "times the operator stopped the run with `flwr stop`"),
    ("resumes", "count", "`resume-from` restarts (one that found too few hospitals stopped by itself: resumed again)"),
    ("seconds", "seconds", "s, the whole soak, on a machine shared with other jobs"),
    ("seconds_per_round", "seconds", "s per round, the same"),
]


def soak(name: str, data: Any) -> str:
    """What the soak checks at its end, then its faults and its time."""
    return f"{provenance(name, data)}\n\n{key_table(data, SOAK)}"


Builder = Callable[[str, Any], str]
BUILDERS: dict[str, Builder] = {
    "train_throughput": train_throughput,
    "he_overhead": he_overhead,
    "fl_overhead": fl_overhead,
    "scale": scale,
    "accuracy": accuracy,
    "dp_utility": dp_utility,
    "start_probe": start_probe,
    "dp_overhead": dp_overhead,
    "dp_precision": dp_precision,
    "robustness": robustness,
    "soak": soak,
}


def builder(name: str) -> Builder | None:
    """The builder for ``name``; a variant such as ``accuracy-validation`` or ``scale-quick`` uses its base's."""
    return BUILDERS.get(name) or BUILDERS.get(name.split("-")[0])


def section(name: str, data: Any) -> str:
    """The Markdown for ``benchmarks/results/<name>.json`` holding ``data``; ``KeyError`` if no builder fits."""
    build = builder(name)
    if build is None:
        raise KeyError(f"no results table for {name!r}: add a builder to docs/results_tables.py")
    return build(name, data)
