"""The optional approval gate: the run pauses in Prefect until someone approves or refuses it.

`upkeep approve RUN` (or the Prefect UI's resume form) answers with an `Approval`. The pause keeps the
cluster claimed, so nothing else can start on it while the question is open.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.plan import UpdatePlan
from flows.records import recorded
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.models import AuditEvent
from inventory.runs import get_run

APPROVAL_STEP = "approval"  # the NodeStep (no node) open while the run waits at its gate


class Approval(RunInput):
    approved: bool
    approver: str = ""
    reason: str = ""


def wait_for_approval(runtime: Runtime, run_id: int, plan: UpdatePlan) -> bool:
    """True when the run may go on: no approval needed, already given, or given now."""
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        if not run.needs_approval or run.approved_by:
            return True
    get_run_logger().warning(
        "run %s (%s) waits for approval: `upkeep approve %s` or resume it in the Prefect UI",
        run_id,
        plan.label,
        run_id,
    )
    # Recorded as a step of its own: while it is open the run's phase is `awaiting_approval`
    # (inventory/run_report.py), and no node counts as touched.
    with recorded(runtime.engine, run_id, None, APPROVAL_STEP) as note:
        answer = pause_flow_run(
            wait_for_input=Approval,
            timeout=int(runtime.approval_timeout),
            poll_interval=1,
            key=f"approval-{run_id}",
        )
        who = answer.approver or "unknown"
        note.output = f"{'approved' if answer.approved else 'refused'} by {who}: {answer.reason}"
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        if answer.approved:
            run.approved_by = who
        else:
            run.reason = f"approval refused by {who}: {answer.reason or 'no reason given'}"
        session.add(run)
        session.add(
            AuditEvent(
                actor=answer.approver or "unknown",
                action="run.approved" if answer.approved else "run.refused",
                subject=f"run/{run_id}",
                detail={"reason": answer.reason},
            )
        )
    return answer.approved
