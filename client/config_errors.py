"""A Flower mod: a hospital's configuration error becomes one log line and an error reply, not a traceback.

Without it Flower logs the exception's traceback (twice in a SuperNode's log: the ClientApp
process and the SuperNode) and exits the task with code 800. A :class:`ConfigError` is a
setting the operator must fix, so the hospital's log gets the one line that says which, and
the server gets the same line as the reply's error reason (it records the node as failed).
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from common.config import ConfigError

__all__ = ["config_errors_as_one_line"]

log = logging.getLogger(__name__)


def config_errors_as_one_line(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the handler; a :class:`ConfigError` is logged as one line and returned as the reply's error."""
    try:
        return call_next(msg, context)
    except ConfigError as err:
        log.error("%s: %s", msg.metadata.message_type, err)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(err)), reply_to=msg)
