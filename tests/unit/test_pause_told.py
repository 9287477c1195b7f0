"""h-pause: what the customer is told of an update an SRE paused (`upkeep pause`) once its announced window
ends, and what counts as the customer having been told of an update at all (`customer_knows`).

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_stalled_adv49.py, on SQLite and
PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.support.update_world import MONDAY, World
from tests.unit.test_stalled_adv49 import _deliver
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import _taken_up_late, on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)


def test_a_customer_whose_only_notice_bounced_is_not_mailed_rescheduled_as_their_first_word(
    on_call_world: World,
) -> None:
    """The 'scheduled' notice refused for good by the customer's mail server (a 5xx): they never heard of
    the update. Taken up late and carried over, it mailed them 'rescheduled' - "your update moved" of an
    update they never knew of - as `customer_knows` counted any notice row, a failed one too.

    h-ending: the carry-over asks `move_notice`, as a re-slot, integrity's move and `upkeep reschedule`
    do (adv57): the update is announced anew at its new slot ('scheduled'), never 'rescheduled'."""
    from tasks.mail import PermanentMailError

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = PermanentMailError("550 5.1.1 mailbox unknown", code=550)
    mailbox: list[str] = []
    _deliver(world, MONDAY - 7 * DAY, mailbox)
    assert mailbox == []
    world.mail.fail_with = None

    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == ["scheduled", "scheduled"], world.notices(run_id)


def test_a_notice_still_on_its_way_counts_as_told(on_call_world: World) -> None:
    """A 'scheduled' refused for now (a 421, retried later) is still on its way: the customer is told of
    the move as of the update (their mailbox gets both, in order)."""
    from tasks.mail import TemporaryMailError

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = TemporaryMailError("421 try again later", transport=True)
    _deliver(world, MONDAY - 7 * DAY, [])
    world.mail.fail_with = None

    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == ["scheduled", "rescheduled"], world.notices(run_id)


END = MONDAY + timedelta(hours=1)  # Monday's window (00:00-01:00 UTC) ends


def _paused_after_node_1(world: World) -> int:
    """Monday's update, announced, started at 00:01 and paused by an SRE while node 1 upgraded."""
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    assert world.notices(run_id) == ["scheduled", "started"]
    return run_id


def _tick(world: World, at: datetime) -> list[int]:
    """The dispatcher's tick's part for paused runs (flows/dispatch.py calls it first thing)."""
    from flows.outcomes import tell_paused_past_window

    world.clock.now = at
    return tell_paused_past_window(world.runtime, at)


def _stopped_alerts(world: World, run_id: int) -> int:
    from sqlmodel import select

    from inventory.alerts import Alert
    from inventory.db import session_scope

    with session_scope(world.engine) as session:
        query = select(Alert).where(Alert.run_id == run_id, Alert.kind == "paused-stopped")
        return len(session.exec(query).all())


def test_a_pause_resumed_inside_its_window_tells_the_customer_nothing_more(on_call_world: World) -> None:
    """Paused at 00:01 for a look, resumed at 00:10 inside the window: it completes, the customer reads
    'started' then 'completed', and the window's end finds nothing paused to tell."""
    world = on_call_world
    run_id = _paused_after_node_1(world)
    world.clock.now = MONDAY + timedelta(minutes=10)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "succeeded", state.message

    assert _tick(world, END) == []
    assert world.notices(run_id) == ["scheduled", "started", "completed"]


def test_stopped_then_resumed_and_paused_again_is_told_stopped_again_once_at_a_new_sequence(
    on_call_world: World,
) -> None:
    """Monday's window ends paused ('stopped'); Tuesday at 00:01 the SRE resumes it inside the window
    ('started' at a new SEQUENCE, superseding the 'stopped') and pauses it again during node 2; Tuesday's
    window ends paused: a second 'stopped', at a SEQUENCE above the second 'started', once."""
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]

    def pause_at_node_2(_node: object) -> None:
        request_stop(run_id, "pause", engine=world.engine, actor="sre")

    world.nodes[1].before["upgrade"] = pause_at_node_2
    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "paused", state.message
    assert world.upgraded() == [1, 1, 0]

    assert _tick(world, END + DAY - timedelta(minutes=1)) == []
    assert _tick(world, END + DAY) == [run_id]
    assert _tick(world, END + DAY + timedelta(minutes=1)) == []
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "started", "stopped"]
    from sqlmodel import col, select

    from inventory.db import session_scope
    from inventory.outbox import Notice

    with session_scope(world.engine) as session:
        sequences = list(
            session.exec(
                select(Notice.sequence)
                .where(Notice.update_ref == f"update-{run_id}")
                .order_by(col(Notice.id))
            )
        )
    assert sequences[1:] == sorted(set(sequences[1:])) and len(set(sequences[1:])) == 4, sequences
    assert _stopped_alerts(world, run_id) == 2


def test_the_resume_outside_a_window_of_a_pause_told_stopped_plans_it_for_the_next_window(
    on_call_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """As the resume of a stalled run: outside a window, planned for the next one with room and the
    customer told 'rescheduled' (refused with "resumes only inside a maintenance window" before, the
    customer left with 'stopped' until the SRE was up at midnight)."""
    from inventory.models import RunState
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]
    world.clock.now = MONDAY + timedelta(hours=12)
    capsys.readouterr()

    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")

    said = " ".join(capsys.readouterr().out.split())
    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + DAY), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "rescheduled"]
    assert "was paused past its window" in said and "the customer is told ('rescheduled')" in said, said
    assert _tick(world, END + DAY) == []  # planned, not paused: nothing to tell at its window's end


def test_a_run_paused_before_its_first_node_is_told_stopped_with_nothing_changed(
    on_call_world: World,
) -> None:
    """Paused before node 1 (the stop honoured before any node): 'stopped' says nothing was changed."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun
    from tests.unit.test_window_stalled_adversarial import _customer_notice

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(
                state=RunState.paused, started_at=MONDAY, window_start=MONDAY, window_end=END,
                reason="paused by request after 0 of 3 nodes",
            )
        )  # fmt: skip
    assert _tick(world, END) == [run_id]
    body = " ".join(_customer_notice(world, run_id, "stopped").body_text.split())
    assert "Nothing was changed on your cluster: it stays in service on 9.9.0." in body, body


def test_a_paused_run_the_sre_cancels_is_told_cancelled_once_and_never_stopped(on_call_world: World) -> None:
    """Cancelled while paused, before its window ends: 'cancelled' (the existing path), and the window's end
    tells nothing more - no 'stopped' after 'cancelled'."""
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _paused_after_node_1(world)
    request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="the customer asked us to")
    assert _tick(world, END) == []
    assert world.notices(run_id) == ["scheduled", "started", "cancelled"]


def test_a_pause_told_stopped_then_cancelled_is_told_cancelled_once(on_call_world: World) -> None:
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]
    request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="the customer asked us to")
    assert _tick(world, END + timedelta(minutes=1)) == []
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "cancelled"]


def test_a_pause_still_pending_on_a_running_run_is_left_to_its_process(on_call_world: World) -> None:
    """The window ends while the pause is asked but not yet taken up (the run `running`, node 2 in
    progress): the tick tells nothing - the run is its process's (it pauses after the node, or carries
    over, or the take-over honours the pause); once paused, the next tick tells 'stopped'."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import RequestedAction, RunState, UpgradeRun

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(
                state=RunState.running, started_at=MONDAY, window_start=MONDAY, window_end=END,
                requested_action=RequestedAction.pause,
            )
        )  # fmt: skip
    assert _tick(world, END + timedelta(minutes=5)) == []
    assert world.notices(run_id) == ["scheduled"]
    with session_scope(world.engine) as session:  # its process honours the pause after the node
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(state=RunState.paused, requested_action=RequestedAction.none, reason="paused by request")
        )
    assert _tick(world, END + timedelta(minutes=6)) == [run_id]
    assert world.notices(run_id) == ["scheduled", "stopped"]


def test_a_pause_of_an_update_never_announced_tells_nobody(on_call_world: World) -> None:
    """The customer's only notice bounced for good: they never heard of the update, so its pause past the
    window is not their first word of it."""
    from sqlalchemy import update

    from inventory.db import session_scope
    from inventory.outbox import Notice, NoticeState

    world = on_call_world
    run_id = _paused_after_node_1(world)
    with session_scope(world.engine) as session:  # 'scheduled' and 'started' refused for good (5xx)
        session.execute(update(Notice).values(state=NoticeState.failed))
    assert _tick(world, END) == []
    assert world.notices(run_id) == ["scheduled", "started"]


def test_upkeep_pause_says_when_the_customer_will_be_told(on_call_world: World) -> None:
    """The SRE's `upkeep pause` answer names the window's end in the customer's zone and in UTC."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import Customer, RunState, UpgradeRun
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _planned_monday(world)
    # The customer in Berlin: Monday's window 00:00-01:00 there is 23:00-00:00 UTC, and the run started in
    # it (adv52: the answer reads the window as it is now, as the tick and the cutoff do; recorded as
    # 00:00-01:00 UTC it is not open at all in Berlin's window, so it was already over).
    with session_scope(world.engine) as session:
        session.execute(update(Customer).values(timezone="Europe/Berlin"))
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(
                state=RunState.running, started_at=MONDAY - timedelta(hours=1),
                window_start=MONDAY - timedelta(hours=1), window_end=MONDAY,
            )
        )  # fmt: skip
    world.clock.now = MONDAY - timedelta(minutes=30)
    said = request_stop(run_id, "pause", engine=world.engine, actor="sre")
    assert said.startswith(f"run {run_id}: pause requested; the node in progress finishes first"), said
    assert (
        "if it is not resumed before its window ends at 2026-12-07 01:00 Europe/Berlin "
        "(2026-12-07 00:00 UTC), the customer is told it stopped for now ('stopped')" in said
    ), said


def test_two_dispatchers_ticking_at_once_on_postgresql_tell_stopped_once(on_call_world: World) -> None:
    """Real concurrency on PostgreSQL: two dispatchers' ticks reach the paused run together (both wait on
    its row, held here by a third transaction, as an SRE's `upkeep cancel` typed then would) and go at it
    as soon as it is free. Exactly one tells it: one 'stopped', one alert; the other finds it told."""
    import threading

    from sqlalchemy import text
    from sqlmodel import Session, select

    from flows.outcomes import tell_paused_past_window
    from inventory.models import UpgradeRun
    from tests.support.portal import wait_for
    from tests.unit.test_stalled_adv49 import _blocked_behind

    world = on_call_world
    if world.engine.dialect.name != "postgresql":
        return  # SQLite serializes writers at BEGIN: the sequential ticks are tested above
    run_id = _paused_after_node_1(world)
    world.clock.now = END
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            results.append(tell_paused_past_window(world.runtime, END))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=tick) for _ in range(2)]
    with world.engine.connect() as holder, Session(bind=holder) as session:
        session.exec(select(UpgradeRun).where(UpgradeRun.id == run_id).with_for_update()).one()
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for thread in threads:
            thread.start()
        wait_for(lambda: _blocked_behind(pid) >= 2, "both ticks waiting on the run")
        holder.rollback()  # the row free: both go at once
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(results) == [[], [run_id]], results
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]
    assert _stopped_alerts(world, run_id) == 1


class _Killed(BaseException):
    """The process dies (kill -9): nothing after this point of it runs."""


def test_a_tick_killed_while_queuing_stopped_leaves_nothing_and_the_next_tick_tells_once(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 as the 'stopped' notice is queued: the mark on the run, the notice and the SRE's alert are one
    transaction, so nothing of it is written (the run not marked told, no alert); the next tick tells it,
    once."""
    from flows import endings

    world = on_call_world
    run_id = _paused_after_node_1(world)
    real, dying = endings.queue_run_notice, [True]

    def killed_at_stopped(run: object, kind: str, **kwargs: object) -> bool:
        if kind == "stopped" and dying[0]:
            raise _Killed
        return real(run, kind, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(endings, "queue_run_notice", killed_at_stopped)
    with pytest.raises(_Killed):
        _tick(world, END)
    dying[0] = False
    run = world.run()
    assert run.reason.startswith("paused by request"), run.reason
    assert world.notices(run_id) == ["scheduled", "started"] and _stopped_alerts(world, run_id) == 0

    assert _tick(world, END + timedelta(minutes=1)) == [run_id]
    assert _tick(world, END + timedelta(minutes=2)) == []
    assert (
        world.notices(run_id) == ["scheduled", "started", "stopped"] and _stopped_alerts(world, run_id) == 1
    )


def test_a_node_the_stopped_notice_says_is_being_checked_is_one_the_sre_is_asked_to_check(
    on_call_world: World,
) -> None:
    """Paused with node 2's upgrade interrupted (a take-over closed the dead process's open step, then
    honoured the pending pause): 'stopped' tells the customer our support team is checking node 2, and
    the SRE's alert is the call to a person that backs those words (as the stall's, `_check_nodes`)."""
    from sqlalchemy import update
    from sqlmodel import col, select

    from flows.endings import BEING_CHECKED
    from inventory.alerts import Alert
    from inventory.db import session_scope
    from inventory.models import NodeStep, StepState
    from tests.unit.test_window_stalled_adversarial import _customer_notice

    world = on_call_world
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.left_mid_upgrade_of_node_2(run_id=run_id)
    with session_scope(world.engine) as session:
        session.execute(
            update(NodeStep)
            .where(col(NodeStep.run_id) == run_id, col(NodeStep.state) == StepState.started)
            .values(state=StepState.interrupted, output_tail="interrupted: found started taking the run over")
        )
    assert _tick(world, END) == [run_id]
    body = " ".join(_customer_notice(world, run_id, "stopped").body_text.split())
    assert f"fake-c1-n2: {BEING_CHECKED}" in body, body
    with session_scope(world.engine) as session:
        [alert] = session.exec(
            select(Alert).where(Alert.run_id == run_id, Alert.kind == "paused-stopped")
        ).all()
    said = " ".join(alert.body_text.split())
    assert "Check fake-c1-n2: its upgrade did not complete; the customer was told our support team" in said, (
        said
    )
