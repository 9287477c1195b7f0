"""Schedule integrity against the real lab, on SQLite and PostgreSQL: a planned update stays true while
the world changes around it.

The scenario of issue #13: schedule -> import a blackout over the slot -> the import names the update
and its new slot -> the dispatcher at the old slot starts nothing -> the customer got one "rescheduled"
notice (same invite UID, higher SEQUENCE) -> the update starts in the new slot.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import col, select

from flows.dispatch import dispatch
from flows.integrity import import_and_recheck
from flows.notify import deliver_pending
from flows.run_notices import VendorTerms
from flows.schedule import schedule_update
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, RunState, UpgradeRun
from inventory.outbox import Notice
from scheduling.times import load_zone
from tests.integration.conftest import nodes_of
from tests.support import races

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a Monday


def _uid(ics: str) -> str:
    match = re.search(r"^UID:(.+?)\r?$", ics, re.M)
    assert match, ics
    return match.group(1)


def _sequence(ics: str) -> int:
    match = re.search(r"^SEQUENCE:(\d+)", ics, re.M)
    assert match, ics
    return int(match.group(1))


def _with_blackout(lab: Any, cluster: str, day: str, reason: str, dest: Path) -> Path:
    data = yaml.safe_load(lab.inventory_path.read_text())
    for customer in data["customers"]:
        if any(c["name"] == cluster for c in customer["clusters"]):
            customer["blackouts"] = [{"start": day, "end": day, "reason": reason}]
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def test_blackout_over_the_slot_moves_the_update_and_the_dispatcher_follows(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
) -> None:
    runtime = lab_runtime_any_db
    engine, vendor = runtime.engine, VendorTerms.from_runtime(runtime)
    runtime.clock = lambda: NOW
    with session_scope(engine) as session:
        run = schedule_update(
            fresh_cluster, TARGET, now=NOW, requested_by="sre", session=session, vendor=vendor
        )
        run_id, old_start = run.id, run.slot_start
        zone = load_zone(_zone(session, run))
    assert old_start is not None
    deliver_pending(engine, runtime.mailer, now=NOW, sender=runtime.mail_from)  # the customer is told

    # The customer freezes the day of the slot; the inventory is re-imported an hour later.
    day = old_start.astimezone(zone).date().isoformat()
    fleet = _with_blackout(lab, fresh_cluster, day, "quarter close", tmp_path / "fleet.yaml")
    _, outcomes = import_and_recheck(
        fleet, engine=engine, actor="sre", now=NOW + timedelta(hours=1), vendor=vendor
    )

    [outcome] = outcomes
    with session_scope(engine) as session:
        moved = session.get(UpgradeRun, run_id)
        assert moved is not None and moved.state == RunState.planned and moved.notice_sequence == 2
        new_start = moved.slot_start
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "update.rescheduled")).one()
    assert new_start is not None and new_start > old_start
    assert new_start - (NOW + timedelta(hours=1)) >= timedelta(hours=72)  # full notice from the move
    local = new_start.astimezone(zone).strftime("%a %d %b %H:%M")
    assert outcome.describe() == (
        f"update {run_id} {outcome.label}: slot now inside blackout 'quarter close' -> moved to "
        f"{local} {zone.key}, customer notified"
    )
    assert audit.detail["reasons"] == ["slot now inside blackout 'quarter close'"]

    runtime.clock = lambda: old_start + timedelta(minutes=1)  # the old slot comes
    tick = dispatch(max_running=4)
    assert tick["started"] == []
    assert [len(lab.upgrade_log(n["hostname"])) for n in nodes_of(lab, fresh_cluster)] == [0, 0, 0]

    with session_scope(engine) as session:
        notices = session.exec(
            select(Notice).where(Notice.update_ref == f"update-{run_id}").order_by(col(Notice.id))
        ).all()
    scheduled = [n for n in notices if n.kind == "scheduled"]
    rescheduled = [n for n in notices if n.kind == "rescheduled"]
    assert len(scheduled) == 1 and len(rescheduled) == 1
    assert rescheduled[0].state == "sent" and "quarter close" in rescheduled[0].body_text
    assert _uid(rescheduled[0].ics) == _uid(scheduled[0].ics)
    assert _sequence(rescheduled[0].ics) > _sequence(scheduled[0].ics)

    runtime.clock = lambda: new_start + timedelta(minutes=1)  # the new slot comes
    tick = dispatch(max_running=4)
    assert tick["started"] == [run_id]
    with session_scope(engine) as session:
        assert session.get(UpgradeRun, run_id).state == RunState.succeeded  # type: ignore[union-attr]
    assert [len(lab.upgrade_log(n["hostname"])) for n in nodes_of(lab, fresh_cluster)] == [1, 1, 1]


def _zone(session: Any, run: UpgradeRun) -> str:
    from inventory.repo import customer_of

    cluster = session.get(Cluster, run.cluster_id)
    return customer_of(cluster, session=session).timezone


def _scheduled_and_told(runtime: Any, cluster: str) -> tuple[int, datetime, datetime]:
    engine, vendor = runtime.engine, VendorTerms.from_runtime(runtime)
    with session_scope(engine) as session:
        run = schedule_update(cluster, TARGET, now=NOW, requested_by="sre", session=session, vendor=vendor)
        assert run.id is not None and run.slot_start is not None and run.slot_end is not None
        ids = run.id, run.slot_start, run.slot_end
    deliver_pending(engine, runtime.mailer, now=NOW, sender=runtime.mail_from)
    return ids


def test_dispatcher_rechecks_right_before_claiming(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
) -> None:
    """A blackout written behind Upkeep's back (no import re-check ran): the dispatcher at the slot
    still starts nothing, and moves the update with a notice and an audit event naming the blackout."""
    from inventory.windows import Blackout

    runtime = lab_runtime_any_db
    run_id, start, _ = _scheduled_and_told(runtime, fresh_cluster)
    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        cluster = session.get(Cluster, run.cluster_id)  # type: ignore[union-attr]
        zone = _zone(session, run)  # type: ignore[arg-type]
        day = start.astimezone(load_zone(zone)).date()
        session.add(
            Blackout(customer_id=cluster.customer_id, start=day, end=day, timezone=zone, reason="freeze")
        )  # type: ignore[union-attr]

    runtime.clock = lambda: start + timedelta(minutes=1)
    tick = dispatch(max_running=4)

    assert tick["started"] == []
    assert [len(lab.upgrade_log(n["hostname"])) for n in nodes_of(lab, fresh_cluster)] == [0, 0, 0]
    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.planned and run.slot_start is not None
        assert run.slot_start > start and run.notice_sequence == 2
        audit = session.exec(select(AuditEvent).where(AuditEvent.action == "update.rescheduled")).one()
    assert audit.detail["trigger"] == "dispatcher, before starting"
    assert audit.detail["reasons"] == ["slot now inside blackout 'freeze'"]


def test_no_valid_slot_before_the_deadline_holds_the_update_and_alerts_the_sre(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
) -> None:
    from flows.schedule_calendar import calendar_view
    from inventory.alerts import Alert
    from inventory.models import Release

    runtime = lab_runtime_any_db
    run_id, start, _ = _scheduled_and_told(runtime, fresh_cluster)
    with session_scope(runtime.engine) as session:  # the release gets a deadline before the slot
        release = session.exec(select(Release).where(Release.version == TARGET)).one()
        release.deadline = start - timedelta(days=1)
        session.add(release)

    runtime.clock = lambda: start + timedelta(minutes=1)
    ticks = [dispatch(max_running=4, return_state=True) for _ in range(2)]  # held stays held: told once
    assert [tick.result()["started"] for tick in ticks] == [[], []]

    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.planned
        assert "past the release deadline" in run.held_reason
        alerts = session.exec(select(Alert).where(Alert.run_id == run_id)).all()
        rows = calendar_view(now=start - timedelta(days=1), weeks=2, session=session)
    assert len(alerts) == 1 and alerts[0].kind == "held" and f"update-{run_id} held" in alerts[0].subject
    assert "past the release deadline" in alerts[0].body_text
    [row] = [r for r in rows if r.ref == f"update-{run_id}" and r.what == "update"]
    assert row.detail.startswith(f"update-{run_id} HELD: ")
    assert [len(lab.upgrade_log(n["hostname"])) for n in nodes_of(lab, fresh_cluster)] == [0, 0, 0]
    # The Prefect UI tells it too: one "held" summary under the cluster's key, with the cause.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    # Only this test's two ticks: the worker's Prefect server also holds other tests' summaries under
    # the same key and run number (another lab's cluster of the same name, its own database's run 1).
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[t.state_details.flow_run_id for t in ticks])
            )
        )
    held = [a for a in artifacts if (a.key or "").endswith(f"-{fresh_cluster}")]
    assert all(f"Upkeep run {run_id})" in (a.description or "") for a in held)
    assert (
        len(held) == 1 and ": held" in str(held[0].data) and "past the release deadline" in str(held[0].data)
    )
    assert "not reached" in str(held[0].data)


# --- Races (adversarial pass on #13) ------------------------------------------------------------------
# On PostgreSQL (READ COMMITTED) a read and the write that follows it in one transaction can straddle
# another process's commit; on SQLite every transaction starts with BEGIN IMMEDIATE, so they cannot
# (and a second writer in the same thread would simply wait on the first). These tests put the other
# process's commit exactly between the read and the write, so they need PostgreSQL.


def _postgres_only(engine: Any) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers at BEGIN IMMEDIATE: the interleaving cannot happen")


def test_an_import_moving_the_update_between_the_recheck_and_the_claim_wins(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The dispatcher found the slot valid; before its claim, an import added a blackout over the slot
    and moved the update (customer told "rescheduled"). The claim must not start it at the old slot."""
    import flows.dispatch as dispatch_module
    from flows.dispatch import claim_due

    runtime = lab_runtime_any_db
    _postgres_only(runtime.engine)
    vendor = VendorTerms.from_runtime(runtime)
    run_id, start, _ = _scheduled_and_told(runtime, fresh_cluster)
    with session_scope(runtime.engine) as session:
        zone = load_zone(_zone(session, session.get(UpgradeRun, run_id)))  # type: ignore[arg-type]
    fleet = _with_blackout(
        lab, fresh_cluster, start.astimezone(zone).date().isoformat(), "freeze", tmp_path / "f.yaml"
    )

    def another_import() -> Any:  # another operator's import commits right after the check
        return import_and_recheck(fleet, engine=runtime.engine, actor="sre", now=start, vendor=vendor)[1]

    imports = races.meanwhile(monkeypatch, dispatch_module, "reasons_for", another_import, after=True)
    claim = claim_due(runtime, start + timedelta(minutes=1), timedelta(minutes=5))

    assert [[o.action for o in moved] for moved in imports] == [["moved"]]
    assert claim is None
    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.planned and run.slot_start > start  # type: ignore[operator]


@pytest.mark.parametrize("action", ["cancel", "defer"])
def test_cancel_or_defer_racing_the_dispatchers_claim_never_rewrites_a_started_run(
    action: str, lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, monkeypatch: Any
) -> None:
    """`upkeep cancel-update` (or `defer`) read the update as planned; the dispatcher claimed it
    before they wrote. They must refuse, not mark a running update cancelled (its nodes still being
    upgraded) or tell the customer it moved."""
    import flows.schedule as schedule_module
    from flows.dispatch import claim_due
    from flows.schedule import ScheduleRefused, cancel_update, defer_update

    runtime = lab_runtime_any_db
    _postgres_only(runtime.engine)
    run_id, start, _ = _scheduled_and_told(runtime, fresh_cluster)
    at = start + timedelta(minutes=1)
    # the dispatcher's tick claims it right after the read
    claims = races.meanwhile(
        monkeypatch,
        schedule_module,
        "get_run",
        lambda: claim_due(runtime, at, timedelta(minutes=5)),
        after=True,
    )
    with pytest.raises(ScheduleRefused, match="running"), session_scope(runtime.engine) as session:
        if action == "cancel":
            cancel_update(run_id, now=at, reason="changed our mind", session=session)
        else:
            defer_update(run_id, to=start + timedelta(days=7), now=at, session=session)

    assert claims and claims[0] is not None and claims[0].run_id == run_id
    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.running and run.slot_start == start
        kinds = session.exec(select(Notice.kind).where(Notice.update_ref == f"update-{run_id}")).all()
    assert sorted(kinds) == ["scheduled"]


def test_an_import_whose_move_loses_to_the_dispatchers_claim_does_not_report_a_move(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The import found the slot inside its new blackout and chose a new slot; before it wrote, the
    dispatcher (not yet seeing the blackout) claimed the update. The import must not print "moved to
    ..., customer notified" for an update that is running and that nobody notified."""
    import flows.integrity as integrity_module
    from flows.dispatch import claim_due

    runtime = lab_runtime_any_db
    _postgres_only(runtime.engine)
    vendor = VendorTerms.from_runtime(runtime)
    run_id, start, _ = _scheduled_and_told(runtime, fresh_cluster)
    with session_scope(runtime.engine) as session:
        zone = load_zone(_zone(session, session.get(UpgradeRun, run_id)))  # type: ignore[arg-type]
    day = start.astimezone(zone).date().isoformat()
    fleet = _with_blackout(lab, fresh_cluster, day, "freeze", tmp_path / "f.yaml")
    # the dispatcher's tick claims it right after the new slot was chosen
    claims = races.meanwhile(
        monkeypatch,
        integrity_module,
        "replacement_slot",
        lambda: claim_due(runtime, start, timedelta(minutes=5)),
        after=True,
    )
    _, [outcome] = import_and_recheck(fleet, engine=runtime.engine, actor="sre", now=start, vendor=vendor)

    assert claims and claims[0] is not None
    assert outcome.action == "raced"
    assert outcome.describe() == (
        f"update {run_id} {outcome.label}: slot now inside blackout 'freeze' -> not moved: it is "
        "running (started or changed by another process meanwhile)"
    )
    with session_scope(runtime.engine) as session:
        kinds = session.exec(select(Notice.kind).where(Notice.update_ref == f"update-{run_id}")).all()
        audits = session.exec(select(AuditEvent).where(AuditEvent.action == "update.rescheduled")).all()
    assert sorted(kinds) == ["scheduled"] and audits == []


# --- Races (adversarial pass on #21) ------------------------------------------------------------------


@pytest.mark.parametrize("meanwhile", ["dispatcher claims it", "its last node finished"])
def test_upkeep_cancel_racing_a_start_or_an_end_never_rewrites_the_run(
    meanwhile: str, lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, monkeypatch: Any
) -> None:
    """`upkeep cancel RUN --reason` read the run, then another process committed before its write:
    the dispatcher claimed a carried-over run at its slot (a cancel would then mark a running update
    cancelled and tell the customer so while its nodes are being upgraded), or the flow recorded the
    run succeeded (the cancel would write 'cancelled by ...' as a succeeded run's reason). It must
    refuse with one line and leave the run as the other process left it."""
    import upkeep.updates as updates_module
    from flows.dispatch import claim_due
    from inventory.runs import finish_run
    from upkeep.console import CliError
    from upkeep.updates import request_stop

    runtime = lab_runtime_any_db
    _postgres_only(runtime.engine)
    run_id, start, _ = _scheduled_and_told(runtime, fresh_cluster)
    at = start + timedelta(minutes=1)
    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.started_at = start - timedelta(days=7)  # carried over: one node done a week ago
        run.reason = "partially done (1 of 3 nodes); continues then"
        session.add(run)
    if meanwhile == "its last node finished":
        claim = claim_due(runtime, at, timedelta(minutes=5))
        assert claim is not None and claim.run_id == run_id

    def other_commits() -> Any:
        if meanwhile == "dispatcher claims it":
            return claim_due(runtime, at, timedelta(minutes=5))
        with session_scope(runtime.engine) as other:
            finish_run(updates_module.get_run(run_id, session=other), RunState.succeeded, session=other)
        return "succeeded"

    # The other process commits just before the cancel's read of the run; that read locks the row
    # (get_run(lock=True)), so nothing can commit between it and the cancel's write.
    others = races.meanwhile(monkeypatch, updates_module, "get_run", other_commits)
    if meanwhile == "dispatcher claims it":  # a running run: the cancel is asked of it, between nodes
        request_stop(run_id, "cancel", engine=runtime.engine, actor="sre", reason="customer asked")
    else:
        with pytest.raises(CliError, match=f"run {run_id} is succeeded"):
            request_stop(run_id, "cancel", engine=runtime.engine, actor="sre", reason="customer asked")

    assert others and others[0] is not None
    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        expected = RunState.running if meanwhile == "dispatcher claims it" else RunState.succeeded
        assert run.state == expected
        if meanwhile == "dispatcher claims it":  # asked, not done: honoured after the node in progress
            assert run.requested_action == "cancel"
        else:
            assert "cancelled" not in run.reason
        kinds = session.exec(select(Notice.kind).where(Notice.update_ref == f"update-{run_id}")).all()
    assert "cancelled" not in kinds
