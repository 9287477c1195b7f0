"""Shared fixtures. Databases: `engine` runs a test on SQLite AND PostgreSQL (the guide requires both);
`sqlite_engine` is for tests that only need a database. Both are migrated to the newest schema."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from inventory.db import make_engine, migrate
from upkeep.telemetry import switch_off

switch_off()  # every test process, and the CLI/worker processes it starts, send no telemetry

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@cache
def _postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None; asked once per test session."""
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=5):
            return None
    except psycopg.Error as exc:
        return str(exc).strip()


def _sqlite(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'upkeep.db'}")
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


def _postgres() -> Iterator[Engine]:
    problem = _postgres_unreachable()
    if problem:
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} is unreachable ({problem}). Tests must pass on SQLite and "
            "PostgreSQL: start the server (database 'test', user 'postgres'), or deselect with "
            "-m 'not postgres' for a quick local run.",
            pytrace=False,
        )
    schema = f"upkeep_t_{secrets.token_hex(6)}"
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = make_engine(POSTGRES_URL, schema=schema)
        try:
            migrate(engine)
            yield engine
        finally:
            engine.dispose()  # close the test's connections before dropping what they use
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database of each supported kind (SQLite file in tmp_path; a fresh PostgreSQL
    schema per test, dropped afterwards)."""
    yield from (_sqlite(tmp_path) if request.param == "sqlite" else _postgres())


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty SQLite database in tmp_path."""
    yield from _sqlite(tmp_path)


@pytest.fixture
def smtp() -> Iterator[Any]:
    """A real SMTP server (aiosmtpd) on a free loopback port for one test; `.transport()` reaches it.
    A module that needs another handler overrides it (tests/integration/test_notice_batches.py)."""
    from tests.integration.test_notices import SmtpServer

    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
