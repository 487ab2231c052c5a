"""The ``medsilo`` command reference, generated from the typer app: every command's help, arguments and options.

``docs/reference_hook.py`` inserts it into the docs site's CLI page at build time, so a command
or option added to :mod:`common.cli` is documented with its real help text and default.
"""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Iterator

import click
import typer
from typer.utils import get_params_from_function

__all__ = ["cli_reference", "commands"]

_CODE = re.compile(r"(``.+?``|`[^`]*`)")
_TYPES = {"text": "string", "integer range": "integer", "float range": "number", "float": "number"}


def _md(text: str) -> str:
    """Help text as Markdown: RST ``literals`` as code; HTML and Markdown's own characters escaped outside code."""
    parts = []
    for part in _CODE.split(" ".join(text.split())):
        if _CODE.fullmatch(part):
            parts.append(f"`{part.strip('`')}`")
        else:
            parts.append(re.sub(r"([|*_])", r"\\\1", html.escape(part, quote=False)))
    return "".join(parts)


def commands(app: typer.Typer) -> Iterator[tuple[str, click.Command]]:
    """``(full name, command)`` for every command and group, depth first, in the app's order."""
    root = typer.main.get_command(app)

    def walk(name: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
        yield name, command
        if isinstance(command, click.Group):
            for sub in command.list_commands(click.Context(command)):
                yield from walk(f"{name} {sub}", command.get_command(click.Context(command), sub))

    yield from walk("medsilo", root)


def _type(param: click.Parameter) -> str:
    kind = _TYPES.get(param.type.name, param.type.name)
    if isinstance(param, click.Option) and param.is_flag:
        kind = "flag"
    bounds = [
        f"{symbol} {value}"
        for symbol, value in (("≥", getattr(param.type, "min", None)), ("≤", getattr(param.type, "max", None)))
        if value is not None
    ]
    many = ", repeatable" if param.multiple or param.nargs == -1 else ""
    return kind + (f" ({', '.join(bounds)})" if bounds else "") + many


def _default(param: click.Parameter) -> str:
    if param.required:
        return "required"
    default = param.default
    if isinstance(param, click.Option) and param.is_flag and param.secondary_opts:
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    return "" if default is None else "`''`" if default == "" else f"`{default}`"


def _name(param: click.Parameter) -> str:
    if isinstance(param, click.Option):
        return " / ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))
    return f"`{param.human_readable_name}`"


def _help(command: click.Command, param: click.Parameter) -> str:
    """The help a parameter declares: typer's own where click dropped it (click 8.5 resets an argument's)."""
    if getattr(param, "help", None):
        return str(param.help)
    declared = get_params_from_function(inspect.unwrap(command.callback)).get(param.name or "")
    return str(getattr(declared.default, "help", None) or "") if declared is not None else ""


def _section(name: str, command: click.Command) -> list[str]:
    """A command's heading (a subcommand one level below its group), help, usage and parameter table."""
    lines = [f"{'#' * (name.count(' ') + 1)} `{name}`", ""] if " " in name else []
    lines += [_md(inspect.cleandoc(command.help or "")), ""]
    if isinstance(command, click.Group):
        return lines
    usage = " ".join(command.collect_usage_pieces(click.Context(command)))
    lines += ["```", f"{name} {usage}", "```", ""]
    if command.params:
        lines += ["| argument or option | type | default | what it is |", "|---|---|---|---|"]
        for p in command.params:
            lines.append(f"| {_name(p)} | {_type(p)} | {_default(p)} | {_md(_help(command, p))} |")
        lines.append("")
    return lines


def cli_reference(app: typer.Typer) -> str:
    """The reference as Markdown: the app's help, then one section per group and command, headed by its full name."""
    lines: list[str] = []
    for name, command in commands(app):
        lines += _section(name, command)
    return "\n".join(lines)
