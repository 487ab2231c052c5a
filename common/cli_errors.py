"""How every ``medsilo`` command reports bad input: one red line, exit code 2, no traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console

__all__ = ["one_line_errors"]


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a ``ValueError`` into one red line and exit code 2, without a traceback."""
    try:
        yield
    except ValueError as err:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}", highlight=False)
        raise typer.Exit(code=2) from None
