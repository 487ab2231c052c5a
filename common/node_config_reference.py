"""The node-config reference, generated from :class:`NodeConfig`: every key's type, default, allowed values and meaning.

The docs site's node-config page is this table (``docs/reference_hook.py`` inserts it at build
time), so a key added to ``NodeConfig`` without a line in :data:`MEANINGS` fails the docs test.
"""

from __future__ import annotations

from typing import Any

from common.node_config import NodeConfig

__all__ = ["MEANINGS", "reference_rows", "reference_table"]

MEANINGS: dict[str, str] = {
    "partition-id": "simulation only, set by Flower: this simulated hospital's partition of `data-root`",
    "num-partitions": "simulation only, set by Flower: how many partitions `data-root` is split into",
    "role": "deployment: `hospital` (trains on its own data) or `evaluator` (holds the central test set)",
    "data-path": "deployment, required: this node's own images (a hospital's `train/<class>/*`, "
    "the evaluator's `test/<class>/*`, or `<class>/*`)",
    "he-secret-context": "deployment under HE, required: this node's `secret.ctx` (mode 0600)",
    "state-dir": "deployment, required for a hospital: its DP ledgers and kept optimizer state, "
    "in `<state-dir>/<run-name>/`",
    "hospital-name": "the node's name in reports and `history.json` (empty: the data folder's name)",
    "hostile": "a test-and-benchmark fixture, never for production: this hospital sends harm "
    "(`label-flip`: wrong labels; `scaled`: from round 4, ten times its update), as `benchmarks/robustness.py` "
    "measures",
}


def _shown(default: Any) -> str:
    """A default as the page shows it: ``unset`` for ``None``, ``''`` for the empty string."""
    if default is None:
        return "unset"
    return "`''`" if default == "" else f"`{default}`"


def _type_and_allowed(schema: dict[str, Any]) -> tuple[str, str]:
    """The JSON type of a property (an optional one's non-null type) and its choices, bounds or pattern."""
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    spec = {**schema, **options[0]}
    if "enum" in spec:
        return spec["type"], ", ".join(_shown(value) if value == "" else f"`{value}`" for value in spec["enum"])
    if "pattern" in spec:
        return spec["type"], f"`{spec['pattern']}`"
    bound = spec.get("ge", spec.get("minimum"))
    return spec["type"], f"≥ {bound}" if bound is not None else ""


def reference_rows() -> list[tuple[str, str, str, str, str]]:
    """``(key, type, default, allowed values, meaning)`` for every node-config key, in ``NodeConfig``'s order.

    Raises:
        KeyError: a key without a line in :data:`MEANINGS`.
    """
    properties = NodeConfig.model_json_schema(by_alias=True)["properties"]
    rows = []
    for key, schema in properties.items():
        kind, allowed = _type_and_allowed(schema)
        rows.append((key, kind, _shown(schema.get("default")), allowed, MEANINGS[key]))
    return rows


def reference_table() -> str:
    """The reference as one Markdown table."""
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {a} | {m} |" for k, t, d, a, m in reference_rows()]
    return "\n".join(lines) + "\n"
