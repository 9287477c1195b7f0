"""Adversarial pass adv41 on h-loop: the bound on idle carry-overs ('stalled'), the copy kept on the
nodes between windows, and the window looked at before the download.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_update_branches.py. An idle
window is made the cheapest way there is: the run taken up 55 minutes into its one-hour window (as a
dispatcher back from an outage, or a take-over, does): no room for a node, carried over before the
download, nothing contacted."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from inventory.outbox import Notice
from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import ONCALL, ONE_HOUR, _planned_monday, _world, short_window
from tests.unit.test_window_progress import slow_copy_to_node_3

__all__ = ["short_window", "slow_copy_to_node_3"]  # the fixtures, used here by name

DAY = timedelta(days=1)


@pytest.fixture
def on_call_world(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A one-hour window every day (00:00-01:00 UTC) and an on-call rotation, on each database."""
    with _world(engine, tmp_path, monkeypatch, window=ONE_HOUR, oncall=ONCALL) as made:
        yield made


def _taken_up_late(world: World, run_id: int, day: int) -> str:
    """The run taken up at 00:55 of the window `day` days after Monday's: 5 minutes left, a node needs 10."""
    world.clock.now = MONDAY + day * DAY + timedelta(minutes=55)
    state = world.update(run_id=run_id)
    assert state.is_completed(), state.message
    return str(state.result()["state"])


def test_an_urgent_update_that_stalls_pages_the_engineer_on_call(on_call_world: World) -> None:
    """An urgent update (a P0/P1 case's fix) that made no progress in three windows is paused and no
    longer re-slotted: nothing will start it again until a human acts. Re-slotted, it at least went on
    trying; paused, only the SRE's e-mail said so, and a paused run is not among the held urgent runs the
    dispatcher pages for (those are planned). "A failed urgent update pages the engineer on call and the
    team lead, at any hour": an urgent update stopped for good until someone acts is paged alike."""
    from inventory.alerts import Page

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(urgent=True))

    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == [
        "carried over",
        "carried over",
        "paused",
    ]

    assert world.run().state == RunState.paused
    with session_scope(world.engine) as session:
        pages = session.exec(select(Page)).all()
    [paged] = pages
    assert len(paged.paged) == 2 and "Tess" in paged.paged, paged.paged  # on call that day, and the lead
    assert "no progress in 3 windows" in paged.reason, paged.reason
    # its own key: a failure of the same run after the SRE's resume must still page
    assert paged.key != f"run:{run_id}", paged.key


def test_a_holder_that_froze_before_its_carry_over_does_not_move_the_run_its_new_owner_stalled(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third idle window: the run's process looked at the window (no room), then stood still (a VM
    paused, SIGSTOP) past its lease; the dispatcher took the run over and carried it over: stalled,
    paused, the SRE told "not re-slotted". The first process wakes and carries it over too: `carry_over`
    looked at no state, so it re-slotted the paused run to the next window ('rescheduled' to the
    customer, 'carried-over' to the SRE) - the stall undone behind the SRE's back, and its count
    started afresh by the stall it undid. Without a stall the same race moved a carried-over run a second
    window on. A run no longer running is no longer this process's to move."""
    from flows import outcomes
    from flows import product_update as update_flow
    from flows.plan import plan_update
    from tests.support.races import meanwhile
    from tests.support.update_world import CLUSTER, TARGET

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over", "carried over"]

    def taken_over_and_carried_over() -> str:
        with session_scope(world.engine) as session:
            plan = plan_update(CLUSTER, TARGET, session=session)
            session.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id)
                .values(lease_owner="elsewhere:1/abcdef")
            )
        return outcomes.carry_over(world.runtime, plan, run_id)

    other = meanwhile(monkeypatch, update_flow, "carry_over", taken_over_and_carried_over)
    _taken_up_late(world, run_id, 2)

    assert other == ["paused"]
    run = world.run()
    assert run.state == RunState.paused, (run.state, run.reason)
    assert run.slot_start == MONDAY + 2 * DAY and run.reason.startswith("stalled"), run.reason
    # the stall's path ran in both processes: the customer is told it stopped once
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled", "stopped"]


def test_a_release_re_published_between_windows_is_copied_again_never_the_old_copy_kept(
    short_window: World, slow_copy_to_node_3: list[str]
) -> None:
    """The package of 9.10.0 re-cut under the same version and name (an import with its new sha256)
    between the run's windows: every node's earlier copy is the old package, and the run must not keep
    it - the node's check is against the release's checksum now, so each is copied again and what each
    node stages is the new package."""
    from inventory.models import Release
    from tests.support.update_world import PACKAGE, TARGET

    world, copied = short_window, slow_copy_to_node_3
    run_id = _planned_monday(world)
    assert world.update(run_id=run_id).is_completed()
    assert world.run().state == RunState.planned and sorted(copied) == sorted(n.hostname for n in world.nodes)
    new = b"the 9.10.0 package, re-cut"
    sha256 = world.files.add(PACKAGE, new)
    with session_scope(world.engine) as session:
        session.execute(update(Release).where(col(Release.version) == TARGET).values(sha256=sha256))
    copied.clear()

    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    assert world.update(run_id=run_id).is_completed()

    assert sorted(copied) == sorted(n.hostname for n in world.nodes), copied  # every node copied to again
    for node in world.nodes:
        assert node.files[node.staged[-1]] == new, node.hostname  # the last staged is the new package


class _Killed(BaseException):
    """The process running the flow dies (kill -9): nothing of the flow's own handling runs after it."""


def _stalled_after_started(world: World) -> int:
    """Two idle windows; in the third the run starts (the customer told 'started'), its process dies
    during node 1's upgrade, and the take-over finds the window past its cutoff: stalled. The run's id."""
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1)] == ["carried over", "carried over"]

    def dies(_node: object) -> None:
        raise _Killed

    world.nodes[0].before["upgrade"] = dies
    world.clock.now = MONDAY + 2 * DAY + timedelta(minutes=1)
    with pytest.raises(_Killed):
        world.update(run_id=run_id)
    world.nodes[0].before.clear()
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled", "started"]

    assert _taken_up_late(world, run_id, 2) == "paused"  # the dead process's lease ran out meanwhile
    return run_id


def _customer_notice(world: World, run_id: int, kind: str) -> Notice:
    with session_scope(world.engine) as session:
        query = select(Notice).where(Notice.update_ref == f"update-{run_id}", Notice.kind == kind)
        [notice] = session.exec(query).all()
        return notice


def test_a_stall_in_a_window_the_customer_was_told_started_in_tells_them_it_stopped(
    on_call_world: World,
) -> None:
    """Two idle windows; in the third the run starts (the customer is told 'started': "you will hear from
    us when it is done"), its process dies during node 1's upgrade, and the take-over finds the window
    past its cutoff: the third idle window (no node newly verified), stalled. Carried over, the customer
    would have read 'partial' (each node's version: node 1's upgrade interrupted, checked when it goes
    on) and 'rescheduled'. Stalled, they were sent nothing: told it started, their node 1 touched, never
    told it stopped. Now they read 'stopped': stopped for now, how many nodes run the new version and
    where each stands, nothing more without a new notice, whom to contact; its invite withdraws the
    slot (METHOD:CANCEL, the next SEQUENCE)."""
    world = on_call_world
    run_id = _stalled_after_started(world)

    run = world.run()
    assert run.state == RunState.paused
    assert world.notices(run_id)[:5] == ["scheduled", "rescheduled", "rescheduled", "started", "stopped"]
    assert world.notices(run_id).count("stopped") == 1
    started, stopped = _customer_notice(world, run_id, "started"), _customer_notice(world, run_id, "stopped")
    text = " ".join(stopped.body_text.split())
    assert "stopped for now" in stopped.subject and "stopped for now" in text, text
    assert "0 of 3 nodes run 9.10.0 now" in text, text
    assert f"{world.nodes[0].hostname}: upgrade did not complete" in text, text
    assert "Nothing more will be done to your cluster for this upgrade without a new notice" in text, text
    assert "support@" in text and "will contact you" in text, text
    for internal in ("lease", "elsewhere", "127.0.0.1", "stalled", "upkeep resume", run.reason[:40]):
        assert internal not in stopped.body_text and internal not in stopped.body_html, internal
    assert "METHOD:CANCEL" in stopped.ics and f"SEQUENCE:{stopped.sequence}" in stopped.ics, stopped.ics
    assert stopped.sequence == started.sequence + 1 == run.notice_sequence


def test_the_stall_alert_says_what_the_customer_was_last_told_started_not_that_it_starts(
    on_call_world: World,
) -> None:
    """As above: the SRE, who is to contact the customer, read "The customer was last told it starts
    <slot> UTC and was sent nothing since" - but they were told it STARTED (and a node was touched).
    The alert names the last notice the customer was sent before the stall, and that they were sent the
    'stopped' notice now."""
    from inventory.alerts import Alert

    world = on_call_world
    run_id = _stalled_after_started(world)

    with session_scope(world.engine) as session:
        [alert] = session.exec(select(Alert).where(Alert.run_id == run_id, Alert.kind == "stalled")).all()
    body = alert.body_text.replace("\n", " ")
    assert "last told it starts" not in body, body
    assert "'started'" in body and "2026-12-09 00:01" in body and "they were told it started" in body, body
    assert "The customer was sent the 'stopped' notice." in body, body


def _window_now(world: World, tmp_path: Path, window: dict[str, str]) -> None:
    """An inventory import that changes the cluster's window to `window`."""
    _windows_now(world, tmp_path, [window])


def _windows_removed(world: World, tmp_path: Path) -> None:
    _windows_now(world, tmp_path, [])


def _windows_now(world: World, tmp_path: Path, windows: list[dict[str, str]]) -> None:
    import yaml

    from inventory.importer import import_inventory

    path = tmp_path / "inventory.yaml"
    document = yaml.safe_load(path.read_text())
    document["customers"][0]["clusters"][0]["windows"] = windows
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    import_inventory(path, engine=world.engine, actor="test")


def test_a_window_widened_by_an_import_is_the_one_looked_at_before_the_download(
    on_call_world: World, tmp_path: Path
) -> None:
    """Taken up at 00:55, past the cutoff of the one-hour window it was slotted in - but an import has
    since widened the window to three hours: the look before the download reads the window as it is
    now, and the run goes on (no carry-over, no 'rescheduled', no idle window counted)."""
    world = on_call_world
    run_id = _planned_monday(world)
    _window_now(world, tmp_path, {"days": "mon-sun", "start": "00:00", "duration": "3h"})

    assert _taken_up_late(world, run_id, 0) == "succeeded"
    assert world.upgraded() == [1, 1, 1] and "rescheduled" not in world.notices(run_id)


def test_a_window_shortened_by_an_import_carries_over_before_the_download(
    on_call_world: World, tmp_path: Path
) -> None:
    """The other way: slotted in a three-hour window, taken up at 00:55 after an import cut it to one
    hour: no room, carried over before the download, no node contacted."""
    world = on_call_world
    _window_now(world, tmp_path, {"days": "mon-sun", "start": "00:00", "duration": "3h"})
    run_id = _planned_monday(world)
    _window_now(world, tmp_path, ONE_HOUR)

    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.files.downloads == [] and all(node.commands == [] for node in world.nodes)


def test_a_stalled_run_resumed_with_its_window_overridden_goes_on_past_the_cutoff(
    on_call_world: World,
) -> None:
    """The SRE's way out of a stall outside a window: `upkeep resume N --override-window --reason`
    (audited). Taken up at 00:58, past the cutoff, the look before the download must not carry it over
    (a fourth 'rescheduled'): an overridden run has no window."""
    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    world.clock.now = MONDAY + 2 * DAY + timedelta(minutes=58)

    with session_scope(world.engine) as session:  # what `upkeep resume --override-window` records first
        overridden = update(UpgradeRun).where(col(UpgradeRun.id) == run_id)
        session.execute(overridden.values(override_reason="customer agreed by phone"))
    assert world.update(run_id=run_id).is_completed()

    run = world.run()
    assert run.state == RunState.succeeded, (run.state, run.reason)
    assert world.upgraded() == [1, 1, 1] and world.notices(run_id) == [
        "scheduled",
        "rescheduled",
        "rescheduled",
        "stopped",  # the stall: stopped for now, nothing more without a new notice
        "started",  # the new notice: the stopped one's SEQUENCE is not the started one's key
        "completed",
    ]


def test_a_stalled_run_resumed_outside_its_window_is_handed_back_to_the_dispatcher(
    on_call_world: World,
) -> None:
    """The stall's alert says: fix the cause, then `upkeep resume N` inside a window. The SRE fixes it
    at noon; the customer's window is at night. `upkeep resume` outside a window refused ("resumes only
    inside a maintenance window: the next window with room opens ..."), and a paused run is nobody's
    to start: the SRE had to be up at the customer's window, or override it (work outside the window
    the customer gave), or cancel it and ask anew (the customer told 'cancelled', then 'scheduled'; the
    approval and the copies on the nodes lost with the run). Resumed outside a window, a stalled run is
    planned for its next window with room - the customer told 'rescheduled' with the time - and the
    dispatcher starts it there, as any planned run."""
    from flows.dispatch import claim_due
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:  # its 'scheduled' notice delivered a week ahead
        told = update(UpgradeRun).where(col(UpgradeRun.id) == run_id)
        session.execute(told.values(told_at=MONDAY - 7 * DAY))
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)  # noon: the cause fixed

    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")

    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + 3 * DAY), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "rescheduled", "rescheduled", "stopped", "rescheduled"]
    world.clock.now = MONDAY + 3 * DAY + timedelta(minutes=1)
    claim = claim_due(world.runtime, world.clock.now, timedelta(hours=1))
    assert claim is not None and claim.run_id == run_id
    assert world.update(run_id=run_id, lease_owner=claim.owner).is_completed()
    assert world.run().state == RunState.succeeded and world.upgraded() == [1, 1, 1]


def test_a_stall_before_anything_started_withdraws_the_slot_and_the_resume_puts_a_new_one(
    on_call_world: World,
) -> None:
    """Three idle windows, no node touched: the customer was last told 'rescheduled' to the third, and
    expects the update then. They read 'stopped': nothing changed, their cluster on its version, the
    slot withdrawn from their calendar (METHOD:CANCEL, the same event, the next SEQUENCE), nothing more
    without a new notice. The SRE's resume outside a window then tells 'rescheduled' with the new time:
    a REQUEST for the same event with a higher SEQUENCE, which puts it back in their calendar."""
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    stopped = _customer_notice(world, run_id, "stopped")
    text = " ".join(stopped.body_text.split())
    assert "Nothing was changed on your cluster: it stays in service on 9.9.0" in text, text
    assert "nodes run" not in text and "without a new notice" in text, text
    assert "Wed 9 Dec 2026" in text, text  # the slot it will not happen in
    told = _all_notices(world, run_id)
    assert [n.kind for n in told] == ["scheduled", "rescheduled", "rescheduled", "stopped"]
    assert "METHOD:CANCEL" in stopped.ics and stopped.sequence == told[2].sequence + 1, stopped.ics

    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)
    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")

    again = [n for n in _all_notices(world, run_id) if n.kind == "rescheduled"][-1]
    assert again.id > stopped.id and again.sequence == stopped.sequence + 1
    assert "METHOD:REQUEST" in again.ics and _uid(again.ics) == _uid(stopped.ics), again.ics
    said = " ".join(again.body_text.split())
    assert "now starts Thu 10 Dec 2026" in said and "could not go ahead" in said, said


def _all_notices(world: World, run_id: int) -> list[Notice]:
    with session_scope(world.engine) as session:
        query = select(Notice).where(Notice.update_ref == f"update-{run_id}").order_by(col(Notice.id))
        return list(session.exec(query).all())


def _uid(ics: str) -> str:
    [uid] = [line for line in ics.splitlines() if line.startswith("UID:")]
    return uid


def test_a_stalled_run_is_left_alone_by_the_dispatcher_and_holds_no_running_slot(
    on_call_world: World,
) -> None:
    """Paused by the stall, in its (past) slot: no claim (the dispatcher starts planned runs), no
    take-over (orphans are running runs), not counted against max_running; a new request for the
    same cluster is refused naming it (one active update per cluster), so no second run starts a fresh
    count beside it."""
    from flows import lease
    from flows.dispatch import claim_due
    from inventory.runs import ActiveRunExists

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    world.clock.now = MONDAY + 3 * DAY + timedelta(minutes=1)  # the next window

    assert claim_due(world.runtime, world.clock.now, timedelta(hours=1)) is None
    with session_scope(world.engine) as session:
        assert lease.orphans(session, world.clock.now, skip=set()) == []
        assert lease.count_live(session, world.clock.now) == 0
    with pytest.raises(ActiveRunExists, match=rf"already has an active update \(run {run_id}, .*paused\)"):
        world.request(now_run=False)
    assert world.run().id == run_id and world.run().state == RunState.paused


def test_a_holder_that_froze_before_its_carry_over_leaves_a_run_its_new_owner_is_running(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the new owner is still at work when the old one wakes (the run `running` under the
    other lease): the old process's carry-over moved the run from under it - planned for the next window,
    'rescheduled' told, a carry-over (or the stall) counted - while the new owner upgrades its nodes. Only
    the lease holder ends or moves a run (as `finish` checks with `ensure_held`)."""
    from flows import product_update as update_flow
    from tests.support.races import meanwhile

    world = on_call_world
    run_id = _planned_monday(world)
    assert _taken_up_late(world, run_id, 0) == "carried over"

    def taken_over() -> None:
        with session_scope(world.engine) as session:
            taken = (
                update(UpgradeRun).where(col(UpgradeRun.id) == run_id).values(lease_owner="elsewhere:1/ab")
            )
            session.execute(taken)

    meanwhile(monkeypatch, update_flow, "carry_over", taken_over)
    assert _taken_up_late(world, run_id, 1) == "taken over"

    run = world.run()
    assert (run.state, run.lease_owner) == (RunState.running, "elsewhere:1/ab"), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "rescheduled"]


def test_a_stalled_run_resumed_with_no_later_window_is_refused_in_one_line_nothing_written(
    on_call_world: World, tmp_path: Path
) -> None:
    """Resumed outside a window after an import removed the cluster's windows: nothing to plan it for.
    One line naming why and the way on (the override), the run left stalled, the customer told nothing."""
    from upkeep.console import CliError
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    stalled = world.run()
    _windows_removed(world, tmp_path)
    world.clock.now = MONDAY + 2 * DAY + timedelta(hours=12)

    with pytest.raises(CliError) as refused:
        resume_run(run_id, engine=world.engine, as_json=False, actor="sre")

    said = str(refused.value)
    assert "\n" not in said and "--override-window" in said, said
    run = world.run()
    assert (run.state, run.reason, run.slot_start) == (stalled.state, stalled.reason, stalled.slot_start)
    assert world.notices(run_id) == [
        "scheduled",
        "rescheduled",
        "rescheduled",
        "stopped",
    ]  # the stall's, nothing more
