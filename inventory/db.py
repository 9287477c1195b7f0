"""Engines and sessions for SQLite (default) and PostgreSQL (by URL), plus schema migration.

A PostgreSQL server may restart or fail over under a running update (issue #9). Two things keep a
run going through that instead of failing it over a blip:

- connecting waits: once an engine has connected, a refused connection or "the database system is
  starting up / shutting down" is retried for up to `DB_OUTAGE_SECONDS`. Nothing was sent yet, so
  waiting is always safe. A first connection is not retried: a wrong URL or a server that is down
  when the command starts is reported at once;
- `retrying(engine, work)` runs a transaction again when the server dropped the connection under
  it. Only for work that is safe to repeat (reads, an UPDATE by primary key to fixed values, an
  INSERT that looks for its own row first): if the drop came during COMMIT the first attempt may
  have committed, so a blind INSERT would be written twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

MIGRATIONS = Path(__file__).with_name("migrations")
DB_OUTAGE_SECONDS = 60.0  # a restart takes ~0.2 s here; a failover or a slow crash recovery, longer
# SQLSTATEs of a server that is going away or not back yet (class 57: operator intervention).
_SERVER_AWAY = {"57P01", "57P02", "57P03"}
_AWAY_TEXT = (
    "Connection refused",
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
)
T = TypeVar("T")
log = logging.getLogger(__name__)


def make_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`. `schema` pins PostgreSQL's search_path (tests use a schema per run)."""
    parsed = make_url(url)
    if "@" in (parsed.host or ""):
        # user:p@ss@host reads as password "p", host "ss@host": the driver's error would quote the
        # rest of the password as a host name. Refused before any connection, the URL not repeated.
        raise ValueError("its password holds an unencoded '@' (write it as %40)")
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take the write lock at BEGIN instead so
        # two processes racing for the same row see each other (SQLAlchemy's documented recipe).
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    if parsed.drivername.startswith("postgresql"):
        if schema:
            kwargs.setdefault("connect_args", {"options": f"-csearch_path={schema}"})
        # Pre-ping: a pooled connection the server closed (restart) is replaced on checkout.
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kwargs)
        _wait_for_server_on_connect(engine)
        return engine
    raise ValueError(
        f"database URL {parsed.render_as_string(hide_password=True)!r}: only sqlite and "
        "postgresql are supported"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # let the "begin" listener issue BEGIN IMMEDIATE
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def server_away(exc: BaseException) -> bool:
    """True when `exc`, or the exception it was raised from (a step wraps what failed under it),
    says the database server dropped or refused the connection (restarting, failing over, shutting
    down), as opposed to a bad query, credentials or data."""
    if exc.__cause__ is not None and server_away(exc.__cause__):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig or exc
    sqlstate = getattr(exc, "sqlstate", "")
    if sqlstate in _SERVER_AWAY:
        return True
    # A failed connect arrives as one OperationalError without a SQLSTATE: read its text.
    return sqlstate is None and any(sign in str(exc) for sign in _AWAY_TEXT)


def _wait_for_server_on_connect(engine: Engine) -> None:
    seen = {"connected": False}

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + DB_OUTAGE_SECONDS  # read per call: tests shorten it
        delay = 0.05
        while True:
            try:
                connection = dialect.connect(*cargs, **cparams)
            except Exception as exc:
                if not seen["connected"] or not server_away(exc) or time.monotonic() > deadline:
                    raise
                log.warning("database unavailable (%s); retrying in %.2f s", str(exc).strip(), delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            seen["connected"] = True
            return connection


def retrying(engine: Engine, work: Callable[[Connection], T]) -> T:
    """`work(conn)` in one transaction, run again (on a new connection) when the server dropped the
    connection under it, for up to `DB_OUTAGE_SECONDS`. `work` must be safe to repeat: see the
    module docstring."""
    deadline = time.monotonic() + DB_OUTAGE_SECONDS
    while True:
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            if not server_away(exc) or time.monotonic() > deadline:
                raise
            log.warning("database connection lost (%s); running the transaction again", exc.orig)
            time.sleep(0.05)


# The newest revision in migrations/versions. tests/unit/test_migrations.py holds it to Alembic's own
# head, so a new migration without this line changed fails there, not in a customer's database.
HEAD_REVISION = "0013"


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision.

    Every CLI command and every flow process opens the database this way, and nearly always it is
    already at the head: that is seen with one SELECT, without Alembic. Measured on a quiet 2-core
    machine (cProfile, `upkeep inventory import` on an up-to-date SQLite database): Alembic's upgrade
    to the head it was already at took 0.27 s of the command's 2.1 s CPU (loading Alembic and reading
    every migration script); the SELECT takes about a millisecond. Anything else (no version table, an
    older revision, a revision this checkout does not know, an error) goes to Alembic as before."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two processes migrating at once (two `upkeep db upgrade`, or any two commands starting on
            # a fresh database) would both run the same DDL and the second die on a duplicate. The
            # second waits here until the first commits, then reads the new head and has nothing to do.
            # (SQLite needs nothing: BEGIN IMMEDIATE already serialises writers.)
            connection.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext('upkeep migrate ' || current_schema()))"
            )
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def _at_head(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except DBAPIError:  # no version table yet, or the server away: Alembic's path says what is wrong
        return False
    return [row[0] for row in versions] == [HEAD_REVISION]


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
