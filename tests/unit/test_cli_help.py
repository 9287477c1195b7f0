"""Help texts show their defaults: Rich markup used to swallow a literal "[default: ...]" in a help
string (it read as a markup tag), leaving "ISO time ." in `upkeep diagnostics collect --help`."""

from __future__ import annotations

import importlib
import re

import pytest
import typer
from typer.testing import CliRunner

from upkeep.cli import SUB_APPS, app


def _commands(
    group: typer.Typer, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], typer.models.CommandInfo]]:
    found = [
        ((*path, c.name or (c.callback.__name__ if c.callback else "")), c) for c in group.registered_commands
    ]
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            found += _commands(sub.typer_instance, (*path, sub.name or ""))
    if group is app:  # the groups the root imports when named
        for name, (module, attr, _help) in SUB_APPS.items():
            found += _commands(getattr(importlib.import_module(module), attr), (name,))
    return found


def _defaults_in_help(command: typer.models.CommandInfo) -> list[str]:
    import typing

    texts = []
    if command.callback is not None:
        for hint in typing.get_type_hints(command.callback, include_extras=True).values():
            for meta in getattr(hint, "__metadata__", ()):
                texts += re.findall(r"\[default: [^\]]*\]", str(getattr(meta, "help", "") or ""))
    return texts


COMMANDS = [(path, cmd) for path, cmd in _commands(app) if _defaults_in_help(cmd)]


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_a_default_written_in_a_help_text_is_shown(
    path: tuple[str, ...], command: typer.models.CommandInfo
) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    for text in _defaults_in_help(command):
        assert text.replace("\\[", "[") in shown, (path, text)


def test_there_are_such_help_texts() -> None:
    assert any(path[-1] == "collect" for path, _ in COMMANDS)  # diagnostics collect --since/--until
