"""The server's side of ``he_overhead.py``, in its own process: peak RSS while aggregating.

It imports what the ServerApp imports and nothing of the hospitals' code, then aggregates
the encrypted replies in a folder handed to it one at a time, as ``stream_replies`` pulls
them, and writes its peak RSS before and after.

    python benchmarks/he_server_probe.py FOLDER   # run by he_overhead.py
"""

from __future__ import annotations

import json
import resource
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import server.app  # noqa: E402, F401  (the ServerApp's import footprint)
from common.he.codec import ParamLayout  # noqa: E402
from common.he.keys import HEContext, load_public_context  # noqa: E402
from server.encrypted_strategy import EncryptedFedAvg  # noqa: E402
from server.history import RunHistory  # noqa: E402
from server.roster import NodeRoster  # noqa: E402

GIB = 1024**3


def reply(node: int, arrays: ArrayRecord, n_k: int) -> Message:
    """A hospital's training reply, as the server receives it."""
    sent = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type="train")
    content = {"arrays": arrays, "metrics": MetricRecord({"num-examples": n_k})}
    return Message(RecordDict({**content, "hospital": ConfigRecord({"name": f"h{node:03d}"})}), reply_to=sent)


def strategy(public: HEContext, layout: ParamLayout, roster: NodeRoster, history: Path) -> EncryptedFedAvg:
    """The server's encrypted FedAvg, with every hospital required to take part."""
    return EncryptedFedAvg(
        history=RunHistory(history),
        public=public,
        layout=layout,
        roster=roster,
        base_config=ConfigRecord(),
        seed=0,
        min_train_nodes=1,
        min_available_nodes=1,
    )


def _peak() -> float:
    """This process's peak RSS (``VmHWM``: unlike ``ru_maxrss`` it does not carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def main(folder: Path) -> None:
    """Aggregate ``folder``'s ``reply-<i>.npz`` files; write ``aggregate.npz`` and ``rss.json``."""
    for name in ("_run_id", "_node_id", "_task_id"):
        setattr(TaskIdentity, name, 1)
    baseline = _peak()
    meta = json.loads((folder / "meta.json").read_text())
    counts = meta["counts"]
    roster = NodeRoster({i + 1: n for i, n in enumerate(counts)}, {}, evaluator=999)
    fedavg = strategy(
        load_public_context(folder / "public.ctx"),
        ParamLayout.from_json(meta["layout"]),
        roster,
        folder / "history.json",
    )

    def load(i: int) -> ArrayRecord:
        with np.load(folder / f"reply-{i}.npz") as saved:
            return ArrayRecord({k: Array(saved[k]) for k in saved.files})

    def replies() -> Iterator[Message]:
        for i, n in enumerate(counts):
            yield reply(i + 1, load(i), n)  # nothing here keeps a reply once the server has taken it in

    aggregate, _ = fedavg.aggregate_train(1, replies())
    (folder / "rss.json").write_text(json.dumps({"peak_rss_gib": _peak(), "baseline_rss_gib": baseline}))
    np.savez(folder / "aggregate.npz", **{k: a.numpy() for k, a in aggregate.items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]))
