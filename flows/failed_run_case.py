"""The case that a failed upgrade run opens (or links), with the run's diagnostics attached."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from flows.diagnostics import CollectResult, collect_diagnostics
from flows.links import flow_run_url
from flows.runtime import Runtime, current
from inventory import cases, repo
from inventory.db import session_scope
from inventory.models import AuditEvent, Cluster, UpgradeRun
from inventory.runs import get_run
from scheduling.sla import Category, Priority
from tasks.diagnostics import redact_text

RUN_CASE = "run.case_opened"


@dataclass(frozen=True)
class FailureReport:
    case_id: str
    bundle_url: str | None
    partial: bool
    error: str = ""


def handle_failed_run(run_id: int, *, runtime: Runtime, now: datetime) -> FailureReport:
    """After a failed upgrade run: attach diagnostics for the run's time span to the case the update was
    for (`run.case_ref`, if open), else to the case an earlier call opened for this run, else to a new P1
    Issue case for the cluster. Diagnostics that fail do not raise: the report carries the case and the
    error, for the SRE notification."""
    if current() is not runtime:
        raise RuntimeError("handle_failed_run: `runtime` must be the one flows.runtime.current() returns")
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        cluster = session.get(Cluster, run.cluster_id)
        assert cluster is not None
        case = _case_of_run(run, session=session)
        if case is None:
            case = cases.open_case(
                customer=repo.customer_of(cluster, session=session),
                clusters=[cluster],
                subject=f"Upgrade of {cluster.name} to {run.to_version} failed (run {run_id})",
                category=Category.ISSUE,
                priority=Priority.P1,
                now=now,
                opened_by=runtime.actor,
                session=session,
            )
            detail = {
                "case": case.ref,
                "reason": run.reason[:500],
                "flow_run_url": flow_run_url(run.flow_run_id),
            }
            repo.record_audit(runtime.actor, RUN_CASE, f"run/{run_id}", detail, session=session)
        ref, name, since = case.ref, cluster.name, run.started_at or run.created_at
    state = collect_diagnostics(
        cluster=name, case=ref, since=since, until=now, run_id=run_id, return_state=True
    )
    if state.is_completed():
        result: CollectResult = state.result()
        if result.reached_no_node:
            return FailureReport(ref, None, True, error=redact_text(result.no_node_reason()))
        return FailureReport(ref, result.url, result.partial)
    return FailureReport(ref, None, True, error=redact_text(state.message or "diagnostics failed"))


def _case_of_run(run: UpgradeRun, *, session: Session) -> cases.Case | None:
    """The open case the run was for, or else the one an earlier `handle_failed_run` opened for it."""
    refs: list[object] = [run.case_ref] if run.case_ref else []
    query = select(AuditEvent).where(AuditEvent.action == RUN_CASE, AuditEvent.subject == f"run/{run.id}")
    refs += [event.detail.get("case") for event in session.exec(query.order_by(col(AuditEvent.id).desc()))]
    for ref in refs:
        case = session.exec(select(cases.Case).where(cases.Case.ref == ref)).first()
        if case is not None and case.status is not cases.CaseStatus.closed:
            return case
    return None


CASE_NOTE = "case.note"


def close_failure_case(runtime: Runtime, run_id: int) -> list[str]:
    """A run that failed and then succeeded (a retry from the Prefect UI): the case its failure
    opened gets a note with the link, and is closed when it was opened only for that failure (not
    the case the update was for, and no other run's failure). Returns the refs noted."""
    now = runtime.clock()
    noted = []
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        url = flow_run_url(run.flow_run_id)
        opened = session.exec(
            select(AuditEvent).where(AuditEvent.action == RUN_CASE, AuditEvent.subject == f"run/{run_id}")
        ).all()
        for ref in dict.fromkeys(str(event.detail.get("case")) for event in opened):
            case = session.exec(select(cases.Case).where(cases.Case.ref == ref)).first()
            if case is None or case.status is cases.CaseStatus.closed:
                continue
            note = f"run {run_id} was retried and succeeded: {run.from_version}→{run.to_version}" + (
                f" ({url})" if url else ""
            )
            detail = {"note": note, "run": run_id, "flow_run_url": url}
            repo.record_audit(runtime.actor, CASE_NOTE, f"case/{ref}", detail, session=session)
            others = [
                e
                for e in session.exec(select(AuditEvent).where(AuditEvent.action == RUN_CASE)).all()
                if e.detail.get("case") == ref and e.subject != f"run/{run_id}"
            ]
            if not others and ref != run.case_ref:
                cases.close_case(case, reason=note, now=now, actor=runtime.actor, session=session)
            noted.append(ref)
    return noted


def case_links(ref: str, *, session: Session) -> dict[str, list[dict[str, object]]]:
    """For `upkeep case show`: the runs whose failure opened or joined the case (with their Prefect
    flow-run links) and the notes written on it."""
    runs = [
        {"run": int(e.subject.removeprefix("run/")), "flow_run_url": e.detail.get("flow_run_url", "")}
        for e in session.exec(select(AuditEvent).where(AuditEvent.action == RUN_CASE)).all()
        if e.detail.get("case") == ref
    ]
    notes = [
        {"at": e.at.isoformat(), "by": e.actor, "note": e.detail.get("note", "")}
        for e in session.exec(
            select(AuditEvent)
            .where(AuditEvent.action == CASE_NOTE, AuditEvent.subject == f"case/{ref}")
            .order_by(col(AuditEvent.id))
        ).all()
    ]
    return {"runs": runs, "notes": notes}
