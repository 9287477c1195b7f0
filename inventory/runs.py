"""Upgrade runs and their per-node steps: the record a run resumes from after a crash."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from inventory.models import (
    AuditEvent,
    Cluster,
    NodeStep,
    RunKind,
    RunSource,
    RunState,
    StepState,
    UpgradeRun,
)
from inventory.types import utcnow

TAIL_CHARS = 2000
# How the reason of a run stalled by flows/outcomes.py begins (`stalled` tells such a run apart).
STALLED_REASON = "stalled: "
# How many idle windows in a row stall a run (flows/outcomes.py `idle_windows`). A carry-over is audited
# with how many nodes were verified then (`CARRIED_OVER`): the windows in a row in which none more was
# come from those, with no column added. Three, because one idle window is expected now and then (a copy
# of a large package that outlasts the window - kept for the next one - a late approval, a tunnel closed
# once) and a second can still be bad luck (the customer away for a week), but a cause that held three
# windows in a row does not clear itself; each idle window costs the customer a 'rescheduled' mail and a
# moved invite, and three weekly windows are three weeks: long enough to act on, not so long that the
# alert drowns. Two would stop a run after its copy's window and one unlucky one.
STALLED_AFTER = 3


def stalled(run: UpgradeRun) -> bool:
    """Whether `run` is paused by the bound on idle carry-overs (flows/outcomes.py `_stalled`), not by an
    SRE: the rollout's start gate (flows/rollout.py), `upkeep resume` (upkeep/updates.py), what `upkeep
    show`/`runs` and `release status` call it, and the customer's portal ask it."""
    return RunState(run.state) is RunState.paused and str(run.reason).startswith(STALLED_REASON)


# How the reason of a run an SRE paused begins once its announced window ended with it still paused and
# the customer, told of the update, was sent the 'stopped' notice (flows/outcomes.py
# `tell_paused_past_window`, run by the dispatcher's tick). The SRE's own words follow.
PAUSED_STOPPED_REASON = "paused past its window, the customer told 'stopped': "


def paused_stopped(run: UpgradeRun) -> bool:
    """Whether `run` is paused by an SRE and the customer was told it stopped for now (its window ended
    with it paused). SRE-side (`upkeep show`, `release status`) it stays 'paused', not 'stalled'."""
    return RunState(run.state) is RunState.paused and str(run.reason).startswith(PAUSED_STOPPED_REASON)


def stopped_for_now(run: UpgradeRun) -> bool:
    """Whether `run` is stopped for now as its customer was told ('stopped'): stalled by the bound on idle
    windows, or paused by an SRE past the end of its window. The one question asked customer-side (the
    portal's "Stopped for now") and by what follows such a stop: `upkeep resume` plans it for the next
    window outside one, and its 'started' supersedes the 'stopped' (a new SEQUENCE)."""
    return stalled(run) or paused_stopped(run)


class ActiveRunExists(Exception):
    """The cluster already has an update in flight; the database refused a second one."""


def of_known_kind() -> ColumnElement[bool]:
    """Runs of a kind this version knows. A row of another kind (a newer Upkeep sharing the database,
    or SQL by hand; inventory.types.EnumText reads it back as its string) has notice terms and a runbook
    only that version knows: this one neither re-checks, reminds about nor starts it, and one such row
    must not fail the dispatcher's tick for every cluster."""
    return col(UpgradeRun.kind).in_([kind.value for kind in RunKind])


def run_source(source: str) -> RunSource:
    """`source` as a RunSource; any other value is one clear ValueError."""
    try:
        return RunSource(source)
    except ValueError:
        raise ValueError(f"source {source!r}: expected one of {', '.join(RunSource)}") from None


def create_run(
    cluster: Cluster,
    *,
    to_version: str,
    source: str,
    requested_by: str,
    session: Session,
    state: RunState = RunState.running,
) -> UpgradeRun:
    """Insert a run and claim the cluster. The unique `active_cluster_id` makes the claim atomic."""
    assert cluster.id is not None
    run = UpgradeRun(
        cluster_id=cluster.id,
        active_cluster_id=cluster.id,
        from_version=cluster.version,
        to_version=to_version,
        state=state,
        source=run_source(source),
        requested_by=requested_by,
        started_at=utcnow() if state is RunState.running else None,
    )
    session.add(run)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        other = session.exec(select(UpgradeRun).where(UpgradeRun.active_cluster_id == cluster.id)).first()
        detail = f" (run {other.id}, {other.from_version}→{other.to_version}, {other.state})" if other else ""
        raise ActiveRunExists(f"cluster {cluster.name} already has an active update{detail}") from None
    session.add(
        AuditEvent(
            actor=requested_by or "upkeep",
            action="run.created",
            subject=f"run/{run.id}",
            detail={"cluster": cluster.name, "from": run.from_version, "to": to_version, "source": source},
        )
    )
    return run


def get_run(run_id: int, *, session: Session, lock: bool = False) -> UpgradeRun:
    """`lock`: the row locked to the end of the transaction (PostgreSQL FOR UPDATE; SQLite's BEGIN
    IMMEDIATE already serializes writers), for a decision on the run's state that is then written:
    a cancel and a resume deciding at once must not each overwrite the other's outcome."""
    run = session.get(UpgradeRun, run_id, with_for_update=lock, populate_existing=lock)
    if run is None:
        raise LookupError(f"no update {run_id}")
    return run


def finish_run(run: UpgradeRun, state: RunState, *, reason: str = "", session: Session) -> None:
    run.state = state
    run.reason = reason[:TAIL_CHARS]
    run.finished_at = utcnow()
    run.active_cluster_id = None  # releases the cluster for the next update
    session.add(run)
    if run.id is not None:  # a finished run has no open step
        close_open_steps(run.id, f"interrupted: still open when the run ended {state.value}", session=session)
    session.add(
        AuditEvent(
            actor="upkeep",
            action=f"run.{state.value}",
            subject=f"run/{run.id}",
            detail={"reason": reason[:500]} if reason else {},
        )
    )


def close_open_steps(run_id: int, why: str, *, session: Session, at: datetime | None = None) -> int:
    """Close every step of `run_id` still `started` as `interrupted`, saying `why`; how many."""
    from sqlalchemy import update
    from sqlmodel import col

    closed = session.execute(
        update(NodeStep)
        .where(col(NodeStep.run_id) == run_id, col(NodeStep.state) == StepState.started)
        .values(state=StepState.interrupted, output_tail=why[-TAIL_CHARS:], finished_at=at or utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(closed.rowcount)  # type: ignore[attr-defined]


def start_step(
    run_id: int, node_id: int | None, step: str, *, detail: str = "", session: Session
) -> NodeStep:
    row = NodeStep(run_id=run_id, node_id=node_id, step=step, detail=detail)
    session.add(row)
    session.flush()
    return row


def end_step(
    row: NodeStep,
    state: StepState,
    *,
    output: str = "",
    detail: str | None = None,
    session: Session,
    at: datetime | None = None,
) -> None:
    row.state = state
    row.output_tail = output[-TAIL_CHARS:]
    if detail is not None:
        row.detail = detail
    row.finished_at = at or utcnow()
    session.add(row)


def run_steps(run_id: int, *, session: Session) -> Sequence[NodeStep]:
    return session.exec(select(NodeStep).where(NodeStep.run_id == run_id).order_by(col(NodeStep.id))).all()


def list_runs(*, session: Session, limit: int = 50) -> Sequence[UpgradeRun]:
    return session.exec(select(UpgradeRun).order_by(col(UpgradeRun.id).desc()).limit(limit)).all()


def mark_told(run_id: int, *, now: datetime, session: Session) -> None:
    """The customer was just told of update `run_id` (an announcement delivered): the first time
    counts, later deliveries change nothing."""
    session.execute(
        update(UpgradeRun)
        .where(col(UpgradeRun.id) == run_id, col(UpgradeRun.told_at).is_(None))
        .values(told_at=now)
    )


REFUSED = "approval refused by "  # how the reason of a run refused at its approval gate begins


def refusal(who: str, reason: str) -> str:
    """A refused run's reason, as `upkeep approve --refuse` records it and the flow when it wakes."""
    return f"{REFUSED}{who}: {reason or 'no reason given'}"
