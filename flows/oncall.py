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

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from flows.alerts import alert_sre
from flows.runtime import Runtime
from inventory import repo
from inventory.alerts import Alert, Page
from inventory.db import session_scope
from inventory.oncall import current_spec
from inventory.runs import STALLED_AFTER, STALLED_REASON
from scheduling.oncall import Person, Rotation, levels, paged_at_level, shift

__all__ = ["OnCallError", "ack", "escalate_due", "page", "rotation", "who"]

log = logging.getLogger(__name__)


class OnCallError(ValueError):
    """A refused on-call request (unknown page, already acknowledged); the message says which."""


def rotation(session: Session) -> Rotation | None:
    spec = current_spec(session)
    return Rotation.from_spec(spec) if spec else None


def stall_headline(run_id: int | None) -> str:
    """The page's headline for an urgent run stalled (flows/outcomes.py `carry_over`, and the tick's
    catch-up in `page_triggers`)."""
    return f"run {run_id} stalled: no progress in {STALLED_AFTER} windows, not re-slotted"


def stall_page_key(run_id: int | None, sequence: int) -> str:
    """The page's key for a run's stall: its own (a failure after the SRE's resume still pages under
    `run:ID`), one per stall (`sequence`, the run's notice SEQUENCE once the stall is recorded)."""
    return f"run:{run_id}:stalled:{sequence}"


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
        try:  # another process paging this key at once (a stall's page and the tick's catch-up): one page
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            existing = session.exec(select(Page).where(Page.key == key)).first()
            if existing is None:  # the violation was about something else
                raise
            return existing.id
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
    """The dispatcher tick's part: every unacknowledged page whose time ran out goes one level up.

    Each step is a compare-and-set on the page as read (level, still unacknowledged): an `oncall ack`
    or another tick that got there first wins, and nobody more is paged. A page about a P0 case that
    has been closed meanwhile stops escalating (audited `oncall.resolved`)."""
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
            page_id, level, escalate_at, paged = row.id, row.level, row.escalate_at, list(row.paged)
            resolved = _resolved(session, row.key)
            if chain is None or level >= levels(chain) or resolved:
                # the chain is exhausted (or gone), or what it was about is over: nobody left to page
                stopped = _step(
                    session, page_id, level, escalate_at, level=level, paged=paged, escalate_at=None
                )
                if stopped and resolved:
                    repo.record_audit(
                        runtime.actor, "oncall.resolved", f"page/{page_id}",
                        {"level": level, "resolved": resolved}, session=session,
                    )  # fmt: skip
                continue
            people = paged_at_level(chain, level + 1, now)
            following = now + runtime.oncall_escalate_after if level + 1 < levels(chain) else None
            if not _step(
                session, page_id, level, escalate_at,
                level=level + 1, paged=[*paged, *(p.name for p in people)], escalate_at=following,
            ):  # fmt: skip
                continue  # acknowledged, or escalated by another tick, since it was read
            headline, _, cause = row.reason.partition(": ")
            run_id, customer, cluster, case_ref = _context(session, page_id, row.key)
            _send(
                runtime, session, row, people, headline, cause or row.reason, run_id, case_ref, cluster,
                customer, level=level + 1,
            )  # fmt: skip
            repo.record_audit(
                runtime.actor, "oncall.escalated", f"page/{page_id}",
                {"level": level + 1, "paged": [p.name for p in people]}, session=session,
            )  # fmt: skip
            escalated.append(page_id)
    return escalated


def _step(session: Session, page_id: int, level: int, escalate_at: datetime | None, /, **values: Any) -> bool:
    """Move the page on only if it is still as read: unacknowledged, at `level`, due at `escalate_at`."""
    won = session.execute(
        update(Page)
        .where(
            col(Page.id) == page_id,
            col(Page.level) == level,
            col(Page.acked_at).is_(None),
            col(Page.escalate_at) == escalate_at,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(won.rowcount == 1)  # type: ignore[attr-defined]


def _resolved(session: Session, key: str) -> str:
    """Why a page needs nobody more: its P0 case is closed ("" while it is not)."""
    from inventory.case_tables import Case, CaseStatus

    kind, _, ref = key.partition(":")
    if kind != "case":
        return ""
    case = session.exec(select(Case).where(Case.ref == ref)).first()
    return f"case {ref} closed" if case is not None and case.status == CaseStatus.closed else ""


def _context(session: Session, page_id: int, key: str) -> tuple[int | None, str, str, str]:
    """The first page's run, customer and cluster, and the case, for every later level's message."""
    first = session.exec(select(Alert).where(Alert.key == f"page-{page_id}:level-0")).first()
    run_id, customer, cluster = (first.run_id, first.customer, first.cluster) if first else (None, "", "")
    kind, _, ref = key.partition(":")
    case_ref = ref if kind == "case" else ""
    if not case_ref and run_id is not None:
        from inventory.runs import get_run

        case_ref = get_run(run_id, session=session).case_ref or ""
    return run_id, customer, cluster, case_ref


def ack(runtime: Runtime, page_id: int, *, actor: str) -> Page:
    """Acknowledge a page: its escalation stops (audited)."""
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        row = session.get(Page, page_id)
        if row is None:
            raise OnCallError(f"no page {page_id} (see `upkeep oncall show`)")
        taken = session.execute(
            update(Page)
            .where(col(Page.id) == page_id, col(Page.acked_at).is_(None))
            .values(acked_at=now, acked_by=actor, escalate_at=None)
            .execution_options(synchronize_session=False)
        )
        session.refresh(row)
        if taken.rowcount != 1:  # type: ignore[attr-defined]  # acknowledged first, maybe just now, by another
            raise OnCallError(f"page {page_id} was already acknowledged by {row.acked_by} at {row.acked_at}")
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


def page_triggers(runtime: Runtime, now: datetime) -> list[int]:
    """The dispatcher tick's other part: page for every open P0 case, every rollout halted by its error
    budget and every urgent run stalled (flows/outcomes.py) that has not been paged yet (however the case
    was opened, the rollout halted, or the process that stalled the run died before its page: the stall
    commits first and pages after, and a paused run has no flow left to page, adv49)."""
    from inventory.case_tables import Case, CaseCluster, CaseStatus
    from inventory.models import Cluster, Customer, RunState, UpgradeRun
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
        stalled = [
            (run.id, stall_page_key(run.id, run.notice_sequence), run.reason, run.case_ref or "")
            for run in session.exec(
                select(UpgradeRun).where(
                    UpgradeRun.state == RunState.paused,
                    col(UpgradeRun.urgent).is_(True),
                    col(UpgradeRun.reason).startswith(STALLED_REASON),
                )
            ).all()
            if stall_page_key(run.id, run.notice_sequence) not in paged
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
    for run_id, key, reason, case_ref in stalled:
        found = page(
            runtime, key=key, headline=f"URGENT update {stall_headline(run_id)}",
            cause=reason.splitlines()[0], run_id=run_id, case_ref=case_ref,
        )  # fmt: skip
        pages += [found] if found is not None else []
    return pages
