"""The run config's value types and checks: one-line errors for a single key's value, and the cross-key conflict."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

__all__ = ["ConfigError", "Float", "Int", "KeyConflict", "classes_list", "kebab", "no_bool", "one_of", "rounds_list",
           "thresholds_list"]


class ConfigError(ValueError):
    """A bad configuration value; the message is one line a user can act on."""


class KeyConflict(Exception):
    """A value that conflicts with another key (raised past pydantic, which would drop the key)."""

    def __init__(self, key: str, expected: str) -> None:
        super().__init__(key, expected)
        self.key, self.expected = key, expected


def no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean")
    return value


def one_of(choices: Collection[str]) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"one of {', '.join(repr(c) for c in choices)}")
        return value

    return AfterValidator(check)


def classes_list(value: str) -> str:
    names = [c.strip() for c in value.split(",")] if value else []
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError("a comma-separated list of distinct, non-empty class names, or ''")
    if value and len(names) < 2:
        raise ValueError("at least two class names")
    return value


Int = Annotated[int, BeforeValidator(no_bool), Field(strict=True)]
Float = Annotated[float, BeforeValidator(no_bool), Field(strict=True, allow_inf_nan=False)]


def rounds_list(value: str) -> str:
    try:
        rounds = [int(r) for r in value.split(",")] if value else []
    except ValueError:
        rounds = [0]
    if any(r < 1 for r in rounds) or rounds != sorted(set(rounds)):
        raise ValueError("a comma-separated, increasing list of rounds >= 1 (e.g. '80,120'), or ''")
    return value


def thresholds_list(value: str) -> str:
    try:
        numbers = [float(v) for v in value.split(",")]
    except ValueError:
        numbers = [-1.0]
    if not all(0.0 < n < 1.0 for n in numbers):
        raise ValueError("a probability in (0, 1), or a comma-separated one per label (e.g. '0.5' or '0.3,0.6,...')")
    return value


def kebab(name: str) -> str:
    return name.replace("_", "-")
