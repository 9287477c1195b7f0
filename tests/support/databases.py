"""Migrated, empty databases for tests: a SQLite file, or a PostgreSQL schema of its own.

Migrating is the expensive part (Alembic reads every revision and runs its DDL: 0.2-0.4 s on SQLite,
1.2-1.7 s on PostgreSQL under this machine's load), and hundreds of tests want a fresh database, so each
test process migrates once per kind and copies per test: SQLite, a file copy (~ms); PostgreSQL, a
template schema migrated once and dumped (pg_dump, tables and rows), the dump replayed into each test's
schema in one transaction (~0.5 s under the same load). Without pg_dump every test migrates its own.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sqlite3
import subprocess
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


@cache
def _postgres_template() -> str | None:
    """SQL that builds the newest schema, rows included, in a schema named TEMPLATE_NAME; None if
    pg_dump is not installed."""
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        return None
    schema = f"upkeep_template_{secrets.token_hex(8)}"
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = make_engine(POSTGRES_URL, schema=schema)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        dump = subprocess.run(
            [pg_dump, "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-n", schema, *DUMP_OPTIONS],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
    # psql meta-commands (\restrict ...) are not SQL; the server runs the rest as it is.
    sql = "\n".join(line for line in dump.splitlines() if not line.startswith("\\"))
    return sql.replace(schema, TEMPLATE_NAME)


TEMPLATE_NAME = "upkeep_template_schema_name"
DUMP_OPTIONS = ("--inserts", "--no-owner", "--no-privileges")  # rows as SQL, no roles or grants


def _new_schema(schema: str) -> None:
    """Create `schema` at the newest revision: replay the template's dump, or migrate if there is none."""
    import psycopg

    template = _postgres_template()
    if template is not None:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test") as conn:
            conn.execute(template.replace(TEMPLATE_NAME, schema).encode())  # one transaction
        return
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    finally:
        admin.dispose()
    engine = make_engine(POSTGRES_URL, schema=schema)
    try:
        migrate(engine)
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
        _new_schema(schema)
        engine = make_engine(POSTGRES_URL, schema=schema)
        try:
            yield engine
        finally:
            engine.dispose()  # close the test's connections before dropping what they use
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()
