"""What people watching a run in the Prefect UI see: progress per node, then a summary and a table."""

from __future__ import annotations

from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.plan import UpdatePlan
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.run_report import node_rows, run_row
from inventory.runs import get_run


class Progress:
    """A progress artifact moved on after every node."""

    def __init__(self, plan: UpdatePlan) -> None:
        self._total = len(plan.nodes)
        artifact = create_progress_artifact(progress=0.0, description=f"Nodes of {plan.label}")
        self._id: UUID | None = artifact if isinstance(artifact, UUID) else None

    def update(self, done: int) -> None:
        if self._id is not None:
            update_progress_artifact(self._id, progress=100.0 * done / self._total)


def summary_artifacts(runtime: Runtime, plan: UpdatePlan, run_id: int) -> None:
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        summary, nodes = run_row(run, session), node_rows(run, session)
    create_table_artifact(key="update-nodes", table=nodes, description=f"Nodes of {plan.label}")
    lines = [
        f"# Update {plan.label}",
        "",
        f"- run: {summary['id']} ({summary['state']}), requested by {summary['requested_by']}"
        f" via {summary['source']}",
        f"- package: `{plan.package}` (sha256 `{plan.sha256[:16]}…`)",
        f"- nodes: {len(nodes)}, upgraded: {sum(1 for n in nodes if n['result'] == 'upgraded')}",
    ]
    create_markdown_artifact(key="update-summary", markdown="\n".join(lines), description=plan.label)
