"""adv59: a hostile review of h-ending (what the customer hears when an update moves or stops: an
overridden pause told 'stopped' at its recorded window's end, a resume doing the tick's part first, a
reschedule announcing a never-announced update, the carry-over choosing its notice by `move_notice`).
Each test is a way the customer could hear the wrong thing or the SRE be told the wrong thing; on SQLite
and PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.update_world import MONDAY, World
from tests.unit.test_pause_told import END, _tick
from tests.unit.test_window_stalled_adversarial import on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)


def _request_now_in_mondays_window(world: World) -> int:
    """An SRE's `upkeep request --now` inside Monday's window, as upkeep/requests.py writes it: planned,
    no slot, the window open now recorded (00:00-01:00), no override."""
    from inventory.db import session_scope
    from inventory.models import RunState
    from inventory.repo import get_cluster
    from inventory.runs import create_run
    from tests.support.update_world import CLUSTER, TARGET

    with session_scope(world.engine) as session:
        run = create_run(
            get_cluster(CLUSTER, session=session), to_version=TARGET, source="customer",
            requested_by="sre", session=session, state=RunState.planned,
        )  # fmt: skip
        run.window_start, run.window_end = MONDAY, END
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def _overridden(world: World, run_id: int) -> None:
    """What `upkeep resume --override-window --reason TEXT` writes before the run goes on (audited)."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import UpgradeRun

    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(override_reason="the customer asked for it to finish tonight")
        )


def test_an_overridden_slotless_pause_told_stopped_is_told_started_when_it_goes_on_again(
    on_call_world: World,
) -> None:
    """A `request --now` in Monday's window ('started' at 00:01), paused at node 1, resumed with
    `--override-window` and paused again: h-ending now tells it 'stopped' at the recorded window's end
    (01:00) - "nothing more will be done to your cluster for this upgrade without a new notice from us".
    At 09:00 the SRE resumes it (overridden: it goes on at once) and it upgrades the other two nodes. Its
    'started' went at the same SEQUENCE as the first one (a run with no slot: the 'stopped' bumped
    nothing), so the outbox dropped it as a duplicate: the customer read 'stopped', then 'completed',
    their nodes changed with no word between."""
    world = on_call_world
    run_id = _request_now_in_mondays_window(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    assert world.notices(run_id) == ["started"]
    _overridden(world, run_id)
    assert _tick(world, END) == [run_id]
    assert world.notices(run_id) == ["started", "stopped"]

    world.clock.now = MONDAY + timedelta(hours=9)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "succeeded", state.message
    assert world.upgraded() == [1, 1, 1]
    assert world.notices(run_id) == ["started", "stopped", "started", "completed"], world.notices(run_id)


def test_a_slotless_pause_told_stopped_is_told_started_when_resumed_in_the_next_window(
    on_call_world: World,
) -> None:
    """The same without an override (h-pause's own path): a `request --now` paused past Monday's window is
    told 'stopped'; Tuesday 00:01 the SRE resumes it inside the window and it upgrades the rest."""
    world = on_call_world
    run_id = _request_now_in_mondays_window(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    assert _tick(world, END) == [run_id]
    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "succeeded", state.message
    assert world.notices(run_id) == ["started", "stopped", "started", "completed"], world.notices(run_id)


def test_a_carry_over_mid_way_after_a_bounce_never_announces_as_scheduled_an_update_that_changed_nodes(
    on_call_world: World,
) -> None:
    """The update's only 'scheduled' bounced (5xx, a mistyped contact); the contact is fixed and the run
    starts Monday 00:01 ('started' queued); node 1 upgrades until 5 minutes are left, so the rest is
    carried over to Tuesday. h-ending's carry-over asks `move_notice`, which answers 'scheduled' anew
    (a refused notice and nothing delivered), queued at the next SEQUENCE: the customer's mailbox then
    reads "Upgrade scheduled ... We will upgrade your cluster from <old> to <new> starting Tuesday" - of an
    update that already changed one of their nodes - and the pending 'started' and the 'partial' (with
    each node's version) are not what they get last. A 'scheduled' is the announcement of an update that
    has not begun; once a node changed, the customer must read that it began."""
    from tasks.mail import PermanentMailError
    from tests.unit.test_stalled_adv49 import _deliver
    from tests.unit.test_update_branches import _five_minutes_left, _planned_monday

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = PermanentMailError("550 5.1.1 mailbox unknown", code=550)
    mailbox: list[str] = []
    _deliver(world, MONDAY - 7 * DAY, mailbox)
    world.mail.fail_with = None
    assert mailbox == []

    world.clock.now = MONDAY + timedelta(minutes=1)
    world.nodes[0].before["upgrade"] = _five_minutes_left(world)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "carried over", state.message
    assert world.upgraded() == [1, 0, 0]
    _deliver(world, MONDAY + timedelta(hours=1), mailbox)
    kinds = [entry.split(":")[0] for entry in mailbox]
    assert "scheduled" not in kinds, (mailbox, world.notices(run_id))
    assert "started" in kinds or "partial" in kinds, (mailbox, world.notices(run_id))


def test_a_run_overridden_after_its_window_ended_is_not_told_stopped_minutes_after_its_pause(
    on_call_world: World,
) -> None:
    """Monday's window ended with the run paused: 'stopped' (01:00). At 14:00 the SRE resumes it with
    `--override-window` (the customer asked for it today): it goes on at once, the customer told
    'started' at 14:00. During node 2 the SRE pauses it for a look. The window recorded for it is still
    Monday's 00:00-01:00 - over thirteen hours before this 'started' - so the tick tells 'stopped' at once:
    "our engineers stopped it during your maintenance window ... and the window has ended", fifteen minutes
    after "we have started", of a window that had ended before it. h-ending's rule is the end of the window
    the customer was told 'started' for; this 'started' was for none: as a run with no window recorded, it
    is not told automatically, and the pause answer says so (not "its window ended at 01:00 ...")."""
    from upkeep.updates import request_stop

    world = on_call_world
    from tests.unit.test_pause_told import _paused_after_node_1

    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]
    said: list[str] = []

    def pause_at_node_2(_node: object) -> None:
        world.nodes[1].before.clear()
        said.append(request_stop(run_id, "pause", engine=world.engine, actor="sre"))

    world.nodes[1].before["upgrade"] = pause_at_node_2
    _overridden(world, run_id)
    world.clock.now = MONDAY + timedelta(hours=14)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "paused", state.message
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "started"]
    [answer] = said
    assert "its window ended at" not in answer, answer
    assert "it has no maintenance window (overridden)" in answer, answer
    assert _tick(world, MONDAY + timedelta(hours=14, minutes=15)) == []
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "started"]


@pytest.mark.xfail(
    strict=True,
    reason="product question (adv59): an SRE's `upkeep reschedule` of an update that has begun (node 1 "
    "upgraded) but of which nothing ever reached the customer (its 'started' refused for good, or no "
    "contacts then) announces it 'scheduled' - 'We will upgrade your cluster from <old> to <new> starting "
    "...' - while a node already runs <new>. Which word does a begun, never-heard-of update get on a move: "
    "the 'partial' (each node's version, where it continues), a 'scheduled' that says it began, a "
    "'rescheduled' (adv57 ruled it out as a first word), or none (as integrity's move, adv51)?",
)
def test_a_reschedule_of_a_begun_update_the_customer_never_heard_of_does_not_say_it_will_begin(
    on_call_world: World,
) -> None:
    """An SRE's `request --now` in Monday's window: its 'started' is refused for good (the contact mistyped),
    node 1 upgrades until 5 minutes are left, the rest is carried over in silence (nothing delivered: no
    'partial' to send). The contact fixed, the SRE moves it a week on."""
    from tasks.mail import PermanentMailError
    from tests.unit.test_move_words import _reschedule
    from tests.unit.test_stall_told import _run_now_in_mondays_window
    from tests.unit.test_stalled_adv49 import _deliver

    world = on_call_world
    run_id = _run_now_in_mondays_window(world)

    def bounce_then_overrun(_node: object) -> None:
        world.nodes[0].before.clear()
        world.mail.fail_with = PermanentMailError("550 5.1.1 mailbox unknown", code=550)
        _deliver(world, world.clock.now, [])
        world.mail.fail_with = None
        world.clock.advance(timedelta(minutes=55))

    world.nodes[0].before["upgrade"] = bounce_then_overrun
    world.clock.now = MONDAY + timedelta(minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "carried over", state.message
    assert world.upgraded() == [1, 0, 0]
    world.clock.now = MONDAY + timedelta(hours=2)
    _reschedule(world, run_id, MONDAY + 9 * DAY)
    from tests.unit.test_move_words import _notices

    last = _notices(world, run_id)[-1]
    body = " ".join(last.body_text.split())
    assert "We will upgrade your cluster" not in body, (last.kind, body)


def test_a_resume_killed_between_the_stopped_and_the_replan_is_replanned_by_the_next_resume_told_once(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Monday's window ended with the run paused, untold (the dispatcher down). At 09:00 the SRE's resume
    tells 'stopped' (committed: the tick's path) and dies before the replan (kill -9: the replan's
    transaction never commits). The run is left paused, marked stopped for now; a tick tells nothing more;
    the SRE's second resume replans it ('rescheduled'), the customer told 'stopped' once. (Held.)"""
    from inventory.models import RunState
    from tests.unit.test_pause_told import _paused_after_node_1, _stopped_alerts
    from upkeep import updates

    world = on_call_world
    run_id = _paused_after_node_1(world)
    world.clock.now = MONDAY + timedelta(hours=9)
    replan = updates._replan_stalled

    def killed(*_args: object, **_kwargs: object) -> str:
        raise SystemExit(137)

    monkeypatch.setattr(updates, "_replan_stalled", killed)
    with pytest.raises(SystemExit):
        updates.resume_run(run_id, engine=world.engine, as_json=False, actor="sre")
    assert world.run().state == RunState.paused
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]
    assert _tick(world, MONDAY + timedelta(hours=9, minutes=1)) == []
    monkeypatch.setattr(updates, "_replan_stalled", replan)
    updates.resume_run(run_id, engine=world.engine, as_json=False, actor="sre")
    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + DAY), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "rescheduled"]
    assert _stopped_alerts(world, run_id) == 1


def test_a_resume_refused_after_it_told_stopped_says_the_customer_was_told(
    on_call_world: World, tmp_path: Path
) -> None:
    """An import removed the cluster's windows; Monday's window ended with the run paused, untold. The SRE's
    resume at 09:00 does the tick's part first - 'stopped' queued and committed, the SRE alerted - then
    finds no window to plan it for and refuses. Its one line said only the refusal (no later window; or
    the override), as if nothing had been done: the SRE, reading it, told the customer nothing or tried
    again, unaware the customer had just been mailed 'stopped'."""
    from tests.unit.test_pause_told import _paused_after_node_1
    from tests.unit.test_window_stalled_adversarial import _windows_removed
    from upkeep.console import CliError
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _paused_after_node_1(world)
    world.clock.now = MONDAY + timedelta(hours=9)
    _windows_removed(world, tmp_path)
    with pytest.raises(CliError) as refused:
        resume_run(run_id, engine=world.engine, as_json=False, actor="sre")
    said = str(refused.value)
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]
    assert "\n" not in said and "--override-window" in said, said
    assert "'stopped'" in said, said


@pytest.mark.parametrize("overridden", [False, True], ids=["in-window", "overridden"])
def test_the_portal_shows_a_slotless_pause_told_stopped_as_stopped_not_in_progress(
    on_call_world: World, overridden: bool
) -> None:
    """A `request --now` in Monday's window (no slot: 'started' was its first word), paused at node 1
    (resumed with `--override-window` and paused again, for h-ending's new case) and told 'stopped' at
    01:00: "stopped for now ... nothing more will be done without a new notice". The portal lists stopped
    updates only with a slot, so it showed this one under "In progress": "started ... and is in progress
    ... You will hear from us when it is done", and its stopped page refused it ("not stopped")."""
    from sqlmodel import select

    from flows.portal_actions import in_progress_updates, stopped_update, stopped_updates
    from inventory.db import session_scope
    from inventory.models import Customer

    world = on_call_world
    run_id = _request_now_in_mondays_window(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    if overridden:
        _overridden(world, run_id)
    assert _tick(world, END) == [run_id]
    assert world.notices(run_id) == ["started", "stopped"]
    with session_scope(world.engine) as session:
        owner = session.exec(select(Customer).where(Customer.name == "fakeco")).one()
        assert [s.id for s in stopped_updates(owner, session=session)] == [run_id]
        assert in_progress_updates(owner, session=session) == []
        page = stopped_update(run_id, owner, session=session)
        assert (page.nodes_upgraded, page.paused_by_us) == (1, True)


@pytest.mark.xfail(
    strict=True,
    reason="product question (adv59): `move_notice` counts a notice still pending (a 421, retried) as the "
    "customer knowing of the update and queues 'rescheduled' at the next SEQUENCE, and the outbox then "
    "supersedes the pending 'scheduled' with it: the customer's first word is 'rescheduled, previously <a "
    "slot never delivered>' with the SRE's reason (test_pause_told's 'their mailbox gets both, in order' "
    "does not happen). Should a move of an update nothing of which was delivered yet announce it anew "
    "('scheduled', as after a bounce), or should the outbox deliver a pending announcement before the "
    "move that would supersede it? (Either changes every move's rule; tests that never run the outbox "
    "read all-pending as 'known'.)",
)
@pytest.mark.parametrize("move", ["reschedule", "carry-over"])
def test_a_move_of_an_update_whose_announcement_is_still_on_its_way_is_not_the_customers_first_word(
    on_call_world: World, move: str
) -> None:
    """The update's 'scheduled' is refused for now (421: the customer's mail server down, retried later);
    before it gets through, the update moves (an SRE's reschedule, or the carry-over of a run taken up
    late). `move_notice` counts the pending 'scheduled' as known and queues 'rescheduled' at the next
    SEQUENCE - which supersedes the pending 'scheduled' at delivery (one delivery never carries two notices
    of one update). The customer's mailbox: 'rescheduled, previously <a slot they never heard of>' as their
    first word of the update, the SRE's reason with it - adv57's case, through a pending notice instead of
    a refused one."""
    from tasks.mail import TemporaryMailError
    from tests.unit.test_move_words import _reschedule
    from tests.unit.test_stalled_adv49 import _deliver
    from tests.unit.test_update_branches import _planned_monday
    from tests.unit.test_window_stalled_adversarial import _taken_up_late

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = TemporaryMailError("421 try again later", transport=True)
    mailbox: list[str] = []
    _deliver(world, MONDAY - 7 * DAY, mailbox)
    world.mail.fail_with = None
    if move == "reschedule":
        world.clock.now = MONDAY - 6 * DAY
        _reschedule(world, run_id, MONDAY + DAY)
    else:
        assert _taken_up_late(world, run_id, 0) == "carried over"
    _deliver(world, world.clock.now + timedelta(hours=2), mailbox)
    assert mailbox and mailbox[0].split(":")[0] == "scheduled", (mailbox, world.notices(run_id))


def test_the_rescheduled_of_a_pause_told_stopped_does_not_say_it_could_not_go_ahead(
    on_call_world: World,
) -> None:
    """The resume outside a window of a pause (told 'stopped' by the tick, or by the resume itself first):
    'stopped' said "our engineers stopped it during your maintenance window to check something before it
    goes on"; the 'rescheduled' that replans it said "Why: the update could not go ahead in your last
    maintenance windows; the cause is fixed" - a stall's words, of windows it never failed in."""
    from tests.unit.test_move_words import _notices
    from tests.unit.test_pause_told import _paused_after_node_1
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _paused_after_node_1(world)
    world.clock.now = MONDAY + timedelta(hours=9)
    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")
    *_, stopped, rescheduled = _notices(world, run_id)
    assert (stopped.kind, rescheduled.kind) == ("stopped", "rescheduled")
    body = " ".join(rescheduled.body_text.split())
    assert "could not go ahead" not in body, body


def test_a_carry_over_that_announces_the_update_anew_gives_the_full_notice_period(
    on_call_world: World,
) -> None:
    """The only 'scheduled' bounced; taken up at 00:55 with no room, the update was carried over to
    Tuesday 00:00 and announced anew there: 'scheduled' for tomorrow, the customer's first word of it,
    inside the 72 h notice period that `upkeep reschedule` refuses for the same announcement. Decided:
    the notice rule wins for an announcement (the customer never heard of the update; 'continue in the
    next window' is a promise to a customer who did): the first window with the full notice period."""
    from scheduling.notice import NoticePolicy
    from tasks.mail import PermanentMailError
    from tests.unit.test_stalled_adv49 import _deliver
    from tests.unit.test_update_branches import _planned_monday
    from tests.unit.test_window_stalled_adversarial import _taken_up_late

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = PermanentMailError("550 5.1.1 mailbox unknown", code=550)
    _deliver(world, MONDAY - 7 * DAY, [])
    world.mail.fail_with = None
    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == ["scheduled", "scheduled"]
    run = world.run()
    assert run.slot_start is not None
    assert run.slot_start - world.clock.now >= NoticePolicy().product_update, run.slot_start
