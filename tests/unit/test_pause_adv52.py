"""adv52: a hostile review of h-pause (an SRE's pause left paused past its window tells the customer
'stopped'). Each test is a way an operator, the clock or another process could make the customer hear the
wrong thing, or the SRE be told the wrong thing; on SQLite and PostgreSQL (the `engine` fixture), the
races on real PostgreSQL only."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.support.update_world import MONDAY, World
from tests.unit.test_pause_told import END, _paused_after_node_1, _stopped_alerts, _tick
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)


def test_a_pause_asked_after_its_window_ended_does_not_promise_a_time_already_past(
    on_call_world: World,
) -> None:
    """Node 1's upgrade overran the window's end (01:00); the SRE pauses at 01:05. The answer said "if it is
    not resumed before its window ends at 2026-12-07 01:00 ... the customer is told": a time already past,
    as if the SRE still had until then. The window is over: once the run pauses (after the node in
    progress) the dispatcher's next tick tells the customer."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(state=RunState.running, started_at=MONDAY, window_start=MONDAY, window_end=END)
        )
    world.clock.now = END + timedelta(minutes=5)
    said = request_stop(run_id, "pause", engine=world.engine, actor="sre")
    assert "before its window ends at" not in said, said
    assert (
        "its window ended at 2026-12-07 01:00 UTC (2026-12-07 01:00 UTC): the customer is told it stopped "
        "for now ('stopped') at the dispatcher's next tick once it has paused" in said
    ), said


def test_a_pause_told_stopped_resumed_and_paused_again_before_it_started_is_not_told_stopped_twice(
    on_call_world: World,
) -> None:
    """Monday's window ends paused: 'stopped'. Tuesday 00:01 the SRE resumes it inside the window and, as
    its pre-flight runs, pauses it again (a second look): it pauses before its first node, so 'started' is
    never sent again. Tuesday's window ends: a second 'stopped' went out - the customer read "stopped"
    twice in a row with nothing between, a second CANCEL of an event already withdrawn. Their last word
    of the update is already 'stopped': it is marked stopped for now (the portal, a resume outside a
    window replans it) and not told again."""
    from inventory.runs import paused_stopped
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]

    def pause_in_preflight(_node: object) -> None:
        world.nodes[2].before.clear()
        request_stop(run_id, "pause", engine=world.engine, actor="sre")

    world.nodes[2].before["disk"] = pause_in_preflight
    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "paused", state.message
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]

    _tick(world, END + DAY)
    _tick(world, END + DAY + timedelta(minutes=1))
    assert world.notices(run_id) == ["scheduled", "started", "stopped"], world.notices(run_id)
    assert paused_stopped(world.run()), world.run().reason
    # The SRE hears of each window ending paused; the second says the customer was not told again.
    assert _stopped_alerts(world, run_id) == 2


def test_a_cancel_and_the_tick_at_once_on_postgresql_never_tell_stopped_after_cancelled(
    on_call_world: World,
) -> None:
    """Real concurrency on PostgreSQL: at the window's end the SRE's `upkeep cancel` and the dispatcher's
    tick reach the paused run together (both wait on its row, held by a third transaction) and go as soon
    as it is free. Whichever wins, the run ends cancelled, 'cancelled' is told once and last (a 'stopped'
    if any before it, at a lower SEQUENCE), and the tick never marks a cancelled run."""
    import threading

    from sqlalchemy import text
    from sqlmodel import Session, col, select

    from flows.outcomes import tell_paused_past_window
    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun
    from inventory.outbox import Notice
    from tests.support.portal import wait_for
    from tests.unit.test_stalled_adv49 import _blocked_behind
    from upkeep.updates import request_stop

    world = on_call_world
    if world.engine.dialect.name != "postgresql":
        return  # SQLite serializes writers at BEGIN: the sequential orders are in test_pause_told.py
    run_id = _paused_after_node_1(world)
    world.clock.now = END
    said: list[object] = []
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            said.append(tell_paused_past_window(world.runtime, END))
        except BaseException as exc:  # reported below
            errors.append(exc)

    def cancel() -> None:
        try:
            said.append(request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="not now"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=tick), threading.Thread(target=cancel)]
    with world.engine.connect() as holder, Session(bind=holder) as session:
        session.exec(select(UpgradeRun).where(UpgradeRun.id == run_id).with_for_update()).one()
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for thread in threads:
            thread.start()
        wait_for(lambda: _blocked_behind(pid) >= 2, "the cancel and the tick waiting on the run")
        holder.rollback()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    run = world.run()
    assert run.state == RunState.cancelled, (run.state, run.reason)
    kinds = world.notices(run_id)
    assert kinds in (
        ["scheduled", "started", "stopped", "cancelled"],
        ["scheduled", "started", "cancelled"],
    ), kinds
    with session_scope(world.engine) as session:
        sequences = list(
            session.exec(
                select(Notice.sequence)
                .where(Notice.update_ref == f"update-{run_id}")
                .order_by(col(Notice.id))
            )
        )
    assert sequences[-1] > sequences[-2], sequences


def test_a_pause_of_a_run_whose_window_was_overridden_is_told_stopped_at_its_announced_windows_end(
    on_call_world: World,
) -> None:
    """Monday: 'started' at 00:01, paused at node 1; at 00:20 the SRE resumes it with `--override-window`
    (audited) and pauses it again (the run now has `override_reason`, its recorded window 00:00-01:00
    kept). The window ends with it paused: the customer, told it started, hears nothing, ever - the very
    silence h-pause closes, back through an override.

    Decided (lead, h-ending): told 'stopped' at the recorded window's end - the window the customer was
    told 'started' for; the override lets the run go on outside it, it does not take back what the
    customer was told. Not before that end, and once."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import UpgradeRun

    world = on_call_world
    run_id = _paused_after_node_1(world)
    with session_scope(world.engine) as session:  # as `upkeep resume --override-window` leaves it
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(override_reason="customer asked for it tonight")
        )
    assert _tick(world, END - timedelta(minutes=1)) == []
    assert _tick(world, END) == [run_id]
    assert _tick(world, END + timedelta(minutes=1)) == []
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]
    assert _stopped_alerts(world, run_id) == 1


def _overridden_request_now(world: World) -> int:
    """An SRE's `upkeep request --now --override-window --reason TEXT` as upkeep/requests.py writes it:
    planned, no slot, no window recorded (none is open, or it was not asked), `override_reason` set."""
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
        run.override_reason = "the customer's outage call: now, outside the window"
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def test_the_pause_of_an_overridden_run_with_no_window_at_all_says_the_customer_is_not_told(
    on_call_world: World,
) -> None:
    """Decided (lead, h-ending): a run overridden with no window recorded at all (`request --now
    --override-window` outside any window) has no end to go by: its pause is never told 'stopped'
    automatically (no invented deadline), but the SRE's `upkeep pause` answer says so - the customer was
    told 'started' and hears nothing more unless the SRE tells them or resumes it. Said nothing, the SRE
    read the answer of any pause and assumed the tick would speak for them."""
    world = on_call_world
    run_id = _overridden_request_now(world)
    said: list[str] = []

    def pause_at_node_1(_node: object) -> None:
        from upkeep.updates import request_stop

        world.nodes[0].before.clear()
        said.append(request_stop(run_id, "pause", engine=world.engine, actor="sre"))

    world.nodes[0].before["upgrade"] = pause_at_node_1
    world.clock.now = MONDAY + timedelta(hours=9)  # no window open: the override's
    assert world.update(run_id=run_id).result()["state"] == "paused"
    assert world.notices(run_id) == ["started"]
    [answer] = said
    assert (
        "it has no maintenance window (overridden): the customer, told it started, is not told "
        "automatically if it stays paused; tell them yourself, or resume or cancel it" in answer
    ), answer
    for day in (1, 2, 8):
        assert _tick(world, MONDAY + day * DAY) == []
    assert world.notices(run_id) == ["started"]


def test_the_pause_answer_does_not_promise_a_stopped_the_customer_already_had(on_call_world: World) -> None:
    """As above (told 'stopped' Monday, resumed Tuesday, paused again in its pre-flight): the SRE's answer
    said "if it is not resumed before its window ends ..., the customer is told it stopped for now" - they
    will not be (their last word already is 'stopped'); the answer says so."""
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]
    said: list[str] = []

    def pause_in_preflight(_node: object) -> None:
        world.nodes[2].before.clear()
        said.append(request_stop(run_id, "pause", engine=world.engine, actor="sre"))

    world.nodes[2].before["disk"] = pause_in_preflight
    world.clock.now = MONDAY + DAY + timedelta(minutes=1)
    assert world.update(run_id=run_id).result()["state"] == "paused"
    [answer] = said
    assert "the customer is told it stopped for now" not in answer, answer
    assert "the customer was already told it stopped for now ('stopped'): not told again" in answer, answer


def _window_now_ends_at_0030(world: World, tmp_path: Path) -> None:
    """The customer's inventory, imported again: every day's window now 00:00-00:30 (was 00:00-01:00)."""
    import yaml

    from inventory.importer import import_inventory

    path = tmp_path / "inventory.yaml"
    document = yaml.safe_load(path.read_text())
    document["customers"][0]["clusters"][0]["windows"] = [
        {"days": "mon-sun", "start": "00:00", "duration": "30m"}
    ]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    import_inventory(path, engine=world.engine, actor="customer-import")


def test_a_pause_whose_window_was_shortened_after_it_is_told_when_the_window_now_ends(
    on_call_world: World, tmp_path: Path
) -> None:
    """Paused at 00:01; at 00:20 an import shortens the customer's window to end at 00:30 (a running run
    would be stopped there: the cutoff reads the window as it is now, flows/outcomes.py
    `window_closing`). The tick went on reading only the window recorded at the start (01:00): from 00:30
    to 01:00 the customer, told 'started', heard nothing although their window was over, and the SRE
    could neither resume (no window open) nor replan it (not yet told 'stopped')."""
    world = on_call_world
    run_id = _paused_after_node_1(world)
    world.clock.now = MONDAY + timedelta(minutes=20)
    _window_now_ends_at_0030(world, tmp_path)

    assert _tick(world, MONDAY + timedelta(minutes=29)) == []
    assert _tick(world, MONDAY + timedelta(minutes=31)) == [run_id]
    assert _tick(world, END) == []
    assert world.notices(run_id) == ["scheduled", "started", "stopped"]


def test_the_pause_answer_names_the_end_of_the_window_as_it_is_now(
    on_call_world: World, tmp_path: Path
) -> None:
    """The window shortened to 00:30 by an import at 00:20; the SRE pauses the running update at 00:25.
    The answer named 01:00 (the window recorded at the start) while the cutoff and the tick go by 00:30."""
    from sqlalchemy import update
    from sqlmodel import col

    from inventory.db import session_scope
    from inventory.models import RunState, UpgradeRun
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(state=RunState.running, started_at=MONDAY, window_start=MONDAY, window_end=END)
        )
    world.clock.now = MONDAY + timedelta(minutes=20)
    _window_now_ends_at_0030(world, tmp_path)
    world.clock.now = MONDAY + timedelta(minutes=25)
    said = request_stop(run_id, "pause", engine=world.engine, actor="sre")
    assert "before its window ends at 2026-12-07 00:30 UTC (2026-12-07 00:30 UTC)" in said, said


def test_another_customers_portal_never_shows_or_opens_a_pause_told_stopped(on_call_world: World) -> None:
    """Another customer asking for this update's id (a guessed or forwarded link) gets NotYours, and their
    "Stopped for now" list stays empty; the owner's shows it. (Held.)"""
    from sqlmodel import select

    from flows.portal_actions import NotYours, stopped_update, stopped_updates
    from inventory.db import session_scope
    from inventory.models import Customer

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]
    with session_scope(world.engine) as session:
        other = Customer(name="otherco", timezone="UTC")
        session.add(other)
        session.flush()
        owner = session.exec(select(Customer).where(Customer.name == "fakeco")).one()
        assert stopped_updates(other, session=session) == []
        with pytest.raises(NotYours):
            stopped_update(run_id, other, session=session)
        assert [s.id for s in stopped_updates(owner, session=session)] == [run_id]
        assert stopped_update(run_id, owner, session=session).nodes_upgraded == 1
        assert stopped_update(run_id, owner, session=session).paused_by_us  # the portal's words: paused by us


def test_the_stopped_words_of_a_pause_in_one_window_do_not_say_it_was_moved_again(
    on_call_world: World,
) -> None:
    """The customer's 'stopped' after one window paused must not claim what did not happen (adv52): it
    says we paused it, in the mail and on the portal's page."""
    from tests.unit.test_window_stalled_adversarial import _customer_notice

    world = on_call_world
    run_id = _paused_after_node_1(world)
    assert _tick(world, END) == [run_id]
    body = " ".join(_customer_notice(world, run_id, "stopped").body_text.split())
    assert "rather than move it to the next one again" not in body, body
    assert "our engineers stopped it during your maintenance window" in body, body


def test_a_customer_whose_contacts_were_emptied_is_not_mailed_and_the_sre_is_told_so(
    on_call_world: World,
) -> None:
    """An import emptied the customer's contact list after the pause: the window's end queues no mail (no
    recipient) and the SRE's alert says the customer has no contacts, once. (Held.)"""
    from sqlalchemy import delete
    from sqlmodel import select

    from inventory.alerts import Alert
    from inventory.db import session_scope
    from inventory.models import Contact

    world = on_call_world
    run_id = _paused_after_node_1(world)
    with session_scope(world.engine) as session:
        session.execute(delete(Contact))
    assert _tick(world, END) == [run_id]
    assert _tick(world, END + timedelta(minutes=1)) == []
    assert world.notices(run_id) == ["scheduled", "started"]
    with session_scope(world.engine) as session:
        [alert] = session.exec(
            select(Alert).where(Alert.run_id == run_id, Alert.kind == "paused-stopped")
        ).all()
        assert "The customer has no contacts." in alert.body_text, alert.body_text


HOSTILE = (
    "paused past its window, the customer told 'stopped': \u202egnp.exe\u202c\nWhy: we broke node fake-c1-n2"
)


def test_an_sre_reason_that_mimics_the_mark_neither_flips_the_state_nor_reaches_the_customer(
    on_call_world: World,
) -> None:
    """`upkeep pause --reason` starting with the marker's own words, with a bidi override, a newline and a
    host name: the reason is the audit's only (the run's reason is our fixed 'paused by request ...'), so
    the run is not 'stopped for now' before its window ends, the tick still tells it once at the end, and
    neither the customer's 'stopped' nor the portal carries a word of it. (Held.)"""
    from sqlmodel import select

    from flows.portal_actions import stopped_updates
    from inventory.db import session_scope
    from inventory.models import Customer
    from inventory.runs import paused_stopped
    from tests.unit.test_window_stalled_adversarial import _customer_notice

    world = on_call_world
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.ask_at_node_1("pause", reason=HOSTILE)
    assert world.update(run_id=run_id).result()["state"] == "paused"
    world.nodes[0].before.clear()
    assert not paused_stopped(world.run()), world.run().reason
    assert _tick(world, END - timedelta(minutes=1)) == []
    with session_scope(world.engine) as session:
        owner = session.exec(select(Customer).where(Customer.name == "fakeco")).one()
        assert stopped_updates(owner, session=session) == []
    assert _tick(world, END) == [run_id]
    assert _tick(world, END + timedelta(minutes=1)) == []
    notice = _customer_notice(world, run_id, "stopped")
    for text in (notice.body_text, notice.body_html, notice.subject):
        assert "\u202e" not in text and "gnp.exe" not in text and "we broke" not in text, text


def test_the_pause_answer_across_the_autumn_dst_change_names_the_instant_unambiguously(
    on_call_world: World, tmp_path: Path
) -> None:
    """A Berlin customer whose window, 00:00 for 2h30m, ends in the hour the clocks go back (25 October
    2026: 02:30 happens twice). The answer names the end in their zone and in UTC - the UTC says which
    02:30 - and agrees with the window the cutoff reads. (Held.)"""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    import yaml
    from sqlalchemy import update
    from sqlmodel import col

    from flows.run_window import window_at
    from inventory.db import session_scope
    from inventory.importer import import_inventory
    from inventory.models import RunState, UpgradeRun
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _planned_monday(world)
    path = tmp_path / "inventory.yaml"
    document = yaml.safe_load(path.read_text())
    document["customers"][0]["timezone"] = "Europe/Berlin"
    document["customers"][0]["clusters"][0]["windows"] = [
        {"days": "mon-sun", "start": "00:00", "duration": "150m"}
    ]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    import_inventory(path, engine=world.engine, actor="test")
    now = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # 01:00 CEST on the 25th
    with session_scope(world.engine) as session:
        window = window_at(world.run(), now, session=session)
        assert window is not None
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == run_id)
            .values(state=RunState.running, started_at=now, window_start=window.start, window_end=window.end)
        )
    world.clock.now = now
    said = request_stop(run_id, "pause", engine=world.engine, actor="sre")
    local = window.end.astimezone(ZoneInfo("Europe/Berlin"))  # 02:30 CEST, the first of the two
    assert window.end - window.start == timedelta(minutes=150), window
    assert (
        f"before its window ends at {local:%Y-%m-%d %H:%M} Europe/Berlin ({window.end:%Y-%m-%d %H:%M} UTC)"
        in said
    ), said
    assert "2026-10-25 02:30 Europe/Berlin (2026-10-25 00:30 UTC)" in said, said


_TICK_CHILD = """
import sys
from datetime import datetime
from pathlib import Path

from flows import runtime as flow_runtime
from flows.outcomes import tell_paused_past_window
from flows.runtime import Runtime
from inventory.db import make_engine
from tests.support.fakes import FakeClock, FakeFileServer, FakeFleet, FakeMailTransport

url, at, work = sys.argv[1], datetime.fromisoformat(sys.argv[2]), Path(sys.argv[3])
runtime = Runtime(
    engine=make_engine(url), fileserver=FakeFileServer(), ssh=FakeFleet(), work_dir=work,
    mailer=FakeMailTransport(), clock=FakeClock(at),
)
flow_runtime.configure(runtime)
print(tell_paused_past_window(runtime, at))
"""


def _database_url(engine: Engine) -> str:
    """The URL another process reaches the test's database by (PostgreSQL: the test's own schema)."""
    from sqlalchemy import text

    from tests.support.databases import POSTGRES_URL

    if engine.dialect.name == "sqlite":
        return engine.url.render_as_string(hide_password=False)
    with engine.connect() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


def test_a_real_kill_9_of_the_tick_after_the_mark_and_the_notice_leaves_nothing_and_the_next_tick_tells_once(
    on_call_world: World, tmp_path: Path
) -> None:
    """A real dispatcher process SIGKILLed (tasks/failpoints.py) once the run is marked and its 'stopped'
    and alert are written but not committed: the database keeps none of it (the run unmarked, no notice,
    no alert), and the next tick tells it, once. (Held: one transaction.)"""
    import os
    import signal
    import subprocess
    import sys

    from inventory.runs import paused_stopped

    world = on_call_world
    run_id = _paused_after_node_1(world)
    env = {**os.environ, "UPKEEP_FAILPOINT": "paused-stopped:queued", "PYTHONPATH": os.getcwd()}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _TICK_CHILD,
            _database_url(world.engine),
            END.isoformat(),
            str(tmp_path / "w"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout[-2000:] + child.stderr[-2000:]
    assert not paused_stopped(world.run()), world.run().reason
    assert world.notices(run_id) == ["scheduled", "started"] and _stopped_alerts(world, run_id) == 0

    assert _tick(world, END + timedelta(minutes=1)) == [run_id]
    assert _tick(world, END + timedelta(minutes=2)) == []
    assert (
        world.notices(run_id) == ["scheduled", "started", "stopped"] and _stopped_alerts(world, run_id) == 1
    )


def test_a_resume_outside_a_window_before_the_tick_told_the_pause_plans_it_for_the_next_window(
    on_call_world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Monday's window ended at 01:00 with the run paused; the dispatcher has been down since 00:50. At
    09:00 the SRE resumes it: as after the tick, it should be planned for Tuesday's window.

    Decided (lead, h-ending): the resume does first what the tick would have done - 'stopped' told once,
    through the tick's own code path and once-only mark, its SRE alert included - then replans it for the
    next window ('rescheduled'), exactly as if the tick had run; a tick after it tells nothing."""
    from inventory.models import RunState
    from inventory.runs import paused_stopped
    from upkeep.updates import resume_run

    world = on_call_world
    run_id = _paused_after_node_1(world)
    world.clock.now = MONDAY + timedelta(hours=9)
    capsys.readouterr()
    resume_run(run_id, engine=world.engine, as_json=False, actor="sre")
    said = " ".join(capsys.readouterr().out.split())
    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + DAY), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "rescheduled"], world.notices(run_id)
    assert _stopped_alerts(world, run_id) == 1
    assert not paused_stopped(run)
    assert "the customer was told it stopped for now ('stopped') first" in said, said
    assert "the customer is told ('rescheduled')" in said, said
    assert _tick(world, MONDAY + timedelta(hours=9, minutes=1)) == []
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "rescheduled"]


def test_a_resume_and_two_ticks_at_once_on_postgresql_tell_stopped_once_then_replan(
    on_call_world: World,
) -> None:
    """Real concurrency on PostgreSQL: the window ended with the run paused and untold; at 09:00 the SRE's
    `upkeep resume` and two dispatchers' ticks reach the run together (all waiting on its row, held by a
    third transaction) and go as soon as it is free. Whichever wins, 'stopped' is told once (the tick's
    mark, read under the row lock), the SRE alerted once, and the resume replans it: 'rescheduled' last,
    planned for Tuesday."""
    import threading

    from sqlalchemy import text
    from sqlmodel import Session, select

    from flows.outcomes import tell_paused_past_window
    from inventory.models import RunState, UpgradeRun
    from tests.support.portal import wait_for
    from tests.unit.test_stalled_adv49 import _blocked_behind
    from upkeep.updates import resume_run

    world = on_call_world
    if world.engine.dialect.name != "postgresql":
        return  # SQLite serializes writers at BEGIN: the sequential order is the test above
    run_id = _paused_after_node_1(world)
    at = MONDAY + timedelta(hours=9)
    world.clock.now = at
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            tell_paused_past_window(world.runtime, at)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def resume() -> None:
        try:
            resume_run(run_id, engine=world.engine, as_json=False, actor="sre")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=tick), threading.Thread(target=tick), threading.Thread(target=resume)]
    with world.engine.connect() as holder, Session(bind=holder) as session:
        session.exec(select(UpgradeRun).where(UpgradeRun.id == run_id).with_for_update()).one()
        pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        for thread in threads:
            thread.start()
        wait_for(lambda: _blocked_behind(pid) >= 3, "the resume and two ticks waiting on the run")
        holder.rollback()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    run = world.run()
    assert (run.state, run.slot_start) == (RunState.planned, MONDAY + DAY), (run.state, run.reason)
    assert world.notices(run_id) == ["scheduled", "started", "stopped", "rescheduled"], world.notices(run_id)
    assert _stopped_alerts(world, run_id) == 1


def test_a_stalled_run_the_sre_then_pauses_is_told_stopped_once(on_call_world: World) -> None:
    """Stalled by the bound on idle windows (told 'stopped'), then `upkeep pause` by an SRE: "already
    paused", and no later tick tells it again. (Held.)"""
    from tests.unit.test_window_stalled_adversarial import _taken_up_late
    from upkeep.updates import request_stop

    world = on_call_world
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)][-1] == "paused"
    assert world.notices(run_id).count("stopped") == 1, world.notices(run_id)
    said = request_stop(run_id, "pause", engine=world.engine, actor="sre")
    assert said == f"run {run_id} is already paused", said
    for day in (3, 4):
        assert _tick(world, END + day * DAY) == []
    assert world.notices(run_id).count("stopped") == 1, world.notices(run_id)
    assert _stopped_alerts(world, run_id) == 0


def test_a_run_whose_window_cannot_be_read_does_not_stop_the_dispatchers_tick(
    on_call_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a paused run's window as it is now (adv52) can fail for that run (its cluster's windows
    unreadable): that run is logged and left, the tick goes on - "one run's trouble never stops the tick
    for the others" - instead of the whole dispatcher tick failing, every minute, for every customer."""
    from flows import outcomes

    world = on_call_world
    _paused_after_node_1(world)

    def unreadable(*_args: object, **_kwargs: object) -> bool:
        raise ValueError("window of fake-c1 unreadable")

    monkeypatch.setattr(outcomes, "window_over", unreadable)
    assert _tick(world, MONDAY + timedelta(minutes=30)) == []
