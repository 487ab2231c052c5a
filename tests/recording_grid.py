"""The in-process grid (benchmarks/in_process_grid.py), keeping every reply a node sent: for tests that inspect them."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from in_process_grid import InProcessGrid  # noqa: E402

__all__ = ["InProcessGrid", "RecordingGrid"]


class RecordingGrid(InProcessGrid):
    """SuperNodes in this process, as :class:`InProcessGrid`; ``replies`` holds every reply they sent."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.replies: list[Message] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += replies
        return replies
