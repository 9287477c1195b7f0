"""The upcoming calendar for `upkeep calendar`: window occurrences, announced update slots, notices
waiting in the outbox and reminder times, blackouts, and DST changes in each customer's zone (so a
person sees when "02:00 local" moves against UTC). Reads only; `now` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from flows.schedule import ScheduleRefused, update_ref
from inventory import repo
from inventory.models import Cluster, Customer, RunState, UpgradeRun
from inventory.outbox import Notice, NoticeState
from inventory.windows import Blackout, blackouts_for, cluster_windows, notice_policy
from scheduling.blackouts import Blackout as BlackoutRule
from scheduling.notice import reminder_times
from scheduling.release_calendar import dst_transitions
from scheduling.times import aware_utc, fmt_instant, load_zone
from scheduling.windows import Interval, window_occurrences
from templates import format_duration

MAX_WEEKS = 52


@dataclass(frozen=True)
class CalendarRow:
    """One thing on the calendar. `what`: window, update, notice, reminder, blackout or dst."""

    at: datetime  # UTC
    what: str
    customer: str  # "" for a vendor-wide blackout
    zone: str  # the customer's (a vendor blackout's own)
    cluster: str = ""
    end: datetime | None = None
    detail: str = ""
    ref: str = ""

    @property
    def local(self) -> str:
        return self.at.astimezone(load_zone(self.zone)).strftime("%a %Y-%m-%d %H:%M %Z")

    @property
    def utc(self) -> str:
        return fmt_instant(self.at)


_ORDER = {"dst": 0, "blackout": 1, "notice": 2, "reminder": 3, "window": 4, "update": 5}


def calendar_view(
    *, now: datetime, weeks: int, customer: str | None = None, session: Session
) -> list[CalendarRow]:
    """What is coming in the next `weeks` weeks, oldest first: window occurrences, announced update
    slots, notices waiting to go out and reminder times, blackouts, and the customers' DST changes."""
    start = aware_utc(now, "now")
    if isinstance(weeks, bool) or not isinstance(weeks, int) or not 1 <= weeks <= MAX_WEEKS:
        raise ScheduleRefused(f"weeks {weeks!r}: expected 1 to {MAX_WEEKS}")
    until = start + timedelta(weeks=weeks)
    query = select(Customer).order_by(col(Customer.name))
    customers = list(session.exec(query if customer is None else query.where(Customer.name == customer)))
    if customer is not None and not customers:
        known = ", ".join(session.exec(select(Customer.name).order_by(col(Customer.name)))) or "none"
        raise repo.NotFound(f"no customer {customer!r} (customers: {known})")
    rows: list[CalendarRow] = []
    for owner in customers:
        rows += _customer_rows(owner, start, until, session)
    vendor = session.exec(select(Blackout).where(col(Blackout.customer_id).is_(None))).all()
    rows += _blackout_rows("", [b.rule() for b in vendor], start, until)
    return sorted(rows, key=lambda r: (r.at, _ORDER[r.what], r.customer, r.cluster))


def _customer_rows(
    customer: Customer, start: datetime, until: datetime, session: Session
) -> list[CalendarRow]:
    name, zone = customer.name, customer.timezone
    rows = []
    for at, change in dst_transitions(zone, start, until):
        rows.append(CalendarRow(at, "dst", name, zone, detail=dst_note(zone, at, change)))
    customer_blackouts = [b for b in blackouts_for(customer, session=session) if b.scope == "customer"]
    rows += _blackout_rows(name, customer_blackouts, start, until)
    policy = notice_policy(customer)
    for cluster in session.exec(select(Cluster).where(Cluster.customer_id == customer.id)):
        windows = cluster_windows(cluster, customer, session=session)
        for occurrence in window_occurrences(windows, start, until):
            detail = f"maintenance window, {format_duration(occurrence.duration)}"
            rows.append(
                CalendarRow(occurrence.start, "window", name, zone, cluster.name, occurrence.end, detail)
            )
        planned = select(UpgradeRun).where(
            UpgradeRun.cluster_id == cluster.id, UpgradeRun.state == RunState.planned
        )
        for run in session.exec(planned):
            if run.slot_start is None or run.slot_end is None or not start <= run.slot_start < until:
                continue
            ref = update_ref(run.id)
            urgent = ", URGENT" if run.urgent else ""
            deferred = f", deferred {run.deferrals}×" if run.deferrals else ""
            detail = f"{ref} {run.from_version}→{run.to_version}{urgent}{deferred}"
            if run.held_reason:  # never started in this slot: it has no valid one (flows/integrity.py)
                detail = f"{ref} HELD: {run.held_reason}"
            rows.append(
                CalendarRow(run.slot_start, "update", name, zone, cluster.name, run.slot_end, detail, ref)
            )
            told = [] if run.held_reason else [_last_notice_at(ref, run, session)]
            for at in (t for sent in told for t in reminder_times(policy, run.slot_start, sent)):
                if start <= at < until:
                    rows.append(
                        CalendarRow(at, "reminder", name, zone, cluster.name, detail="reminder due", ref=ref)
                    )
    pending = select(Notice).where(Notice.customer_id == customer.id, Notice.state == NoticeState.pending)
    for notice in session.exec(pending.order_by(col(Notice.id))):
        at = notice.next_attempt_at or start
        due = "due now" if at <= start else "due"
        detail = f"{notice.kind} notice #{notice.sequence} {due}, to {len(notice.recipients)} recipient(s)"
        rows.append(CalendarRow(max(at, start), "notice", name, zone, detail=detail, ref=notice.update_ref))
    return rows


def _blackout_rows(
    customer: str, rules: list[BlackoutRule], start: datetime, until: datetime
) -> list[CalendarRow]:
    span = Interval(start, until)
    return [
        CalendarRow(
            rule.interval.start, "blackout", customer, rule.tz, end=rule.interval.end, detail=rule.describe()
        )
        for rule in rules
        if rule.interval.overlaps(span)
    ]


def _last_notice_at(ref: str, run: UpgradeRun, session: Session) -> datetime:
    query = select(Notice.created_at).where(Notice.update_ref == ref).order_by(col(Notice.id).desc())
    return session.exec(query).first() or run.created_at


def dst_note(zone: str, at: datetime, change: timedelta) -> str:
    """'DST: clocks go back 1 h (EDT→EST)': a UTC-offset change in `zone` at `at`, for people."""
    tz = load_zone(zone)
    before, after = (at - timedelta(seconds=1)).astimezone(tz).tzname(), at.astimezone(tz).tzname()
    way = "forward" if change > timedelta(0) else "back"
    return f"DST: clocks go {way} {format_duration(abs(change))} ({before}→{after})"
