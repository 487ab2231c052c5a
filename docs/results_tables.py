"""The results page's tables, built from the benchmarks' JSON: one builder per benchmark, each figure formatted by kind.

``section(name, data)`` is the Markdown that ``docs/results_hook.py`` puts where a page says
``<!-- generated: results/<name> -->``. It opens with the JSON's file name and the machine, date and
commit the JSON records (per row for the accuracy benchmark). A key or row missing from the JSON
shows as "—"; nothing here raises on a JSON of another shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from results_columns import (  # docs/ is on the path, as for results_hook
    ACCURACY,
    DP_MODES,
    DP_OVERHEAD,
    DP_PRECISION,
    DP_RECIPE,
    DP_UTILITY,
    FL_OVERHEAD,
    HE_OVERHEAD,
    OPTIONAL,
    ORDER,
    ROBUSTNESS,
    SCALE,
    SOAK,
    START_PROBE,
    TRAIN_THROUGHPUT,
    VERDICTS,
    WORKLOAD,
    Column,
)

__all__ = ["BUILDERS", "builder", "section"]

MISSING = "—"
PROVENANCE = ("machine", "date", "commit")



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
        columns = [c for c in ACCURACY if c[0] not in OPTIONAL or any(get(row, c[0]) is not None for _, row in ranked)]
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
