"""`reschedule_update`, on SQLite and PostgreSQL: an SRE moves a planned update earlier or later, only to a
slot `scheduling.validity` accepts (full notice from now when earlier, unless urgent), the customer told
with the same invite at the next SEQUENCE, and a refusal writes nothing.

Same world and clock as test_schedule: Monday 2026-11-23 00:00 UTC; acme's windows Tue and Thu 02:00
New York (07:00 UTC, 4 h); Thanksgiving (Thu 26 - Fri 27 Nov) blacked out; 9.10.0 due by 5 Dec 00:00 UTC;
72 h notice (urgent 24 h). `schedule` puts acme-c1's update on Tue 1 Dec 07:00 UTC.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from flows.schedule import ScheduleRefused, reschedule_update
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import AuditEvent, RunState, UpgradeRun
from tests.integration.test_schedule import INVENTORY, NOW, VENDOR, event, notices, schedule, utc


@pytest.fixture
def db(engine: Engine, tmp_path: Path) -> Engine:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(INVENTORY, sort_keys=False))
    import_inventory(path, engine=engine, actor="test")
    return engine


def move(
    db: Engine, run_id: int, to: datetime, reason: str = "kernel patch first", now: datetime = NOW
) -> UpgradeRun:
    with session_scope(db) as session:
        run = reschedule_update(
            run_id, to=to, reason=reason, now=now, session=session, requested_by="alice", vendor=VENDOR
        )
        session.expunge(run)
        return run


def snapshot(db: Engine) -> tuple[Any, ...]:
    with Session(db) as session:
        runs = [r.model_dump() for r in session.exec(select(UpgradeRun).order_by(col(UpgradeRun.id)))]
        return (
            runs,
            [n.idempotency_key for n in notices(session)],
            len(session.exec(select(AuditEvent)).all()),
        )


def refused(db: Engine, run_id: int, to: datetime, now: datetime = NOW, reason: str = "x") -> str:
    before = snapshot(db)
    with pytest.raises(ScheduleRefused) as refusal:
        move(db, run_id, to, reason=reason, now=now)
    assert snapshot(db) == before
    return str(refusal.value)


def rescheduled_audits(db: Engine) -> list[AuditEvent]:
    with Session(db) as session:
        return list(session.exec(select(AuditEvent).where(AuditEvent.action == "update.rescheduled")))


def test_later_moves_the_invite_and_tells_the_customer_why(db: Engine) -> None:
    run_id = schedule(db)
    with Session(db) as session:
        before = session.get(UpgradeRun, run_id)
        assert before is not None and before.slot_end is not None and before.slot_start is not None
        length = before.slot_end - before.slot_start
    run = move(db, run_id, utc(3))  # Thu 3 Dec 07:00 UTC, a window start
    assert (run.slot_start, run.notice_sequence, run.deferrals) == (utc(3), 2, 0)
    assert run.slot_end == utc(3) + length
    with Session(db) as session:
        scheduled, rescheduled = notices(session)
    assert rescheduled.idempotency_key == "update-1:rescheduled:2"
    assert "Why: kernel patch first" in rescheduled.body_text
    (_, first), (method, second) = event(scheduled), event(rescheduled)
    assert method == "REQUEST" and str(second["UID"]) == str(first["UID"])
    assert (int(first["SEQUENCE"]), int(second["SEQUENCE"])) == (1, 2)
    [audit] = rescheduled_audits(db)
    assert audit.actor == "alice" and audit.subject == "run/1"
    assert audit.detail["reason"] == "kernel patch first" and audit.detail["direction"] == "later"
    assert audit.detail["to"] == utc(3).isoformat()


def test_earlier_with_full_notice_from_now_is_allowed_inside_a_window(db: Engine) -> None:
    run_id = schedule(db)
    move(db, run_id, utc(10))
    # Thu 3 Dec 08:00 UTC: not the window start, but inside it with the estimate fitting; 10 days away
    run = move(db, run_id, utc(3, 8), reason="customer asked for it sooner")
    assert (run.slot_start, run.notice_sequence, run.deferrals) == (utc(3, 8), 3, 0)
    assert [a.detail["direction"] for a in rescheduled_audits(db)] == ["later", "earlier"]


def test_earlier_than_the_notice_period_from_now_is_refused(db: Engine) -> None:
    run_id = schedule(db)
    with Session(db) as session:  # told long ago: moving earlier still needs 72 h from now
        session.execute(update(UpgradeRun).values(told_at=datetime(2026, 11, 1, tzinfo=utc(1).tzinfo)))
        session.commit()
    line = refused(db, run_id, utc(24, 7, 11))  # Tue 24 Nov 07:00 UTC: 31 h away
    assert line == (
        "cannot reschedule update-1 to 2026-11-24 07:00 UTC: notice: notice too short: 1 day 7 hours "
        "before the slot (never told yet), the customer's notice period is 3 days; "
        "the earliest valid slot starts 2026-12-01 07:00 UTC (its current slot)"
    )


def test_an_urgent_update_may_move_earlier_with_its_24_hours_notice(db: Engine) -> None:
    run_id = schedule(db, urgent=True)  # Tue 24 Nov 07:00 UTC (24 h notice)
    move(db, run_id, utc(1))
    run = move(db, run_id, utc(24, 7, 11), reason="security fix, back to the first window")
    assert (run.slot_start, run.notice_sequence) == (utc(24, 7, 11), 3)


def test_into_a_blackout_outside_a_window_or_past_the_deadline_is_refused(db: Engine) -> None:
    run_id = schedule(db)
    assert refused(db, run_id, utc(26, 7, 11)).startswith(
        "cannot reschedule update-1 to 2026-11-26 07:00 UTC: "
        "blackout: slot now inside blackout 'Thanksgiving'"
    )
    assert "window: slot is no longer inside a maintenance window" in refused(db, run_id, utc(2))
    due = schedule(db, cluster="acme-c2", to="9.10.0")
    assert refused(db, due, utc(10)) == (
        "cannot reschedule update-2 to 2026-12-10 07:00 UTC: deadline: slot is past the release deadline "
        "2026-12-05 00:00 UTC; the earliest valid slot starts 2026-12-01 07:00 UTC (its current slot)"
    )


def test_only_a_planned_update_with_a_reason_is_rescheduled(db: Engine) -> None:
    run_id = schedule(db)
    assert refused(db, run_id, utc(3), reason="  ") == (
        "reschedule needs --reason TEXT (it is recorded and told to the customer)"
    )
    assert refused(db, run_id, utc(1)).endswith(": it already starts then")
    with pytest.raises(LookupError, match="no update 99"), session_scope(db) as session:
        reschedule_update(99, to=utc(3), reason="x", now=NOW, session=session, requested_by="alice")
    with Session(db) as session:
        session.execute(update(UpgradeRun).values(state=RunState.running))
        session.commit()
    assert refused(db, run_id, utc(3)) == "cannot reschedule update-1: it is running"


def test_a_claim_committed_after_the_read_leaves_the_update_running_not_rescheduled(db: Engine) -> None:
    """The dispatcher claims the update between the reschedule's read and its write: the conditional
    row take (the one defer uses) refuses, and the running update keeps its slot and notices. SQLite
    takes its write lock at BEGIN IMMEDIATE, so there the two cannot interleave at all."""
    if db.dialect.name == "sqlite":
        pytest.skip("SQLite serialises the transactions: no read-then-claim interleaving to test")
    run_id = schedule(db)
    with session_scope(db) as session:
        stale = session.get(UpgradeRun, run_id)  # the reschedule's read, cached in its session
        assert stale is not None and stale.state == RunState.planned
        with Session(db) as dispatcher:
            dispatcher.execute(
                update(UpgradeRun)
                .where(col(UpgradeRun.id) == run_id, col(UpgradeRun.state) == RunState.planned)
                .values(state=RunState.running)
            )
            dispatcher.commit()
        with pytest.raises(ScheduleRefused, match="it is running now \\(another process started"):
            reschedule_update(run_id, to=utc(3), reason="x", now=NOW, session=session, requested_by="alice")
    with Session(db) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and (run.state, run.slot_start, run.notice_sequence) == ("running", utc(1), 1)
        assert [n.kind for n in notices(session)] == ["scheduled"]
    assert rescheduled_audits(db) == []


def test_a_move_of_an_update_whose_every_notice_bounced_announces_it_anew(db: Engine) -> None:
    """adv57: `upkeep reschedule` of an update whose only 'scheduled' was refused for good (5xx) mailed
    'rescheduled' ("moved from ...") as the customer's first word of it, where integrity's and the
    re-slot's moves (`move_notice`) announce it anew ('scheduled', at the new slot)."""
    from inventory.outbox import Notice, NoticeState

    run_id = schedule(db)
    with Session(db) as session:
        session.execute(update(Notice).values(state=NoticeState.failed))
        session.commit()
    move(db, run_id, utc(3))
    with Session(db) as session:
        _, anew = notices(session)
    assert anew.kind == "scheduled" and anew.idempotency_key == "update-1:scheduled:2"
    (method, vevent) = event(anew)
    assert method == "REQUEST" and int(vevent["SEQUENCE"]) == 2


def test_two_moves_before_the_announcement_anew_goes_out_still_announce_it(db: Engine) -> None:
    """adv57: the update's only 'scheduled' bounced; moved once ('scheduled' anew, pending) and again
    before the outbox ran. The second move's 'rescheduled' supersedes the pending 'scheduled' (one
    delivery never carries two notices of one update), so the customer's first word of the update was
    "rescheduled ... previously <a slot they never heard of>": a pending notice the next one supersedes
    told them nothing."""
    from inventory.outbox import Notice, NoticeState

    run_id = schedule(db)
    with Session(db) as session:
        session.execute(update(Notice).values(state=NoticeState.failed))
        session.commit()
    move(db, run_id, utc(3))
    move(db, run_id, utc(3, 8), reason="the customer's freeze")
    with Session(db) as session:
        last = notices(session)[-1]
    assert last.kind == "scheduled" and last.idempotency_key == "update-1:scheduled:3", last.idempotency_key
