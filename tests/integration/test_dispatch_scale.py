"""The dispatcher's tick on a fleet (issue #19), on SQLite and PostgreSQL, no lab: the reads it does
per tick are bounded to the runs concerned (due now, reminders within 72 h), reminders are queued at
most `limit` per tick earliest slot first with the rest left for the next tick, and the indexes those
reads use exist after migration. Timing is bench/dispatch_tick.py's business, never asserted here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import event, inspect
from sqlmodel import select

from flows.dispatch import reslot_missed, send_reminders
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import Cluster, Node, RunState, UpgradeRun
from inventory.outbox import Notice
from tests.support.fleets import one_node_fleet, planned_run

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _fleet(engine: Any, tmp_path: Path, clusters: int) -> Runtime:
    return one_node_fleet(engine, tmp_path, {"acme": clusters}, clock=lambda: NOW, name="c{i:02d}")


def _plan(engine: Any, name: str, slot: datetime, told: datetime) -> int:
    return planned_run(engine, name, slot, told)


def _reminder_keys(engine: Any) -> list[str]:
    with session_scope(engine) as session:
        return sorted(
            n.idempotency_key for n in session.exec(select(Notice).where(Notice.kind == "reminder"))
        )


def test_reminders_go_earliest_first_at_most_limit_per_tick_and_each_once(
    engine: Any, tmp_path: Path
) -> None:
    runtime = _fleet(engine, tmp_path, 8)
    # Five 24 h reminders due (slots 2-6 h ahead, announced 48 h before), out of order by cluster.
    due = {
        f"c{i:02d}": _plan(engine, f"c{i:02d}", NOW + timedelta(hours=6 - i), NOW - timedelta(hours=48))
        for i in range(5)
    }
    # Not due: a slot 4 days out (no reminder yet), one that began already (the reslot check's).
    _plan(engine, "c05", NOW + timedelta(days=4), NOW - timedelta(days=3))
    _plan(engine, "c06", NOW - timedelta(minutes=5), NOW - timedelta(days=5))

    first = send_reminders(runtime, NOW, limit=2)
    # Earliest slot first: c04 (2 h ahead), then c03 (3 h).
    assert first == [f"update-{due['c04']}:24h", f"update-{due['c03']}:24h"]
    second = send_reminders(runtime, NOW, limit=2)
    assert second == [f"update-{due['c02']}:24h", f"update-{due['c01']}:24h"]
    third = send_reminders(runtime, NOW, limit=2)
    assert third == [f"update-{due['c00']}:24h"]
    assert send_reminders(runtime, NOW, limit=2) == []  # all queued: nothing twice
    assert _reminder_keys(engine) == sorted(f"update-{run_id}:reminder:1:24h" for run_id in due.values())


def test_a_tick_reads_only_the_runs_it_concerns(engine: Any, tmp_path: Path) -> None:
    """Planned runs far ahead are never loaded by the reslot check or the reminders: each reads its
    slot range (statements counted; the rows returned are the ones in range)."""
    runtime = _fleet(engine, tmp_path, 6)
    for i in range(5):  # weeks ahead: neither due nor reminded
        _plan(engine, f"c{i:02d}", NOW + timedelta(days=10 + i), NOW - timedelta(days=1))
    begun = _plan(engine, "c05", NOW - timedelta(minutes=1), NOW - timedelta(days=5))

    loaded: list[int] = []

    def rows(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT UPGRADERUN.ID") and "slot_start" in statement:
            loaded.append(cursor.rowcount)

    event.listen(engine, "after_cursor_execute", rows)
    try:
        assert reslot_missed(runtime, NOW) == []  # begun, with room left in its all-day window
        assert send_reminders(runtime, NOW) == []
    finally:
        event.remove(engine, "after_cursor_execute", rows)
    with session_scope(engine) as session:
        assert session.get(UpgradeRun, begun).state == RunState.planned  # type: ignore[union-attr]
    # Two range reads; the five far-ahead runs are in neither (SQLite reports -1 for SELECTs).
    assert len(loaded) == 2
    if engine.dialect.name == "postgresql":
        assert loaded == [1, 0]


def test_the_dispatcher_indexes_exist_after_migration(engine: Any) -> None:
    indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("upgraderun")}
    assert indexes["ix_upgraderun_state_slot"] == ["state", "slot_start", "id"]
    assert indexes["ix_upgraderun_state_lease"] == ["state", "lease_until", "id"]


def test_in_process_workers_share_the_ticks_api_client(
    engine: Any, tmp_path: Path, prefect_harness: None, monkeypatch: Any
) -> None:
    """`upkeep dispatch` runs K clusters in K worker threads: every run uses the tick's one Prefect
    client (not one built per worker: an SSL context and a CSRF token each, all as K clusters start),
    and each due run is claimed once. The flow itself is replaced by a recorder: what is checked is
    what the dispatcher hands it."""
    import logging
    import threading

    from prefect import flow
    from prefect.client.orchestration import get_client

    import flows.product_update
    from flows.dispatch import _run_in_process

    runtime = _fleet(engine, tmp_path, 3)
    due = {_plan(engine, f"c{i:02d}", NOW - timedelta(minutes=1), NOW - timedelta(days=5)) for i in range(2)}
    both_running = threading.Barrier(2, timeout=120)  # two workers, each inside a run at once
    seen: list[tuple[str, int, int]] = []

    def recorder(**parameters: Any) -> None:
        seen.append((threading.current_thread().name, parameters["run_id"], id(get_client(sync_client=True))))
        both_running.wait()

    monkeypatch.setattr(flows.product_update, "product_update", recorder)

    @flow(name="tick-host")
    def host() -> tuple[list[int], int]:
        claims = _run_in_process(runtime, NOW, 2, logging.getLogger("test"))
        return [c.run_id for c in claims], id(get_client(sync_client=True))

    claimed, tick_client = host()
    assert sorted(claimed) == sorted(due)
    assert sorted(run_id for _, run_id, _ in seen) == sorted(due)  # each run handed over once
    assert len({thread for thread, _, _ in seen}) == 2  # in two workers at once
    assert {client for _, _, client in seen} == {tick_client}  # one client: the tick's


def test_the_reslot_check_reads_windows_in_bulk_as_window_at_does_one_by_one(
    engine: Any, tmp_path: Path
) -> None:
    """`windows_at_slot` (a few queries for all due runs) gives each run the window `window_at` gives
    it alone: different windows per cluster, a customer blackout, a vendor-wide one, no window open."""
    from datetime import date

    from flows.dispatch import windows_at_slot
    from flows.run_window import window_at
    from inventory.windows import Blackout, MaintenanceWindow

    _fleet(engine, tmp_path, 5)
    with session_scope(engine) as session:
        clusters = {c.name: c for c in session.exec(select(Cluster))}
        for name, days, start, minutes in (
            ("c01", ["tue"], "00:00", 240),  # Tue 1 Dec 00:00-04:00
            ("c02", ["tue", "wed"], "10:00", 180),
            ("c03", ["mon"], "02:00", 60),  # none open on Tuesday
        ):
            for row in session.exec(
                select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == clusters[name].id)
            ):
                session.delete(row)
            session.add(
                MaintenanceWindow(
                    cluster_id=clusters[name].id or 0, days=days, start=start, duration_minutes=minutes
                )
            )
        customer_id = clusters["c00"].customer_id
        session.add(
            Blackout(customer_id=customer_id, start=date(2026, 12, 2), end=date(2026, 12, 2), timezone="UTC")
        )
        session.add(
            Blackout(customer_id=None, start=date(2026, 12, 4), end=date(2026, 12, 5), timezone="UTC")
        )
    slots = {
        "c00": NOW - timedelta(hours=1),
        "c01": NOW - timedelta(hours=10),
        "c02": NOW - timedelta(hours=1),
    }
    slots |= {"c03": NOW - timedelta(minutes=30), "c04": NOW - timedelta(hours=3)}
    ids = [_plan(engine, name, slot, NOW - timedelta(days=5)) for name, slot in slots.items()]
    with session_scope(engine) as session:
        runs = [session.get(UpgradeRun, run_id) for run_id in ids]
        one_by_one = {run.id: window_at(run, run.slot_start, session=session) for run in runs}  # type: ignore[union-attr,arg-type]
        bulk = windows_at_slot(runs, session=session, chunk=2)  # type: ignore[arg-type]
    assert bulk == one_by_one
    assert one_by_one[ids[3]] is None  # c03: no window open on a Tuesday
    assert one_by_one[ids[0]] is not None and one_by_one[ids[0]].end.date() == date(
        2026, 12, 2
    )  # cut at the blackout


def test_a_worker_whose_run_cannot_start_leaves_it_to_take_over_and_the_others_go_on(
    engine: Any, tmp_path: Path, prefect_harness: None, monkeypatch: Any, caplog: Any
) -> None:
    """The Prefect API away while K clusters start (server restarted, the shared client's request
    refused): the worker whose flow run could not be created must not end the tick with a traceback,
    the other workers still carry out theirs, and the run it claimed is left to the next tick's
    take-over (its lease ended at once, not after run_lease) with one line naming it."""
    import logging

    import httpx
    from prefect import flow

    import flows.product_update
    from flows import lease
    from flows.dispatch import _run_in_process

    runtime = _fleet(engine, tmp_path, 4)
    ids = {
        f"c{i:02d}": _plan(engine, f"c{i:02d}", NOW - timedelta(minutes=3 - i), NOW - timedelta(days=5))
        for i in range(3)
    }
    handed: list[int] = []

    def flaky(**parameters: Any) -> None:
        if parameters["run_id"] == ids["c00"]:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        handed.append(parameters["run_id"])

    monkeypatch.setattr(flows.product_update, "product_update", flaky)

    @flow(name="tick-host")
    def host() -> list[int]:
        return [c.run_id for c in _run_in_process(runtime, NOW, 2, logging.getLogger("test"))]

    with caplog.at_level(logging.ERROR, logger="test"):
        claimed = host()
    assert sorted(claimed) == sorted(ids.values())
    assert sorted(handed) == sorted([ids["c01"], ids["c02"]])  # the others went on
    lines = [r.getMessage() for r in caplog.records if r.name == "test" and r.levelno >= logging.ERROR]
    assert len(lines) == 1 and f"update-{ids['c00']}" in lines[0] and "Connection refused" in lines[0]
    assert "\n" not in lines[0] and not any(r.exc_info for r in caplog.records if r.name == "test")
    with session_scope(engine) as session:
        # The next tick (a minute on) takes it over, as `upkeep resume` would.
        orphans = lease.orphans(session, NOW + timedelta(minutes=1), skip=set())
        assert [run.id for run in orphans] == [ids["c00"]]


def test_slow_pre_flights_do_not_hold_the_tick_and_each_reminder_still_goes_in_order(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """72 h reminders each run an SSH pre-flight inside the tick, before the tick claims due runs: with
    hundreds due (a fleet announced at once) and nodes slow to answer, 500 of them one after another
    held every due claim for the better part of an hour. Past PREFLIGHT_BUDGET of the tick's clock no
    further pre-flight starts; the cheap 24 h reminders still go, and the 72 h ones follow in the next
    ticks, earliest slot first, each once."""
    import flows.dispatch
    from flows.dispatch import PREFLIGHT_BUDGET

    runtime = _fleet(engine, tmp_path, 6)
    clock = [NOW]
    runtime.clock = lambda: clock[0]
    step = PREFLIGHT_BUDGET / 2 + timedelta(seconds=1)  # each pre-flight takes over half the budget

    def slow_preflight(runtime: Runtime, run: UpgradeRun) -> str:
        clock[0] += step
        return "passed on all 1 nodes"

    monkeypatch.setattr(flows.dispatch, "_preflight_summary", slow_preflight)
    # Four 72 h reminders due (slots 60-63 h ahead, told a week before) and one 24 h reminder.
    far = {
        f"c{i:02d}": _plan(engine, f"c{i:02d}", NOW + timedelta(hours=63 - i), NOW - timedelta(days=7))
        for i in range(4)
    }
    near = _plan(engine, "c04", NOW + timedelta(hours=5), NOW - timedelta(days=7))

    first = send_reminders(runtime, clock[0])
    assert first == [f"update-{near}:72h", f"update-{near}:24h", f"update-{far['c03']}:72h"]
    second = send_reminders(runtime, clock[0])
    assert second == [f"update-{far['c02']}:72h", f"update-{far['c01']}:72h"]
    assert send_reminders(runtime, clock[0]) == [f"update-{far['c00']}:72h"]
    assert send_reminders(runtime, clock[0]) == []


def test_migration_0010_goes_down_and_up_again_on_a_database_with_runs(engine: Any, tmp_path: Path) -> None:
    """Downgrade below 0010 (through 0011, whose tunnel columns go from cluster and node while nodes
    reference their clusters) drops the dispatcher's indexes and keeps every run and node; upgrading
    again recreates them over the rows already there."""
    from alembic import command
    from alembic.config import Config

    from inventory.db import MIGRATIONS

    _fleet(engine, tmp_path, 3)
    ids = [_plan(engine, f"c{i:02d}", NOW + timedelta(hours=i), NOW - timedelta(days=5)) for i in range(3)]
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))

    def to(revision: str, step: Any) -> set[str]:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)
        engine.dispose()
        return {ix["name"] for ix in inspect(engine).get_indexes("upgraderun")}

    def columns(table: str) -> set[str]:
        return {column["name"] for column in inspect(engine).get_columns(table)}

    down = to("0009", command.downgrade)
    assert not {"ix_upgraderun_state_slot", "ix_upgraderun_state_lease"} & down
    assert not {"tunnel_host", "tunnel_port"} & columns("cluster")
    assert not {"tunnel_port", "host_key"} & columns("node")
    up = to("head", command.upgrade)
    assert {"ix_upgraderun_state_slot", "ix_upgraderun_state_lease"} <= up
    assert {"tunnel_host", "tunnel_port", "tunnel_allow_cloud"} <= columns("cluster")
    assert {"tunnel_port", "host_key"} <= columns("node")
    with session_scope(engine) as session:
        assert len(session.exec(select(Node)).all()) == 3

        runs = session.exec(select(UpgradeRun).order_by(UpgradeRun.id)).all()
        assert [(r.id, r.state, r.slot_start) for r in runs] == [
            (run_id, RunState.planned, NOW + timedelta(hours=i)) for i, run_id in enumerate(ids)
        ]


def test_windows_at_slot_equals_window_at_over_generated_worlds(engine: Any, tmp_path: Path) -> None:
    """A property check (seeded generator; Hypothesis is not a dependency): customers in zones with
    DST and odd offsets, windows crossing midnight or in their own zone, customer and vendor-wide
    blackouts, public holidays, clusters with no window, slots around every DST change of 2026 - the
    bulk read gives each run exactly `window_at`'s answer, before and after blackouts and windows
    change between two ticks."""
    import random
    from datetime import date

    from flows.dispatch import windows_at_slot
    from flows.run_window import window_at
    from inventory.models import Customer
    from inventory.windows import Blackout, MaintenanceWindow

    zones = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC"]
    changes = [  # DST changes of 2026 in those zones (UTC dates), and an ordinary day
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
        datetime(2026, 4, 4, 15, 0, tzinfo=UTC),
        datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
        datetime(2026, 10, 25, 1, 0, tzinfo=UTC),
        datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
        datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        datetime(2026, 12, 25, 10, 0, tzinfo=UTC),  # a public holiday in DE and US-NY
        datetime(2026, 12, 25, 10, 0, tzinfo=UTC),
    ]
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    rng = random.Random(19)
    _fleet(engine, tmp_path, 40)
    with session_scope(engine) as session:
        clusters = list(session.exec(select(Cluster).order_by(Cluster.id)))
        base = session.get(Customer, clusters[0].customer_id)
        assert base is not None
        customers = [base] + [Customer(name=f"cust{i}", timezone=zone) for i, zone in enumerate(zones)]
        for customer in customers[1:]:
            session.add(customer)
        session.flush()
        customers[1].holiday_country = "DE"
        customers[2].holiday_country, customers[2].holiday_subdivision = "US", "NY"
        for cluster in clusters:
            cluster.customer_id = rng.choice(customers).id or 0
            session.add(cluster)
            for row in session.exec(
                select(MaintenanceWindow).where(MaintenanceWindow.cluster_id == cluster.id)
            ):
                session.delete(row)

    def reshape(session: Any) -> None:
        for row in session.exec(select(MaintenanceWindow)):
            if rng.random() < 0.3:
                session.delete(row)  # a window removed by a re-import
        for cluster in clusters:
            for _ in range(rng.choice([0, 0, 1, 2, 3])):  # some clusters have no window at all
                session.add(
                    MaintenanceWindow(
                        cluster_id=cluster.id or 0,
                        days=rng.sample(days, rng.randint(1, 7)),
                        start=f"{rng.choice([0, 1, 2, 3, 22, 23]):02d}:{rng.choice([0, 15, 30, 45]):02d}",
                        duration_minutes=rng.choice([30, 60, 150, 240, 600, 1440]),
                        timezone=rng.choice(["", "", "UTC", "Asia/Kathmandu", "Australia/Lord_Howe"]),
                    )
                )
        for _ in range(3):
            day = rng.choice(changes).date() + timedelta(days=rng.randint(-2, 2))
            session.add(
                Blackout(
                    customer_id=rng.choice([None, *(c.id for c in customers)]),
                    start=day,
                    end=day + timedelta(days=rng.randint(0, 2)),
                    timezone=rng.choice(zones),
                )
            )

    runs = []
    for cluster in clusters:  # one active update per cluster
        slot = rng.choice(changes) + timedelta(minutes=rng.randint(-36 * 60, 36 * 60) // 15 * 15)
        runs.append(_plan(engine, cluster.name, slot, slot - timedelta(days=10)))
    assert date(2026, 1, 1) < changes[0].date()
    for _tick in range(3):  # the world changes between ticks
        with session_scope(engine) as session:
            reshape(session)
        with session_scope(engine) as session:
            loaded = [session.get(UpgradeRun, run_id) for run_id in runs]
            one_by_one = {run.id: window_at(run, run.slot_start, session=session) for run in loaded}  # type: ignore[union-attr,arg-type]
            bulk = windows_at_slot(loaded, session=session, chunk=7)  # type: ignore[arg-type]
        assert bulk == one_by_one
        assert any(w is None for w in one_by_one.values()) and any(w is not None for w in one_by_one.values())


def test_a_24h_reminder_never_goes_before_its_runs_deferred_72h_one(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """A run whose 72 h and 24 h reminders are both due (its 72 h one waited behind the cap or the
    pre-flight budget): when the budget defers the 72 h one, its 24 h one waits too, so the customer
    never gets "tomorrow" before "in three days"; next tick both go, 72 h first."""
    import flows.dispatch
    from flows.dispatch import PREFLIGHT_BUDGET

    runtime = _fleet(engine, tmp_path, 3)
    clock = [NOW]
    runtime.clock = lambda: clock[0]

    def slow_preflight(runtime: Runtime, run: UpgradeRun) -> str:
        clock[0] += PREFLIGHT_BUDGET
        return "passed on all 1 nodes"

    monkeypatch.setattr(flows.dispatch, "_preflight_summary", slow_preflight)
    # Both runs have both reminders due (told a week ago, slots within 24 h): c00's come first.
    first = _plan(engine, "c00", NOW + timedelta(hours=10), NOW - timedelta(days=7))
    later = _plan(engine, "c01", NOW + timedelta(hours=20), NOW - timedelta(days=7))

    # c00's pre-flight spends the budget: c01's 72 h reminder waits, and so does its 24 h one.
    assert send_reminders(runtime, clock[0]) == [f"update-{first}:72h", f"update-{first}:24h"]
    assert send_reminders(runtime, clock[0]) == [f"update-{later}:72h", f"update-{later}:24h"]
    assert send_reminders(runtime, clock[0]) == []


def test_a_reminder_queued_by_another_process_meanwhile_is_not_queued_twice(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """The tick's look-up of queued reminders and its INSERT are two statements: another dispatcher can
    queue the same reminder between them. The INSERT's ON CONFLICT DO NOTHING then leaves that row
    alone, the tick does not report it as its own, and the other reminders of the chunk still go."""
    import flows.dispatch
    from flows.run_notices import queue_run_notice

    runtime = _fleet(engine, tmp_path, 2)
    raced = _plan(engine, "c00", NOW + timedelta(hours=3), NOW - timedelta(hours=48))
    other = _plan(engine, "c01", NOW + timedelta(hours=4), NOW - timedelta(hours=48))
    original, calls = flows.dispatch._queued_keys, []

    def look_up_then_another_dispatcher_queues(session: Any, keys: list[str]) -> set[str]:
        found = original(session, keys)
        calls.append(keys)
        if len(calls) == 2:  # the look-up in the queuing transaction, right before its INSERT
            with session_scope(engine) as theirs:
                run = theirs.get(UpgradeRun, raced)
                assert run is not None
                queue_run_notice(run, "reminder", session=theirs, now=NOW, variant="24h")
        return found

    monkeypatch.setattr(flows.dispatch, "_queued_keys", look_up_then_another_dispatcher_queues)
    if engine.dialect.name == "sqlite":  # one writer at a time (BEGIN IMMEDIATE): queue it first
        with session_scope(engine) as theirs:
            run = theirs.get(UpgradeRun, raced)
            assert run is not None
            queue_run_notice(run, "reminder", session=theirs, now=NOW, variant="24h")
        monkeypatch.setattr(flows.dispatch, "_queued_keys", lambda session, keys: set())

    assert send_reminders(runtime, NOW) == [f"update-{other}:24h"]
    assert _reminder_keys(engine) == sorted(f"update-{run_id}:reminder:1:24h" for run_id in (raced, other))


def test_a_slow_mail_server_holds_neither_the_ticks_claims_nor_more_than_its_delivery_budget(
    engine: Any, tmp_path: Path, smtp: Any, monkeypatch: Any
) -> None:
    """The tick's decisions come first and its outbox delivery last, bounded by DELIVERY_BUDGET of the
    tick's clock: with a mail server taking 20 s per message (the injected clock), the due run is
    claimed before any notice goes, the delivery stops once the 30 s budget is spent (two of the four
    reminders sent), and the next tick sends the other two, oldest first, each once (#19)."""
    import logging

    import flows.dispatch
    from flows.dispatch import DELIVERY_BUDGET, dispatch
    from flows.runtime import configure

    assert timedelta(seconds=20) < DELIVERY_BUDGET <= timedelta(seconds=40)  # two messages fit, not three
    runtime = _fleet(engine, tmp_path, 5)
    due = _plan(engine, "c00", NOW - timedelta(minutes=5), NOW - timedelta(days=5))
    reminded = [
        _plan(engine, f"c{i:02d}", NOW + timedelta(hours=6 - i), NOW - timedelta(hours=48))
        for i in range(1, 5)
    ]
    clock = [NOW]
    runtime.clock = lambda: clock[0]
    real = smtp.transport()
    handed: list[Any] = []  # the claims handed to the workers, in order
    handed_at_send: list[int] = []  # how many were handed when each message went

    class Slow:
        def send(self, message: Any) -> None:
            handed_at_send.append(len(handed))
            real.send(message)
            clock[0] += timedelta(seconds=20)

    runtime.mailer = Slow()  # type: ignore[assignment]
    monkeypatch.setattr(flows.dispatch, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(flows.dispatch, "_start_deployments", lambda runtime, claims: handed.extend(claims))
    configure(runtime)
    try:
        first = dispatch.fn(max_running=4, via_deployments=True)
        second = dispatch.fn(max_running=4, via_deployments=True)
        third = dispatch.fn(max_running=4, via_deployments=True)
    finally:
        configure(None)
    assert first["started"] == [due] and [c.run_id for c in handed] == [due]
    assert handed_at_send[0] == 1  # claimed and handed over before the delivery began
    assert len(first["reminders"]) == 4 and first["notices_sent"] == 2
    assert second["reminders"] == [] and second["notices_sent"] == 2
    assert third["notices_sent"] == 0
    # Queued earliest slot first (c04's first), delivered in that order across the two ticks.
    order = [f"update-{run_id}:reminder:1:24h" for run_id in reversed(reminded)]
    assert [m["X-Upkeep-Idempotency-Key"] for m in smtp.handler.messages] == order


def test_due_runs_alike_share_a_window_and_unlike_ones_do_not(engine: Any, tmp_path: Path) -> None:
    """The reslot check computes a window once per distinct (windows, freezes, slot start): runs of
    one customer with the same window and slot share the answer; another customer whose freeze covers
    the slot, a cluster whose window differs, and a slot an hour later each get their own - every one
    equal to `window_at` alone (read as the tick reads them: the range read's tuples)."""
    from datetime import date

    from flows.dispatch import _planned, windows_at_slot
    from flows.run_window import window_at
    from inventory.windows import Blackout

    def cluster(name: str, window: dict[str, str]) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "software",
            "version": "9.8.0",
            "access": {"type": "direct"},
            "nodes": [{"hostname": f"{name}-n1"}],
            "windows": [window],
        }

    tuesday = {"days": "tue", "start": "08:00", "duration": "8h"}
    spec = {
        "customers": [
            {
                "name": name,
                "timezone": "UTC",
                "contacts": [{"email": f"ops@{name}.example"}],
                "clusters": [
                    cluster(f"{name}-a", tuesday),
                    cluster(f"{name}-b", tuesday),
                    cluster(f"{name}-c", {"days": "tue", "start": "11:00", "duration": "2h"}),
                ],
            }
            for name in ("acme", "bolt")
        ],
        "releases": [{"version": "9.9.0", "package": "r/9.9.0.tgz", "sha256": "ab" * 32, "from": ["9.8.0"]}],
    }
    source = tmp_path / "fleet.yaml"
    source.write_text(yaml.safe_dump(spec, sort_keys=False))
    import_inventory(source, engine=engine, actor="test")
    with session_scope(engine) as session:  # bolt freezes Tuesday 1 December 2026 (NOW's day)
        bolt = session.exec(select(Cluster).where(Cluster.name == "bolt-a")).one().customer_id
        session.add(
            Blackout(customer_id=bolt, start=date(2026, 12, 1), end=date(2026, 12, 1), timezone="UTC")
        )
    slot = NOW - timedelta(minutes=30)
    ids = {
        name: _plan(engine, name, at, NOW - timedelta(days=5))
        for name, at in (
            ("acme-a", slot),
            ("acme-b", slot),
            ("acme-c", slot),
            ("bolt-a", slot),
            ("bolt-b", slot + timedelta(minutes=10)),
        )
    }
    with session_scope(engine) as session:
        runs = _planned(session, until=NOW)
        bulk = windows_at_slot(runs, session=session)
        one_by_one = {
            run_id: window_at(session.get(UpgradeRun, run_id), NOW - timedelta(minutes=30), session=session)  # type: ignore[arg-type]
            for run_id in (ids["acme-a"], ids["acme-b"], ids["acme-c"], ids["bolt-a"])
        }
        one_by_one[ids["bolt-b"]] = window_at(
            session.get(UpgradeRun, ids["bolt-b"]),  # type: ignore[arg-type]
            slot + timedelta(minutes=10),
            session=session,
        )
    assert bulk == one_by_one
    assert bulk[ids["acme-a"]] == bulk[ids["acme-b"]] is not None  # alike: one answer
    assert bulk[ids["acme-c"]] is not None and bulk[ids["acme-c"]] != bulk[ids["acme-a"]]  # 11:00-13:00
    assert bulk[ids["bolt-a"]] is None and bulk[ids["bolt-b"]] is None  # bolt's freeze, not acme's


def test_reminder_candidates_looked_up_a_chunk_at_a_time_keep_slot_order_and_limit(
    engine: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """Candidates are looked up _CANDIDATE_CHUNK at a time until the tick's limit is found: with
    chunks of two, one reminder queued already in the first chunk and a limit of three, the tick
    queues the next three earliest slots (crossing two chunks), the next tick the last one, each once."""
    import flows.dispatch

    monkeypatch.setattr(flows.dispatch, "_CANDIDATE_CHUNK", 2)
    runtime = _fleet(engine, tmp_path, 6)
    due = [
        _plan(engine, f"c{i:02d}", NOW + timedelta(hours=2 + i), NOW - timedelta(hours=48)) for i in range(5)
    ]
    assert send_reminders(runtime, NOW, limit=1) == [f"update-{due[0]}:24h"]
    assert send_reminders(runtime, NOW, limit=3) == [f"update-{run_id}:24h" for run_id in due[1:4]]
    assert send_reminders(runtime, NOW, limit=3) == [f"update-{due[4]}:24h"]
    assert send_reminders(runtime, NOW, limit=3) == []
    assert _reminder_keys(engine) == sorted(f"update-{run_id}:reminder:1:24h" for run_id in due)
