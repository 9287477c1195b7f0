"""What people watching a run in the Prefect UI see: progress per node, then a summary with the node table.

All of it is best effort. Our database is the record of a run; these are copies for the UI, written
through the Prefect API. When that API is unreachable (after the client's own retries), the UI misses
an update and a warning says so; the run carries on. Raising instead once failed a run whose node had
just been upgraded: customer told "could not be completed", a P1 case opened, and `upkeep resume`
refusing the failed run (tests/faults/test_prefect_api.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.logging import get_logger

from flows.plan import UpdatePlan
from flows.runtime import Runtime
from inventory.db import session_scope
from inventory.run_report import node_rows, run_row
from inventory.runs import get_run

T = TypeVar("T")
log = get_logger("upkeep.report")


def best_effort(what: str, call: Callable[[], T]) -> T | None:
    """`call()`, or None with a warning when it fails: for writes that only the UI reads."""
    try:
        return call()
    except Exception as exc:
        log.warning("Prefect UI: %s not written (%s: %s); the run goes on", what, type(exc).__name__, exc)
        return None


class Progress:
    """A progress artifact moved on after every node; its description lists how each node ended, so
    the per-node log lines need not go to the API as well (one call per node instead of two)."""

    def __init__(self, plan: UpdatePlan) -> None:
        self._total = len(plan.nodes)
        self._label = f"Nodes of {plan.label}"
        self._ended: list[str] = []
        artifact = best_effort(
            "progress artifact",
            lambda: create_progress_artifact(progress=0.0, description=self._label),
        )
        self._id: UUID | None = artifact if isinstance(artifact, UUID) else None

    def update(self, done: int, node: str = "", outcome: str = "") -> None:
        if node:
            self._ended.append(f"- {node}: {outcome}")
        artifact_id = self._id
        if artifact_id is not None:
            description = "\n".join([self._label, "", *self._ended])
            best_effort(
                f"progress {done}/{self._total}",
                lambda: update_progress_artifact(
                    artifact_id, progress=100.0 * done / self._total, description=description
                ),
            )


NODE_COLUMNS = ("node", "before", "after", "seconds", "result")


def summary_artifacts(runtime: Runtime, plan: UpdatePlan, run_id: int) -> None:
    """One markdown artifact: the run's summary, then the node table (one API call, not two)."""
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        summary, nodes = run_row(run, session), node_rows(run, session)
    lines = [
        f"# Update {plan.label}",
        "",
        f"- run: {summary['id']} ({summary['state']}), requested by {summary['requested_by']}"
        f" via {summary['source']}",
        f"- package: `{plan.package}` (sha256 `{plan.sha256[:16]}…`)",
        f"- nodes: {len(nodes)}, upgraded: {sum(1 for n in nodes if n['result'] == 'upgraded')}",
        "",
        *markdown_table(nodes, NODE_COLUMNS),
    ]
    best_effort(
        "summary",
        lambda: create_markdown_artifact(
            key="update-summary", markdown="\n".join(lines), description=plan.label
        ),
    )


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[str]:
    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")

    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]
