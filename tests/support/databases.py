"""Migrated, empty databases for tests: a SQLite file, or a PostgreSQL schema of its own.

Migrating is the expensive part (Alembic reads every revision and runs its DDL: 0.2-0.4 s on SQLite,
1.2-1.7 s on PostgreSQL under this machine's load), and hundreds of tests want a fresh database, so each
test process migrates once per kind and copies per test: SQLite, a file copy (~ms); PostgreSQL, a
template schema migrated once and dumped (pg_dump, tables and rows), the dump replayed into each test's
schema in one transaction (~0.5 s under the same load). Without pg_dump every test migrates its own.

Creating and dropping a schema still cost ~1.1 s per test at a load of 14 on 2 cores (~300 tests on
PostgreSQL), where emptying one costs ~0.03 s; so a test's schema is handed to the next test of the
same process once it is proven the same as a new one (`_give_back`): its structure (every table,
column, default, constraint, index, trigger, sequence, view, function and type: `_structure`) equal to
a pristine schema's, then its rows and sequences replaced by the pristine schema's, and renamed (a new
name, as a new schema has). Anything else (a test that changed the structure, a lock still held, an
error) drops it, as before. tests/integration/test_suite_databases.py proves the hand-over.
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

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
    schema = _FREE.pop() if _FREE else _fresh_schema()
    engine = make_engine(POSTGRES_URL, schema=schema)
    try:
        yield engine
    finally:
        engine.dispose()  # close the test's connections before emptying or dropping what they use
        _give_back(schema)


ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_FREE: list[str] = []  # this process's schemas proven as new, for the next test
_MADE: set[str] = set()  # every schema this process made and has not dropped (dropped at exit)


def _admin() -> Any:
    """A connection for the hand-over. JIT off: the one-query structure comparison costs enough for
    PostgreSQL to compile it, which took ~0.5 s more per test than running it (measured, load 8-10)."""
    import psycopg

    return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10, options="-c jit=off")


def _fresh_schema() -> str:
    schema = f"upkeep_t_{secrets.token_hex(6)}"
    _MADE.add(schema)
    _new_schema(schema)
    return schema


@cache
def _pristine() -> str:
    """A schema at the newest revision that no test ever gets: what a test's schema is compared with
    and refilled from."""
    return _fresh_schema()


@cache
def _pristine_structure() -> tuple[str, ...]:
    with _admin() as conn:
        return _structure(conn, _pristine())


def _give_back(schema: str) -> None:
    """`schema` to the free list if its structure is the pristine one's, its rows and sequences then made
    the pristine one's; otherwise (or if anything fails) dropped."""
    import psycopg

    try:
        with _admin() as conn:
            renamed = f"upkeep_t_{secrets.token_hex(6)}"
            with conn.transaction():
                # Every table locked first, then compared and refilled: a connection the test left behind
                # holds its locks (waited for 2 s at most, then the schema is dropped) or, once locked
                # out, finds the tables under the new name only. DELETE alone would not stop its INSERT
                # nor its DDL committed between the comparison and the refill.
                conn.execute(_lock().replace(TEMPLATE_NAME, schema).encode())
                if _structure(conn, schema) != _pristine_structure():
                    raise _Changed(schema)
                conn.execute(_refill().replace(TEMPLATE_NAME, schema).encode())  # one round trip
                # Under a new name, as a new schema would have: a process the test left behind, whose
                # connections name the schema in their search_path, cannot write into the next test's.
                conn.execute(f'ALTER SCHEMA "{schema}" RENAME TO "{renamed}"'.encode())
    except (psycopg.Error, _Changed):
        _drop(schema)
        return
    _MADE.discard(schema)
    _MADE.add(renamed)
    _FREE.append(renamed)


@cache
def _refill() -> str:
    """SQL that makes the rows and sequences of schema TEMPLATE_NAME (of the pristine structure) the
    pristine one's, in one string."""
    pristine, schema = _pristine(), TEMPLATE_NAME
    statements = ["SET LOCAL session_replication_role = replica"]  # no foreign key checks, no triggers
    with _admin() as conn:
        for table, columns in _tables(conn, pristine):
            names = ", ".join(f'"{c}"' for c, _ in columns)
            values = ", ".join(f'"{c}"::text::"{schema}"."{t}"' if t else f'"{c}"' for c, t in columns)
            statements.append(f'DELETE FROM "{schema}"."{table}"')
            statements.append(
                f'INSERT INTO "{schema}"."{table}" ({names}) SELECT {values} FROM "{pristine}"."{table}"'
            )
        for (sequence,) in conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (pristine,)
        ).fetchall():
            [(last, called)] = conn.execute(
                f'SELECT last_value, is_called FROM "{pristine}"."{sequence}"'.encode()
            )
            statements.append(f'SELECT setval(\'"{schema}"."{sequence}"\', {int(last)}, {bool(called)})')
    return ";\n".join(statements)


@cache
def _lock() -> str:
    """SQL that locks every table of schema TEMPLATE_NAME (of the pristine structure) against everyone
    else until the transaction ends, waiting 2 s at most."""
    with _admin() as conn:
        tables = ", ".join(f'"{TEMPLATE_NAME}"."{table}"' for table, _ in _tables(conn, _pristine()))
    return f"SET LOCAL lock_timeout = '2s';\nLOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"


class _Changed(Exception):
    """A test changed its schema's structure: it cannot be handed on."""


def _tables(conn: Any, schema: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """The tables of `schema` with their columns that take a value (generated ones left out), each with
    the name of its type when the type is the schema's own (an enum: each schema has its own copy)."""
    rows = conn.execute(
        "SELECT c.relname, a.attname, CASE WHEN t.typnamespace = n.oid THEN t.typname ELSE '' END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_attribute a ON a.attrelid = c.oid JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') "
        "AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY c.relname, a.attnum",
        (schema,),
    ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, own_type in rows:
        tables.setdefault(table, []).append((column, own_type))
    return list(tables.items())


_STRUCTURE = [
    # every relation (tables, views, sequences, indexes, ...) and every column, its type, collation,
    # default, flags and grants, in order
    "SELECT c.relname, c.relkind, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "a.attisdropped, a.attidentity, a.attgenerated, pg_get_expr(d.adbin, d.adrelid), "
    "a.attcollation::regcollation::text, a.attacl::text "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
    "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
    "WHERE n.nspname = %(s)s ORDER BY 1, 3",
    # its constraints, and other schemas' foreign keys to its tables (they would refuse its deletes)
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
    "JOIN pg_namespace n ON n.oid = c.connamespace LEFT JOIN pg_class f ON f.oid = c.confrelid "
    "LEFT JOIN pg_namespace fn ON fn.oid = f.relnamespace WHERE %(s)s IN (n.nspname, fn.nspname)",
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(s)s ORDER BY 1, 2",
    # every trigger and whether it fires; a foreign key's own (internal, named by oid) by its constraint:
    # ALTER TABLE ... DISABLE TRIGGER ALL turns the foreign keys off
    "SELECT c.relname, CASE WHEN t.tgisinternal THEN coalesce(k.conname, '') ELSE t.tgname END, "
    "CASE WHEN t.tgisinternal THEN t.tgfoid::regproc::text || ' ' || t.tgtype "
    "ELSE pg_get_triggerdef(t.oid) END, t.tgenabled FROM pg_trigger t "
    "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_constraint k ON k.oid = t.tgconstraint WHERE n.nspname = %(s)s",
    "SELECT sequencename, data_type::text, start_value, min_value, max_value, increment_by, cycle, "
    "cache_size FROM pg_sequences WHERE schemaname = %(s)s ORDER BY 1",
    "SELECT viewname, definition FROM pg_views WHERE schemaname = %(s)s ORDER BY 1",
    "SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc) FROM pg_proc p "
    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(s)s ORDER BY 1, 2",
    # the schema's own types but the row types of its tables (in the first query) and array types
    "SELECT t.typname, t.typtype, e.enumsortorder, e.enumlabel FROM pg_type t "
    "JOIN pg_namespace n ON n.oid = t.typnamespace LEFT JOIN pg_enum e ON e.enumtypid = t.oid "
    "WHERE n.nspname = %(s)s AND t.typtype IN ('e', 'd', 'r', 'm') ORDER BY 1, 4",
    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, c.relpersistence, c.relowner::regrole, "
    "c.relacl::text, c.reloptions::text, c.relreplident, obj_description(c.oid, 'pg_class') "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(s)s ORDER BY 1",
    # rules (an INSERT made to do nothing), row policies, tables inheriting from its own or it from others
    "SELECT c.relname, r.rulename, r.ev_enabled, pg_get_ruledef(r.oid) FROM pg_rewrite r "
    "JOIN pg_class c ON c.oid = r.ev_class JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = %(s)s",
    "SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies "
    "WHERE schemaname = %(s)s",
    "SELECT i.inhrelid::regclass::text, i.inhparent::regclass::text, i.inhseqno FROM pg_inherits i "
    "JOIN pg_class a ON a.oid = i.inhrelid JOIN pg_namespace an ON an.oid = a.relnamespace "
    "JOIN pg_class b ON b.oid = i.inhparent JOIN pg_namespace bn ON bn.oid = b.relnamespace "
    "WHERE %(s)s IN (an.nspname, bn.nspname)",
    # the schema itself: owner, grants, default grants, comment
    "SELECT n.nspowner::regrole, n.nspacl::text, obj_description(n.oid, 'pg_namespace'), "
    "(SELECT string_agg(defaclacl::text, ',') FROM pg_default_acl WHERE defaclnamespace = n.oid) "
    "FROM pg_namespace n WHERE n.nspname = %(s)s",
]


def _structure(conn: Any, schema: str) -> tuple[str, ...]:
    """Everything a test could change in `schema` besides its rows, the schema's own name left out (one
    round trip: each of _STRUCTURE's answers as one sorted text). Not the schema's, so not here: large
    objects, settings of the database or of roles (ALTER DATABASE/ROLE ... SET)."""
    columns = ", ".join(
        "(SELECT string_agg(r, E'\\n' ORDER BY r) FROM "
        f"(SELECT replace(x::text, %(s)s, '<schema>') AS r FROM ({query}) x) y)"
        for query in _STRUCTURE
    )
    row: tuple[str, ...] = conn.execute(f"SELECT {columns}".encode(), {"s": schema}).fetchone()
    return row


def _drop(schema: str) -> None:
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()
    _MADE.discard(schema)


@atexit.register
def _drop_all() -> None:
    for schema in list(_MADE):
        with contextlib.suppress(Exception):
            _drop(schema)
