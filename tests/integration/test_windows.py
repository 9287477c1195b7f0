"""One cutoff rule for every run that has a window (issue 21), on the real lab with an injected clock,
on SQLite and PostgreSQL: `request --now` near the window's end, a window longer than the estimate,
carry-over into a later window with room, and `resume` outside (refused) and inside (starts) a window.

Time passes as the nodes themselves log upgrades: the clock is the window's start plus a fixed time per
upgrade the cluster's nodes have logged, so a node "takes" that long whatever the machine's load."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from flows.dispatch import dispatch
from flows.steps import KEPT
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, NodeStep, RunState, UpgradeRun
from inventory.outbox import Notice
from inventory.windows import MaintenanceWindow
from tests.integration.conftest import nodes_of
from tests.support.runs import planned_run
from upkeep.console import CliError
from upkeep.requests import request_update
from upkeep.updates import resume_run

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"
TUE = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # a Tuesday, 03:00 UTC
WED, THU = TUE + timedelta(days=1), TUE + timedelta(days=2)
NODE = timedelta(minutes=10)  # the per-node estimate


def _windows(engine: Any, cluster: str, *spans: tuple[list[str], int]) -> None:
    """Replace the cluster's windows with these (days, minutes) at 03:00 UTC."""
    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        for window in session.exec(select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == row.id)):
            session.delete(window)
        for days, minutes in spans:
            session.add(
                MaintenanceWindow(
                    cluster_id=row.id or 0, days=days, start="03:00", duration_minutes=minutes, timezone="UTC"
                )
            )


def _ticking(lab: Any, cluster: str, base: datetime, per_upgrade: timedelta, already: int = 0) -> Callable:
    hosts = [node["hostname"] for node in nodes_of(lab, cluster)]
    return lambda: base + per_upgrade * (sum(len(lab.upgrade_log(h)) for h in hosts) - already)


def _upgrades(lab: Any, cluster: str) -> list[int]:
    return [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, cluster)]


def _planned(engine: Any, cluster: str, start: datetime, end: datetime) -> int:
    """A scheduled update whose slot is [start, end) (sized to the estimate, as `schedule` makes it),
    announced in good time: the dispatcher's re-check passes."""
    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        run = planned_run(
            session, row, source="support", slot_start=start, slot_end=end,
            told_at=start - timedelta(days=5), notice_sequence=1,
        )  # fmt: skip
        return run.id or 0


def _run(engine: Any, run_id: int) -> UpgradeRun:
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        session.expunge(run)
        return run


def _kinds(engine: Any, run_id: int) -> list[str]:
    with session_scope(engine) as session:
        query = (
            select(Notice.kind).where(col(Notice.update_ref) == f"update-{run_id}").order_by(col(Notice.id))
        )
        return list(session.exec(query))


def test_request_now_near_the_windows_end_starts_no_node_that_cannot_finish(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
):
    runtime = lab_runtime_any_db
    _windows(runtime.engine, fresh_cluster, (["tue", "wed"], 30))
    runtime.per_node_estimate = NODE
    # Asked at 03:12: 18 minutes left, room for one node of 10 but not for a second after it.
    runtime.clock = _ticking(lab, fresh_cluster, TUE + timedelta(minutes=12), NODE)

    run_id = request_update(
        fresh_cluster,
        TARGET,
        source="customer",
        case=None,
        urgent=False,
        now_run=True,
        override_reason=None,
        engine=runtime.engine,
        as_json=True,
    )

    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]
    run = _run(runtime.engine, run_id)
    assert run.state == RunState.planned and "partially done (1 of 3 nodes)" in run.reason
    assert (run.window_start, run.window_end) == (WED, WED + timedelta(minutes=30))  # where it continues
    assert run.slot_start == WED
    # The customer hears it is partially done, and where each node stands; the SRE is alerted.
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    with session_scope(runtime.engine) as session:
        query = select(Notice).where(col(Notice.update_ref) == f"update-{run_id}", Notice.kind == "partial")
        [partial] = session.exec(query).all()
        [alert] = session.exec(
            select(Alert).where(Alert.run_id == run_id, Alert.kind == "carried-over")
        ).all()
    assert partial.recipients and runtime.sre_email not in partial.recipients
    for line in (
        f"{hosts[0]}: {TARGET}",
        f"{hosts[1]}: 9.8.0 (not upgraded)",
        f"{hosts[2]}: 9.8.0 (not upgraded)",
    ):
        assert line in partial.body_text and line in alert.body_text


def test_request_now_without_room_for_one_node_is_refused_and_writes_nothing(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
):
    runtime = lab_runtime_any_db
    _windows(runtime.engine, fresh_cluster, (["tue"], 30))
    runtime.per_node_estimate = NODE
    runtime.clock = lambda: TUE + timedelta(minutes=21)  # 9 minutes left: no node of 10 fits

    with pytest.raises(CliError, match=r"no maintenance window is open now with room for one node .*9m left"):
        request_update(
            fresh_cluster,
            TARGET,
            source="customer",
            case=None,
            urgent=False,
            now_run=True,
            override_reason=None,
            engine=runtime.engine,
            as_json=True,
        )
    with session_scope(runtime.engine) as session:
        assert session.exec(select(UpgradeRun)).all() == []
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]


def test_window_longer_than_the_estimate_is_used_whole(lab: Any, fresh_cluster: str, lab_runtime_any_db: Any):
    runtime = lab_runtime_any_db
    _windows(runtime.engine, fresh_cluster, (["tue"], 60))
    runtime.per_node_estimate = NODE
    # Nodes slower than the estimate (15 minutes each): the estimate-sized slot (30 min) would stop
    # before the third node; the window (60 min) has room for it.
    run_id = _planned(runtime.engine, fresh_cluster, TUE, TUE + 3 * NODE)
    runtime.clock = _ticking(lab, fresh_cluster, TUE, timedelta(minutes=15))

    result = dispatch(max_running=1)

    assert result["started"] == [run_id]
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    run = _run(runtime.engine, run_id)
    assert run.state == RunState.succeeded
    assert (run.window_start, run.window_end) == (TUE, TUE + timedelta(minutes=60))  # recorded


def test_carry_over_goes_to_the_next_window_with_room_and_uses_it_whole(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
):
    runtime = lab_runtime_any_db
    # Tuesday 15 min (one node fits), Wednesday 5 min (none fits), Thursday 40 min.
    _windows(runtime.engine, fresh_cluster, (["tue"], 15), (["wed"], 5), (["thu"], 40))
    runtime.per_node_estimate = NODE
    run_id = _planned(runtime.engine, fresh_cluster, TUE, TUE + timedelta(minutes=15))
    runtime.clock = _ticking(lab, fresh_cluster, TUE, NODE)

    assert dispatch(max_running=1)["started"] == [run_id]

    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]
    run = _run(runtime.engine, run_id)
    assert run.state == RunState.planned and run.slot_start == THU  # Wednesday's 5 minutes are skipped
    assert (run.window_start, run.window_end) == (THU, THU + timedelta(minutes=40))
    assert {"partial", "rescheduled"} <= set(_kinds(runtime.engine, run_id))

    # Thursday, nodes of 15 minutes: two remaining fit the 40-minute window (not the 20-minute slot).
    runtime.clock = _ticking(lab, fresh_cluster, THU, timedelta(minutes=15), already=1)
    assert dispatch(max_running=1)["started"] == [run_id]

    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    assert _run(runtime.engine, run_id).state == RunState.succeeded
    # Thursday copied the package to no node: each holds Tuesday's copy, which its agent verified again
    # by its checksum over SSH (flows/steps.py distribute).
    with session_scope(runtime.engine) as session:
        query = select(NodeStep.output_tail).where(NodeStep.run_id == run_id, NodeStep.step == "distribute")
        outputs = list(session.exec(query.order_by(col(NodeStep.id))))
    assert len(outputs) == 6 and all(KEPT in output for output in outputs[3:]), outputs
    for node in nodes_of(lab, fresh_cluster):
        assert len(list((lab.node_dir(node["hostname"]) / "incoming").iterdir())) == 1


def test_resume_outside_a_window_is_refused_with_the_next_slot_and_inside_starts(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
):
    runtime = lab_runtime_any_db
    _windows(runtime.engine, fresh_cluster, (["tue"], 60))
    runtime.per_node_estimate = NODE
    run_id = _planned(runtime.engine, fresh_cluster, TUE, TUE + 3 * NODE)
    runtime.clock = lambda: TUE - timedelta(hours=1)

    with pytest.raises(
        CliError, match=r"resumes only inside a maintenance window: its slot starts 2026-11-24 03:00"
    ):
        resume_run(run_id, engine=runtime.engine, as_json=True)
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
    assert _run(runtime.engine, run_id).state == RunState.planned

    runtime.clock = _ticking(lab, fresh_cluster, TUE + timedelta(minutes=5), NODE)
    resume_run(run_id, engine=runtime.engine, as_json=True)

    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    assert _run(runtime.engine, run_id).state == RunState.succeeded


def test_resume_with_an_overridden_window_is_audited_and_ignores_the_cutoff(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
):
    runtime = lab_runtime_any_db
    _windows(runtime.engine, fresh_cluster, (["tue"], 60))
    runtime.per_node_estimate = NODE
    run_id = _planned(runtime.engine, fresh_cluster, TUE, TUE + 3 * NODE)
    runtime.clock = _ticking(lab, fresh_cluster, TUE - timedelta(hours=2), NODE)

    resume_run(run_id, engine=runtime.engine, as_json=True, override_reason="P1 outage", actor="sre")

    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    assert _run(runtime.engine, run_id).state == RunState.succeeded
    with session_scope(runtime.engine) as session:
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "run.window_overridden")).one()
    assert (audit.actor, audit.subject, audit.detail["reason"]) == ("sre", f"run/{run_id}", "P1 outage")


# --- Adversarial pass on #21 ----------------------------------------------------------------------


@pytest.mark.parametrize("change", ["window shortened", "blackout added"])
def test_a_window_changed_mid_run_stops_the_next_node(
    change: str, lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, monkeypatch: Any
):
    """An inventory import during the run shortens the window (or adds a blackout over the rest of
    it): the customer's maintenance time is now shorter, so no node may start past its new end. The
    run recorded its window when it started; the cutoff must read the window as it is now."""
    import flows.product_update as product_update_module
    from inventory.models import Customer
    from inventory.windows import Blackout

    runtime = lab_runtime_any_db
    start = TUE + timedelta(hours=20)  # Tuesday 23:00 UTC, for 3 hours (into Wednesday)
    with session_scope(runtime.engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == fresh_cluster)).one()
        for window in session.exec(select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == row.id)):
            session.delete(window)
        session.add(
            MaintenanceWindow(
                cluster_id=row.id or 0,
                days=["tue", "thu"],
                start="23:00",
                duration_minutes=180,
                timezone="UTC",
            )
        )
        customer_id = row.customer_id
    runtime.per_node_estimate = NODE
    run_id = _planned(runtime.engine, fresh_cluster, start, start + 3 * NODE)
    runtime.clock = _ticking(lab, fresh_cluster, start, timedelta(minutes=30))
    original, changed = product_update_module.window_closing, []

    def import_after_first_node(runtime_: Any, run_id_: int) -> bool:
        if sum(_upgrades(lab, fresh_cluster)) >= 1 and not changed:  # another operator's import lands
            changed.append(change)
            with session_scope(runtime.engine) as session:
                if change == "window shortened":
                    row = session.exec(select(Cluster).where(Cluster.name == fresh_cluster)).one()
                    [window] = session.exec(
                        select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == row.id)
                    ).all()
                    window.duration_minutes = 45  # now ends Tuesday 23:45
                    session.add(window)
                else:
                    customer = session.get(Customer, customer_id)
                    assert customer is not None
                    session.add(
                        Blackout(
                            customer_id=customer.id,
                            start=(start + timedelta(days=1)).date(),  # all of Wednesday
                            end=(start + timedelta(days=1)).date(),
                            timezone="UTC",
                            reason="freeze",
                        )
                    )
        return original(runtime_, run_id_)

    monkeypatch.setattr(product_update_module, "window_closing", import_after_first_node)

    assert dispatch(max_running=1)["started"] == [run_id]

    # 23:30 after the first node: shortened, 15 min are left (one node of 10 fits, ends 23:40 <=
    # 23:45); blackout, 30 min (the window ends at midnight now). After the second node (00:00) none fits.
    assert changed and _upgrades(lab, fresh_cluster) == [1, 1, 0]
    run = _run(runtime.engine, run_id)
    assert run.state == RunState.planned and "partially done (2 of 3 nodes)" in run.reason
    assert run.slot_start == THU + timedelta(hours=20)  # Thursday 23:00
