"""On-call paging, 24/7: who is paged for what, escalation one level at a time, acknowledgement.

A P0 case, a failed urgent update or a rollout halted by its error budget `page`s the engineer on call
and the team lead (the rotation in the inventory, scheduling/oncall.py); a P0 also informs the people
kept informed (the VP). Unacknowledged after `runtime.oncall_escalate_after`, the dispatcher tick
(`escalate_due`) pages the next level of the chain (support manager, then senior director), one level
per period; `ack` stops it. Every step is an SRE alert (flows/alerts.py, delivered by the tick to the
configured channels and to each paged person's email and Apprise URL) and an audit event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from flows.alerts import alert_sre
from flows.runtime import Runtime
from inventory import repo
from inventory.alerts import Page
from inventory.db import session_scope
from inventory.oncall import current_spec
from scheduling.oncall import Person, Rotation, levels, paged_at_level, shift

__all__ = ["OnCallError", "ack", "escalate_due", "page", "rotation", "who"]

log = logging.getLogger(__name__)


class OnCallError(ValueError):
    """A refused on-call request (unknown page, already acknowledged); the message says which."""


def rotation(session: Session) -> Rotation | None:
    spec = current_spec(session)
    return Rotation.from_spec(spec) if spec else None


def page(
    runtime: Runtime,
    *,
    key: str,
    headline: str,
    cause: str,
    p0: bool = False,
    run_id: int | None = None,
    case_ref: str = "",
    cluster: str = "",
    customer: str = "",
) -> int | None:
    """Page the engineer on call and the team lead about `key` (once: the same key pages no one
    again); returns the page's id, or None when the inventory has no rotation (the SRE is alerted
    then, saying so)."""
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        existing = session.exec(select(Page).where(Page.key == key)).first()
        if existing is not None:
            return existing.id
        chain = rotation(session)
        if chain is None:
            alert_sre(
                runtime, kind="page", headline=f"NO ON-CALL ROTATION to page: {headline}", cause=cause,
                run_id=run_id, case_ref=case_ref, cluster=cluster, customer=customer,
                detail="Add an `oncall:` section to the inventory (README: On-call).",
                key=f"page:{key}:unrouted", session=session,
            )  # fmt: skip
            return None
        people = paged_at_level(chain, 0, now)
        row = Page(
            key=key, reason=f"{headline}: {cause}"[:4000], inform_vp=p0, level=0,
            paged=[p.name for p in people], escalate_at=now + runtime.oncall_escalate_after, created_at=now,
        )  # fmt: skip
        session.add(row)
        session.flush()
        assert row.id is not None
        _send(runtime, session, row, people, headline, cause, run_id, case_ref, cluster, customer, level=0)
        if p0 and chain.informed:
            alert_sre(
                runtime, kind="page-informed", headline=f"FYI (P0): {headline}", cause=cause, run_id=run_id,
                case_ref=case_ref, cluster=cluster, customer=customer,
                targets=_contacts(chain.informed), paged=[p.name for p in chain.informed],
                detail=f"Kept informed; on call: {', '.join(row.paged)}.", key=f"page-{row.id}:informed",
                session=session,
            )  # fmt: skip
        detail = {"key": key, "level": 0, "paged": row.paged, "p0": p0, "reason": row.reason[:500]}
        repo.record_audit(runtime.actor, "oncall.paged", f"page/{row.id}", detail, session=session)
        return row.id


def _contacts(people: tuple[Person, ...]) -> list[str]:
    return [contact for person in people for contact in person.contacts]


def _send(
    runtime: Runtime,
    session: Session,
    row: Page,
    people: tuple[Person, ...],
    headline: str,
    cause: str,
    run_id: int | None,
    case_ref: str,
    cluster: str,
    customer: str,
    *,
    level: int,
) -> None:
    prefix = "PAGE" if level == 0 else f"ESCALATED (level {level})"
    alert_sre(
        runtime, kind="page", headline=f"{prefix}: {headline}", cause=cause, run_id=run_id, case_ref=case_ref,
        cluster=cluster, customer=customer, targets=_contacts(people), paged=[p.name for p in people],
        ack_command=f"upkeep oncall ack {row.id}",
        detail=f"Unacknowledged, this escalates in {runtime.oncall_escalate_after} to the next level.",
        key=f"page-{row.id}:level-{level}", session=session,
    )  # fmt: skip


def escalate_due(runtime: Runtime, now: datetime) -> list[int]:
    """The dispatcher tick's part: every unacknowledged page whose time ran out goes one level up."""
    escalated = []
    with session_scope(runtime.engine) as session:
        due = session.exec(
            select(Page)
            .where(
                col(Page.acked_at).is_(None), col(Page.escalate_at).is_not(None), col(Page.escalate_at) <= now
            )
            .order_by(col(Page.id))
        ).all()
        chain = rotation(session) if due else None
        for row in due:
            assert row.id is not None
            if chain is None or row.level >= levels(chain):
                row.escalate_at = None  # the chain is exhausted (or gone): nobody left to page
                session.add(row)
                continue
            row.level += 1
            people = paged_at_level(chain, row.level, now)
            row.paged = [*row.paged, *(p.name for p in people)]
            row.escalate_at = now + runtime.oncall_escalate_after if row.level < levels(chain) else None
            session.add(row)
            headline, _, cause = row.reason.partition(": ")
            _send(
                runtime,
                session,
                row,
                people,
                headline,
                cause or row.reason,
                None,
                "",
                "",
                "",
                level=row.level,
            )
            repo.record_audit(
                runtime.actor, "oncall.escalated", f"page/{row.id}",
                {"level": row.level, "paged": [p.name for p in people]}, session=session,
            )  # fmt: skip
            escalated.append(row.id)
    return escalated


def ack(runtime: Runtime, page_id: int, *, actor: str) -> Page:
    """Acknowledge a page: its escalation stops (audited)."""
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        row = session.get(Page, page_id)
        if row is None:
            raise OnCallError(f"no page {page_id} (see `upkeep oncall show`)")
        if row.acked_at is not None:
            raise OnCallError(f"page {page_id} was already acknowledged by {row.acked_by} at {row.acked_at}")
        row.acked_at, row.acked_by, row.escalate_at = now, actor, None
        session.add(row)
        repo.record_audit(actor, "oncall.acked", f"page/{page_id}", {"level": row.level}, session=session)
        session.flush()
        session.expunge(row)
        return row


@dataclass(frozen=True)
class OnCallNow:
    at: datetime
    rotation: Rotation
    engineer: Person
    shift_start: datetime
    shift_end: datetime

    def as_dict(self) -> dict[str, Any]:
        def person(p: Person) -> dict[str, str]:
            return {"name": p.name, "email": p.email, "role": p.role}

        return {
            "at": self.at.isoformat(),
            "on_call": person(self.engineer),
            "shift": {"start": self.shift_start.isoformat(), "end": self.shift_end.isoformat()},
            "handover": f"{self.rotation.handover:%H:%M} {self.rotation.timezone} ({self.rotation.rotation})",
            "team_lead": person(self.rotation.team_lead),
            "escalation": [person(p) for p in self.rotation.escalation],
            "informed": [person(p) for p in self.rotation.informed],
        }


def who(runtime: Runtime, at: datetime) -> OnCallNow | None:
    with session_scope(runtime.engine) as session:
        chain = rotation(session)
    if chain is None:
        return None
    current = shift(chain, at)
    return OnCallNow(at, chain, current.person, current.start, current.end)


def open_pages(runtime: Runtime) -> list[dict[str, Any]]:
    with session_scope(runtime.engine) as session:
        rows = session.exec(select(Page).where(col(Page.acked_at).is_(None)).order_by(col(Page.id))).all()
        return [
            {
                "id": r.id,
                "reason": r.reason,
                "level": r.level,
                "paged": r.paged,
                "escalate_at": r.escalate_at.isoformat() if r.escalate_at else None,
            }
            for r in rows
        ]


def page_triggers(runtime: Runtime, now: datetime) -> list[int]:
    """The dispatcher tick's other part: page for every open P0 case and every rollout halted by its
    error budget that has not been paged yet (however the case was opened or the rollout halted)."""
    from inventory.case_tables import Case, CaseCluster, CaseStatus
    from inventory.models import Cluster, Customer
    from inventory.releases import Rollout, RolloutState
    from scheduling.sla import Priority

    with session_scope(runtime.engine) as session:
        paged = set(session.exec(select(Page.key)).all())
        p0 = []
        for case in session.exec(
            select(Case).where(Case.priority == Priority.P0, Case.status != CaseStatus.closed)
        ).all():
            if f"case:{case.ref}" in paged:
                continue
            owner = session.get(Customer, case.customer_id)
            clusters = session.exec(
                select(Cluster.name)
                .join(CaseCluster, col(CaseCluster.cluster_id) == col(Cluster.id))
                .where(CaseCluster.case_id == case.id)
            ).all()
            p0.append((case.ref, case.subject, owner.name if owner else "", ", ".join(clusters)))
        halted = [
            (r.version, r.halted_reason, r.updated_at)
            for r in session.exec(select(Rollout).where(Rollout.state == RolloutState.halted)).all()
            if f"rollout:{r.version}:{r.updated_at.isoformat()}" not in paged
        ]
    pages = []
    for ref, subject, customer, clusters in p0:
        found = page(
            runtime, key=f"case:{ref}", headline=f"P0 case {ref} opened", cause=subject, p0=True,
            case_ref=ref, customer=customer, cluster=clusters,
        )  # fmt: skip
        pages += [found] if found is not None else []
    for version, reason, at in halted:
        found = page(
            runtime, key=f"rollout:{version}:{at.isoformat()}",
            headline=f"release {version} rollout halted by its error budget", cause=reason,
        )  # fmt: skip
        pages += [found] if found is not None else []
    return pages
