"""Escalation as the support handbook describes it: an escalation (by the customer or the SRE)
engages the SRE Manager as Escalation Manager, who holds the case, coordinates, and makes sure regular
updates reach internal and customer stakeholders.

`escalate_case`: the case is escalated and assigned to the manager, the manager is notified (an SRE
alert addressed to them as well) and the customer is told who holds their case now, all in one
transaction. `check_update_cadence` (the dispatcher tick): an escalated case whose next update is
overdue alerts its manager, once per missed update, audited.
"""

from __future__ import annotations

import html
from datetime import datetime
from email.utils import parseaddr

from sqlmodel import Session, select

from flows.alerts import alert_sre
from flows.runtime import Runtime
from inventory.cases import Case, CaseError, CaseStatus, escalate, escalated_updates_due, update_missed
from inventory.db import session_scope
from inventory.models import Contact, Customer
from inventory.outbox import queue_notice
from scheduling.escalation import parse_cadence, update_due_after


def escalate_case(
    runtime: Runtime, case: Case, *, by: str, reason: str, now: datetime, actor: str, session: Session
) -> Case:
    manager = runtime.escalation_manager
    name, email = parseaddr(manager)
    cadence = parse_cadence(runtime.escalation_update_cadence)
    # Read again under the row's lock: another operator may have escalated it since it was read (both
    # would tell the customer and alert the manager, and the second restart the update cadence).
    session.refresh(case, with_for_update=True)
    if case.status is CaseStatus.escalated:
        raise CaseError(
            f"{case.ref} is already escalated (held by {case.escalation_manager or 'nobody'}, by "
            f"{case.escalated_by}): share updates with `upkeep case update {case.ref} --note TEXT`"
        )
    due = update_due_after(now, case.priority, cadence)
    escalate(
        case,
        by=by,
        reason=reason,
        now=now,
        actor=actor,
        session=session,
        manager=manager,
        update_every=due - now,
    )
    customer = session.get(Customer, case.customer_id)
    alert_sre(
        runtime,
        kind="case-escalated",
        headline=f"case {case.ref} ({case.priority}) escalated by {case.escalated_by}: held by {manager}",
        cause=reason,
        customer=customer.name if customer else "",
        case_ref=case.ref,
        detail=f"Escalation Manager: {manager}. Next stakeholder update due {due:%Y-%m-%d %H:%M} UTC "
        f"(every {describe_every(due - now)}).",
        action=f"Share updates with `upkeep case update {case.ref} --note TEXT`.",
        key=f"case-{case.ref}:escalated:{now.isoformat()}",
        targets=[email] if email else [],
        session=session,
    )
    emails = [c.email for c in session.exec(select(Contact).where(Contact.customer_id == case.customer_id))]
    if emails:
        who = name or email or manager
        text = (
            f"Hello,\n\nyour case {case.ref} ({case.subject}) has been escalated. {who}, our SRE Manager, "
            f"is now your Escalation Manager: they coordinate the work on it and make sure you hear from "
            f"us regularly - the next update by {due:%Y-%m-%d %H:%M} UTC.\n\nWhy: {reason}\n"
        )
        queue_notice(
            update_ref=f"case:{case.ref}",
            kind="case-escalated",
            sequence=0,
            customer_id=case.customer_id,
            recipients=emails,
            subject=f"[{case.ref}] escalated: {who} is your Escalation Manager",
            body_text=text,
            body_html="<p>" + html.escape(text).replace("\n\n", "</p><p>").replace("\n", "<br>") + "</p>",
            session=session,
            now=now,
            variant=now.isoformat(),
        )
    return case


def describe_every(span: object) -> str:
    from datetime import timedelta

    assert isinstance(span, timedelta)
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def check_update_cadence(runtime: Runtime, now: datetime) -> list[str]:
    """Alert the Escalation Manager of every escalated case whose update is overdue; returns the refs."""
    alerted = []
    with session_scope(runtime.engine) as session:
        for case in escalated_updates_due(now, session=session):
            # Read again under the row's lock: closed, updated or alerted by another dispatcher since
            # the query, it is no longer this tick's to alert.
            session.refresh(case, with_for_update=True)
            due = case.next_update_due
            if case.status is not CaseStatus.escalated or due is None or due > now:
                continue
            missed = update_missed(case, now=now, session=session)
            _, email = parseaddr(case.escalation_manager)
            customer = session.get(Customer, case.customer_id)
            since = case.last_update_at or case.escalated_at or missed
            alert_sre(
                runtime,
                kind="case-update-missed",
                headline=f"escalated case {case.ref} ({case.priority}): the stakeholder update due "
                f"{missed:%Y-%m-%d %H:%M} UTC was not shared",
                cause=f"no update since {since:%Y-%m-%d %H:%M} UTC",
                customer=customer.name if customer else "",
                case_ref=case.ref,
                detail=f"Escalation Manager: {case.escalation_manager or 'none assigned'}. "
                f"Next update due {case.next_update_due:%Y-%m-%d %H:%M} UTC.",
                action=f"Share an update, then `upkeep case update {case.ref} --note TEXT`.",
                key=f"case-{case.ref}:update-missed:{missed.isoformat()}",
                targets=[email] if email else [],
                session=session,
            )
            alerted.append(case.ref)
    return alerted
