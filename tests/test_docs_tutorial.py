"""The three-hospital tutorial runs only what the tested deployment guide runs, or ``medsilo`` commands that exist.

``tests/integration/test_deployment.py`` runs the ```bash blocks of ``docs/how-to/deploy.md`` as
written. The tutorial may differ from them only where the guide expects each reader to: the values
of the variables it uses, a third hospital (``hospital-c``: the same command with another node's
name), each SuperNode's local ``--port`` number, and ``medsilo`` commands, which are parsed here
against the typer app (command, options and arguments) without being run.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from common.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIAL = DOCS / "tutorials" / "three-hospitals.md"
GUIDE = DOCS / "how-to" / "deploy.md"


def command_lines(page: Path) -> list[list[str]]:
    """Every command line of the page's ```bash blocks, as shell words (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [words for words in (shlex.split(line, comments=True) for line in lines) if words]


def normalised(words: list[str]) -> tuple[str, ...]:
    """The words with every hospital's name alike (a run of names counts once) and SuperNode port numbers blanked."""
    out: list[str] = []
    for word in words:
        word = re.sub(r"\bhospital-[a-z]\b", "hospital-?", word)
        if out and out[-1] == "--port" and word.isdigit():
            word = "?"
        if not (word == "hospital-?" and out and out[-1] == word):
            out.append(word)
    return tuple(out)


def guide_variables() -> set[str]:
    """The shell variables the guide's tested blocks export or read."""
    lines = command_lines(GUIDE)
    exported = {word.split("=", 1)[0] for words in lines if words[0] == "export" for word in words[1:]}
    return exported | {name for words in lines for word in words for name in re.findall(r"\$\{?(\w+)", word)}


def check_medsilo(words: list[str]) -> None:
    """Parse a ``medsilo`` command line with the typer app's own parser; a wrong command or option raises."""
    command: click.Command = typer.main.get_command(app)
    rest = words[1:]
    while isinstance(command, click.Group):
        sub = command.get_command(click.Context(command), rest[0]) if rest else None
        assert sub is not None, f"{' '.join(words)}: no such medsilo command"
        command, rest = sub, rest[1:]
    command.make_context(" ".join(words[: len(words) - len(rest)]), list(rest))


def test_every_tutorial_command_is_a_tested_guide_command_or_a_real_medsilo_command() -> None:
    tested = {normalised(words) for words in command_lines(GUIDE)}
    variables = guide_variables()
    lines = command_lines(TUTORIAL)
    assert len(lines) > 20, "the tutorial's code blocks were not found"
    for words in lines:
        if words[0] == "medsilo":
            check_medsilo(words)
        elif words[0] == "export":
            assigned = {word.split("=", 1)[0] for word in words[1:]}
            assert assigned <= variables, f"{' '.join(words)}: sets a variable the deployment guide does not use"
        else:
            assert normalised(words) in tested, f"not a command of the tested deployment guide: {' '.join(words)}"


def test_the_tutorial_takes_every_step_of_the_guide() -> None:
    steps = {normalised(words) for words in command_lines(GUIDE) if words[0] != "export"}
    missing = steps - {normalised(words) for words in command_lines(TUTORIAL)}
    assert not missing, f"the tutorial leaves out: {sorted(' '.join(m) for m in missing)}"


@pytest.mark.parametrize(
    "line",
    ["medsilo keys init --outt keys", "medsilo keys rotate --out keys", "medsilo predict --model m"],
)
def test_a_medsilo_command_that_does_not_exist_is_caught(line: str) -> None:
    with pytest.raises((AssertionError, click.UsageError)):
        check_medsilo(shlex.split(line))
