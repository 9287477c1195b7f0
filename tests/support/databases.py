"""Migrated, empty databases for tests: a SQLite file, or a PostgreSQL schema of its own.

Migrating is the expensive part (Alembic reads every revision and runs its DDL: 0.2-0.4 s on SQLite,
~1 s on PostgreSQL here), and hundreds of tests want a fresh database, so each test process migrates one
SQLite file per session and copies it per test (a file copy is ~ms).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from inventory.db import make_engine, migrate

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@cache
def postgres_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None; asked once per test session."""
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", connect_timeout=5):
            return None
    except psycopg.Error as exc:
        return str(exc).strip()


@cache
def _migrated_sqlite() -> Path:
    """One SQLite file at the newest schema per test process (its installation id included)."""
    path = Path(tempfile.mkdtemp(prefix="upkeep-schema-")) / "upkeep.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        migrate(engine)
    finally:
        engine.dispose()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # one self-contained file: WAL folded in
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def sqlite(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database at tmp_path/upkeep.db: a copy of the session's migrated file."""
    target = tmp_path / "upkeep.db"
    shutil.copyfile(_migrated_sqlite(), target)
    engine = make_engine(f"sqlite:///{target}")
    try:
        yield engine
    finally:
        engine.dispose()


def postgres() -> Iterator[Engine]:
    problem = postgres_unreachable()
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
