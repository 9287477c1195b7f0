"""Adversarial pass adv49 on h-stall: the 'stopped' notice a stalled run sends its customer, read as the
customer's mailbox and calendar receive it (the outbox's delivery order, not the order rows were queued).

Fakes (tests/support/fakes.py: the fleet, the file server, the mail transport) under the in-process flow
engine, as test_window_stalled_adversarial.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import _taken_up_late, on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)


def _deliver(world: World, at: datetime, mailbox: list[str]) -> None:
    """`upkeep notices send` at `at`: what reached the customer appended to `mailbox` as 'kind:SEQUENCE'
    (the SRE's own copies, update-N-sre, left out)."""
    from flows.notify import deliver_pending

    report = deliver_pending(world.engine, world.mail, now=at, sender="upkeep@vendor.example")
    for key in report.sent:
        ref, kind, sequence = key.split(":")[:3]
        if not ref.endswith("-sre"):
            mailbox.append(f"{kind}:{sequence}")


def test_a_stalled_run_resumed_in_a_window_never_tells_stopped_after_started_and_completed(
    on_call_world: World,
) -> None:
    """Stalled at 00:55: the 'stopped' notice is queued (SEQUENCE N+1, a CANCEL), but the mail server is
    down over the night, so it backs off (the next try at 00:02). The SRE fixes the cause and resumes the
    run in the next window at 00:01 (in a window it goes on at once): 'started' and 'completed' are queued
    at 00:01 - at the SAME SEQUENCE N+1 as the 'stopped' (only its key's kind differs), so none supersedes
    another and delivery goes by due time. The server back, the customer reads 'started', 'completed' and
    then 'stopped for now ... nothing more will be done without a new notice', its CANCEL removing the
    event of an update that is done. What the resume says next must supersede a 'stopped' not yet out."""
    from tasks.mail import TemporaryMailError

    world = on_call_world
    run_id = _planned_monday(world)
    mailbox: list[str] = []
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over"] * 2
    _deliver(world, world.clock.now, mailbox)  # the last 'rescheduled' went out (it supersedes the first)
    assert [told.partition(":")[0] for told in mailbox] == ["rescheduled"], mailbox

    assert _taken_up_late(world, run_id, 2) == "paused"  # stalled at 00:55
    world.mail.fail_with = TemporaryMailError("127.0.0.1:2525: 421 try again later", transport=True)
    _deliver(world, world.clock.now, mailbox)  # 00:55: refused, the 'stopped' tried again at 00:55:30
    _deliver(world, MONDAY + 3 * DAY, mailbox)  # midnight: refused again, next try 00:02
    assert len(mailbox) == 1, mailbox

    world.clock.now = MONDAY + 3 * DAY + timedelta(minutes=1)  # the SRE resumes it in the window
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "succeeded", state.message

    world.mail.fail_with = None  # the server is back
    _deliver(world, MONDAY + 3 * DAY + timedelta(minutes=5), mailbox)
    kinds = [told.partition(":")[0] for told in mailbox]
    assert "completed" in kinds, mailbox
    # never told it stopped (and its slot withdrawn) after it was told it started, let alone finished
    assert "stopped" not in kinds[kinds.index("started") :], mailbox
    sequences = [int(told.partition(":")[2]) for told in mailbox]
    assert sequences == sorted(sequences), mailbox  # each calendar update at a SEQUENCE not below the last


def _blocked_behind(holder: int) -> int:
    """How many backends wait, directly or in a queue, behind the backend `holder` for a lock."""
    from sqlalchemy import text

    from inventory.db import make_engine
    from tests.support.databases import POSTGRES_URL

    admin = make_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            rows = conn.execute(
                text("SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            ).all()
    finally:
        admin.dispose()
    behind, grew = {holder}, True
    while grew:
        more = {pid for pid, blockers in rows if set(blockers) & behind} - behind
        behind |= more
        grew = bool(more)
    return len(behind) - 1


def test_two_processes_stalling_the_same_run_at_once_on_postgresql_claim_it_once(
    on_call_world: World,
) -> None:
    """Real concurrency on PostgreSQL, not one process after the other: the third idle window, and two
    processes (the run's own, woken from a freeze, and the dispatcher's take-over) reach `carry_over`
    together - both wait on the run's row (held here by a third transaction, as the cancel an SRE
    types at that moment would), then go at it as soon as it is free. Exactly one stalls it: one
    'stopped' to the customer, one 'stalled' alert, one audit; the other finds it paused (taken over)."""
    import threading

    from sqlalchemy import text, update
    from sqlmodel import Session, col, select

    from flows import outcomes
    from flows.plan import plan_update
    from inventory.alerts import Alert
    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun
    from tests.support.portal import wait_for
    from tests.support.update_world import CLUSTER, TARGET

    world = on_call_world
    if world.engine.dialect.name != "postgresql":
        return  # SQLite serializes writers at BEGIN: the sequential races are in the adversarial file
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over"] * 2
    world.clock.now = MONDAY + 2 * DAY + timedelta(minutes=55)
    with session_scope(world.engine) as session:  # running in its third window, past the cutoff
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(state=RunState.running, started_at=MONDAY + 2 * DAY)
        )
        plan = plan_update(CLUSTER, TARGET, session=session)

    results: list[str] = []
    errors: list[BaseException] = []

    def stall() -> None:
        try:
            results.append(outcomes.carry_over(world.runtime, plan, run_id))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=stall) for _ in range(2)]
    with world.engine.connect() as holder, Session(bind=holder) as session:
        session.exec(select(UpgradeRun).where(UpgradeRun.id == run_id).with_for_update()).one()
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for thread in threads:
            thread.start()
        wait_for(lambda: _blocked_behind(pid) >= 2, "both processes waiting on the run")
        holder.rollback()  # the row free: both go at once
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(results) == ["paused", outcomes.TAKEN_OVER], results
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled", "stopped"]
    with session_scope(world.engine) as session:
        alerts = session.exec(select(Alert).where(Alert.run_id == run_id, Alert.kind == "stalled")).all()
        from inventory.models import AuditEvent as Audit

        stalls = session.exec(
            select(Audit).where(Audit.subject == f"run/{run_id}", Audit.action == outcomes.STALLED)
        ).all()
    assert len(alerts) == 1 and len(stalls) == 1, (alerts, stalls)
    assert world.run().state == RunState.paused


class _Killed(BaseException):
    """The process dies (kill -9): nothing after this point of it runs."""


def test_an_urgent_stall_whose_process_dies_before_paging_is_paged_by_the_next_dispatcher_tick(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An urgent update stalls: the stall, the customer's 'stopped' and the SRE's e-mail commit in one
    transaction; the page to the engineer on call is sent after it, in its own. The process killed
    between the two (kill -9, its VM lost): the run is paused for good - no flow, no take-over (orphans
    are running runs), nothing re-derives the page - so nobody is paged for an urgent update stopped
    until someone acts. The dispatcher's tick pages for every P0 case and halted rollout not yet paged
    (`page_triggers`); an urgent stalled run not yet paged is one of those too, under the stall's own
    key (paged once, whoever gets there first)."""
    from sqlalchemy import update
    from sqlmodel import col, select

    from flows import outcomes
    from flows.oncall import page_triggers
    from inventory.alerts import Page
    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(urgent=True))
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over"] * 2

    def killed(*_args: object, **_kwargs: object) -> None:
        raise _Killed

    monkeypatch.setattr(outcomes, "page_if_urgent", killed)
    world.clock.now = MONDAY + 2 * DAY + timedelta(minutes=55)
    with pytest.raises(_Killed):
        world.update(run_id=run_id)
    assert world.run().state == RunState.paused and world.notices(run_id)[-1] == "stopped"
    with session_scope(world.engine) as session:
        assert session.exec(select(Page)).all() == []

    world.clock.now += timedelta(minutes=1)  # the dispatcher's next tick
    page_triggers(world.runtime, world.clock.now)
    page_triggers(world.runtime, world.clock.now)  # and the one after: paged once
    with session_scope(world.engine) as session:
        [paged] = session.exec(select(Page)).all()
    assert "no progress in 3 windows" in paged.reason and "Tess" in paged.paged, (paged.reason, paged.paged)
    assert paged.key == f"run:{run_id}:stalled:{world.run().notice_sequence}", paged.key


def test_a_page_raced_by_another_process_under_the_same_key_is_the_one_page_not_an_error(
    on_call_world: World,
) -> None:
    """The stall's page (after its commit) and the dispatcher's catch-up (`page_triggers`) may page the
    same key at once, as a P0 case's handler and the tick could: each looks for the key, finds none, and
    inserts - on PostgreSQL the second INSERT waits on the first's unique key and then fails. That
    IntegrityError came out of `page` and so out of `carry_over` after the stall had committed, into the
    flow's failure handling. The loser returns the winner's page."""
    import threading

    from sqlalchemy import text
    from sqlmodel import Session

    from flows.oncall import page
    from inventory.alerts import Page
    from tests.support.portal import wait_for

    world = on_call_world
    if world.engine.dialect.name != "postgresql":
        return  # SQLite: one writer at a time from BEGIN, the second looks after the first committed
    key, found, errors = "run:7:stalled:3", [], []

    def paging() -> None:
        try:
            found.append(page(world.runtime, key=key, headline="URGENT update run 7 stalled", cause="x"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=paging)
    with world.engine.connect() as other, Session(bind=other) as session:
        first = Page(key=key, reason="the other process's page", paged=["Tess"], created_at=world.clock.now)
        session.add(first)
        session.flush()
        pid = other.execute(text("SELECT pg_backend_pid()")).scalar_one()
        thread.start()
        wait_for(lambda: _blocked_behind(pid) >= 1, "the second page waiting on the first's key")
        session.commit()
        winner = first.id
    thread.join(60)
    assert not errors, errors
    assert found == [winner]


def test_a_process_killed_while_queuing_the_stopped_notice_leaves_no_stall_and_the_take_over_tells_once(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 in the middle of the stall, as the 'stopped' notice is queued: the stall, the notice and
    the SRE's alert are one transaction, so nothing of it is written - the run is still running under the
    dead process's lease, no customer told it stopped while it was not. The take-over (its lease run out)
    finds the window past its cutoff and stalls it: one 'stopped', one 'stalled' alert."""
    from sqlmodel import select

    from flows import endings
    from inventory.alerts import Alert
    from inventory.db import session_scope
    from inventory.models import RunState

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over"] * 2
    real, dying = endings.queue_run_notice, [True]

    def killed_at_stopped(run: object, kind: str, **kwargs: object) -> bool:
        if kind == "stopped" and dying[0]:
            raise _Killed
        return real(run, kind, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(endings, "queue_run_notice", killed_at_stopped)
    world.clock.now = MONDAY + 2 * DAY + timedelta(minutes=55)
    with pytest.raises(_Killed):
        world.update(run_id=run_id)
    dying[0] = False
    run = world.run()
    assert run.state == RunState.running and not run.reason.startswith("stalled"), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled"]

    assert _taken_up_late(world, run_id, 2) == "paused"  # the take-over, its lease run out meanwhile
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled", "stopped"]
    with session_scope(world.engine) as session:
        alerts = session.exec(select(Alert).where(Alert.run_id == run_id, Alert.kind == "stalled")).all()
    assert len(alerts) == 1


def test_an_update_an_sre_pauses_after_started_tells_the_customer_it_stopped(on_call_world: World) -> None:
    """The same customer surprise the stall had: told 'started' ("you will hear from us when it is
    done"), node 1 upgraded, then paused by an SRE - and nothing. Decided (h-pause): a pause inside the
    window tells nothing more; the window (00:00-01:00) ending with it still paused, the dispatcher's tick
    sends the stall's 'stopped' - once, its CANCEL at the next SEQUENCE, the fixed words (1 of 3 nodes on
    9.10.0, no SRE reason) - and the SRE is alerted; the portal shows it "Stopped for now"."""
    from sqlmodel import select

    from flows.outcomes import tell_paused_past_window
    from flows.portal_actions import stopped_updates
    from inventory.alerts import Alert
    from inventory.db import session_scope
    from inventory.models import Customer, RunState
    from inventory.runs import stalled
    from tests.unit.test_window_stalled_adversarial import _customer_notice

    world = on_call_world
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    assert world.notices(run_id) == ["scheduled", "started"]

    assert tell_paused_past_window(world.runtime, MONDAY + timedelta(minutes=59)) == []  # still its window
    assert world.notices(run_id) == ["scheduled", "started"]

    end = MONDAY + timedelta(hours=1)
    assert tell_paused_past_window(world.runtime, end) == [run_id]
    assert tell_paused_past_window(world.runtime, end + timedelta(minutes=1)) == []  # the next tick: once
    told = world.notices(run_id)
    assert told == ["scheduled", "started", "stopped"], told
    started, stopped = _customer_notice(world, run_id, "started"), _customer_notice(world, run_id, "stopped")
    assert stopped.sequence == started.sequence + 1 and "METHOD:CANCEL" in stopped.ics, stopped.sequence
    body = " ".join(stopped.body_text.split())
    assert "1 of 3 nodes run 9.10.0 now" in body, body
    assert "paused" not in body and "sre" not in body.lower().split(), body  # no SRE reason, no who

    run = world.run()
    assert run.state == RunState.paused and not stalled(run), (run.state, run.reason)  # SRE-side: paused
    with session_scope(world.engine) as session:
        query = select(Alert).where(Alert.run_id == run_id, Alert.kind == "paused-stopped")
        [alert] = session.exec(query).all()
        customer = session.exec(select(Customer)).one()
        [shown] = stopped_updates(customer, session=session)
    assert "sent the 'stopped' notice" in " ".join(alert.body_text.split()), alert.body_text
    assert (shown.id, shown.nodes_upgraded, shown.nodes_total) == (run_id, 1, 3), shown
