"""Driving the real `upkeep` entry point (`upkeep.cli.main`: Typer app + its error mapping) in this
process, fast enough for thousands of Hypothesis examples, against a SQLite database whose bytes are
compared around every call."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def invoke(*args: str) -> Outcome:
    """`upkeep ARGS...` as the console script runs it; an exception that escapes `main` (a traceback
    for the user) propagates to the test."""
    from tests.support.cli import call_main

    return Outcome(*call_main(args, as_module=False))


class FlowStarted(BaseException):
    """A fuzzed command got as far as starting an update flow: the input was not refused."""


@dataclass
class CliHome:
    home: Path

    @property
    def db(self) -> Path:
        return self.home / "upkeep.db"

    def checkpoint(self) -> None:
        with sqlite3.connect(self.db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def digest(self) -> str:
        """The database's bytes: the main file and its write-ahead log (empty after `checkpoint`). An
        empty log and none are the same database: SQLite deletes the log as its last connection
        closes, which the CLI's does as every command ends."""
        wal = self.db.with_name(self.db.name + "-wal")
        digest = hashlib.sha256(self.db.read_bytes())
        digest.update(wal.read_bytes() if wal.exists() else b"")
        return digest.hexdigest()


@contextmanager
def cli_home(home: Path, inventory: Path | None, **settings: str) -> Iterator[CliHome]:
    """UPKEEP_* pointing at `home` (its own SQLite database) for in-process CLI calls; the CLI's cached
    engine and the flows' Runtime are reset before and after."""
    import typer

    from flows import runtime as flow_runtime
    from tests.support.cli import command_once
    from upkeep import cli

    opened = _engine_cache()
    # The command tree built once; `main` and its error mapping are still what runs.
    typer_app = cli.app
    if isinstance(typer_app, typer.Typer):  # not already done by an enclosing cli_home
        cli.app = command_once(typer_app)
    saved = {k: v for k, v in os.environ.items() if k.startswith("UPKEEP_")}
    for key in saved:
        del os.environ[key]
    os.environ["UPKEEP_HOME"] = str(home)
    os.environ.update({f"UPKEEP_{k.upper()}": v for k, v in settings.items()})
    opened.clear()
    try:
        if inventory is not None:
            result = invoke("inventory", "import", str(inventory))
            assert result.code == 0, result.text
        yield CliHome(home)
    finally:
        for engine in opened.values():
            engine.dispose()
        opened.clear()
        cli.app = typer_app
        flow_runtime.configure(None)
        for key in [k for k in os.environ if k.startswith("UPKEEP_")]:
            del os.environ[key]
        os.environ.update(saved)


def _engine_cache() -> dict[str, Any]:
    """Where the CLI keeps the engine it opened for this process (moved between modules over time)."""
    import importlib

    for name in ("upkeep.cli_common", "upkeep.cli"):
        try:
            cache = getattr(importlib.import_module(name), "_opened", None)
        except ImportError:
            continue
        if isinstance(cache, dict):
            return cache
    raise AssertionError("cannot find the CLI's engine cache (_opened)")
