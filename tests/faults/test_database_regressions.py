"""Regressions found by tests/faults/test_database.py (a PostgreSQL restart mid-rollout), each small
and deterministic: the server is stopped, or a session terminated, at a chosen point, on a private
PostgreSQL cluster (tests/faults/postgres.py).

- a query while the server restarts waited for nothing and failed the run with a traceback
  ("Connection refused", "the database system is starting up").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from inventory.db import make_engine
from tests.faults.helpers import wait_for
from tests.faults.postgres import PrivatePostgres, missing_binaries

pytestmark = [pytest.mark.faults]


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    problem = missing_binaries()
    if problem:
        pytest.skip(problem)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_engine(pg: PrivatePostgres) -> Iterator[Any]:
    engine = make_engine(pg.create_database(f"reg_{time.monotonic_ns()}"))
    try:
        yield engine
    finally:
        engine.dispose()


def _one(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT 1")).scalar_one())


def test_a_query_while_the_server_restarts_waits_for_it(
    pg: PrivatePostgres, pg_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert _one(pg_engine) == 1
    pg.down()
    results: list[Any] = []

    def query() -> None:
        try:
            results.append(_one(pg_engine))
        except Exception as exc:
            results.append(exc)

    caplog.set_level(logging.WARNING, logger="inventory.db")
    thread = threading.Thread(target=query)
    thread.start()
    try:
        # The query is refused and waiting (or has already failed, without the fix) before the start.
        wait_for(lambda: results or "database unavailable" in caplog.text, "the query to be refused")
    finally:
        pg.up()
        thread.join()
    assert results == [1]


def test_a_first_connection_to_a_server_that_is_down_is_refused_at_once(
    pg: PrivatePostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting is for a server seen up before: a wrong URL or a server down at start says so at once."""
    url = pg.create_database(f"reg_{time.monotonic_ns()}")
    pg.down()
    engine = make_engine(url)
    caplog.set_level(logging.WARNING, logger="inventory.db")
    try:
        with pytest.raises(OperationalError, match="Connection refused"):
            _one(engine)
    finally:
        pg.up()
        engine.dispose()
    assert "database unavailable" not in caplog.text
