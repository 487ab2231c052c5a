"""A hospital's configuration error: one line in its own log and in the error reply, no traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from client.app import app

RUN_CONFIG = {"data-root": "data/samples/brain-mri", "image-size": 32}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 5)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _describe(node_config: dict[str, object], caplog: pytest.LogCaptureFixture) -> Message:
    query = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=5, message_type="query.describe")
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=RUN_CONFIG)
    with caplog.at_level(logging.INFO):
        return app(message=query, context=context)


@pytest.mark.parametrize(
    ("node_config", "expected"),
    [
        ({"role": "hospital", "data-pth": "/srv/images"}, "unknown key 'data-pth'; did you mean 'data-path'?"),
        ({"role": "hospital", "hospital-name": "a", "data-path": "/no/such"}, "'/no/such' is not a folder"),
    ],
)
def test_a_bad_node_config_is_one_line_in_the_log_and_the_reply(
    node_config: dict[str, object], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    reply = _describe(node_config, caplog)
    assert reply.has_error() and reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert expected in reply.error.reason and "\n" not in reply.error.reason
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage() == f"query.describe: {reply.error.reason}"


def test_a_good_node_config_describes_itself(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    for name in ("glioma", "meningioma", "notumor", "pituitary"):
        (tmp_path / name).mkdir()
    source = next(Path("data/samples/brain-mri/train/glioma").iterdir())
    (tmp_path / "glioma" / source.name).write_bytes(source.read_bytes())
    reply = _describe({"role": "hospital", "hospital-name": "a", "data-path": str(tmp_path)}, caplog)
    assert not reply.has_error()
    assert reply.content["hospital"]["name"] == "a" and reply.content["hospital"]["data"] == "own"
