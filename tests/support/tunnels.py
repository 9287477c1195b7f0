"""Tunnel clusters on the lab's tunnel lab, for the tunnel tests (test_tunnel_windows, test_tunnel_midrun,
test_tunnel_adversarial, test_tunnel_deadline): the hosts of a cluster, the customer's `tunnel start|stop`,
an update planned into Thursday's window, the rows a test reads back, and the hold-fault probe. They were
private helpers of two test modules that the others imported."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, select

from tests.faults.helpers import steps_of
from tests.support.labs import nodes_of
from upkeep.lab import Lab

TARGET = "9.10.0"
SLOT = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)  # a Thursday, in the windows below
NEXT = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)  # Friday's window


def tunnel_hosts(lab: Lab, cluster: str) -> list[str]:
    return [node["hostname"] for node in nodes_of(lab, cluster)]


def set_tunnel(lab: Lab, host: str, action: str) -> None:
    code, out = lab.tunnel(host, action)
    assert code == 0, out
    if action == "start":
        assert out.startswith(("tunnel up", "tunnel already running")), out


def plan_in_windows(engine: Any, cluster: str, days: tuple[str, ...] = ("thu", "fri")) -> int:
    """A planned update of `cluster` in Thursday's window (`days` 03:00-07:00 UTC), announced."""
    from inventory.db import session_scope
    from inventory.models import Cluster, RunState
    from inventory.runs import create_run
    from inventory.windows import MaintenanceWindow

    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        for window in session.exec(select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == row.id)):
            session.delete(window)
        session.add(
            MaintenanceWindow(
                cluster_id=row.id or 0,
                days=list(days),
                start="03:00",
                duration_minutes=240,
                timezone="UTC",
            )
        )
        run = create_run(
            row,
            to_version=TARGET,
            source="support",
            requested_by="t",
            session=session,
            state=RunState.planned,
        )
        run.slot_start, run.slot_end, run.notice_sequence = SLOT, SLOT + timedelta(hours=1), 1
        run.told_at = SLOT - timedelta(days=5)
        session.add(run)
        session.flush()
        return run.id or 0


def announce(engine: Any, run_id: int) -> int:
    """`run_id` with its 'scheduled' notice queued when it was told (`told_at`), as flows/schedule.py does:
    a carry-over tells only a customer told of the update (flows/endings.py `customer_knows`)."""
    from flows.run_notices import queue_run_notice
    from inventory.db import session_scope
    from inventory.models import UpgradeRun

    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.told_at is not None
        assert queue_run_notice(run, "scheduled", session=session, now=run.told_at)
    return run_id


def run_row(engine: Any, run_id: int) -> Any:
    from inventory.db import session_scope
    from inventory.models import UpgradeRun

    with session_scope(engine) as session:
        return session.get(UpgradeRun, run_id)


def notices_of(engine: Any, run_id: int) -> list[Any]:
    from inventory.db import session_scope
    from inventory.outbox import Notice

    with session_scope(engine) as session:
        query = select(Notice).where(col(Notice.update_ref).startswith(f"update-{run_id}"))
        return list(session.exec(query.order_by(col(Notice.id))).all())


def alerts_of(engine: Any, run_id: int) -> list[Any]:
    from inventory.alerts import Alert
    from inventory.db import session_scope

    with session_scope(engine) as session:
        return list(session.exec(select(Alert).where(Alert.run_id == run_id).order_by(col(Alert.id))).all())


def step_rows(engine: Any, run_id: int) -> list[Any]:
    from inventory.db import session_scope
    from inventory.models import NodeStep

    with session_scope(engine) as session:
        query = select(NodeStep).where(NodeStep.run_id == run_id).order_by(col(NodeStep.id))
        return list(session.exec(query).all())


def all_cases(engine: Any) -> list[Any]:
    from inventory.case_tables import Case
    from inventory.db import session_scope

    with session_scope(engine) as session:
        return list(session.exec(select(Case)).all())


HELD = "held until the fault is cleared"


def upgrade_held(lab: Lab, host: str, what: str = "upgrade") -> bool:
    log = lab.node_dir(host) / "logs" / "product.log"
    return log.is_file() and any(
        HELD in line and f": {what} " in line for line in log.read_text().splitlines()
    )


def in_background(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """`work` in a thread (the customer, while the dispatcher runs the update in this one); what it
    raised is kept for the test to re-raise."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def node_steps(engine: Any, run_id: int, host: str) -> list[tuple[str, str, str]]:
    return [(step, state, out) for name, step, state, out in steps_of(engine, run_id) if name == host]
