"""Replies one at a time, as they arrive: the server never holds every hospital's update at once.

Flower's ``Grid.send_and_receive`` returns the replies of a round together, so a server
holds all of them before it aggregates (10 encrypted ResNet-18 updates are 0.9 GB). This
pushes the messages the same way, then pulls each pending reply by its own id and yields it;
the caller aggregates it and drops its payload before the next one is pulled. With more than
:data:`PULLS_PER_PASS` replies pending, ids are pulled a few at a time instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["PULLS_PER_PASS", "stream_replies"]

PULLS_PER_PASS = 32
"""Pulls per pass over the pending replies. Up to 32 pending, each id is pulled alone (one
reply's payload in memory at a time); beyond, ids go in chunks of ``pending // 32``, so a
pass over a thousand hospitals costs 32 pulls, not a thousand (each pull is a round trip)."""


def stream_replies(
    grid: Grid, messages: Iterable[Message], *, timeout: float, poll_interval: float = 0.5
) -> Iterator[Message]:
    """Push ``messages``, then yield each reply as soon as it can be pulled, for up to ``timeout`` s.

    Replies missing at the deadline are simply not yielded (as with ``send_and_receive``).
    """
    pending = [i for i in grid.push_messages(messages) if i]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        progressed = False
        size = max(1, len(pending) // PULLS_PER_PASS)
        for chunk in [pending[start : start + size] for start in range(0, len(pending), size)]:
            replies = list(grid.pull_messages(chunk))
            if replies:
                answered = {chunk[0]} if size == 1 else {reply.metadata.reply_to_message_id for reply in replies}
                pending = [i for i in pending if i not in answered]
                progressed = True
            yield from replies
        if pending and not progressed:
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
