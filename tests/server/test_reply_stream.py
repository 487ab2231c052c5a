"""Replies are pulled one id at a time and handed on as they arrive."""

from __future__ import annotations

import time

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from server.reply_stream import PULLS_PER_PASS, stream_replies

pytestmark = pytest.mark.usefixtures("task_identity")


class _SlowGrid:
    """Node n replies ``delays[n]`` seconds after the push; a node with no delay never replies."""

    def __init__(self, delays: dict[int, float]) -> None:
        self.delays = delays
        self.pulled: list[list[str]] = []

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.pushed_at = time.monotonic()
        for m in messages:  # as Flower's grid does: the pushed message's id, which its reply refers to
            m.metadata.__dict__["_message_id"] = f"id-{m.metadata.dst_node_id}"
        self.sent = {m.metadata.message_id: m for m in messages}
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


def test_many_pending_replies_are_pulled_a_few_ids_at_a_time() -> None:
    """A pass over 1000 pending replies is about 32 pulls, not 1000; each reply is yielded once."""
    grid = _SlowGrid({n: 0.0 if n % 2 else 0.2 for n in range(1, 1001)})
    replies = [
        m.content["c"]["n"]
        for m in stream_replies(grid, _messages(list(range(1, 1001))), timeout=5.0, poll_interval=0.05)
    ]
    assert sorted(replies) == list(range(1, 1001))
    first_pass = grid.pulled[: PULLS_PER_PASS + 1]  # 33 chunks of up to 31 ids cover all 1000
    assert sum(len(ids) for ids in first_pass) == 1000
    assert len(grid.pulled) < 400  # pulling id by id: 1000 + 500 for every later pass
