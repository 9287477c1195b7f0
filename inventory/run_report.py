"""Read models for the CLI: runs and their per-node results, as rows for tables and --json."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, Session, col, select

from inventory.models import (
    AuditEvent,
    Cluster,
    Customer,
    Node,
    NodeStep,
    RunSource,
    RunState,
    StepState,
    UpgradeRun,
)
from inventory.outbox import Notice
from inventory.public import (
    DecisionPublic,
    DeferralsPublic,
    NodeResultPublic,
    NoticeStatePublic,
    PublicModel,
    SchedulePublic,
    SlotPublic,
)
from inventory.runs import run_steps, stalled
from inventory.windows import MaintenanceWindow
from scheduling.deferral import DeferralPolicy

# Decisions people took about a run, shown with who took them and why (`upkeep show`).
DECISIONS = (
    "run.approved",
    "run.refused",
    "run.cancel_requested",
    "run.window_overridden",
    "run.pause_requested",
)


def run_phase(run: UpgradeRun, session: Session) -> str:
    """The state, made explicit where it would mislead: a running run waiting at its approval gate
    (its `approval` step open) is `awaiting_approval`, not running; a run paused by the bound on idle
    windows (flows/outcomes.py) is `stalled`, not paused as by an SRE who will resume it."""
    if stalled(run):
        return "stalled"
    if run.state == RunState.running:
        waiting = select(NodeStep.id).where(
            NodeStep.run_id == run.id, NodeStep.step == "approval", NodeStep.state == StepState.started
        )
        if session.exec(waiting.limit(1)).first() is not None:
            return "awaiting_approval"
    return str(run.state)


def decisions(run: UpgradeRun, session: Session) -> list[dict[str, Any]]:
    query = (
        select(AuditEvent)
        .where(AuditEvent.subject == f"run/{run.id}", col(AuditEvent.action).in_(DECISIONS))
        .order_by(col(AuditEvent.id))
    )
    return [
        DecisionPublic(
            at=event.at,
            by=event.actor,
            decision=event.action.removeprefix("run.").removesuffix("_requested"),
            reason=str(event.detail.get("reason", "")),
        ).model_dump(mode="json")
        for event in session.exec(query)
    ]


class RunPublic(PublicModel):
    """A run as `upkeep runs --json` and `upkeep show --json` print it: the table's public face (the
    `UpgradeRun` row without lease bookkeeping, notice sequence or flow-run id), plus its cluster's
    name and phase. Its schedule (`schedule_fields`) follows it in the same object."""

    id: int | None
    cluster: str | int  # the cluster's name (its id if the cluster is gone)
    from_version: str = Field(alias="from")
    to_version: str = Field(alias="to")
    state: RunState
    phase: str  # the state, or awaiting_approval or stalled (run_phase)
    window_start: datetime | None
    window_end: datetime | None
    override_reason: str
    source: RunSource | str  # str: a source a newer Upkeep wrote, shown as stored (EnumText)
    requested_by: str
    created_at: datetime
    finished_at: datetime | None
    reason: str
    # Who is carrying a running run out, and until when without a renewal (flows/lease.py).
    lease_owner: str | None
    lease_until: datetime | None

    @classmethod
    def of(cls, run: UpgradeRun, session: Session) -> RunPublic:
        cluster = session.get(Cluster, run.cluster_id)
        fields = run.model_dump(include=set(cls.model_fields) - {"cluster", "phase"})
        fields |= {"cluster": cluster.name if cluster else run.cluster_id, "phase": run_phase(run, session)}
        return cls.model_validate(fields | {"from": run.from_version, "to": run.to_version})


def run_row(run: UpgradeRun, session: Session) -> dict[str, Any]:
    cluster = session.get(Cluster, run.cluster_id)
    public = RunPublic.of(run, session).model_dump(mode="json", by_alias=True)
    return public | schedule_fields(run, cluster, session)


def schedule_fields(run: UpgradeRun, cluster: Cluster | None, session: Session) -> dict[str, Any]:
    """The announced slot and what the customer may do about it: `slot` ({start, end} ISO 8601 with
    offset, or null), the zone its window is read in, urgency, deferrals used and left, why it is held
    (or null), and every notice of the update with its state (superseded ones included)."""
    customer = session.get(Customer, cluster.customer_id) if cluster else None
    window = (
        session.exec(
            select(MaintenanceWindow.timezone)
            .where(MaintenanceWindow.cluster_id == run.cluster_id)
            .order_by(col(MaintenanceWindow.id))
        ).first()
        if cluster
        else None
    )
    zone = window or (customer.timezone if customer else None)
    slot = SlotPublic(start=run.slot_start, end=run.slot_end) if run.slot_start and run.slot_end else None
    limit = DeferralPolicy().max_count
    notices = session.exec(
        select(Notice).where(Notice.update_ref == f"update-{run.id}").order_by(col(Notice.id))
    ).all()
    left = 0 if run.urgent else max(0, limit - run.deferrals)
    return SchedulePublic(
        slot=slot,
        window_timezone=zone,
        urgent=run.urgent,
        deferrals=DeferralsPublic(used=run.deferrals, left=left),
        held_reason=run.held_reason or None,
        notices=[NoticeStatePublic.model_validate(n) for n in notices],
    ).model_dump(mode="json")


# A node's own work in a run, in order: a failure or interruption in one of these may have left the node
# changed; a pre-flight, download, copy or wait before them changes nothing it runs.
NODE_WORK = ("check", "upgrade", "health", "verify")


def node_unfinished(row: dict[str, Any]) -> bool:
    """Whether `node_rows`' `row` is a node whose upgrade began and did not complete (its state unknown
    or failed part-way), not one that was only pre-flighted (a failed pre-flight changed nothing)."""
    result = str(row["result"])
    if row["after"]:
        return False
    return result == "interrupted" or result.split(":", 1)[0] in {f"failed at {step}" for step in NODE_WORK}


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
        work = [s for s in steps if s.step in NODE_WORK]
        seconds = None
        if work and work[-1].finished_at:
            seconds = round((work[-1].finished_at - work[0].started_at).total_seconds(), 2)
        # A failed step of the node's own work first; a failed pre-flight or copy (nothing changed on
        # the node) only when no work was done on it: a pre-flight that failed in a later window (its
        # support tunnel closed) hid an upgrade interrupted before it, and a node only pre-flighted read
        # as a failed upgrade in the endings' words (tests/unit/test_stall_tunnel.py).
        failed = [s for s in failed if s.step in NODE_WORK] or ([] if work else failed)
        if failed:
            last_line = (failed[-1].output_tail.strip().splitlines() or [""])[-1]
            result = f"failed at {failed[-1].step}: {last_line}"
        elif verify:
            result = "upgraded" if any(s.step == "upgrade" for s in steps) else "already at target"
        elif work and run.state == RunState.running and not run.finished_at:
            result = "in progress"
        elif any(s.step != "check" for s in work):
            # Its upgrade began (an upgrade, health or verify step) and was not verified: stopped part-way
            # (paused, crash, taken over, then ended): what it runs now is unknown, never "not reached".
            result = "interrupted"
        elif run.finished_at:
            result = "not reached"
        else:
            # Nothing done to it yet: pre-flight and the package copy do not count, nor a version check
            # that did not fail (a read: cut by a closed support tunnel, or the run stopped right after
            # it, no upgrade command was sent - its step is written before the command; adv60).
            result = "pending"
        row = NodeResultPublic(
            node=node.hostname,
            before=check[0].output_tail if check else None,
            after=verify[-1].output_tail if verify else None,
            seconds=seconds,
            result=result,
        )
        rows.append(row.model_dump(mode="json"))
    return rows
