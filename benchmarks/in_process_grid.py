"""A Flower ``Grid`` that delivers each message to a ClientApp in this process: real apps, no runtime.

``benchmarks/robustness.py`` runs medsilo's own ServerApp ``main`` against medsilo's own ClientApp
through it, with a node config per SuperNode: what Flower's simulation cannot give (it sets only
``partition-id`` and ``num-partitions``, the same keys for every node). Each pushed message is
handled at once, in order, as a SuperNode would: the ClientApp's reply, or (when it raises) the
error reply Flower's runtime sends. Nothing is ever lost, so no reply times out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["InProcessGrid"]


class InProcessGrid(Grid):
    """SuperNodes ``1..N`` in this process, each with its own node config and context state."""

    def __init__(self, app: ClientApp, node_configs: list[Mapping[str, Any]], run_config: Mapping[str, Any]) -> None:
        self._app = app
        self._contexts = {
            node_id: Context(run_id=1, node_id=node_id, node_config=dict(config), state=RecordDict(),
                             run_config=dict(run_config))
            for node_id, config in enumerate(node_configs, start=1)
        }  # fmt: skip
        self._replies: dict[str, Message] = {}
        self._run = Run.create_empty(run_id=1)

    def set_run(self, run: Run) -> None:  # noqa: D102 (Grid's)
        self._run = run

    @property
    def run(self) -> Run:  # noqa: D102
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:  # noqa: D102
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Hand each message to its node's ClientApp now; its reply waits to be pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = message_id = str(uuid4())
            try:
                reply = self._app(msg, self._contexts[msg.metadata.dst_node_id])
            except Exception as err:  # what a SuperNode's runtime replies when the ClientApp raises
                reason = f"{type(err)}:<'{err}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and return every reply (each was handled when pushed)."""
        return self.pull_messages(self.push_messages(messages))
