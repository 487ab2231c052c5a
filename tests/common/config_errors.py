"""Helpers for run-config error tests: the one-line message a bad config raises, and what it must name."""

from __future__ import annotations

import re

import pytest

from common.config import ConfigError, parse_run_config


def config_error(values: dict) -> str:
    """The message ``parse_run_config(values)`` raises, checked to be one line and a ValueError."""
    with pytest.raises(ConfigError) as info:
        parse_run_config(values)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    assert isinstance(info.value, ValueError)
    return message


def assert_names(message: str, key: str, value: object, *expected: str) -> None:
    """``message`` names the bad ``key``, its ``value`` (as a token of its own) and every ``expected`` fragment."""
    assert repr(key) in message, message
    given = repr(value)
    if given.startswith("'"):
        assert given in message, message
    else:  # a number or bool appears as a token of its own, not e.g. as the "0" of "0.5"
        assert re.search(rf"(?<![\w.]){re.escape(given)}(?![\w.])", message), message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
