"""The suite's PostgreSQL schemas (tests/support/databases.py): a schema handed from one test to the next
is, in everything a test can read, a schema made new; one whose structure a test changed is not handed on.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.support import databases

pytestmark = pytest.mark.postgres


@contextlib.contextmanager
def _in_a_test() -> Iterator[str]:
    """`databases.postgres()` as a test's `engine` gets it: the schema's name, given back on the way out."""
    fixture = databases.postgres()
    engine = next(fixture)
    try:
        with engine.connect() as conn:
            yield conn.execute(text("SELECT current_schema()")).scalar_one()
    finally:
        next(fixture, None)


def _content(conn: Any, schema: str) -> dict[str, Any]:
    """Every row of every table (sorted) and every sequence's state, the schema's name left out."""
    content: dict[str, Any] = {}
    for table, _ in databases._tables(conn, schema):
        rows = conn.execute(f'SELECT * FROM "{schema}"."{table}"'.encode()).fetchall()
        content[table] = sorted(repr(row) for row in rows)
    for (sequence,) in conn.execute(
        "SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (schema,)
    ).fetchall():
        content[f"sequence {sequence}"] = conn.execute(
            f'SELECT last_value, is_called FROM "{schema}"."{sequence}"'.encode()
        ).fetchall()
    return {"rows": content, "structure": databases._structure(conn, schema)}


def _oid(conn: Any, schema: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return None if row is None else int(row[0])


def _fill(conn: Any, schema: str) -> set[str]:
    """What a test leaves behind: a row in every table it can put one in (foreign keys not checked), every
    sequence moved on, the rows the migration wrote deleted. The tables that got a row."""
    filled = set()
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for table, _ in databases._tables(conn, schema):
            conn.execute(f'DELETE FROM "{schema}"."{table}"'.encode())
        columns = conn.execute(
            "SELECT c.relname, a.attname, t.typcategory, t.typname, a.atttypid "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
            "WHERE n.nspname = %s AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped "
            "AND a.attgenerated = '' AND d.adbin IS NULL AND a.attidentity = ''",
            (schema,),
        ).fetchall()
        values: dict[str, dict[str, Any]] = {table: {} for table, _ in databases._tables(conn, schema)}
        for table, column, category, type_name, type_id in columns:
            values[table][column] = _a_value(conn, category, type_name, type_id)
        for table, row in values.items():
            names = ", ".join(f'"{c}"' for c in row)
            marks = ", ".join("%s" for _ in row)
            try:
                with conn.transaction():
                    conn.execute(
                        f'INSERT INTO "{schema}"."{table}" ({names}) VALUES ({marks})'.encode()
                        if row
                        else f'INSERT INTO "{schema}"."{table}" DEFAULT VALUES'.encode(),
                        list(row.values()),
                    )
            except psycopg.errors.CheckViolation:
                continue
            filled.add(table)
        for (sequence,) in conn.execute(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = %s", (schema,)
        ).fetchall():
            conn.execute("SELECT nextval(%s::regclass)", (f'"{schema}"."{sequence}"',))
    return filled


def _a_value(conn: Any, category: str, type_name: str, type_id: int) -> Any:
    if category == "E":
        return conn.execute(
            "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = %s ORDER BY enumsortorder LIMIT 1",
            (type_id,),
        ).fetchone()[0]
    if type_name == "uuid":
        return "00000000-0000-0000-0000-00000000000" + secrets.choice("123456789")
    if type_name in ("json", "jsonb"):
        return "{}"
    return {"N": 7, "B": True, "D": "2026-01-02T03:04:05+00:00", "A": "{}"}.get(category, "t")


def test_a_schema_a_test_filled_is_handed_on_as_new_and_one_it_altered_is_dropped() -> None:
    new = f"upkeep_t_{secrets.token_hex(6)}"
    databases._new_schema(new)
    try:
        with psycopg.connect(databases.ADMIN_DSN, autocommit=True) as conn:
            as_new = _content(conn, new)
            with _in_a_test() as schema:
                oid = _oid(conn, schema)
                assert _content(conn, schema) == as_new
                filled = _fill(conn, schema)
                assert _content(conn, schema) != as_new
                assert filled == {table for table, _ in databases._tables(conn, schema)}  # every table
                # a process the test leaves behind, connected to its schema
                stray = psycopg.connect(
                    databases.ADMIN_DSN, autocommit=True, options=f"-csearch_path={schema}"
                )
                [(table, _), *_] = databases._tables(conn, schema)
                stray.execute(f'SELECT count(*) FROM "{table}"'.encode())

            with _in_a_test() as second:
                # handed on (what saves making and dropping a schema per test), under a new name
                assert (second != schema) and _oid(conn, second) == oid
                assert _content(conn, second) == as_new
                assert not _oid(conn, schema)  # the old name: gone for whatever still uses it
                with pytest.raises(psycopg.errors.UndefinedTable), stray:
                    stray.execute(f'INSERT INTO "{table}" DEFAULT VALUES'.encode())
                conn.execute(f'ALTER TABLE "{second}"."{table}" ADD COLUMN left_by_a_test int'.encode())

            with _in_a_test() as third:
                assert _oid(conn, third) != oid  # altered: not handed on, and gone
                assert not _oid(conn, second)
    finally:
        databases._drop(new)


# What a test can leave in its schema besides rows and DDL the structure check already saw, each felt by
# the next test if the schema were handed on: it must get another schema. ({s}: the test's schema.)
LEFT_IN_THE_SCHEMA = {
    # foreign keys are internal triggers: off, the next test's inserts are no longer checked
    "foreign-keys-off": 'ALTER TABLE "{s}".cluster DISABLE TRIGGER ALL',
    # ids handed out 50 at a time per connection: the next test's second connection gets id 51
    "sequence-cache": 'ALTER SEQUENCE "{s}".node_id_seq CACHE 50',
    "column-collation": 'ALTER TABLE "{s}".alert ALTER COLUMN body_text TYPE text COLLATE "C"',  # sort order
    "rule": 'CREATE RULE swallowed AS ON INSERT TO "{s}".alert DO INSTEAD NOTHING',  # inserts vanish
    # a table elsewhere whose rows every SELECT of the schema's table returns
    "inherited-by": 'CREATE TABLE "{o}".alert_too () INHERITS ("{s}".alert)',
    # a table elsewhere that refuses the next test's deletes
    "referenced-from": 'CREATE TABLE "{o}".holds (c int REFERENCES "{s}".customer (id))',
    "row-policy": 'CREATE POLICY hidden ON "{s}".alert USING (false)',
    "forced-row-security": 'ALTER TABLE "{s}".alert FORCE ROW LEVEL SECURITY',
    "grant": 'GRANT ALL ON "{s}".alert TO PUBLIC',
    "schema-privileges": 'REVOKE ALL ON SCHEMA "{s}" FROM PUBLIC',
    "comment": "COMMENT ON TABLE \"{s}\".alert IS 'left by a test'",
    "storage-options": 'ALTER TABLE "{s}".alert SET (fillfactor = 10)',
}


@pytest.mark.parametrize("left", list(LEFT_IN_THE_SCHEMA), ids=list(LEFT_IN_THE_SCHEMA))
def test_a_schema_with_anything_but_rows_changed_is_not_handed_on(left: str) -> None:
    other = f"upkeep_adv_{secrets.token_hex(6)}"
    with psycopg.connect(databases.ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{other}"'.encode())
        try:
            with _in_a_test() as schema:
                oid = _oid(conn, schema)
                conn.execute(LEFT_IN_THE_SCHEMA[left].format(s=schema, o=other).encode())
            with _in_a_test() as second:
                assert _oid(conn, second) != oid
                assert not _oid(conn, schema)
        finally:
            conn.execute(f'DROP SCHEMA "{other}" CASCADE'.encode())


# What a connection the test left behind (a thread, a child process) still has under way in its own
# transaction when the test ends, committed as soon as the hand-over waits for it, or after it.
UNDER_WAY = {
    "a-row": "INSERT INTO customer (name, timezone, requires_approval) VALUES ('left', 'UTC', false)",
    "a-column": "ALTER TABLE customer ADD COLUMN left_by_a_test int",
}


@pytest.mark.parametrize("work", list(UNDER_WAY), ids=list(UNDER_WAY))
def test_what_a_left_connection_commits_late_never_reaches_the_next_test(work: str) -> None:
    new = f"upkeep_t_{secrets.token_hex(6)}"
    databases._new_schema(new)
    try:
        with psycopg.connect(databases.ADMIN_DSN, autocommit=True) as conn:
            as_new = _content(conn, new)
            given_back = threading.Event()
            fixture = databases.postgres()
            with next(fixture).connect() as test_conn:
                schema = test_conn.execute(text("SELECT current_schema()")).scalar_one()
            stray = psycopg.connect(databases.ADMIN_DSN, options=f"-csearch_path={schema}")
            stray.execute(UNDER_WAY[work].encode())  # its transaction open, its lock held

            def commit_when_waited_for() -> None:
                # the hand-over, if it waits for the stray's lock, shows as a lock not granted
                with psycopg.connect(databases.ADMIN_DSN, autocommit=True) as watcher:
                    while not given_back.wait(0.05):
                        [(waiting,)] = watcher.execute(
                            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE NOT l.granted AND n.nspname = %s",
                            (schema,),
                        ).fetchall()
                        if waiting:
                            break
                stray.commit()

            committer = threading.Thread(target=commit_when_waited_for)
            committer.start()
            try:
                next(fixture, None)  # the test ends, its schema given back
            finally:
                given_back.set()
                committer.join()
                stray.close()
            with _in_a_test() as second:
                assert _content(conn, second) == as_new
    finally:
        databases._drop(new)
