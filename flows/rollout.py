"""Release waves at start time: may this cloud-release run start now? Plus halt, resume and status.

The dispatcher asks `start_gate(run, session=..., now=...)` for every due cloud-release run, in the
transaction in which it then marks the run started. A run may start when, in this order:

1. it belongs to no rollout (nothing here applies), or it has started before (a run carried over to a
   later window, or paused, finishes what it began: a half-upgraded cluster is worse than a halt);
2. the rollout is not halted, and its error budget holds (else it halts now, once, with the reason);
3. every earlier ring (scheduling.waves.RINGS_DEFAULT) has no planned, running or paused run left, and
   the last run of the nearest earlier ring with runs finished `soak_minutes` ago (wave_may_start);
4. fewer than `max_concurrent` runs of the rollout, and fewer than `per_customer_limit` of the run's
   customer, are in flight (running or paused, or carried over to a later window after changing a node;
   not a stalled or carried-over run that changed nothing).

Those rules, without the database, are in `flows.rollout_rules`; this module loads and locks.

Error budget (AWS SSM MaxErrors / Ansible max_fail_percentage, `scheduling.waves.budget_exceeded`) over
the whole rollout: started = runs that started (or failed), each once however many windows it was
carried over, failed = runs that failed, both counted from the last `resume_rollout` on (which
acknowledges the runs that had ended before it, failures included; a run still in flight then, a
carried-over one between its windows, counts after it: its start and its outcome together). A ring
with a carried-over run has not finished (its runs are planned again): the next ring waits, and its
soak runs from that run's end. The gate locks the
rollout row (PostgreSQL FOR UPDATE; SQLite's BEGIN IMMEDIATE serialises anyway), so concurrent
dispatchers decide one after the other and the concurrency limits hold if the caller marks the run
running in the same transaction.

Halting is recorded with an AuditEvent ("rollout.halted"), an ERROR log line and an SRE alert listing
the failures that tripped the budget (flows/alerts.py), once: the state change happens once. Customers
get no notice of the halt itself (their runs stay planned; a window that passes re-slots them with a
`rescheduled` notice).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from flows.alerts import alert_sre
from flows.rollout_rules import (
    IN_FLIGHT,
    acknowledge,
    budget_of,
    budget_reason,
    concurrency_reason,
    tally,
    wave_reason,
)
from flows.runtime import RuntimeNotConfigured, current
from inventory.models import Cluster, NodeStep, RunState, UpgradeRun
from inventory.outbox import Notice, NoticeState
from inventory.releases import (
    Member,
    ReleaseError,
    Rollout,
    RolloutCluster,
    RolloutState,
    get_rollout,
    ring_rows,
    rollout_members,
    rollout_of_run,
)
from inventory.repo import record_audit
from inventory.types import utcnow
from scheduling.times import describe, fmt_instant
from scheduling.waves import RINGS_DEFAULT

log = logging.getLogger(__name__)


def start_gate(run: UpgradeRun, *, session: Session, now: datetime) -> str | None:
    """None if `run` may start now; otherwise why it waits (or why the rollout halted)."""
    assert run.id is not None
    found = rollout_of_run(run.id, session=session)
    # A run mid-way (a node changed) goes on: its cluster runs mixed versions. One that began and was
    # carried over before its first node (its window had no room left) changed nothing: it is a further
    # update of the release like any other, and a halted rollout started it in its next window (adv51).
    if found is None or (run.started_at is not None and _touched(run, session)):
        return None
    # Locked and read afresh: the copy `rollout_of_run` loaded before the lock may predate a halt or a
    # resume committed meanwhile (decided on, it halted the release again right after a resume; adv60).
    locked = select(Rollout).where(Rollout.id == found[0].id).with_for_update()
    rollout = session.exec(locked.execution_options(populate_existing=True)).one()
    halted = halt_if_budget_exceeded(rollout, session=session, now=now)
    if halted:
        return f"release {rollout.version} rollout is halted: {halted}"
    members = _members(rollout, session)
    soak = timedelta(minutes=rollout.soak_minutes)
    waiting = wave_reason(found[1].ring, tally(members), soak=soak, now=now)
    if waiting:
        return waiting
    in_flight = [
        m for m in members if m.run is not None and m.run.id != run.id and _in_flight(m.run, session)
    ]
    cluster = session.get(Cluster, run.cluster_id)
    same_customer = sum(1 for m in in_flight if cluster and m.cluster.customer_id == cluster.customer_id)
    return concurrency_reason(
        len(in_flight),
        same_customer,
        max_concurrent=rollout.max_concurrent,
        per_customer_limit=rollout.per_customer_limit,
    )


def _touched(run: UpgradeRun, session: Session) -> bool:
    """Whether a node was changed in `run` (flows/records.py `nodes_touched`, in this transaction), not
    only asked its version: `upgrade_node`'s check is a read, and the upgrade's step is written before
    its command is sent. A run carried over after a check alone (cut by a closed support tunnel, or
    stopped right after it) changed nothing: it waits at a halted rollout and holds no slot (adv60)."""
    from flows.records import UNTOUCHED

    changed = col(NodeStep.step).not_in((*UNTOUCHED, "check"))
    query = select(NodeStep.id).where(col(NodeStep.run_id) == run.id, changed).limit(1)
    return session.exec(query).first() is not None


def _in_flight(run: UpgradeRun, session: Session) -> bool:
    """Whether `run` holds a slot of the in-flight limits: running or paused (not stalled with no node
    touched, `_idle`), or carried over to its next window after changing a node - its cluster runs mixed
    versions, and it goes on there whatever the limits say (this gate lets it through), so a slot freed
    between its windows was taken twice then. Carried over before any node changed, it holds none: a
    further update like any other, it waits here in its next window (adv51)."""
    if run.state in IN_FLIGHT:
        return not _idle(run, session)
    return run.state is RunState.planned and run.started_at is not None and _touched(run, session)


def _idle(run: UpgradeRun, session: Session) -> bool:
    """A run stalled (flows/outcomes.py: paused after windows in a row with no node upgraded, until the
    SRE resumes or cancels it) that never touched a node: its cluster runs what it ran, no half-upgraded
    cluster for the limits to guard. Counted in flight, it held its customer's (and the release's) slot
    for as long as nobody acted, and their other clusters waited at this gate window after window, each
    re-slotted with a 'rescheduled' mail (adv41). A stalled run mid-way still counts."""
    from flows.records import stalled

    return stalled(run) and not _touched(run, session)


def _members(rollout: Rollout, session: Session) -> list[Member]:
    """The rollout's members, loaded once per transaction: a dispatcher asks about many runs in one
    transaction, and its claims (ORM UPDATEs of the runs) update these same objects in the session."""
    key, transaction = ("rollout-members", rollout.id), session.get_transaction()
    cached = session.info.get(key)
    if cached is None or cached[0] is not transaction:
        cached = session.info[key] = (transaction, rollout_members(rollout, session=session, fresh=True))
    return list(cached[1])


def halt_if_budget_exceeded(rollout: Rollout, *, session: Session, now: datetime) -> str | None:
    """The halt reason if the rollout is (now) halted, else None. Halts at most once per breach."""
    if rollout.state is RolloutState.halted:
        return rollout.halted_reason
    members = _members(rollout, session)
    reason = budget_reason(
        budget_of(rollout), tally(members), rollout.acknowledged_started, rollout.acknowledged_failed
    )
    if reason is None:
        return None
    failed = [m.cluster.name for m in members if m.run is not None and m.run.state is RunState.failed]
    names = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
    text = f"{reason} (failed: {names}); no further update of this release starts"
    rollout.state, rollout.halted_reason, rollout.updated_at = RolloutState.halted, text[:2000], now
    session.add(rollout)
    record_audit(
        "upkeep", "rollout.halted", f"rollout/{rollout.version}", {"reason": text[:500]}, session=session
    )
    _alert_halted(rollout, members, reason, session)
    log.error(
        "release %s rollout halted: %s; `upkeep release resume %s` continues it",
        rollout.version,
        text,
        rollout.version,
    )
    return text


def _alert_halted(rollout: Rollout, members: list[Member], reason: str, session: Session) -> None:
    """The SRE hears of a halt at once, with every failure that tripped the budget (cluster, run,
    why). Queued in the halting transaction; its key makes it once per halt."""
    try:
        runtime = current()
    except RuntimeNotConfigured:  # a bare rules check (tests of the gate alone): the audit row stays
        log.warning("release %s halted with no runtime to alert through", rollout.version)
        return
    failures = [
        f"  {m.cluster.name}: run {m.run.id}: {(m.run.reason or 'failed').splitlines()[0][:200]}"
        for m in members
        if m.run is not None and m.run.state is RunState.failed
    ]
    alert_sre(
        runtime,
        kind="rollout-halted",
        headline=f"release {rollout.version} rollout halted by its error budget",
        cause=reason,
        detail="\n".join(["The failures that tripped it:", *failures, "No further update of it starts."]),
        action=f"Look at the failures, then `upkeep release resume {rollout.version}` to go on.",
        key=f"rollout-{rollout.version}:halted:{rollout.acknowledged_failed}",
        session=session,
    )


def resume_rollout(
    version: str, *, session: Session, now: datetime | None = None, actor: str = "upkeep"
) -> str:
    """Clear a halt: the failures so far are acknowledged and the budget counts afresh from here."""
    rollout = get_rollout(version, session=session, lock=True)
    if rollout.state is not RolloutState.halted:
        raise ReleaseError(
            f"release {version} rollout is {rollout.state.value}, not halted: nothing to resume"
        )
    tallies = tally(rollout_members(rollout, session=session))
    rollout.acknowledged_started, rollout.acknowledged_failed = acknowledge(tallies)
    before, rollout.halted_reason = rollout.halted_reason, ""
    rollout.state, rollout.updated_at = RolloutState.rolling, now or utcnow()
    session.add(rollout)
    detail = {"was": before[:500], "acknowledged_failed": rollout.acknowledged_failed}
    record_audit(actor, "rollout.resumed", f"rollout/{version}", detail, session=session)
    return f"release {version} rollout resumed ({rollout.acknowledged_failed} failure(s) acknowledged)"


def release_status(version: str, *, session: Session) -> dict[str, Any]:
    """Per ring: counts by status (`notified`: planned or deferred runs whose `scheduled` notice was
    sent) and every cluster with its run, slot and reason; the error budget; halted and why."""
    rollout = get_rollout(version, session=session)
    members = rollout_members(rollout, session=session)
    refs = {f"update-{m.run.id}": m.run.id for m in members if m.run is not None}  # a run's notice key
    query = select(Notice.update_ref).where(
        col(Notice.update_ref).in_(refs), Notice.kind == "scheduled", Notice.state == NoticeState.sent
    )
    notified = {refs[ref] for ref in session.exec(query) if refs.get(ref) is not None}
    tallies = tally(members)
    started = sum(t.started for t in tallies) - rollout.acknowledged_started
    failed = sum(t.failed for t in tallies) - rollout.acknowledged_failed
    return {
        "version": rollout.version,
        "state": rollout.state.value,
        "halted": rollout.state is RolloutState.halted,
        "halted_reason": rollout.halted_reason,
        "budget": {
            "max_failures": rollout.max_failures,
            "max_failure_rate": rollout.max_failure_rate,
            "started": started,
            "failed": failed,
            "exceeded": budget_reason(
                budget_of(rollout), tallies, rollout.acknowledged_started, rollout.acknowledged_failed
            ),
        },
        "soak_minutes": rollout.soak_minutes,
        "deadline": rollout.plan_until.isoformat() if rollout.plan_until else None,
        "rings": ring_rows(members, notified={n for n in notified if n is not None}, session=session),
    }


def ring_gate(rollout_id: int, ring: str, *, session: Session) -> tuple[datetime, str] | None:
    """The earliest start a `ring` cluster's slot may be announced for: the last slot of the rollout's
    earlier rings (still planned, running or paused) ends plus the soak; None when no earlier ring has
    one. The start gate holds a later ring until then anyway: an announced slot before it would be
    untrue (issue #13: announced slots match the gate)."""
    order = {name: n for n, name in enumerate(RINGS_DEFAULT)}
    rank = order.get(ring, len(order))
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        return None
    query = (
        select(RolloutCluster.ring, UpgradeRun.slot_end)
        .join(UpgradeRun, col(UpgradeRun.id) == RolloutCluster.run_id)
        .where(
            RolloutCluster.rollout_id == rollout_id,
            col(UpgradeRun.state).in_([RunState.planned, RunState.running, RunState.paused]),
            col(UpgradeRun.slot_end).is_not(None),
        )
    )
    ends = [
        (end, other)
        for other, end in session.exec(query).all()
        if end is not None and order.get(other, len(order)) < rank
    ]
    if not ends:
        return None
    end, other = max(ends)
    soak = timedelta(minutes=rollout.soak_minutes)
    note = (
        f"ring {ring} waits for ring {other} (last slot ends {fmt_instant(end)}) plus {describe(soak)} soak"
    )
    return end + soak, note
