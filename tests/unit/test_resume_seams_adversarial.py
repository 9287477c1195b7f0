"""adv45: the seams of `upkeep resume` after the integration of h-loop/adv41 (a stalled run resumed
outside its window is planned for the next), h-lease/adv42/adv44 (the lease owner with a birth, the
refusal that says when a lease runs out) and h-cli/adv43 (the Prefect API asked before anything is
written), as 5e8bf43 put them together: a read-only held/window check first, then the API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.models import RunState
from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import DAY, _taken_up_late, on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name


def _stalled(world: World) -> int:
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)  # noon: no window open
    return run_id


def test_a_stalled_run_claimed_by_another_resume_after_the_held_check_is_not_replanned_from_under_it(
    on_call_world: World, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SREs resume the stalled run at once: B's `upkeep resume --override-window` claims it (by
    `_take`, the claim every resume makes) after A's read-only held check, before A's
    replan takes the row lock. The replan must refuse as the claim would: exit 2, the holder named with
    when its lease runs out. It looked at the lease by another clock than the claim's (adv45, 88a66a8), and
    said 'held' without the time and with exit 1; where that clock runs ahead of the wall clock (a fixed
    one: tests, the lab) it read B's fresh lease as run out and planned the run B was starting -
    lease cleared, customer told 'rescheduled' - two owners of one cluster.
    (The claim's line names when the lease runs out where the holder cannot be seen from here.)
    SQLite: A's transaction holds the write lock from its first read (BEGIN IMMEDIATE), so B's claim
    cannot land there; the race is PostgreSQL's."""
    import flows.run_window
    from flows import lease
    from inventory.types import utcnow
    from upkeep.console import CliError
    from upkeep.updates import _take, resume_run

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises the read-only check and the replan (BEGIN IMMEDIATE)")
    world = on_call_world
    run_id = _stalled(world)
    world.clock.now = utcnow() + 3 * DAY  # the runtime clock ahead of the wall clock, as a fixed one may be
    world.clock.now = world.clock.now.replace(hour=12, minute=0, second=0, microsecond=0)
    before = world.notices(run_id)
    window_at = flows.run_window.window_at
    claimed: list[str] = []

    def b_claims_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not claimed:  # B, in its own transaction, between A's held check and A's row lock
            claimed.append(_take(run_id, engine))  # B's resume claims it (its own transaction)
        return window_at(*args, **kwargs)

    monkeypatch.setattr(flows.run_window, "window_at", b_claims_first)

    with pytest.raises(CliError) as refused:
        resume_run(run_id, engine=world.engine, as_json=False, actor="alice")

    said = str(refused.value)
    run = world.run()
    assert (run.state, run.lease_owner) == (RunState.paused, claimed[0]), (run.state, run.reason, said)
    assert world.notices(run_id) == before
    assert refused.value.code == 2, said
    assert said == lease.held_message(run_id, run.lease_owner, run.lease_since, run.lease_until)


@pytest.mark.parametrize("meanwhile", ["cancel", "resume"])
def test_a_stalled_run_cancelled_or_replanned_by_another_sre_after_the_held_check_is_left_as_they_left_it(
    on_call_world: World, engine: Engine, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """Held: B cancels the stalled run (or resumes it too, outside the window: replanned) between A's
    read-only check and A's replan under the row lock. A re-reads under the lock, finds it no longer
    stalled and says so in one line; the customer hears B's answer only ('cancelled', or one
    'rescheduled'), never a replan of a cancelled run or a second move. PostgreSQL (SQLite's BEGIN
    IMMEDIATE keeps B out of that gap)."""
    import flows.run_window
    from upkeep.console import CliError
    from upkeep.updates import request_stop, resume_run

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises the read-only check and the replan (BEGIN IMMEDIATE)")
    world = on_call_world
    run_id = _stalled(world)
    before = world.notices(run_id)
    window_at = flows.run_window.window_at
    done: list[str] = []

    def b_first(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not done:
            done.append(meanwhile)
            monkeypatch.setattr(flows.run_window, "window_at", window_at)  # B's own look, unhooked
            if meanwhile == "cancel":
                request_stop(run_id, "cancel", engine=engine, actor="bob", reason="customer asked")
            else:
                resume_run(run_id, engine=engine, as_json=False, actor="bob")
        return window_at(*args, **kwargs)

    monkeypatch.setattr(flows.run_window, "window_at", b_first)

    with pytest.raises(CliError) as refused:
        resume_run(run_id, engine=world.engine, as_json=False, actor="alice")

    said = str(refused.value)
    run = world.run()
    want = RunState.cancelled if meanwhile == "cancel" else RunState.planned
    assert run.state == want, (run.state, run.reason, said)
    assert said == f"run {run_id} is {want} now (changed just now); see `upkeep show {run_id}`", said
    told = ["cancelled"] if meanwhile == "cancel" else ["rescheduled"]
    assert world.notices(run_id) == before + told
    assert "alice" not in run.reason, run.reason


def test_a_resume_while_a_flow_under_a_runtime_clock_behind_the_wall_clock_carries_the_run_is_refused(
    on_call_world: World,
) -> None:
    """The flow writes its lease by the runtime clock (acquire, the heartbeat: `runtime.clock() +
    run_lease`); `upkeep resume`'s held check (`held_live`) and its claim read it by the wall clock
    (`utcnow`). In production they are one clock. Where the runtime clock is fixed behind the wall clock
    (a test, the lab), a live flow's lease reads as run out to `upkeep resume`, which claims the run
    from under it, while the dispatcher (runtime clock) sees it live: two readings of one lease."""
    from inventory.types import utcnow
    from upkeep.console import CliError
    from upkeep.updates import _take

    world = on_call_world
    world.clock.now = utcnow() - 2 * DAY  # the runtime clock fixed two days behind the wall clock
    answers: list[object] = []

    def a_resume_meanwhile(_node: object) -> None:
        run = world.run()
        assert run.id is not None
        try:
            answers.append(_take(run.id, world.engine))
        except CliError as exc:
            answers.append(exc.code)

    world.nodes[1].before["upgrade"] = a_resume_meanwhile
    world.update()

    assert answers == [2], answers  # refused: held by the live flow, exit 2


def test_the_stall_alert_and_the_urgent_page_of_a_hostile_customer_and_cluster_name_are_one_plain_line(
    on_call_world: World,
) -> None:
    """Held: the customer's name is inventory data (an import, a hand edit) and reaches the stall's SRE
    alert and its urgent page (as the cluster's name does, by the same `where`): a CR/LF (a forged mail
    header), an ESC (a terminal sequence in a chat client's title), U+2028. Every subject queued is one
    printable line; the bodies escape the HTML."""
    from sqlalchemy import update
    from sqlmodel import col, select

    from inventory.alerts import Alert, Page
    from inventory.models import Cluster, Customer, UpgradeRun

    world = on_call_world
    run_id = _planned_monday(world)
    hostile = "acme\r\nBcc: evil@example.com\x1b]0;owned\x07\u2028<b>x</b>"  # the cluster's: planned by
    with session_scope(world.engine) as session:
        session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(urgent=True))
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        cluster = session.get(Cluster, run.cluster_id)
        assert cluster is not None
        customer = session.get(Customer, cluster.customer_id)
        assert customer is not None
        customer.name = hostile
        session.add(customer)

    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]

    with session_scope(world.engine) as session:
        alerts = session.exec(select(Alert)).all()
        pages = session.exec(select(Page)).all()
    stalled = [alert for alert in alerts if alert.kind == "stalled"]
    assert len(stalled) == 1 and len(pages) == 1, ([a.kind for a in alerts], pages)
    for alert in alerts:
        assert alert.subject.isprintable(), repr(alert.subject)
        assert "<b>x</b>" not in alert.body_html, alert.body_html


def test_a_stalled_run_resumed_on_a_worker_outside_its_window_is_planned_without_asking_for_a_worker(
    on_call_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Held: `upkeep resume N --on-worker` of a stalled run at noon: planned for its next window like
    the plain resume (the dispatcher starts it there, in its own mode); no deployment or worker is
    asked for (none exists here: that read would refuse), nothing is handed to a worker."""
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _stalled(world)

    assert resume_run(run_id, engine=world.engine, as_json=False, actor="sre", on_worker=True) == 0

    run = world.run()
    assert (run.state, run.slot_start, run.lease_owner) == (RunState.planned, MONDAY + 3 * DAY, None), run
    assert "planned for 2026-12-10 00:00 UTC" in capsys.readouterr().out
