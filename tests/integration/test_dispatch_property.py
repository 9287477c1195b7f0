"""Hypothesis property (issue #13): for random sequences of inventory changes (windows, blackouts,
deadlines), deliveries and clock advances, the dispatcher's claim never starts an update whose slot
breaks a window, blackout, notice or deadline rule in force at that moment.

The claim step is the dispatcher's own (`flows.dispatch.claim_due`, the part of a tick that moves a
planned update to running), on a real SQLite database; nodes are not touched (no lab needed), since
what is checked is the decision to start.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlmodel import col, select

from flows.dispatch import claim_due
from flows.integrity import reasons_for
from flows.notify import deliver_pending
from flows.run_notices import VendorTerms
from flows.runtime import Runtime
from flows.schedule import ScheduleRefused, schedule_update
from inventory.db import make_engine, migrate, session_scope
from inventory.importer import import_inventory
from inventory.models import Cluster, Release, RunState, UpgradeRun
from inventory.runs import finish_run
from inventory.windows import Blackout, MaintenanceWindow
from tasks.mail import OutboxDirTransport

START = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday
FLEET = {
    "customers": [
        {
            "name": "acme",
            "timezone": "Europe/Berlin",
            "contacts": [{"email": "ops@acme.example"}],
            "notice": {"product_update": "48h"},
            "clusters": [
                {
                    "name": "acme-c1",
                    "kind": "software",
                    "version": "9.8.0",
                    "access": {"type": "direct"},
                    "nodes": [{"hostname": "acme-c1-n1"}],
                    "windows": [{"days": "tue,thu", "start": "02:00", "duration": "4h"}],
                }
            ],
        }
    ],
    "releases": [{"version": "9.9.0", "package": "r/9.9.0.tgz", "sha256": "ab" * 32, "from": ["9.8.0"]}],
}

steps = st.one_of(
    st.tuples(st.just("advance"), st.integers(1, 60)),  # hours
    st.tuples(st.just("blackout"), st.integers(0, 14)),  # days from now, in the customer's zone
    st.tuples(st.just("window"), st.sampled_from(["mon,wed", "tue,thu", "sat", "mon-sun"])),
    st.tuples(st.just("deadline"), st.integers(-1, 20)),  # days from now; -1: no deadline
    st.tuples(st.just("deliver"), st.just(0)),
    st.tuples(st.just("schedule"), st.booleans()),  # urgent or not
)


class Fleet:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(f"sqlite:///{root / 'upkeep.db'}")
        migrate(self.engine)
        source = root / "fleet.yaml"
        source.write_text(yaml.safe_dump(FLEET, sort_keys=False))
        import_inventory(source, engine=self.engine, actor="test")
        self.now = START
        self.runtime = Runtime(
            engine=self.engine,
            fileserver=None,  # type: ignore[arg-type]
            ssh=None,  # type: ignore[arg-type]
            work_dir=root,
            mailer=OutboxDirTransport(root / "outbox"),
            clock=lambda: self.now,
        )
        self.mailer = OutboxDirTransport(root / "outbox")

    def step(self, what: str, arg: Any) -> None:
        with session_scope(self.engine) as session:
            cluster = session.exec(select(Cluster)).one()
            if what == "blackout":
                day = self.now.date() + timedelta(days=arg)
                session.add(
                    Blackout(customer_id=cluster.customer_id, start=day, end=day, timezone="Europe/Berlin")
                )
            elif what == "window":
                for row in session.exec(select(MaintenanceWindow)).all():
                    session.delete(row)
                days = (
                    ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] if arg == "mon-sun" else arg.split(",")
                )
                session.add(
                    MaintenanceWindow(
                        cluster_id=cluster.id or 0, days=days, start="02:00", duration_minutes=240
                    )
                )
            elif what == "deadline":
                release = session.exec(select(Release)).one()
                release.deadline = None if arg < 0 else self.now + timedelta(days=arg)
                session.add(release)
        if what == "deliver":
            deliver_pending(self.engine, self.mailer, now=self.now, sender="upkeep@vendor.example")
        elif what == "schedule":
            try:
                with session_scope(self.engine) as session:
                    if session.exec(
                        select(UpgradeRun).where(col(UpgradeRun.active_cluster_id).is_not(None))
                    ).first():
                        return
                    schedule_update(
                        "acme-c1",
                        "9.9.0",
                        now=self.now,
                        urgent=arg,
                        requested_by="t",
                        session=session,
                        vendor=VendorTerms("upkeep@vendor.example", "support@vendor.example"),
                    )
            except ScheduleRefused:
                pass
        elif what == "advance":
            self.now += timedelta(hours=arg)
            self.tick()

    def tick(self) -> None:
        """The dispatcher's claim at `now`; anything it starts must be valid now, by the same rule
        evaluated independently afterwards (the claim does not move the slot)."""
        claim = claim_due(self.runtime, self.now, timedelta(minutes=5))
        if claim is None:
            return
        event("an update started")
        with session_scope(self.engine) as session:
            run = session.get(UpgradeRun, claim.run_id)
            assert run is not None and run.state == RunState.running
            assert run.slot_start is not None and run.slot_start <= self.now
            broken = broken_by_hand(run, session)
            assert broken == [], (self.now, run.slot_start, broken)
            finish_run(run, RunState.succeeded, session=session)  # done: the cluster is free again


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BERLIN = ZoneInfo("Europe/Berlin")
NOTICE, URGENT_NOTICE = (
    timedelta(hours=48),
    timedelta(hours=24),
)  # FLEET's contract; the vendor's urgent floor


def broken_by_hand(run: UpgradeRun, session: Any) -> list[str]:
    """The rules in force, restated for this fleet with zoneinfo alone. Not `reasons_for`: an oracle
    sharing the dispatcher's rule could not notice the rule itself going wrong (a mutated blackout or
    deadline check passed the property when it asked `reasons_for`)."""
    assert run.slot_start is not None and run.slot_end is not None
    start, end = run.slot_start.astimezone(BERLIN), run.slot_end.astimezone(BERLIN)
    broken = []
    opens = datetime.combine(start.date(), time(2), tzinfo=BERLIN)
    if not any(
        DAYS[start.weekday()] in w.days
        and opens <= start
        and end <= opens + timedelta(minutes=w.duration_minutes)
        for w in session.exec(select(MaintenanceWindow)).all()
    ):
        broken.append("window")
    for b in session.exec(select(Blackout)).all():
        zone = ZoneInfo(b.timezone)
        b_start = datetime.combine(b.start, time(0), tzinfo=zone)
        b_end = datetime.combine(b.end + timedelta(days=1), time(0), tzinfo=zone)
        if b_start < end and start < b_end:
            broken.append("blackout")
    needed = URGENT_NOTICE if run.urgent else NOTICE
    if run.told_at is None or run.slot_start - run.told_at < needed:
        broken.append("notice")
    deadline = session.exec(select(Release)).one().deadline
    if deadline is not None and run.slot_start > deadline:
        broken.append("deadline")
    return broken


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(steps, min_size=4, max_size=25))
def test_the_dispatcher_never_starts_an_invalid_update(
    tmp_path: Path, sequence: list[tuple[str, Any]]
) -> None:
    fleet = Fleet(tmp_path / f"f{abs(hash(tuple(sequence)))}")
    try:
        fleet.step("schedule", False)
        for what, arg in sequence:
            fleet.step(what, arg)
        fleet.step("advance", 24 * 9)  # past every slot still planned
    finally:
        fleet.engine.dispose()


def test_the_property_can_fail_a_blackout_written_after_the_claim_check_would_be_caught(
    tmp_path: Path,
) -> None:
    """The checker itself is not vacuous: a run started inside a blackout is reported."""
    fleet = Fleet(tmp_path / "direct")
    try:
        fleet.step("schedule", False)
        fleet.step("deliver", 0)
        with session_scope(fleet.engine) as session:
            run = session.exec(select(UpgradeRun)).one()
            slot = run.slot_start
            assert slot is not None
            run.state = RunState.running  # started behind the dispatcher's back
            session.add(run)
            cluster = session.exec(select(Cluster)).one()
            day: date = slot.astimezone(UTC).date()
            session.add(
                Blackout(customer_id=cluster.customer_id, start=day, end=day, timezone="UTC", reason="x")
            )
        with session_scope(fleet.engine) as session:
            run = session.exec(select(UpgradeRun)).one()
            assert [r.code for r in reasons_for(run, now=slot, session=session)] == ["blackout"]
    finally:
        fleet.engine.dispose()


def test_a_reminder_whose_moment_passed_before_the_announcement_is_skipped(tmp_path: Path) -> None:
    from flows.dispatch import send_reminders
    from inventory.outbox import Notice

    fleet = Fleet(tmp_path / "reminders")
    try:
        fleet.step("schedule", False)  # 48 h notice: Thu 26 Nov 02:00 Berlin
        with session_scope(fleet.engine) as session:
            slot = session.exec(select(UpgradeRun)).one().slot_start
        assert slot == datetime(2026, 11, 26, 1, tzinfo=UTC)
        assert send_reminders(fleet.runtime, slot - timedelta(hours=71)) == []  # not told yet: nothing
        fleet.now = slot - timedelta(hours=30)  # the announcement goes out late, after the 72 h moment
        fleet.step("deliver", 0)
        assert send_reminders(fleet.runtime, slot - timedelta(hours=29)) == []  # 72 h: skipped for good
        assert send_reminders(fleet.runtime, slot - timedelta(hours=23)) == ["update-1:24h"]
        with session_scope(fleet.engine) as session:
            keys = [n.idempotency_key for n in session.exec(select(Notice).where(Notice.kind == "reminder"))]
        assert keys == ["update-1:reminder:1:24h"]
    finally:
        fleet.engine.dispose()
