"""The case that a failed upgrade run opens (or links), with the run's diagnostics attached."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session, col, select

from flows.diagnostics import CollectResult, collect_diagnostics
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
            detail = {"case": case.ref, "reason": run.reason[:500]}
            repo.record_audit(runtime.actor, RUN_CASE, f"run/{run_id}", detail, session=session)
        ref, name, since = case.ref, cluster.name, run.started_at or run.created_at
    state = collect_diagnostics(
        cluster=name, case=ref, since=since, until=now, run_id=run_id, return_state=True
    )
    if state.is_completed():
        result: CollectResult = state.result()
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
