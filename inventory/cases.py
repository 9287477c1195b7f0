"""Support cases and their diagnostics bundles: repository functions (tables: `inventory.case_tables`,
re-exported here, so `cases.Case` and friends keep working).

Case ids: Upkeep numbers its own cases `CASE-<digits>`; a case imported from a customer's or vendor's
tracker keeps its id if it matches `EXTERNAL_ID` (`^[A-Z][A-Z0-9]{1,9}-[0-9]{1,10}$`, e.g. `SUP-4711`,
`JIRA2-17`; the prefix `CASE-` is reserved). The id becomes a file-server path segment and a CLI
argument, so nothing else is accepted: no slashes, dots, spaces or shell metacharacters.

Rules (priorities, routing, due times, auto-close) are in `scheduling.sla`; this module stores what they
decide. Times are aware UTC and `now` is always passed in. The session is a keyword argument and never
committed here: callers own the transaction.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from inventory.case_tables import Case, CaseCluster, CaseStatus, DiagnosticsBundle, EscalatedBy  # re-exported
from inventory.models import Cluster, Contact, Customer
from inventory.outbox import queue_notice
from inventory.repo import record_audit
from inventory.windows import customer_holidays
from scheduling.sla import (
    BusinessCalendar,
    Category,
    Priority,
    auto_close_due,
    first_response_due,
    parse_priority,
    queue_for,
)

OWN_ID = re.compile(r"^CASE-[0-9]{1,12}$")
EXTERNAL_ID = re.compile(r"^[A-Z][A-Z0-9]{1,9}-[0-9]{1,10}$")
BLOCKING = (Priority.P0, Priority.P1)


class CaseError(ValueError):
    """A case request Upkeep refuses; the message says what and why."""


class CaseNotFound(LookupError):
    pass


def check_case_ref(text: object) -> str:
    """`text` if it is a valid case id (see the module docstring), else CaseError."""
    if isinstance(text, str) and (OWN_ID.fullmatch(text) or EXTERNAL_ID.fullmatch(text)):
        return text
    shown = repr(text)[:60]
    raise CaseError(
        f"case id {shown} is not CASE-<digits> or an external id like SUP-4711 (A-Z, 0-9, one '-')"
    )


def parse_category(text: str | Category) -> Category:
    """Issue / Feature Request, in any case, with spaces, '-' or '_'."""
    return _parse(Category, text, "case category", "Issue or Feature Request")


def parse_status(text: str | CaseStatus) -> CaseStatus:
    return _parse(CaseStatus, text, "case status", ", ".join(s.value.replace("_", " ") for s in CaseStatus))


def _parse(kind: Any, text: object, what: str, expected: str) -> Any:
    try:
        return kind(re.sub(r"[\s-]+", "_", str(text).strip().lower()))
    except ValueError:
        raise CaseError(f"{what} {text!r}: expected {expected}") from None


def open_case(
    *,
    customer: Customer,
    clusters: Sequence[Cluster],
    subject: str,
    category: str | Category,
    priority: str | Priority,
    now: datetime,
    opened_by: str,
    session: Session,
    external_id: str | None = None,
    calendar: BusinessCalendar | None = None,
) -> Case:
    """A new case, its first-response due time from the customer's business calendar (default: the
    customer's zone, 09:00-17:00 Mon-Fri)."""
    level, kind = parse_priority(priority), parse_category(category)
    subject = " ".join(subject.split())
    if not subject or len(subject) > 200:
        raise CaseError("case subject: expected 1-200 characters")
    if any(c.customer_id != customer.id for c in clusters):
        raise CaseError(f"every cluster of a case must belong to customer {customer.name}")
    if external_id is not None and check_case_ref(external_id).startswith("CASE-"):
        raise CaseError(f"external id {external_id}: the prefix CASE- is reserved for Upkeep's own ids")
    if external_id is not None and _by_ref(external_id, session=session) is not None:
        raise CaseError(f"case {external_id} already exists")
    assert customer.id is not None
    due = first_response_due(now, level, calendar or business_calendar(customer, now))
    case = Case(
        ref=external_id or f"pending-{secrets.token_hex(8)}",
        customer_id=customer.id,
        subject=subject,
        category=kind,
        queue=queue_for(kind),
        priority=level,
        opened_by=opened_by[:128],
        opened_at=now,
        first_response_due=due,
    )
    session.add(case)
    session.flush()
    if external_id is None:
        case.ref = f"CASE-{case.id}"  # numbered by the database: unique under concurrent opens
    for cluster in {c.id: c for c in clusters}.values():
        assert cluster.id is not None and case.id is not None
        session.add(CaseCluster(case_id=case.id, cluster_id=cluster.id))
    session.flush()
    _audit(case, "case.opened", opened_by, session, priority=level.value, queue=case.queue)
    return case


def _by_ref(ref: str, *, session: Session) -> Case | None:
    return session.exec(select(Case).where(Case.ref == ref)).first()


def get_case(ref: str, *, session: Session) -> Case:
    case = _by_ref(check_case_ref(ref), session=session)
    if case is None:
        raise CaseNotFound(f"no case {ref} (see `upkeep case list`)")
    return case


def list_cases(*, session: Session, include_closed: bool = False, limit: int = 200) -> list[Case]:
    query = select(Case).order_by(col(Case.id).desc()).limit(limit)
    if not include_closed:
        query = query.where(Case.status != CaseStatus.closed)
    return list(session.exec(query))


def case_clusters(case: Case, *, session: Session) -> list[Cluster]:
    query = select(Cluster).join(CaseCluster).where(CaseCluster.case_id == case.id)
    return list(session.exec(query.order_by(col(Cluster.name))))


def case_bundles(case: Case, *, session: Session) -> list[DiagnosticsBundle]:
    query = select(DiagnosticsBundle).where(DiagnosticsBundle.case_id == case.id)
    return list(session.exec(query.order_by(col(DiagnosticsBundle.id))))


def business_calendar(customer: Customer, now: datetime) -> BusinessCalendar:
    """The customer's business-hours clock for SLA due times: its zone, minus its public holidays."""
    years = range(now.year - 1, now.year + 2)
    days = frozenset(rule.start for rule in customer_holidays(customer, years))
    return BusinessCalendar(customer.timezone, holidays=days)


def open_blocking_case(cluster_id: int, *, session: Session) -> Case | None:
    """The oldest case that is not closed, is P0 or P1 and concerns the cluster: while there is one,
    only urgent upgrades may be scheduled there (`scheduling.slots.find_slot(blocked_by_case=...)`)."""
    query = (
        select(Case)
        .join(CaseCluster)
        .where(
            CaseCluster.cluster_id == cluster_id,
            Case.status != CaseStatus.closed,
            col(Case.priority).in_(BLOCKING),
        )
        .order_by(col(Case.opened_at), col(Case.id))
    )
    return session.exec(query).first()


def set_status(case: Case, status: str | CaseStatus, *, now: datetime, actor: str, session: Session) -> Case:
    """Move an open case to new/open/waiting on customer; escalate and close have their own calls."""
    target = parse_status(status)
    if target in (CaseStatus.escalated, CaseStatus.closed):
        raise CaseError(f"use `{'escalate' if target is CaseStatus.escalated else 'close'}` for that")
    _require_open(case)
    if target is CaseStatus.waiting_on_customer and case.status is not CaseStatus.waiting_on_customer:
        case.waiting_since, case.contact_attempts, case.last_contact_at = now, 0, None
    elif target is not CaseStatus.waiting_on_customer:
        case.waiting_since = None
    before, case.status = case.status, target
    session.add(case)
    _audit(case, "case.status", actor, session, before=str(before), after=target.value)
    return case


def record_contact_attempt(case: Case, *, now: datetime, actor: str, note: str, session: Session) -> Case:
    """We tried to reach the customer about a case waiting on them (counts toward auto-close)."""
    _require_open(case)
    if case.status is not CaseStatus.waiting_on_customer:
        raise CaseError(f"{case.ref} is {case.status.value}: contact attempts count only while waiting")
    case.contact_attempts += 1
    case.last_contact_at = now
    session.add(case)
    _audit(case, "case.contact_attempt", actor, session, attempt=case.contact_attempts, note=note[:500])
    return case


def escalate(
    case: Case,
    *,
    by: str | EscalatedBy,
    reason: str,
    now: datetime,
    actor: str,
    session: Session,
    manager: str = "",
    update_every: timedelta | None = None,
) -> Case:
    """Escalate: the case is held by `manager` (the Escalation Manager) from now on, and its next
    stakeholder update is due `update_every` from now."""
    try:
        who = EscalatedBy(str(by).strip().lower())
    except ValueError:
        raise CaseError(f"escalated by {by!r}: expected customer or sre") from None
    reason = reason.strip()
    if not reason:
        raise CaseError("an escalation needs a reason")
    _require_open(case)
    case.status, case.escalated_by, case.escalation_reason = CaseStatus.escalated, who, reason[:2000]
    case.escalated_at, case.waiting_since = now, None
    case.escalation_manager = manager[:254]
    if update_every is not None:
        case.update_every_minutes = max(1, int(update_every.total_seconds() // 60))
        case.next_update_due = now + update_every
    session.add(case)
    _audit(case, "case.escalated", actor, session, by=who.value, reason=reason[:500], manager=manager)
    return case


def share_update(case: Case, *, note: str, now: datetime, actor: str, session: Session) -> Case:
    """An update of an escalated case was shared with its stakeholders: the next is due a cadence on."""
    if case.status is not CaseStatus.escalated:
        raise CaseError(f"case {case.ref} is {case.status.value}, not escalated: no update cadence to keep")
    if not note.strip():
        raise CaseError(f"an update of {case.ref} needs --note TEXT (what was shared)")
    case.last_update_at = now
    if case.update_every_minutes:
        case.next_update_due = now + timedelta(minutes=case.update_every_minutes)
    session.add(case)
    _audit(case, "case.update_shared", actor, session, note=note.strip()[:500])
    return case


def escalated_updates_due(now: datetime, *, session: Session) -> list[Case]:
    """Escalated cases whose stakeholder update is overdue."""
    query = select(Case).where(
        Case.status == CaseStatus.escalated,
        col(Case.next_update_due).is_not(None),
        col(Case.next_update_due) <= now,
    )
    return list(session.exec(query.order_by(col(Case.id))))


def update_missed(case: Case, *, now: datetime, session: Session) -> datetime:
    """Record a missed update (audited); the next is due a cadence after the missed one. Returns the
    missed due time."""
    assert case.next_update_due is not None
    missed = case.next_update_due
    every = timedelta(minutes=case.update_every_minutes or 60)
    while case.next_update_due <= now:
        case.next_update_due += every
    session.add(case)
    _audit(
        case, "case.update_missed", "upkeep", session, due=missed.isoformat(), manager=case.escalation_manager
    )
    return missed


def close_case(case: Case, *, reason: str, now: datetime, actor: str, session: Session) -> Case:
    if not reason.strip():
        raise CaseError(f"closing {case.ref} needs a reason (--reason TEXT): it is recorded and shown")
    _require_open(case)
    case.status, case.closed_at, case.close_reason = CaseStatus.closed, now, reason.strip()[:2000]
    case.waiting_since = None
    session.add(case)
    _audit(case, "case.closed", actor, session, reason=reason[:500])
    return case


def waiting_cases(*, session: Session) -> list[Case]:
    query = select(Case).where(Case.status == CaseStatus.waiting_on_customer).order_by(col(Case.id))
    return list(session.exec(query))


def auto_close_candidates(now: datetime, *, session: Session) -> list[Case]:
    """The cases `auto_close` would close at `now` (what `upkeep case auto-close --dry-run` lists)."""
    return [
        case
        for case in waiting_cases(session=session)
        if case.waiting_since is not None and auto_close_due(case.waiting_since, case.contact_attempts, now)
    ]


def auto_close(case: Case, *, now: datetime, actor: str, session: Session) -> bool:
    """Close `case` if `scheduling.sla.auto_close_due` says so, and queue the customer's email in the
    same transaction (inventory.outbox); without a contact to write to, an audit event says the email is
    due. True if it closed the case."""
    if case.status is not CaseStatus.waiting_on_customer or case.waiting_since is None:
        return False
    if not auto_close_due(case.waiting_since, case.contact_attempts, now):
        return False
    waited, attempts = case.waiting_since, case.contact_attempts
    close_case(case, reason=f"no reply since {waited:%Y-%m-%d} after {attempts} attempts", now=now,
               actor=actor, session=session)  # fmt: skip
    emails = [c.email for c in session.exec(select(Contact).where(Contact.customer_id == case.customer_id))]
    text = (
        f"Hello,\n\nwe have not heard from you about case {case.ref} ({case.subject}) since "
        f"{waited:%Y-%m-%d} and tried to reach you {attempts} times, so we have closed it.\n"
        "If you still need help, reply to this email or open a new case.\n"
    )
    if not emails:
        _audit(case, "case.customer_email_due", actor, session, why="the customer has no contacts")
        return True
    queue_notice(
        update_ref=f"case:{case.ref}", kind="case-closed", sequence=0, customer_id=case.customer_id,
        recipients=emails, subject=f"[{case.ref}] closed: {case.subject}", body_text=text,
        body_html="<p>" + html.escape(text).replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>",
        session=session, now=now,
    )  # fmt: skip
    return True


def attach_bundle(
    case: Case, bundle: DiagnosticsBundle, *, actor: str, session: Session
) -> DiagnosticsBundle:
    """Record an uploaded bundle with its case (`partial` follows `missing_nodes`); the bundle's cluster
    becomes one of the case's clusters if it was not yet."""
    assert case.id is not None
    bundle.case_id, bundle.partial = case.id, bool(bundle.missing_nodes)
    if session.get(CaseCluster, (case.id, bundle.cluster_id)) is None:
        session.add(CaseCluster(case_id=case.id, cluster_id=bundle.cluster_id))
    session.add(bundle)
    session.flush()
    _audit(case, "case.bundle", actor, session, url=bundle.url, partial=bundle.partial, run_id=bundle.run_id)
    return bundle


def _require_open(case: Case) -> None:
    if case.status is CaseStatus.closed:
        raise CaseError(f"{case.ref} is closed")


def _audit(case: Case, action: str, actor: str, session: Session, **detail: Any) -> None:
    record_audit(actor or "upkeep", action, f"case/{case.ref}", detail, session=session)
