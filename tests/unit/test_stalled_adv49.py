"""Adversarial pass adv49 on h-stall: the 'stopped' notice a stalled run sends its customer, read as the
customer's mailbox and calendar receive it (the outbox's delivery order, not the order rows were queued).

Fakes (tests/support/fakes.py: the fleet, the file server, the mail transport) under the in-process flow
engine, as test_window_stalled_adversarial.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta

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
