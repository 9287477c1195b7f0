"""Adversarial pass on the set-based dispatcher (#19): what an unlucky world or a hostile operator does
to the tick's bulk steps - a poisoned row in a chunk of reminders or claims, ties in the claims' keyset,
a change landing between the bulk read of the worlds and the claim, two dispatchers at once. SQLite
and PostgreSQL; no lab (the flows the claims would start are not run). No assert depends on a sleep:
interleavings are forced at the code's own seams (monkeypatched reads), or by barriers."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import text
from sqlmodel import select

from flows.dispatch import send_reminders
from flows.runtime import Runtime
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.outbox import Notice
from tests.integration.test_dispatch_scale import NOW
from tests.support.fleets import one_node_fleet, planned_run


def _world(engine: Any, tmp_path: Path, customers: dict[str, int]) -> Runtime:
    """Customers named as given, each with that many one-node clusters `<customer>-cNN`, open all week."""
    return one_node_fleet(engine, tmp_path, customers, clock=lambda: NOW)


def _sql(engine: Any, statement: str, **params: Any) -> None:
    """What an operator in psql, or a newer Upkeep sharing the database, leaves behind."""
    with engine.begin() as conn:
        conn.execute(text(statement), params)


def _keys(engine: Any, kind: str = "reminder") -> list[str]:
    with session_scope(engine) as session:
        return sorted(n.idempotency_key for n in session.exec(select(Notice).where(Notice.kind == kind)))


def _alerts(engine: Any) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert)).all())


def test_a_reminder_that_cannot_be_rendered_does_not_hold_back_its_chunk_nor_the_tick(
    engine: Any, tmp_path: Path
) -> None:
    """One customer's row poisoned (a time zone this host's tzdata does not know, written by hand or by
    a newer host) among the tick's reminders: the other reminders of its chunk still go, the tick goes
    on to its claims, and the SRE gets one alert naming the update and the value."""
    runtime = _world(engine, tmp_path, {"acme": 4, "mars": 1})
    announced = NOW - timedelta(hours=48)  # 24 h reminders due, the 72 h ones (and their pre-flight) not
    poisoned = planned_run(engine, "mars-c00", NOW + timedelta(hours=1), announced)  # earliest slot: first
    good = [planned_run(engine, f"acme-c{i:02d}", NOW + timedelta(hours=2 + i), announced) for i in range(4)]
    _sql(engine, "UPDATE customer SET timezone = 'Mars/Olympus_Mons' WHERE name = 'mars'")

    sent = send_reminders(runtime, NOW)

    assert sent == [f"update-{run_id}:24h" for run_id in good]
    assert _keys(engine) == sorted(f"update-{run_id}:reminder:1:24h" for run_id in good)
    alerts = [a for a in _alerts(engine) if a.run_id == poisoned]
    assert len(alerts) == 1, alerts
    assert "Mars/Olympus_Mons" in alerts[0].body_text
    # The next tick does not alert again for the same row (one line, not one per tick).
    assert send_reminders(runtime, NOW) == []
    assert len([a for a in _alerts(engine) if a.run_id == poisoned]) == 1


def _running(engine: Any) -> list[int]:
    from inventory.models import RunState, UpgradeRun

    with session_scope(engine) as session:
        return sorted(
            r.id or 0 for r in session.exec(select(UpgradeRun).where(UpgradeRun.state == RunState.running))
        )


def test_two_dispatchers_ticking_at_once_keep_max_running_between_them(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Two dispatchers (deployment mode) both count the running updates before either claims: between
    them they must still start at most `max_running`, and no run twice. The interleaving is forced:
    each waits at a barrier right after its count."""
    import logging
    import threading

    import flows.dispatch
    from flows.dispatch import start_due_runs

    runtime = _world(engine, tmp_path, {"acme": 6})
    due = [
        planned_run(engine, f"acme-c{i:02d}", NOW - timedelta(minutes=1), NOW - timedelta(days=5))
        for i in range(6)
    ]
    both_counted = threading.Barrier(2, timeout=120)
    take_over_next = flows.dispatch._take_over_next
    waited: set[str] = set()

    def counted_then_wait(*args: Any, **kwargs: Any) -> Any:
        # The first look for orphans comes right after the tick's count of running updates (its own
        # transaction, committed): both dispatchers have counted before either claims.
        if threading.current_thread().name not in waited:
            waited.add(threading.current_thread().name)
            both_counted.wait()
        return take_over_next(*args, **kwargs)

    monkeypatch.setattr(flows.dispatch, "_take_over_next", counted_then_wait)
    monkeypatch.setattr(flows.dispatch, "get_run_logger", lambda: logging.getLogger("test"))
    handed: list[int] = []
    monkeypatch.setattr(
        flows.dispatch, "_start_deployments", lambda runtime, claims: handed.extend(c.run_id for c in claims)
    )
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            start_due_runs(runtime, NOW, max_running=2, via_deployments=True)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=tick, name=f"tick-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(handed) == len(set(handed))  # no run handed over twice
    assert set(handed) <= set(due)
    assert len(_running(engine)) == 2, _running(engine)  # max_running between both, not per dispatcher
    assert sorted(handed) == _running(engine)


def test_a_due_update_whose_world_cannot_be_read_does_not_hold_back_the_others(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The earliest due update's customer poisoned (an unknown time zone) in the claims' chunk: the
    reslot check and the claims go on for the others, that one is not started, and the SRE gets one
    alert naming it and the value, not one per tick."""
    import logging

    import flows.dispatch
    from flows.dispatch import reslot_missed, start_due_runs

    runtime = _world(engine, tmp_path, {"acme": 4, "mars": 1})
    long_ago = NOW - timedelta(days=5)
    poisoned = planned_run(engine, "mars-c00", NOW - timedelta(minutes=2), long_ago)
    good = [planned_run(engine, f"acme-c{i:02d}", NOW - timedelta(minutes=1), long_ago) for i in range(4)]
    _sql(engine, "UPDATE customer SET timezone = 'Mars/Olympus_Mons' WHERE name = 'mars'")
    monkeypatch.setattr(flows.dispatch, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(flows.dispatch, "_start_deployments", lambda runtime, claims: None)

    assert reslot_missed(runtime, NOW) == []
    claims = start_due_runs(runtime, NOW, max_running=10, via_deployments=True)

    assert sorted(c.run_id for c in claims) == good
    assert _running(engine) == good
    alerts = [a for a in _alerts(engine) if a.run_id == poisoned]
    assert len(alerts) == 1, alerts
    assert "Mars/Olympus_Mons" in alerts[0].body_text
    assert start_due_runs(runtime, NOW, max_running=10, via_deployments=True) == []
    assert len([a for a in _alerts(engine) if a.run_id == poisoned]) == 1


def test_claims_page_through_equal_slot_starts_without_skipping_or_repeating(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """More due updates than one keyset page, all with the same slot_start (ties broken by id), the
    first page's all waiting on a requested action: the claims page past them and take every other
    one exactly once."""
    import flows.dispatch
    from flows.dispatch import _claim_many

    monkeypatch.setattr(flows.dispatch, "_CLAIM_BATCH", 4)
    runtime = _world(engine, tmp_path, {"acme": 11})
    slot, long_ago = NOW - timedelta(minutes=1), NOW - timedelta(days=5)
    runs = [planned_run(engine, f"acme-c{i:02d}", slot, long_ago) for i in range(11)]
    waiting = runs[:5]  # the first page and one more: a pause asked for, not claimable
    for run_id in waiting:
        _sql(engine, "UPDATE upgraderun SET requested_action = 'pause' WHERE id = :id", id=run_id)

    claims = _claim_many(runtime, NOW, set(), timedelta(minutes=5), want=100)

    assert sorted(c.run_id for c in claims) == runs[5:]
    assert len(claims) == len({c.run_id for c in claims})


def test_a_reminder_whose_update_moved_or_was_held_after_the_tick_read_it_is_not_queued(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Between the tick's read of the due reminders and their chunk's transaction (the 72 h pre-flights
    run in between, up to PREFLIGHT_BUDGET), the customer defers one update by four days and a
    re-check holds another: neither gets a reminder for the slot read (nor, under the new sequence, a
    '24 h' reminder four days early that would also stand in for the real one); the third still goes."""
    import flows.dispatch
    from flows.schedule import defer_update

    runtime = _world(engine, tmp_path, {"acme": 3})
    announced = NOW - timedelta(hours=48)
    deferred, held, kept = (
        planned_run(engine, f"acme-c{i:02d}", NOW + timedelta(hours=2 + i), announced) for i in range(3)
    )
    queue = flows.dispatch._queue_reminders
    done: list[bool] = []

    def meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not done:
            done.append(True)
            with session_scope(engine) as session:
                defer_update(deferred, to=NOW + timedelta(days=4), now=NOW, session=session)
            _sql(engine, "UPDATE upgraderun SET held_reason = 'release withdrawn' WHERE id = :id", id=held)
        return queue(*args, **kwargs)

    monkeypatch.setattr(flows.dispatch, "_queue_reminders", meanwhile)

    assert send_reminders(runtime, NOW) == [f"update-{kept}:24h"]
    assert _keys(engine) == [f"update-{kept}:reminder:1:24h"]


def test_a_notice_superseded_after_the_delivery_read_ahead_is_not_sent(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The delivery reads the next due notices' runs ahead; a newer notice of the same update queued
    after that read (a reschedule committing meanwhile) still supersedes the older one at its claim:
    one message goes, the newer."""
    from flows.notify import _RunsOfNotices, deliver_pending
    from inventory.models import Cluster
    from inventory.outbox import NoticeState, queue_notice

    runtime = _world(engine, tmp_path, {"acme": 1})
    run_id = planned_run(engine, "acme-c00", NOW + timedelta(days=5), NOW - timedelta(days=1))
    with session_scope(engine) as session:
        customer_id = session.exec(select(Cluster)).one().customer_id

    def queue(sequence: int, kind: str) -> None:
        with session_scope(engine) as session:
            queue_notice(
                update_ref=f"update-{run_id}",
                kind=kind,
                sequence=sequence,
                customer_id=customer_id,
                recipients=["ops@acme.example"],
                subject=f"{kind} {sequence}",
                body_text=f"{kind} {sequence}",
                body_html=f"<p>{kind} {sequence}</p>",
                session=session,
                now=NOW - timedelta(minutes=1),
            )

    queue(1, "scheduled")
    read_ahead = _RunsOfNotices.read_ahead

    def then_rescheduled(self: Any, now: Any, most: int) -> bool:
        found = read_ahead(self, now, most)
        if not getattr(self, "_meanwhile", False):
            self._meanwhile = True
            queue(2, "rescheduled")
        return found

    monkeypatch.setattr(_RunsOfNotices, "read_ahead", then_rescheduled)
    report = deliver_pending(engine, runtime.mailer, now=NOW, sender="upkeep@localhost", limit=10)

    assert report.sent == [f"update-{run_id}:rescheduled:2"]
    assert report.superseded == [f"update-{run_id}:scheduled:1"]
    with session_scope(engine) as session:
        states = {n.sequence: n.state for n in session.exec(select(Notice))}
    assert states == {1: NoticeState.superseded, 2: NoticeState.sent}
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


_KILLED_TICK = """
import sys, time
from pathlib import Path
from datetime import datetime
import flows.dispatch
from flows.runtime import Runtime
from inventory.db import make_engine
from tasks.mail import OutboxDirTransport

url, schema, work = sys.argv[1], sys.argv[2] or None, Path(sys.argv[3])
now = datetime.fromisoformat(sys.argv[4])
engine = make_engine(url, schema=schema) if schema else make_engine(url)
queue = flows.dispatch.queue_reminders

def inserted_then_hang(*args, **kwargs):
    done = queue(*args, **kwargs)  # the INSERT ... ON CONFLICT ran; the chunk is not committed
    print("inserted", len(done), flush=True)
    time.sleep(3600)

flows.dispatch.queue_reminders = inserted_then_hang
runtime = Runtime(engine=engine, fileserver=None, ssh=None, work_dir=work,
                  mailer=OutboxDirTransport(work / "outbox"), clock=lambda: now)
flows.dispatch.send_reminders(runtime, now)
"""


def test_kill_9_between_the_reminders_insert_and_its_commit_queues_each_once_later(
    engine: Any, tmp_path: Path
) -> None:
    """A dispatcher SIGKILLed after its chunk's INSERT and before the commit (the process told us it
    inserted; it then waits forever): nothing of the chunk is left queued, and the next tick queues
    every reminder exactly once."""
    import os
    import signal
    import subprocess
    import sys

    runtime = _world(engine, tmp_path, {"acme": 3})
    announced = NOW - timedelta(hours=48)
    runs = [planned_run(engine, f"acme-c{i:02d}", NOW + timedelta(hours=2 + i), announced) for i in range(3)]
    schema = ""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    url = engine.url.render_as_string(hide_password=False)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TICK, url, schema, str(tmp_path), NOW.isoformat()],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the INSERT ran (or the process died)
        assert line.startswith("inserted 3"), line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL

    assert _keys(engine) == []  # rolled back with the process
    assert send_reminders(runtime, NOW) == [f"update-{run_id}:24h" for run_id in runs]
    assert send_reminders(runtime, NOW) == []
    assert _keys(engine) == sorted(f"update-{run_id}:reminder:1:24h" for run_id in runs)


@pytest.mark.parametrize("change", ["blackout added", "window changed"])
def test_a_change_landing_between_the_bulk_world_read_and_the_claim_wins(
    engine: Any, tmp_path: Path, monkeypatch: Any, change: str
) -> None:
    """An inventory import (a customer blackout over today, or the window moved to the weekend)
    commits right after the claims read the chunk's worlds and before the conditional UPDATE: the
    claim must not go ahead on the stale world - the import's re-check moved or held the update.
    PostgreSQL only: on SQLite the claims' transaction holds the write lock (BEGIN IMMEDIATE) from its
    first statement, so the import cannot commit in between."""
    import flows.integrity
    from flows.dispatch import _claim_many
    from flows.integrity import import_and_recheck
    from inventory.models import RunState, UpgradeRun
    from tests.support.races import meanwhile

    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers at BEGIN IMMEDIATE: the interleaving cannot happen")
    runtime = _world(engine, tmp_path, {"acme": 2})
    run_id = planned_run(engine, "acme-c00", NOW - timedelta(minutes=1), NOW - timedelta(days=20))
    source = tmp_path / "fleet.yaml"
    spec = yaml.safe_load(source.read_text())
    customer = spec["customers"][0]
    if change == "blackout added":
        customer["blackouts"] = [{"start": "2026-12-01", "end": "2026-12-01", "reason": "freeze"}]
    else:
        customer["clusters"][0]["windows"] = [{"days": "sat-sun", "start": "00:00", "duration": "24h"}]
    source.write_text(yaml.safe_dump(spec, sort_keys=False))

    happened = meanwhile(
        monkeypatch,
        flows.integrity,
        "worlds_of",
        lambda: import_and_recheck(source, engine=engine, actor="customer", now=NOW)[1],
        after=True,
    )
    claims = _claim_many(runtime, NOW, set(), timedelta(minutes=5), want=1)

    assert happened and [o.run_id for o in happened[0]] == [run_id]  # the import re-checked it
    assert claims == []
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        assert run.state == RunState.planned
        assert run.notice_sequence == 2 or run.held_reason


def test_claims_straddling_max_running_across_pages_stop_at_it(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Keyset pages of 2 due updates, one already running, max_running 4: exactly 3 more claimed,
    the earliest, though the third falls in the second page."""
    import flows.dispatch
    from flows.dispatch import _claim_many

    monkeypatch.setattr(flows.dispatch, "_CLAIM_BATCH", 2)
    runtime = _world(engine, tmp_path, {"acme": 8})
    long_ago = NOW - timedelta(days=5)
    runs = [
        planned_run(engine, f"acme-c{i:02d}", NOW - timedelta(minutes=10 - i), long_ago) for i in range(8)
    ]
    _sql(
        engine,
        "UPDATE upgraderun SET state = 'running', lease_until = :until WHERE id = :id",
        until=NOW + timedelta(hours=1),
        id=runs[0],
    )

    claims = _claim_many(runtime, NOW, set(), timedelta(minutes=5), want=10, most=4)

    assert [c.run_id for c in claims] == runs[1:4]
    assert _running(engine) == runs[:4]


def test_reminders_to_a_customer_with_nobody_to_tell_do_not_take_the_ticks_limit(
    engine: Any, tmp_path: Path
) -> None:
    """A customer with no contacts and no portal users (the import allows it) whose updates have the
    earliest slots: their reminders can never be queued, so they stayed due and filled the tick's
    limit every tick - the other customers' reminders never went. They must not count against the
    limit, and the SRE hears once per update that its customer has nobody to tell."""
    runtime = _world(engine, tmp_path, {"quiet": 2, "acme": 1})
    _sql(engine, "DELETE FROM contact WHERE customer_id = (SELECT id FROM customer WHERE name = 'quiet')")
    announced = NOW - timedelta(hours=48)
    silent = [
        planned_run(engine, f"quiet-c{i:02d}", NOW + timedelta(hours=1 + i), announced) for i in range(2)
    ]
    told = planned_run(engine, "acme-c00", NOW + timedelta(hours=5), announced)

    assert send_reminders(runtime, NOW, limit=2) == [f"update-{told}:24h"]
    assert send_reminders(runtime, NOW, limit=2) == []
    assert _keys(engine) == [f"update-{told}:reminder:1:24h"]
    alerts = sorted(a.run_id or 0 for a in _alerts(engine))
    assert alerts == silent, alerts


def test_an_unreadable_due_update_is_one_line_however_often_the_workers_claim(
    engine: Any, tmp_path: Path, caplog: Any
) -> None:
    """In-process workers claim one run at a time, each claim reading from the first page again: the
    poisoned earliest update is met at every claim, but logged once (and alerted once), not per claim."""
    import logging

    from flows.dispatch import _claim_next

    runtime = _world(engine, tmp_path, {"acme": 3, "mars": 1})
    long_ago = NOW - timedelta(days=5)
    poisoned = planned_run(engine, "mars-c00", NOW - timedelta(minutes=2), long_ago)
    good = [planned_run(engine, f"acme-c{i:02d}", NOW - timedelta(minutes=1), long_ago) for i in range(3)]
    _sql(engine, "UPDATE customer SET timezone = 'Mars/Olympus_Mons' WHERE name = 'mars'")

    with caplog.at_level(logging.ERROR):
        claimed = [_claim_next(runtime, NOW, set(), timedelta(minutes=5)) for _ in range(4)]

    assert sorted(c.run_id for c in claimed if c is not None) == good
    lines = [r for r in caplog.records if f"update-{poisoned}" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert len([a for a in _alerts(engine) if a.run_id == poisoned]) == 1


def test_one_window_row_in_three_zones_gives_three_answers_in_any_chunking(
    engine: Any, tmp_path: Path
) -> None:
    """The reslot check's window cache (e887c16) keys on the window rules, which carry the zone: three
    customers in UTC, Berlin and Los Angeles whose clusters store the same row (Tuesday 08:00 for 8 h,
    zone left to the customer) and whose slots start at the same instant get their own windows - open
    until 16:00 UTC, open until 15:00 UTC, and closed (03:30 in Los Angeles) - each equal to `window_at`
    alone, and the same whether the runs are read in one chunk or one per chunk. Adversarial pass on
    #19 (holds; fails if the key drops the rules' zone)."""
    from flows.dispatch import _planned, windows_at_slot
    from flows.run_window import window_at
    from inventory.models import Customer, UpgradeRun
    from inventory.windows import MaintenanceWindow

    zones = {"utc": "UTC", "ber": "Europe/Berlin", "lax": "America/Los_Angeles"}
    _world(engine, tmp_path, dict.fromkeys(zones, 1))
    with session_scope(engine) as session:
        for window in session.exec(select(MaintenanceWindow)):
            window.days, window.start, window.duration_minutes, window.timezone = ["tue"], "08:00", 480, ""
            session.add(window)
        for customer in session.exec(select(Customer)):
            customer.timezone = zones[customer.name]
            session.add(customer)
    slot = NOW - timedelta(minutes=30)  # Tuesday 1 December 2026, 11:30 UTC
    ids = {name: planned_run(engine, f"{name}-c00", slot, NOW - timedelta(days=5)) for name in zones}
    with session_scope(engine) as session:
        runs = _planned(session, until=NOW)
        whole, apart = windows_at_slot(runs, session=session), windows_at_slot(runs, session=session, chunk=1)
        alone = {
            run_id: window_at(session.get(UpgradeRun, run_id), slot, session=session)  # type: ignore[arg-type]
            for run_id in ids.values()
        }
    assert whole == apart == alone
    assert whole[ids["utc"]].end == NOW.replace(hour=16)
    assert whole[ids["ber"]].end == NOW.replace(hour=15)
    assert whole[ids["lax"]] is None
