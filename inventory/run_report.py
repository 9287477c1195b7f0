"""Read models for the CLI: runs and their per-node results, as rows for tables and --json."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from inventory.models import Cluster, Node, NodeStep, StepState, UpgradeRun
from inventory.runs import run_steps


def run_row(run: UpgradeRun, session: Session) -> dict[str, Any]:
    cluster = session.get(Cluster, run.cluster_id)
    return {
        "id": run.id,
        "cluster": cluster.name if cluster else run.cluster_id,
        "from": run.from_version,
        "to": run.to_version,
        "state": str(run.state),
        "source": run.source,
        "requested_by": run.requested_by,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "reason": run.reason,
        # Who is carrying a running run out, and until when without a renewal (flows/lease.py).
        "lease_owner": run.lease_owner,
        "lease_until": run.lease_until.isoformat() if run.lease_until else None,
    }


def node_rows(run: UpgradeRun, session: Session) -> list[dict[str, Any]]:
    """Per node: version before and after, how long its steps took, and how it ended."""
    nodes = session.exec(
        select(Node).where(Node.cluster_id == run.cluster_id).order_by(col(Node.position))
    ).all()
    steps_by_node: dict[int | None, list[NodeStep]] = {}
    for step in run_steps(run.id or 0, session=session):
        steps_by_node.setdefault(step.node_id, []).append(step)
    rows = []
    for node in nodes:
        steps = steps_by_node.get(node.id, [])
        check = [s for s in steps if s.step == "check" and s.state is StepState.succeeded]
        verify = [s for s in steps if s.step == "verify" and s.state is StepState.succeeded]
        failed = [s for s in steps if s.state is StepState.failed]
        work = [s for s in steps if s.step in ("check", "upgrade", "health", "verify")]
        seconds = None
        if work and work[-1].finished_at:
            seconds = round((work[-1].finished_at - work[0].started_at).total_seconds(), 2)
        if failed:
            last_line = (failed[-1].output_tail.strip().splitlines() or [""])[-1]
            result = f"failed at {failed[-1].step}: {last_line}"
        elif verify:
            result = "upgraded" if any(s.step == "upgrade" for s in steps) else "already at target"
        elif steps:
            result = "in progress" if not run.finished_at else "not reached"
        else:
            result = "untouched"
        rows.append(
            {
                "node": node.hostname,
                "before": check[0].output_tail if check else None,
                "after": verify[-1].output_tail if verify else None,
                "seconds": seconds,
                "result": result,
            }
        )
    return rows
