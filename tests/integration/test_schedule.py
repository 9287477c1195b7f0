"""Scheduling with advance notice, on SQLite and PostgreSQL: an update is announced for the first window
the rules allow, its notice and calendar invite are written with it (or not at all), and deferrals and
cancellations keep the customer's calendar entry in step (same UID, higher SEQUENCE).

The clock is injected: Monday 2026-11-23 00:00 UTC. acme (America/New_York) has windows Tue and Thu
02:00 local (07:00 UTC in winter) and freezes Thanksgiving (Thu 26 - Fri 27 Nov) and Tue 8 Dec.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from icalendar import Calendar
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from flows.schedule import (
    ScheduleRefused,
    VendorTerms,
    cancel_update,
    defer_update,
    schedule_update,
)
from flows.schedule_calendar import calendar_view
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.importer_db import inventory_snapshot
from inventory.installation import installation_id
from inventory.models import UpgradeRun
from inventory.outbox import Notice
from inventory.runs import ActiveRunExists, mark_told
from inventory.windows import Blackout, MaintenanceWindow
from templates.ics import uid_for

NOW = datetime(2026, 11, 23, tzinfo=UTC)
SHA = "ab" * 32
VENDOR = VendorTerms("upkeep@vendor.example", "support@vendor.example")

INVENTORY: dict[str, Any] = {
    "vendor_blackouts": [{"start": "2026-12-24", "end": "2026-12-26", "timezone": "UTC", "reason": "freeze"}],
    "customers": [
        {
            "name": "acme",
            "timezone": "America/New_York",
            "contacts": [{"email": "ops@acme.example"}, {"email": "cto@acme.example", "role": "escalation"}],
            "blackouts": [
                {"start": "2026-11-26", "end": "2026-11-27", "reason": "Thanksgiving"},
                {"start": "2026-12-08", "end": "2026-12-08", "reason": "board meeting"},
            ],
            "clusters": [
                {
                    "name": "acme-c1",
                    "kind": "software",
                    "version": "9.8.0",
                    "access": {"type": "direct"},
                    "nodes": [{"hostname": f"acme-c1-n{i}"} for i in (1, 2, 3)],
                    "windows": [{"days": "tue,thu", "start": "02:00", "duration": "4h"}],
                },
                {
                    "name": "acme-c2",
                    "kind": "software",
                    "version": "9.9.0",
                    "access": {"type": "direct"},
                    "nodes": [{"hostname": "acme-c2-n1"}],
                    "windows": [{"days": "tue,thu", "start": "02:00", "duration": "4h"}],
                },
            ],
        }
    ],
    "releases": [
        {"version": "9.9.0", "package": "r/9.9.0.tgz", "sha256": SHA, "from": ["9.8.0"]},
        # must be installed by Sat 5 Dec: no deferral may take it later
        {
            "version": "9.10.0",
            "package": "r/9.10.0.tgz",
            "sha256": SHA,
            "from": ["9.9.0"],
            "deadline": "2026-12-05T00:00:00Z",
        },
    ],
}


def utc(day: int, hour: int = 7, month: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


@pytest.fixture
def db(engine: Engine, tmp_path: Path) -> Engine:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    import_inventory(path, engine=engine, actor="test")
    return engine


def schedule(db: Engine, cluster: str = "acme-c1", to: str = "9.9.0", **options: Any) -> int:
    with session_scope(db) as session:
        run = schedule_update(
            cluster, to, now=NOW, requested_by="sre", session=session, vendor=VENDOR, **options
        )
        assert run.id is not None
        return run.id


def notices(session: Session) -> list[Notice]:
    return list(session.exec(select(Notice).order_by(col(Notice.id))))


def event(notice: Notice) -> tuple[str, Any]:
    calendar = Calendar.from_ical(notice.ics)
    [vevent] = calendar.walk("VEVENT")
    return str(calendar["METHOD"]), vevent


def test_first_window_after_the_notice_and_outside_blackouts(db: Engine) -> None:
    run_id = schedule(db)
    with session_scope(db) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        # now + 72 h = Thu 26 Nov 00:00 UTC; Thu 26 Nov 02:00 EST is Thanksgiving, so Tue 1 Dec 02:00 EST.
        assert (run.slot_start, run.slot_end) == (utc(1), utc(1) + timedelta(minutes=30))  # 3 nodes x 10 min
        assert (run.state, run.notice_sequence, run.deferrals, run.urgent) == ("planned", 1, 0, False)
        assert (run.kind, run.source, run.active_cluster_id) == ("product_update", "support", run.cluster_id)
        [notice] = notices(session)
    assert (notice.idempotency_key, notice.kind, notice.state) == (
        "update-1:scheduled:1",
        "scheduled",
        "pending",
    )
    assert notice.update_ref == f"update-{run_id}"
    assert notice.recipients == ["ops@acme.example", "cto@acme.example"]
    assert notice.subject == "Upgrade scheduled: acme-c1 9.8.0 → 9.9.0 on Tue 1 Dec 02:00 EST"
    method, vevent = event(notice)
    assert method == "REQUEST"
    assert vevent.decoded("dtstart") == utc(1) and int(vevent["SEQUENCE"]) == 1


def test_the_notice_is_written_in_the_same_transaction(db: Engine) -> None:
    with pytest.raises(RuntimeError, match="after scheduling"), session_scope(db) as session:
        schedule_update("acme-c1", "9.9.0", now=NOW, requested_by="sre", session=session, vendor=VENDOR)
        assert [n.kind for n in notices(session)] == ["scheduled"]  # there, in this transaction
        raise RuntimeError("after scheduling")
    with session_scope(db) as session:  # rolled back: neither the update nor its notice
        assert notices(session) == []
        assert session.exec(select(UpgradeRun)).all() == []
    schedule(db)  # and the cluster was never claimed


def test_urgent_needs_only_24_hours_notice(db: Engine) -> None:
    run_id = schedule(db, urgent=True)
    with session_scope(db) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.urgent
        assert run.slot_start == utc(24, month=11)  # Tue 24 Nov 02:00 EST, 31 hours ahead
        [notice] = notices(session)
    assert notice.subject.startswith("URGENT: Upgrade scheduled: acme-c1")
    assert int(event(notice)[1]["PRIORITY"]) == 1


def test_an_open_p0_case_blocks_all_but_urgent_updates(db: Engine) -> None:
    from inventory import repo
    from inventory.cases import open_case

    with session_scope(db) as session:
        cluster = repo.get_cluster("acme-c1", session=session)
        customer = repo.customer_of(cluster, session=session)
        case = open_case(
            customer=customer,
            clusters=[cluster],
            subject="cluster down",
            category="issue",
            priority="P0",
            now=NOW,
            opened_by="sre",
            session=session,
        )
        ref = case.ref
    with pytest.raises(ScheduleRefused, match=rf"case {ref} \(P0\) is open on acme-c1; only an urgent"):
        schedule(db)
    with session_scope(db) as session:
        assert notices(session) == [] and session.exec(select(UpgradeRun)).all() == []
    run_id = schedule(db, urgent=True, case=ref)
    with session_scope(db) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.case_ref == ref


def test_one_active_update_per_cluster(db: Engine) -> None:
    schedule(db)
    with pytest.raises(ActiveRunExists, match="acme-c1 already has an active update"):
        schedule(db)


def test_defer_twice_then_the_third_is_refused(db: Engine) -> None:
    run_id = schedule(db)  # Tue 1 Dec
    with session_scope(db) as session:
        run = defer_update(run_id, to=utc(3, 0), now=NOW, session=session, vendor=VENDOR)
        assert (run.slot_start, run.deferrals, run.notice_sequence) == (utc(3), 1, 2)
    with session_scope(db) as session:  # Tue 8 Dec is blacked out: the next window is Thu 10 Dec
        run = defer_update(run_id, to=utc(8, 0), now=NOW, session=session, vendor=VENDOR)
        assert (run.slot_start, run.deferrals, run.notice_sequence) == (utc(10), 2, 3)
    with pytest.raises(ScheduleRefused) as refused, session_scope(db) as session:
        defer_update(run_id, to=utc(15, 0), now=NOW, session=session, vendor=VENDOR)
    assert str(refused.value) == (
        "cannot defer update-1 to 2026-12-15 00:00 UTC: already deferred 2 times; the limit is 2"
    )
    with session_scope(db) as session:
        after = session.get(UpgradeRun, run_id)
        assert after is not None and (after.slot_start, after.deferrals, after.notice_sequence) == (
            utc(10),
            2,
            3,
        )
        keys = [n.idempotency_key for n in notices(session)]
    assert keys == ["update-1:scheduled:1", "update-1:deferred:2", "update-1:deferred:3"]


def test_a_deferral_may_move_the_update_by_at_most_7_days(db: Engine) -> None:
    run_id = schedule(db)  # Tue 1 Dec 07:00 UTC
    with (
        pytest.raises(
            ScheduleRefused, match="moves the update by 8 days; a deferral may move it by at most 7"
        ),
        session_scope(db) as session,
    ):
        defer_update(run_id, to=utc(9), now=NOW, session=session)
    # Sat 5 Dec is within 7 days, but the first window on or after it (Tue 8 Dec blacked out) is Thu 10 Dec.
    with pytest.raises(ScheduleRefused) as refused, session_scope(db) as session:
        defer_update(run_id, to=utc(5, 0), now=NOW, session=session)
    assert str(refused.value) == (
        "cannot defer update-1 to 2026-12-05 00:00 UTC: the first maintenance window at or after it starts "
        "2026-12-10 07:00 UTC, and that moves the update by 9 days; a deferral may move it by at most 7 days"
    )
    with session_scope(db) as session:
        assert len(notices(session)) == 1


def test_a_deferral_never_passes_the_release_deadline(db: Engine) -> None:
    run_id = schedule(db, cluster="acme-c2", to="9.10.0")  # Tue 1 Dec; 9.10.0 is due by 5 Dec 00:00 UTC
    with (
        pytest.raises(ScheduleRefused, match=r"2026-12-08 00:00 UTC is past the release deadline 2026-12-05"),
        session_scope(db) as session,
    ):
        defer_update(run_id, to=utc(8, 0), now=NOW, session=session)
    with session_scope(db) as session:  # Thu 3 Dec is fine
        assert defer_update(run_id, to=utc(2, 12), now=NOW, session=session).slot_start == utc(3)


def test_cancel_withdraws_the_invite(db: Engine) -> None:
    run_id = schedule(db)
    with session_scope(db) as session:
        mark_told(run_id, now=NOW, session=session)  # what delivering the "scheduled" notice records
        run = cancel_update(run_id, now=NOW, reason="customer migrates first", session=session, vendor=VENDOR)
        assert (run.state, run.active_cluster_id, run.notice_sequence) == ("cancelled", None, 2)
        scheduled, cancelled = notices(session)
        uid = uid_for("update-1", installation_id(session))
    assert cancelled.idempotency_key == "update-1:cancelled:2"
    assert "customer migrates first" in cancelled.body_text
    method, vevent = event(cancelled)
    assert (method, str(vevent["STATUS"]), int(vevent["SEQUENCE"])) == ("CANCEL", "CANCELLED", 2)
    assert str(vevent["UID"]) == str(event(scheduled)[1]["UID"]) == uid
    # A second cancel (two operators at once: the loser reads the winner's commit) is told it is done,
    # with the winner's reason, not told to run `upkeep cancel` again (adversarial pass on #16).
    refused = pytest.raises(
        ScheduleRefused, match=r"^update-1 is already cancelled \(customer migrates first\)$"
    )
    with refused, session_scope(db) as session:
        cancel_update(run_id, now=NOW, reason="again", session=session)
    schedule(db)  # the cluster is free again


def test_cancel_of_a_never_announced_update_sends_nothing(db: Engine) -> None:
    run_id = schedule(db)  # its "scheduled" notice is still in the outbox, undelivered
    with session_scope(db) as session:
        run = cancel_update(run_id, now=NOW, reason="changed our mind", session=session, vendor=VENDOR)
        assert run.state == "cancelled"
        [scheduled] = notices(session)
    assert (scheduled.kind, scheduled.state, scheduled.next_attempt_at) == ("scheduled", "superseded", None)


def test_scheduled_and_deferred_invites_are_one_calendar_entry(db: Engine) -> None:
    run_id = schedule(db)
    moved_on = VendorTerms("ops@new-vendor.example", "help@new-vendor.example")  # settings changed since
    with session_scope(db) as session:
        defer_update(run_id, to=utc(2, 12), now=NOW, session=session, vendor=moved_on)
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        scheduled, deferred = notices(session)
        uid = uid_for(f"update-{run_id}", installation_id(session))
    (m1, first), (m2, second) = event(scheduled), event(deferred)
    assert (m1, m2) == ("REQUEST", "REQUEST")
    assert str(first["UID"]) == str(second["UID"]) == uid
    assert (int(first["SEQUENCE"]), int(second["SEQUENCE"])) == (1, 2)
    assert first.decoded("dtstart") == utc(1)
    assert second.decoded("dtstart") == run.slot_start == utc(3)
    assert second.decoded("dtend") == run.slot_end
    assert "was planned for Tue 1 Dec 2026 02:00 EST" in " ".join(deferred.body_text.split())
    # Fixed at the first notice: calendar clients match the entry by UID and ORGANIZER.
    assert str(first["ORGANIZER"]) == str(second["ORGANIZER"]) == "mailto:upkeep@vendor.example"
    assert "support@vendor.example" in deferred.body_text and "new-vendor" not in deferred.body_text


def test_two_installations_never_share_an_invite_uid(db: Engine, tmp_path: Path) -> None:
    from inventory.db import make_engine, migrate

    second = make_engine(f"sqlite:///{tmp_path / 'second-installation.db'}")
    migrate(second)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    import_inventory(other, engine=second, actor="test")
    schedule(db), schedule(second)
    uids = []
    for engine in (db, second):
        with session_scope(engine) as session:
            [notice] = notices(session)
            uids.append(str(event(notice)[1]["UID"]))
            assert installation_id(session) == installation_id(session)  # generated once
    second.dispose()
    assert uids[0] != uids[1] and all(uid.startswith("update-1.") for uid in uids)


def test_calendar_shows_windows_slots_notices_blackouts(db: Engine) -> None:
    run_id = schedule(db)
    with session_scope(db) as session:
        rows = calendar_view(now=NOW, weeks=2, customer="acme", session=session)
    seen = {(row.what, row.at) for row in rows}
    assert ("update", utc(1)) in seen and ("window", utc(24, month=11)) in seen
    assert ("notice", NOW) in seen  # the scheduled notice, due now
    assert ("reminder", utc(1) - timedelta(hours=72)) in seen and (
        "reminder",
        utc(1) - timedelta(hours=24),
    ) in seen
    assert ("blackout", utc(26, 5, month=11)) in seen  # Thanksgiving from 00:00 EST
    assert [row.ref for row in rows if row.what == "update"] == [f"update-{run_id}"]
    assert [row.at for row in rows] == sorted(row.at for row in rows)


def test_import_replaces_windows_and_blackouts_and_round_trips(db: Engine, tmp_path: Path) -> None:
    with session_scope(db) as session:
        snapshot = inventory_snapshot(session=session)
    acme = snapshot["customers"][0]
    assert acme["clusters"][0]["windows"] == [{"days": ["tue", "thu"], "start": "02:00", "duration": "4h"}]
    assert acme["blackouts"][0] == {
        "start": "2026-11-26",
        "end": "2026-11-27",
        "timezone": "America/New_York",
        "reason": "Thanksgiving",
    }
    assert "notice" not in acme and "requires_approval" not in acme  # defaults are left out
    assert snapshot["vendor_blackouts"] == INVENTORY["vendor_blackouts"]
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(snapshot))
    assert not import_inventory(again, engine=db, actor="test").changed  # show --json imports as is

    changed = yaml.safe_load(yaml.safe_dump(INVENTORY))
    del changed["vendor_blackouts"]  # absent: the vendor's blackouts stay
    acme = changed["customers"][0]
    acme |= {"notice": {"product_update": "24h"}, "requires_approval": True, "blackouts": []}
    acme["clusters"][0]["windows"] = [{"days": "sat", "start": "23:00", "duration": "90m", "timezone": "UTC"}]
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    summary = import_inventory(path, engine=db, actor="test")
    assert summary.as_dict()["schedule"] == {
        "window": {"created": 1, "updated": 0, "unchanged": 1, "deleted": 1},
        "blackout": {"created": 0, "updated": 0, "unchanged": 0, "deleted": 2},
    }
    with session_scope(db) as session:
        windows = session.exec(select(MaintenanceWindow).order_by(col(MaintenanceWindow.cluster_id))).all()
        blackouts = session.exec(select(Blackout)).all()
        acme_now = inventory_snapshot(session=session)["customers"][0]
    assert [(w.days, w.start, w.duration_minutes, w.timezone) for w in windows] == [
        (["sat"], "23:00", 90, "UTC"),
        (["tue", "thu"], "02:00", 240, ""),
    ]
    assert [(b.customer_id, b.reason) for b in blackouts] == [(None, "freeze")]
    assert (acme_now["notice"], acme_now["requires_approval"]) == ({"product_update": "24h"}, True)
    run_id = schedule(db)  # 24 h contract notice; approval required
    with session_scope(db) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.needs_approval
        assert run.slot_start == datetime(2026, 11, 28, 23, tzinfo=UTC)  # Sat 23:00 UTC, 71 h ahead


def test_no_full_notice_slot_before_the_deadline_is_refused_naming_both(db: Engine) -> None:
    # 9.10.0 is due by Sat 5 Dec 00:00 UTC. On Mon 30 Nov, 72 h notice reaches Thu 3 Dec: in time.
    # On Wed 2 Dec it reaches Sat 5 Dec; Tue 8 Dec is frozen, so the first full-notice slot is Thu 10.
    later = NOW + timedelta(days=7)  # Mon 30 Nov: 72 h takes it to Thu 3 Dec 00:00 -> Thu 3 Dec 07:00
    with session_scope(db) as session:
        run = schedule_update(
            "acme-c2", "9.10.0", now=later, requested_by="sre", session=session, vendor=VENDOR
        )
        assert run.slot_start == utc(3)
        # The notice states the options really left: the deadline (Fri 4 Dec 19:00 in New York) caps them.
        limits = "at most 2 deferrals (2 left), each by up to 7 days, never past the release deadline "
        assert limits + "Fri 04 Dec 2026" in " ".join(notices(session)[-1].body_text.split())
        cancel_update(run.id or 0, now=later, reason="test", session=session)
    too_late = NOW + timedelta(days=9)  # Wed 2 Dec
    with pytest.raises(ScheduleRefused) as refused, session_scope(db) as session:
        schedule_update("acme-c2", "9.10.0", now=too_late, requested_by="sre", session=session, vendor=VENDOR)
    assert str(refused.value) == (
        "acme/acme-c2 9.9.0→9.10.0: no slot before the release deadline 2026-12-05 00:00 UTC gives acme "
        "3 days notice; the earliest slot with full notice starts 2026-12-10 07:00 UTC; pass --urgent "
        "(1 day notice) or change the release deadline"
    )
    with session_scope(db) as session:  # --urgent: 24 h notice reaches Thu 3 Dec 07:00, in time
        run = schedule_update(
            "acme-c2", "9.10.0", now=too_late, urgent=True, requested_by="sre", session=session, vendor=VENDOR
        )
        assert run.slot_start == utc(3)
        assert "no deferral possible: this is an urgent update" in notices(session)[-1].body_text


def test_an_urgent_update_cannot_be_deferred(db: Engine) -> None:
    run_id = schedule(db, urgent=True)
    with (
        pytest.raises(ScheduleRefused, match=rf"cannot defer update-{run_id}: it is urgent"),
        session_scope(db) as session,
    ):
        defer_update(run_id, to=utc(3, 12), now=NOW, session=session, vendor=VENDOR)
    with session_scope(db) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and (run.deferrals, run.notice_sequence) == (0, 1)


def test_only_the_latest_of_notices_queued_before_delivery_is_sent(db: Engine, tmp_path: Path) -> None:
    from flows.notify import deliver_pending
    from tasks.mail import OutboxDirTransport

    run_id = schedule(db)  # Tue 1 Dec
    with session_scope(db) as session:
        defer_update(run_id, to=utc(3, 7), now=NOW, session=session, vendor=VENDOR)  # Thu 3 Dec
    with session_scope(db) as session:
        defer_update(run_id, to=utc(8, 7), now=NOW, session=session, vendor=VENDOR)  # frozen 8 -> Thu 10
    outbox = tmp_path / "outbox"
    report = deliver_pending(db, OutboxDirTransport(outbox), now=NOW, sender="upkeep@vendor.example")
    with session_scope(db) as session:
        states = [(n.kind, n.sequence, n.state) for n in notices(session)]
        told = session.get(UpgradeRun, run_id).told_at  # type: ignore[union-attr]
    assert states == [("scheduled", 1, "superseded"), ("deferred", 2, "superseded"), ("deferred", 3, "sent")]
    assert len(report.sent) == 1 and len(report.superseded) == 2 and len(list(outbox.glob("*.eml"))) == 1
    assert told == NOW  # the customer was told when the one notice went out


def test_customer_holidays_are_blackout_days_and_sla_days_off(engine: Engine, tmp_path: Path) -> None:
    from inventory.cases import open_case
    from inventory.models import Customer

    fleet = {
        "customers": [
            {
                "name": "globex",
                "timezone": "Europe/Berlin",
                "holidays": {"country": "DE", "subdivision": "BY"},
                "contacts": [{"email": "ops@globex.example"}],
                "clusters": [
                    {
                        "name": "globex-c1",
                        "kind": "software",
                        "version": "9.8.0",
                        "access": {"type": "direct"},
                        "nodes": [{"hostname": "globex-c1-n1"}],
                        "windows": [{"days": "mon-sun", "start": "02:00", "duration": "4h"}],
                    }
                ],
            }
        ],
        "releases": INVENTORY["releases"],
    }
    path = tmp_path / "globex.yaml"
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    import_inventory(path, engine=engine, actor="test")
    monday = datetime(2026, 12, 21, 12, tzinfo=UTC)  # + 72 h: Thu 24 Dec 12:00 UTC
    with session_scope(engine) as session:
        run = schedule_update(
            "globex-c1", "9.9.0", now=monday, requested_by="sre", session=session, vendor=VENDOR
        )
        # Fri 25 and Sat 26 Dec are public holidays in Bavaria: Sun 27 Dec 02:00 Berlin.
        assert run.slot_start == datetime(2026, 12, 27, 1, tzinfo=UTC)
        rows = calendar_view(now=monday, weeks=1, customer="globex", session=session)
        customer = session.exec(select(Customer)).one()
        # A P3 opened Thu 24 Dec 16:00 Berlin is due one business day later: Mon 28 Dec, not Fri 25.
        case = open_case(
            customer=customer,
            clusters=[],
            subject="slow dashboard",
            category="Issue",
            priority="P3",
            now=datetime(2026, 12, 24, 15, tzinfo=UTC),
            opened_by="t",
            session=session,
        )
        assert case.first_response_due == datetime(2026, 12, 28, 15, tzinfo=UTC)
    holidays = [row.detail for row in rows if row.what == "blackout"]
    assert "customer blackout 2026-12-25 (Europe/Berlin): public holiday Christmas Day (DE-BY)" in holidays


def test_a_slot_at_the_deadline_tells_the_customer_no_deferral_is_possible(db: Engine) -> None:
    from inventory.models import Release

    with session_scope(db) as session:
        release = session.exec(select(Release).where(Release.version == "9.10.0")).one()
        release.deadline = utc(3)  # exactly the first slot: in time, but no later start is
        session.add(release)
    with session_scope(db) as session:
        run = schedule_update(
            "acme-c2",
            "9.10.0",
            now=NOW + timedelta(days=7),
            requested_by="sre",
            session=session,
            vendor=VENDOR,
        )
        assert run.slot_start == utc(3)
        text = " ".join(notices(session)[-1].body_text.split())
    assert "no deferral possible: the release deadline is Thu 03 Dec 2026" in text
