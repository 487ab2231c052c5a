"""Replies one at a time, as they arrive: the server never holds every hospital's update at once.

Flower's ``Grid.send_and_receive`` returns the replies of a round together, so a server
holds all of them before it aggregates (10 encrypted ResNet-18 updates are 0.9 GB). This
pushes the messages the same way, then pulls each pending reply by its own id and yields it;
the caller aggregates it and drops its payload before the next one is pulled.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["stream_replies"]


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
        for message_id in list(pending):
            replies = list(grid.pull_messages([message_id]))
            if replies:
                pending.remove(message_id)
                progressed = True
            yield from replies
        if pending and not progressed:
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))
