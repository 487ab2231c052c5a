"""Fixtures shared by the server tests."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flwr.app import Context
from flwr.supercore.task_identity import TaskIdentity

from server.app import main as server_main


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a ServerApp process has set before it builds a Message."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def server_main_records(monkeypatch: pytest.MonkeyPatch) -> Callable[[Context], list[logging.LogRecord]]:
    """Run the ServerApp's ``main`` with no grid; return what ``server.app`` logged.

    For runs that must stop before they touch the grid: one that did not would fail on ``None``.
    """

    def run(context: Context) -> list[logging.LogRecord]:
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        monkeypatch.setattr("server.app.use_flower_logging", lambda: None)  # keep this handler in place
        logging.getLogger("server.app").addHandler(handler)
        try:
            server_main(None, context)  # type: ignore[arg-type]  # a grid it must never touch
        finally:
            logging.getLogger("server.app").removeHandler(handler)
        return records

    return run
