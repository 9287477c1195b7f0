"""h-ending: the customer's word of a move is the one `move_notice` chooses, wherever the move comes from
(an SRE's `upkeep reschedule`, a carry-over), and the SRE reads which notice that is.

Fakes (tests/support/fakes.py) under the in-process flow engine, on SQLite and PostgreSQL (the `engine`
fixture), as test_stall_told.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.outbox import Notice
from tests.support.update_world import MONDAY, World
from tests.unit.test_stall_told import _run_now_in_mondays_window
from tests.unit.test_stalled_adv49 import _deliver
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import _taken_up_late, on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)
SRE_REASON = "node fake-c1-n3 flaps on the storage VLAN; kernel patch first"


def _notices(world: World, run_id: int) -> list[Notice]:
    with session_scope(world.engine) as session:
        query = select(Notice).where(Notice.update_ref == f"update-{run_id}").order_by(col(Notice.id))
        found = list(session.exec(query).all())
        for notice in found:
            session.expunge(notice)
        return found


def _reschedule(world: World, run_id: int, to: datetime, reason: str = SRE_REASON) -> None:
    from flows.run_notices import VendorTerms
    from flows.schedule import reschedule_update

    with session_scope(world.engine) as session:
        reschedule_update(
            run_id,
            to=to,
            reason=reason,
            now=world.clock.now,
            session=session,
            requested_by="sre",
            vendor=VendorTerms.from_runtime(world.runtime),
        )


def _silent_request_now(world: World) -> int:
    """An SRE's `upkeep request --now` taken up past its cutoff: carried over to Tuesday's window in
    silence (never announced: no notice of it queued, ever)."""
    run_id = _run_now_in_mondays_window(world)
    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == []
    return run_id


def test_a_reschedule_of_a_never_announced_request_now_announces_it_with_full_notice(
    on_call_world: World,
) -> None:
    """`upkeep reschedule` of an SRE's `request --now` carried over in silence (no notice of it was ever
    queued): it mailed 'rescheduled' - "your update moved, previously <a slot they never heard of>. Why:
    <the SRE's --reason>" - as the customer's first word of an update they never heard of.

    Decided (h-ending, as the lead leaned): a move of a never-announced update to a future slot is the
    customer's first word of it, so it is announced - 'scheduled' at the new slot, with the full notice
    rules of any new announcement (the notice period counted from now, as `upkeep request` schedules: a
    slot inside it is refused, naming the earliest valid one), never the old slot nor the SRE's reason (a
    'scheduled' carries neither). Kept silent instead (as a re-slot does), the SRE's deliberate move days
    ahead would have the update start unannounced - no notice period, no chance to defer - for a start
    that is no longer 'now'."""
    world = on_call_world
    run_id = _silent_request_now(world)
    later = MONDAY + 9 * DAY  # Wednesday week, 00:00: a window start, past any notice period
    _reschedule(world, run_id, later)

    [announced] = _notices(world, run_id)
    assert announced.kind == "scheduled", announced.kind
    body = " ".join(announced.body_text.split())
    assert "flaps" not in body and "kernel patch" not in body, body  # the SRE's reason stays theirs
    assert world.run().slot_start == later


def test_a_reschedule_of_a_never_announced_update_inside_the_notice_period_says_why_it_is_refused(
    on_call_world: World,
) -> None:
    """As above, moved to Wednesday (two days on): an announcement needs the notice period counted from
    now, as `upkeep request` schedules one. Refused, nothing written, and the SRE reads why the notice
    period applies to an update that was a `--now`: the move announces it; left in its slot it starts
    unannounced, its start telling the customer."""
    from flows.schedule import ScheduleRefused

    world = on_call_world
    run_id = _silent_request_now(world)
    before = world.run()
    with pytest.raises(ScheduleRefused) as refused:
        _reschedule(world, run_id, MONDAY + 2 * DAY)
    said = str(refused.value)
    assert "notice: notice too short" in said, said
    assert (
        "the update was never announced to the customer: this move would announce it ('scheduled'), "
        "so the full notice period counts from now; left in its slot "
        f"({before.slot_start:%Y-%m-%d %H:%M} UTC) it starts unannounced, its start telling them" in said
    ), said
    assert world.notices(run_id) == [] and world.run().slot_start == before.slot_start


def test_the_reschedule_command_says_which_notice_the_customer_gets(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`upkeep reschedule` printed "rescheduled update-N: ..." over a notice queued as 'scheduled' anew
    (a never-announced update, or one whose every notice bounced): the SRE read that the customer was told
    of a move. The line names the notice the customer gets, and why it is not 'rescheduled'."""
    from upkeep import cli_common, cli_schedule

    world = on_call_world
    run_id = _silent_request_now(world)
    monkeypatch.setattr(cli_common, "_opened", {"engine": world.engine})
    monkeypatch.setattr(cli_schedule, "_now", lambda: world.clock.now)
    capsys.readouterr()
    cli_schedule.reschedule(
        f"update-{run_id}", to=(MONDAY + 9 * DAY).strftime("%Y-%m-%dT%H:%M"), reason=SRE_REASON, json=False
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(
        f"rescheduled update-{run_id}, announced to the customer ('scheduled': the update was never "
        "announced to them, so this is their first word of it): "
    ), first


def test_the_reschedule_command_of_an_announced_update_says_rescheduled(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An announced update moved: the customer gets 'rescheduled', and the line says so. (Held.)"""
    from upkeep import cli_common, cli_schedule

    world = on_call_world
    run_id = _planned_monday(world)
    world.clock.now = MONDAY - 6 * DAY
    monkeypatch.setattr(cli_common, "_opened", {"engine": world.engine})
    monkeypatch.setattr(cli_schedule, "_now", lambda: world.clock.now)
    capsys.readouterr()
    cli_schedule.reschedule(
        f"update-{run_id}", to=(MONDAY + DAY).strftime("%Y-%m-%dT%H:%M"), reason=SRE_REASON, json=False
    )
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"rescheduled update-{run_id}, the customer told ('rescheduled'): "), first


def test_a_carry_over_after_a_bounce_and_a_move_announces_the_update_anew_not_rescheduled(
    on_call_world: World,
) -> None:
    """adv57's supersede case, through the carry-over: the update's only 'scheduled' bounced (5xx); the SRE
    moved it ten minutes on ('scheduled' anew, pending: the outbox has not run since); taken up at 00:55,
    it is carried over to Tuesday. The carry-over asked `customer_knows` - the pending 'scheduled' answered
    yes - and queued 'rescheduled' at the next SEQUENCE, which supersedes the pending announcement: the
    customer's first word of the update was "rescheduled, previously <a slot they never heard of>". It
    asks `move_notice`, as every other move: announced anew, with the full notice period."""
    from tasks.mail import PermanentMailError

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = PermanentMailError("550 5.1.1 mailbox unknown", code=550)
    mailbox: list[str] = []
    _deliver(world, MONDAY - 7 * DAY, mailbox)
    world.mail.fail_with = None
    assert mailbox == []
    world.clock.now = MONDAY - 6 * DAY
    _reschedule(world, run_id, MONDAY + timedelta(minutes=10), reason="the contact fixed; ten minutes on")
    assert world.notices(run_id) == ["scheduled", "scheduled"]

    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == ["scheduled", "scheduled", "scheduled"], world.notices(run_id)
    _deliver(world, MONDAY + timedelta(hours=1), mailbox)
    run = world.run()
    assert mailbox == [f"scheduled:{run.notice_sequence}"], mailbox
    # An announcement gives the full notice period (72 h from 00:55 Monday: Thursday's window has no room
    # left, Friday's), not Tuesday's window a carry-over of a known update takes (adv59, decided).
    assert run.slot_start == MONDAY + 4 * DAY
