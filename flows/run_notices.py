"""Notices about one update (run), built from its record: what the customer and the SRE are told.

Each is queued in the caller's transaction with the key (update, kind, sequence), so writing the same
notice again (a resumed run starting twice) queues nothing new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from flows.notify import queue_for
from flows.runtime import Runtime
from inventory.models import Cluster, Contact, Customer, UpgradeRun
from templates import NoticeContext, NoticeKind

DEFER_HELP = "Reply to this email or ask your support contact; support runs `upkeep defer UPDATE --to DATE`."
DEFER_LIMITS = "up to 2 deferrals, each by at most 7 days, never past the release deadline"


def update_ref(run: UpgradeRun) -> str:
    return f"update-{run.id}"


def queue_run_notice(
    run: UpgradeRun,
    kind: str,
    *,
    runtime: Runtime,
    session: Session,
    now: datetime,
    to_sre: bool = False,
    variant: str = "",
    **extra: Any,
) -> bool:
    """Queue a `kind` notice about `run` to the customer's contacts (or the SRE). False if it has no one
    to go to (a customer without contacts), which is logged by the caller, never an error."""
    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None
    customer = session.get(Customer, cluster.customer_id)
    assert customer is not None and customer.id is not None
    if to_sre:
        recipients: tuple[str, ...] = (runtime.sre_email,)
        ref = f"{update_ref(run)}-sre"
    else:
        contacts = session.exec(select(Contact).where(Contact.customer_id == customer.id)).all()
        recipients = tuple(dict.fromkeys(contact.email for contact in contacts))
        ref = update_ref(run)
    if not recipients:
        return False
    start = run.slot_start or run.started_at or now
    end = run.slot_end if run.slot_end and run.slot_end > start else start + runtime.per_node_estimate
    ctx = NoticeContext(
        kind=NoticeKind(kind),
        update_ref=ref,
        sequence=run.notice_sequence,
        customer=customer.name,
        customer_timezone=customer.timezone,
        cluster=cluster.name,
        from_version=run.from_version,
        to_version=run.to_version,
        slot_start=start,
        slot_end=end,
        recipients=recipients,
        organizer=runtime.mail_from,
        support_contact=runtime.support_contact,
        defer_instructions=DEFER_HELP,
        deferral_limits=DEFER_LIMITS,
        urgent=run.urgent,
        case_ref=run.case_ref or "",
        **extra,
    )
    queue_for(ctx, customer_id=customer.id, session=session, stamp=now, variant=variant)
    return True
