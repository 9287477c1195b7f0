"""Regressions found by tests/faults/test_database.py (a PostgreSQL restart mid-rollout), each small
and deterministic: the server is stopped, or a session terminated, at a chosen point, on a private
PostgreSQL cluster (tests/faults/postgres.py).

- a query while the server restarts waited for nothing and failed the run with a traceback
  ("Connection refused", "the database system is starting up");
- a step record whose transaction the server cut off (`pg_terminate_backend`, what a fast shutdown
  does to every session) failed the step, or left it `started` forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from inventory.db import make_engine, migrate, session_scope
from inventory.models import Cluster, Node, NodeStep, RunState
from inventory.runs import create_run
from tests.faults.helpers import TARGET, wait_for
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


def _run_and_node(engine: Any, lab: Any) -> tuple[int, int]:
    from inventory.importer import import_inventory

    migrate(engine)
    import_inventory(lab.inventory_path, engine=engine, actor="test")
    with session_scope(engine) as session:
        cluster = session.exec(select(Cluster)).first()
        assert cluster is not None
        run = create_run(cluster, to_version=TARGET, source="cli", requested_by="t", session=session)
        run.state = RunState.running
        session.flush()
        node_id = session.exec(select(Node.id).where(Node.cluster_id == cluster.id)).first()
        assert run.id is not None and node_id is not None
        return run.id, node_id


def _terminate_own_session_on(engine: Any, pg: PrivatePostgres, statement: str) -> list[str]:
    """The first time `statement` (e.g. "INSERT INTO nodestep") is about to run, the server
    terminates that session - what a fast shutdown does - so it fails mid-transaction."""
    fired: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def cut(conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if fired or not sql.startswith(statement):
            return
        fired.append(sql)
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{pg.port}/postgres", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    return fired


@pytest.mark.lab
@pytest.mark.parametrize("cut_at", ["INSERT INTO nodestep", "UPDATE nodestep"])
def test_a_step_record_survives_the_server_cutting_its_transaction(
    cut_at: str, pg: PrivatePostgres, pg_engine: Any, faults_lab: Any
) -> None:
    from flows.records import recorded

    run_id, node_id = _run_and_node(pg_engine, faults_lab)
    fired = _terminate_own_session_on(pg_engine, pg, cut_at)
    actions = 0
    with recorded(pg_engine, run_id, node_id, "upgrade", detail=TARGET) as note:
        actions += 1
        note.output = "done"
    assert fired, f"the session was never cut at {cut_at!r}: the test did not test anything"
    assert actions == 1
    with session_scope(pg_engine) as session:
        steps = [(s.step, str(s.state), s.output_tail) for s in session.exec(select(NodeStep)).all()]
    assert steps == [("upgrade", "succeeded", "done")]


def test_the_cli_says_the_database_is_unavailable_in_one_line(pg: PrivatePostgres, tmp_path: Any) -> None:
    import os

    from tests.integration.conftest import upkeep_cli

    url = pg.create_database(f"reg_{time.monotonic_ns()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPKEEP_")}
    env.update({"UPKEEP_HOME": str(tmp_path), "UPKEEP_DATABASE_URL": url})
    pg.down()
    try:
        proc = upkeep_cli(env, "runs", check=False)
    finally:
        pg.up()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "│" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: the database is unavailable (connection failed"), proc.stderr


@pytest.mark.lab
@pytest.mark.prefect
def test_a_database_outage_under_a_run_leaves_it_to_resume_instead_of_failing_it(
    pg: PrivatePostgres,
    pg_engine: Any,
    faults_lab: Any,
    faults_cluster: str,
    prefect_harness: None,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outage longer than Upkeep waits (here: no wait at all) stops the run where it is. It used
    to be marked failed, with a failure notice to the customer and a P1 case, over a database blip."""
    import inventory.db
    from flows.product_update import product_update
    from inventory.outbox import Notice
    from tests.faults.helpers import runs_of, upgrades
    from tests.integration.conftest import _runtime
    from upkeep.settings import load_settings

    migrate(pg_engine)
    cluster = faults_cluster
    settings = load_settings(home=tmp_path / "home", **faults_lab.settings_overrides())
    runtime = _runtime(faults_lab, settings, pg_engine)
    next(runtime)
    try:
        monkeypatch.setattr(inventory.db, "DB_OUTAGE_SECONDS", 0.0)
        # The read of `upkeep pause|cancel` requests before node 1: no node touched yet.
        fired = _terminate_own_session_on(pg_engine, pg, "SELECT upgraderun.requested_action")
        state = product_update(cluster=cluster, to_version=TARGET, return_state=True)
        assert fired and state.is_failed(), state
        (run,) = runs_of(pg_engine, cluster)
        assert run.state == RunState.running, run.reason
        with session_scope(pg_engine) as session:
            kinds = sorted(n.kind for n in session.exec(select(Notice)).all())
        assert "failed" not in kinds, kinds
        assert upgrades(faults_lab, cluster) == [0, 0, 0]

        monkeypatch.setattr(inventory.db, "DB_OUTAGE_SECONDS", 60.0)
        again = product_update(cluster=cluster, to_version=TARGET, run_id=run.id, return_state=True)
        assert again.is_completed(), again
        assert upgrades(faults_lab, cluster) == [1, 1, 1]
        assert [r.state for r in runs_of(pg_engine, cluster)] == [RunState.succeeded]
    finally:
        next(runtime, None)
