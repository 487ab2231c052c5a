"""The benchmarks' in-process Grid: each node gets its own node config; a raising ClientApp is an error reply."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.supercore.task_identity import TaskIdentity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from in_process_grid import InProcessGrid  # noqa: E402

app = ClientApp()


@app.query()
def describe(msg: Message, context: Context) -> Message:
    if context.node_config.get("broken"):
        raise RuntimeError("no data here")
    info = ConfigRecord({"name": str(context.node_config["name"]), "seen": int(context.run_config["x"])})
    return Message(RecordDict({"info": info}), reply_to=msg)


def test_each_node_answers_with_its_own_node_config_and_a_raise_is_an_error_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    grid = InProcessGrid(app, [{"name": "a"}, {"name": "b"}, {"broken": True}], {"x": 7})
    assert list(grid.get_node_ids()) == [1, 2, 3]
    sent = [grid.create_message(RecordDict(), "query", node, "1") for node in grid.get_node_ids()]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(sent)}
    assert [replies[n].content["info"]["name"] for n in (1, 2)] == ["a", "b"]
    assert replies[1].content["info"]["seen"] == 7
    assert replies[3].has_error() and "no data here" in replies[3].error.reason
    assert {r.metadata.reply_to_message_id for r in replies.values()} == {m.metadata.message_id for m in sent}
    assert list(grid.pull_messages([m.metadata.message_id for m in sent])) == []  # each reply is pulled once
