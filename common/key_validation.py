"""Validating a mapping of kebab-case keys into a pydantic model, each problem as one line a user can act on."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from common.config_values import ConfigError, KeyConflict

__all__ = ["validate_keys"]

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "greater_than": "a value > {gt}",
    "greater_than_equal": "a value >= {ge}",
    "less_than": "a value < {lt}",
    "less_than_equal": "a value <= {le}",
    "literal_error": "one of {expected}",
    "string_too_short": "a non-empty string",
}


def _describe(error: Mapping[str, Any]) -> str:
    template = _EXPECTED.get(error["type"])
    if template is not None:
        return template.format(**error.get("ctx", {}))
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def validate_keys(model: type[BaseModel], values: Mapping[str, Any], *, source: str) -> Any:
    """Validate ``values`` into ``model``: one line per problem, the closest key for an unknown one.

    Raises:
        ConfigError: naming the key, the value given and what is expected.
    """
    known = {field.alias or name for name, field in model.model_fields.items()}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
    try:
        return model.model_validate(dict(values))
    except KeyConflict as err:
        given = values.get(err.key, model.model_fields[err.key.replace("-", "_")].default)
        raise ConfigError(f"{source}: {err.key!r} = {given!r} is invalid; expected {err.expected}") from None
    except ValidationError as err:
        lines = []
        for error in err.errors():
            key = str(error["loc"][0])
            given = values.get(key, error.get("input"))
            lines.append(f"{source}: {key!r} = {given!r} is invalid; expected {_describe(error)}")
        raise ConfigError("\n".join(lines)) from None
