"""A dispatcher killed with a run in flight leaves an orphan; the next dispatcher takes it over.

A real `upkeep dispatch` process (against the session's Prefect test server and the test's database,
SQLite or PostgreSQL) starts a due run and SIGKILLs itself after the first node (tasks/failpoints.py).
While the dead process's lease is live, the next tick leaves the run alone and counts it against
`--max-running`; once the dispatcher's clock is past the lease it takes the run over, resumes it (no
node upgraded twice, by the nodes' own logs) and then starts the run that waited for the slot."""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import select

from flows.dispatch import dispatch
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, RunState, UpgradeRun
from inventory.types import utcnow
from tests.conftest import POSTGRES_URL
from tests.integration.conftest import nodes_of, upkeep_cli
from tests.support.runs import due_now

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def _due(engine: Any, cluster: str) -> int:
    with session_scope(engine) as session:
        run = due_now(session, session.exec(select(Cluster).where(Cluster.name == cluster)).one())
        session.flush()
        return run.id or 0


def _database_url(engine: Any) -> str:
    """The URL a CLI process reaches the test's database by (PostgreSQL: the test's own schema)."""
    if engine.dialect.name == "sqlite":
        return str(engine.url)
    with engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def _cli_env(lab: Any, engine: Any, home: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "UPKEEP_DATABASE_URL": _database_url(engine),
            "UPKEEP_HEALTH_TIMEOUT": "10",
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    return env


def _run(engine: Any, run_id: int) -> UpgradeRun:
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        return run


def _upgrades(lab: Any, cluster: str) -> list[int]:
    return [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, cluster)]


def test_a_run_orphaned_by_a_killed_dispatcher_is_taken_over_once_its_lease_runs_out(
    lab: Any, fresh_cluster: str, second_fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
):
    runtime = lab_runtime_any_db
    engine = runtime.engine
    orphan_id = _due(engine, fresh_cluster)
    env = _cli_env(lab, engine, tmp_path / "home")

    crashed = upkeep_cli(
        {**env, "UPKEEP_FAILPOINT": "after-node:1"}, "dispatch", "--max-running", "1", check=False
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-2000:] + crashed.stderr[-2000:]
    orphan = _run(engine, orphan_id)
    assert orphan.state == RunState.running and orphan.lease_owner and orphan.lease_until
    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]
    shown = json.loads(upkeep_cli(env, "show", str(orphan_id), "--json").stdout)
    assert (shown["state"], shown["lease_owner"]) == ("running", orphan.lease_owner)
    waiting_id = _due(engine, second_fresh_cluster)  # due now, but the only slot is the orphan's

    # The dead process's lease is still live: the run is left alone and still holds the slot.
    runtime.clock = utcnow
    live = dispatch(max_running=1)
    assert (live["taken_over"], live["started"]) == ([], [])
    assert _run(engine, orphan_id).lease_owner == orphan.lease_owner
    assert _run(engine, waiting_id).state == RunState.planned

    later = orphan.lease_until + timedelta(seconds=1)
    runtime.clock = lambda: later
    after = dispatch(max_running=1)

    assert (after["taken_over"], after["started"]) == ([orphan_id], [waiting_id])
    for run_id in (orphan_id, waiting_id):
        final = _run(engine, run_id)
        assert final.state == RunState.succeeded, final.reason
        assert (final.lease_owner, final.lease_until, final.active_cluster_id) == (None, None, None)
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    assert _upgrades(lab, second_fresh_cluster) == [1, 1, 1]
    with session_scope(engine) as session:
        taken = session.exec(select(AuditEvent).where(AuditEvent.action == "run.taken_over")).all()
    assert [(e.subject, e.detail["previous_owner"]) for e in taken] == [
        (f"run/{orphan_id}", orphan.lease_owner)
    ]


def test_a_cancel_asked_of_an_orphan_is_honoured_by_the_take_over(
    lab: Any, fresh_cluster: str, lab_runtime: Any
):
    """`upkeep cancel` on a run whose process is gone only records the request; the dispatcher that
    takes the run over cancels it before touching a node, instead of carrying it out."""
    engine = lab_runtime.engine
    run_id = _due(engine, fresh_cluster)
    with session_scope(engine) as session:  # as a crashed process leaves it, with the cancel asked since
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.state, run.started_at, run.requested_action = RunState.running, utcnow(), "cancel"
        run.lease_owner, run.lease_until = "gone-host:4242/abcdef", utcnow() - timedelta(seconds=1)

    result = dispatch(max_running=1)

    assert result["taken_over"] == [run_id]
    final = _run(engine, run_id)
    assert final.state == RunState.cancelled and "cancelled by request" in final.reason
    assert (final.lease_owner, final.active_cluster_id) == (None, None)
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
