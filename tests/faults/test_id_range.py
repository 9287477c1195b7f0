"""Ids past the database's integer range (PostgreSQL's `integer` ends at 2**31 - 1, SQLite's at
2**63 - 1) are refused as bad input on both databases: one line, exit 1 or 2, nothing written. On
PostgreSQL they were an "unexpected DataError" quoting the SQL statement (adversarial pass on #14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.conftest import POSTGRES_URL
from tests.faults.cli import cli_home, invoke

pytestmark = [pytest.mark.faults]

COMMANDS = [
    ("show", "{id}"),
    ("resume", "{id}"),
    ("pause", "{id}"),
    ("cancel", "{id}", "--reason", "x"),
    ("approve", "{id}"),
    ("cancel-update", "{id}", "--reason", "x"),
    ("cancel-update", "update-{id}", "--reason", "x"),
    ("defer", "update-{id}", "--to", "2030-01-01"),
    ("oncall", "ack", "{id}"),
]


def _url(engine: Engine) -> str:
    if engine.dialect.name == "sqlite":
        return engine.url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.mark.parametrize("number", [2**31, 2**31 + 1, 2**63 - 1])
def test_an_id_past_the_integer_range_is_bad_input(
    engine: Engine, tmp_path: Path, number: int, record: Any
) -> None:
    record(
        "hostile input (CLI)",
        "run, update and page ids past the database's integer (2**31 and up on PostgreSQL, 2**63 - 1)",
        len(COMMANDS),
        f"{engine.dialect.name}: exit 1 or 2, one line, no DataError",
    )
    with cli_home(tmp_path / "home", None, database_url=_url(engine)):
        for command in COMMANDS:
            args = [part.format(id=number) for part in command]
            result = invoke(*args)
            assert result.code in (1, 2), f"upkeep {' '.join(args)}: exit {result.code}\n{result.text}"
            for leak in ("Traceback", "DataError", "SQL:", "unexpected"):
                assert leak not in result.text, f"upkeep {' '.join(args)}:\n{result.text}"
