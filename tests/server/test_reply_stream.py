"""Replies are pulled one id at a time and handed on as they arrive."""

from __future__ import annotations

import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from server.reply_stream import stream_replies

pytestmark = pytest.mark.usefixtures("task_identity")


class _SlowGrid:
    """Node n replies ``delays[n]`` seconds after the push; a node with no delay never replies."""

    def __init__(self, delays: dict[int, float]) -> None:
        self.delays = delays
        self.pulled: list[list[str]] = []

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pushed_at = time.monotonic()
        self.sent = {f"id-{m.metadata.dst_node_id}": m for m in messages}
        return list(self.sent)

    def pull_messages(self, message_ids: list[str]) -> list[Message]:
        self.pulled.append(list(message_ids))
        replies = []
        for message_id in message_ids:
            msg = self.sent[message_id]
            delay = self.delays.get(msg.metadata.dst_node_id)
            if delay is not None and time.monotonic() - self.pushed_at >= delay:
                replies.append(Message(RecordDict({"c": ConfigRecord({"n": msg.metadata.dst_node_id})}), reply_to=msg))
        return replies


def _messages(nodes: list[int]) -> list[Message]:
    return [Message(RecordDict({"c": ConfigRecord()}), dst_node_id=n, message_type="train") for n in nodes]


def test_replies_come_one_by_one_in_arrival_order_and_the_late_one_is_left_out() -> None:
    grid = _SlowGrid({1: 0.3, 2: 0.0, 3: 0.15})
    stream = stream_replies(grid, _messages([1, 2, 3, 4]), timeout=1.0, poll_interval=0.05)
    first = next(stream)
    assert first.content["c"]["n"] == 2 and grid.pulled == [["id-1"], ["id-2"]]  # handed on before 3 and 4 are pulled
    rest = [m.content["c"]["n"] for m in stream]
    assert rest == [3, 1]  # node 4 never replied: not yielded, the stream ends at the timeout
    assert all(len(ids) == 1 for ids in grid.pulled)  # one reply's payload in memory at a time


def test_the_stream_ends_as_soon_as_every_reply_is_in() -> None:
    start = time.monotonic()
    grid = _SlowGrid({1: 0.0, 2: 0.0})
    assert len(list(stream_replies(grid, _messages([1, 2]), timeout=30.0))) == 2
    assert time.monotonic() - start < 1.0
