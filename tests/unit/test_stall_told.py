"""h-told: what a carry-over and a stall tell, checked against what is true: the Prefect run summary of a
stall, the customer's 'stopped' promise against the SRE's alert, a carry-over of an update the customer
was never told about.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_window_stalled_adversarial.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from tests.support.update_world import CLUSTER, MONDAY, TARGET, World
from tests.unit.test_update_branches import _planned_monday, short_window
from tests.unit.test_window_stalled_adversarial import (
    _customer_notice,
    _stalled_after_started,
    _taken_up_late,
    on_call_world,
)

DAY = timedelta(days=1)

__all__ = ["on_call_world", "short_window"]  # the fixture, used here by name


def test_the_prefect_run_summary_of_a_stall_says_stalled_in_its_headline(short_window: World) -> None:
    """adv49: the summary's headline read "paused" while its Cause line read "stalled: ...". An SRE
    scanning the Artifacts page reads "paused" as someone's deliberate pause; nobody paused it."""
    from flows.plan import plan_update
    from flows.report import _summary_lines

    world = short_window
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    with session_scope(world.engine) as session:
        plan = plan_update(CLUSTER, TARGET, session=session)
    lines = _summary_lines(world.runtime, plan, run_id, "paused")
    assert lines[0] == f"# Update {plan.label}: stalled", lines[0]
    assert "paused" not in lines[0]


def test_a_stalled_node_the_customer_is_told_is_being_checked_is_one_the_sre_is_asked_to_check(
    on_call_world: World,
) -> None:
    """The 'stopped' notice (and the portal) tell the customer of a node whose upgrade was interrupted
    "our support team is checking this node". A stall opens no case: its one call to a person is the SRE's
    alert, which asked them to find why the run did not get going and resume or cancel it - never to look
    at that node, nor to tell the customer what they found. A promise nobody was asked to keep: the alert
    names each such node to check, and says the customer was told it is being checked."""
    from inventory.alerts import Alert

    world = on_call_world
    run_id = _stalled_after_started(world)
    node = world.nodes[0].hostname
    stopped = _customer_notice(world, run_id, "stopped")
    assert f"{node}: upgrade did not complete; our support team is checking this node" in " ".join(
        stopped.body_text.split()
    ), stopped.body_text

    with session_scope(world.engine) as session:
        [alert] = session.exec(select(Alert).where(Alert.run_id == run_id, Alert.kind == "stalled")).all()
    body = " ".join(alert.body_text.split())
    assert f"Check {node}" in body, body
    assert "the customer was told our support team is checking it" in body, body
    for other in world.nodes[1:]:  # not reached: nobody told the customer those are being checked
        assert f"Check {other.hostname}" not in body and f", {other.hostname}" not in body, body


def _run_now_in_mondays_window(world: World) -> int:
    """An SRE's `upkeep request CLUSTER --to TARGET --now` in Monday's window, as upkeep/requests.py
    writes it: planned in the open window, no slot announced, no notice queued (the run starts at once
    and 'started' is the customer's first word of it)."""
    from inventory.models import RunState
    from inventory.repo import get_cluster
    from inventory.runs import create_run

    with session_scope(world.engine) as session:
        run = create_run(
            get_cluster(CLUSTER, session=session), to_version=TARGET, source="customer",
            requested_by="sre", session=session, state=RunState.planned,
        )  # fmt: skip
        run.window_start, run.window_end = MONDAY, MONDAY + timedelta(hours=1)
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def test_a_carry_over_of_an_update_the_customer_was_never_told_of_tells_them_nothing(
    short_window: World,
) -> None:
    """The run of an SRE's `upkeep request --now`, taken up late (its process died before the first node;
    the dispatcher's take-over at 00:55 finds no room): carried over to Tuesday's window before any node.
    The customer never heard of this update, and was mailed "your update was rescheduled". As the
    'stopped' notice (flows/endings.py `customer_knows`): no notice of an update never announced; the
    SRE's alert says the customer was not told, and the carry-over is in the audit."""
    from inventory.alerts import Alert

    world = short_window
    run_id = _run_now_in_mondays_window(world)
    assert _taken_up_late(world, run_id, 0) == "carried over"

    assert world.notices(run_id) == [], world.notices(run_id)
    with session_scope(world.engine) as session:
        [alert] = session.exec(select(Alert).where(Alert.run_id == run_id)).all()
    body = " ".join(alert.body_text.split())
    assert alert.kind == "carried-over" and "carried over to 2026-12-08 00:00 UTC" in alert.subject, (
        alert.subject
    )
    assert "The customer was not told (the update was never announced to them)." in body, body
    assert "is sent the 'rescheduled' notice" not in body, body


def test_the_resume_of_a_stalled_update_the_customer_was_never_told_of_tells_them_nothing(
    on_call_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """adv50: an SRE's `upkeep request --now`, taken up late three windows in a row, stalls with nothing
    told (no 'rescheduled', no 'stopped': the customer never heard of it). The SRE fixes the cause at noon
    and resumes it outside a window: planned for the next window, and the customer was mailed
    "rescheduled" - their first word of an update they never heard of. As the carry-over and the stall
    (`customer_knows`): nothing to them (the dispatcher's start tells 'started', their first word), and
    the SRE reads that the customer was not told, not "the customer is told ('rescheduled')"."""
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _run_now_in_mondays_window(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    assert world.notices(run_id) == []
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)  # noon: the cause fixed
    capsys.readouterr()

    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")

    said = " ".join(capsys.readouterr().out.split())
    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + 3 * DAY), (run.state, run.reason)
    assert world.notices(run_id) == [], world.notices(run_id)
    assert "the customer is told ('rescheduled')" not in said, said
    assert "the customer was not told" in said, said


def test_a_node_the_cancelled_notice_says_is_being_checked_is_one_the_sre_is_asked_to_check(
    on_call_world: World,
) -> None:
    """adv50: h-told backed the stall's "our support team is checking this node" with the SRE's alert.
    A cancel says the same: the SRE cancels the stalled run (node 1's upgrade interrupted), and the
    customer's 'cancelled' lists "node-1: upgrade did not complete; our support team is checking this
    node". A cancel opens no case either, and its alert (run-cancelled) asked nobody to look at node 1.
    The alert names it, as the stall's does."""
    from inventory.alerts import Alert
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _stalled_after_started(world)
    node = world.nodes[0].hostname
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)

    request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="giving up on this one")

    assert world.run().state == RunState.cancelled
    cancelled = _customer_notice(world, run_id, "cancelled")
    assert f"{node}: upgrade did not complete; our support team is checking this node" in " ".join(
        cancelled.body_text.split()
    ), cancelled.body_text
    with session_scope(world.engine) as session:
        query = select(Alert).where(Alert.run_id == run_id, Alert.kind == "run-cancelled")
        [alert] = session.exec(query).all()
    body = " ".join(alert.body_text.split())
    assert f"Check {node}" in body, body
    assert "the customer was told our support team is checking it" in body, body
    for other in world.nodes[1:]:
        assert f"Check {other.hostname}" not in body and f", {other.hostname}" not in body, body


def test_a_request_now_carried_over_in_silence_starts_in_the_next_window_with_nothing_told(
    on_call_world: World,
) -> None:
    """The run of an SRE's `upkeep request --now`, taken up past its cutoff: carried over to Tuesday's
    window, the customer told nothing (h-told). At Tuesday 00:01 the dispatcher's claim re-checks the
    slot against the notice period counted from `told_at` - never told - and moves it to Saturday with a
    'rescheduled' mail: the first word of an update the customer never heard of, about a delay nobody
    asked for. Carried over, the run goes on in the next window (no notice period: `next_window`)."""
    from flows.dispatch import claim_due

    world = on_call_world
    run_id = _run_now_in_mondays_window(world)
    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == []

    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    claim = claim_due(world.runtime, world.clock.now, timedelta(hours=1))

    assert world.notices(run_id) == [], world.notices(run_id)
    assert claim is not None and claim.run_id == run_id, (world.run().slot_start, world.run().reason)


def test_a_request_now_carried_over_in_silence_then_frozen_goes_on_after_the_freeze_with_nothing_told(
    on_call_world: World,
) -> None:
    """adv51: the run of an SRE's `upkeep request --now`, carried over in silence to Tuesday's window;
    then the customer freezes Tuesday. The blackout rule still applies to an update that has begun, so the
    dispatcher's re-check moves it. Its new slot counted the full notice period from now (Saturday, not
    Wednesday: `replacement_slot` knew nothing of `started`, which `invalid_reasons` exempts from notice)
    and 'rescheduled' was mailed (flows/integrity.py `_move` never asked `customer_knows`): the customer's
    first word of an update they never heard of, the days-long move 6a18f75 removed for the notice rule
    alone. Begun, it goes on in the first window after the freeze, and a move tells only a customer who
    knows of the update."""
    from datetime import date

    from flows.dispatch import claim_due
    from inventory.repo import get_cluster
    from inventory.windows import Blackout

    world = on_call_world
    run_id = _run_now_in_mondays_window(world)
    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == []
    with session_scope(world.engine) as session:
        customer_id = get_cluster(CLUSTER, session=session).customer_id
        tuesday = date(2026, 12, 8)
        session.add(
            Blackout(customer_id=customer_id, start=tuesday, end=tuesday, timezone="UTC", reason="freeze")
        )

    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    assert claim_due(world.runtime, world.clock.now, timedelta(hours=1)) is None  # frozen: not started

    run = world.run()
    assert run.slot_start == MONDAY + 2 * DAY, run.slot_start  # Wednesday's window, not Saturday's
    assert world.notices(run_id) == [], world.notices(run_id)


def test_the_resume_of_a_stall_whose_every_notice_bounced_says_what_the_customer_is_sent(
    on_call_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """adv57: every notice of a stalled update was refused for good (5xx; the SRE has since fixed the
    contact). The SRE's resume at noon re-slots it and the re-slot (`move_notice`) announces it anew
    ('scheduled'); the SRE's answer said "the customer is told ('rescheduled')" - its check ran after the
    re-slot and found the new pending 'scheduled'."""
    from sqlalchemy import update

    from inventory.outbox import Notice, NoticeState
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _stalled_after_started(world)
    with session_scope(world.engine) as session:
        session.execute(update(Notice).values(state=NoticeState.failed))
        session.execute(update(UpgradeRun).values(told_at=None))
    before = world.notices(run_id)
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)
    capsys.readouterr()

    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")

    said = " ".join(capsys.readouterr().out.split())
    assert world.notices(run_id) == [*before, "scheduled"], world.notices(run_id)
    assert "the customer is told ('rescheduled')" not in said, said
    assert "the customer is told ('scheduled'" in said, said
