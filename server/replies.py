"""What a hospital's reply holds (its name, a decline, the global step it saw) and whether it can be aggregated."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message

from common import records as rk

__all__ = ["declined_reason", "hospital_name", "payload_bytes", "reply_info", "reply_problem", "step_fields"]


def reply_info(msg: Message) -> ConfigRecord:
    """A reply's hospital record: name, class counts, a decline's reason, the global step it saw."""
    info = msg.content.config_records.get(rk.HOSPITAL) if msg.has_content() else None
    return info if info is not None else ConfigRecord()


def hospital_name(msg: Message) -> str:
    """The hospital's name as it gave it, else ``node-<id>``."""
    name = reply_info(msg).get("name")
    return str(name) if name else f"node-{msg.metadata.src_node_id}"


def payload_bytes(arrays: ArrayRecord) -> int:
    """Bytes of the arrays' data."""
    return sum(len(a.data) for a in arrays.values())


def declined_reason(msg: Message) -> str | None:
    """The reason a hospital gave for declining a round (e.g. its privacy budget), if any."""
    reason = reply_info(msg).get(rk.DECLINED)
    return str(reason) if reason else None


def step_fields(msg: Message) -> dict[str, object]:
    """The global step a hospital saw (its norm and ratio), as ``history.json`` records it."""
    fields = {"step_norm": reply_info(msg).get(rk.STEP_NORM), "step_ratio": reply_info(msg).get(rk.STEP_RATIO)}
    return {key: value for key, value in fields.items() if value is not None}


def reply_problem(msg: Message, *, expected: ArrayRecord | None) -> str | None:
    """Why a reply cannot be aggregated, or ``None`` when it is sound.

    Args:
        msg: a reply from a hospital.
        expected: the global arrays sent this round, for training replies; the reply's
            arrays must have the same keys, shapes and dtypes. ``None`` for evaluation.
    """
    if msg.has_error():
        return f"error reply: {msg.error.reason}"
    content = msg.content
    metrics = list(content.metric_records.values())
    if len(metrics) != 1:
        return f"expected one MetricRecord, got {len(metrics)}"
    weight = metrics[0].get(rk.NUM_EXAMPLES)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
        return f"'{rk.NUM_EXAMPLES}' = {weight!r}; expected a number >= 0"
    if expected is None:
        return None
    if weight <= 0:
        return f"'{rk.NUM_EXAMPLES}' = {weight!r}; expected a number > 0 for training"
    arrays = list(content.array_records.values())
    if len(arrays) != 1:
        return f"expected one ArrayRecord, got {len(arrays)}"
    got = arrays[0]
    if set(got.keys()) != set(expected.keys()):
        return f"ArrayRecord keys differ from the global model's ({len(got)} vs {len(expected)})"
    for key, array in expected.items():
        if tuple(got[key].shape) != tuple(array.shape):
            return f"array {key!r} has shape {tuple(got[key].shape)}; expected {tuple(array.shape)}"
        if got[key].dtype != array.dtype:
            return f"array {key!r} has dtype {got[key].dtype}; expected {array.dtype}"
    for key, array in got.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
            return f"array {key!r} holds NaN or Inf values"
    return None
