"""Schedule integrity: re-check planned updates against the world as it is now, and move the invalid.

`scheduling.validity` is the rule; this module gathers the world for one update from the record (its
cluster's windows, the customer's blackouts and notice terms, the release deadline, open P0/P1 cases,
when the customer was told) and acts on the answer:

* valid: nothing happens;
* invalid, and a valid slot exists (full notice from now, before the deadline): the update moves
  there, the customer gets a `rescheduled` notice (same invite UID, next SEQUENCE) naming the reason,
  and an `update.rescheduled` audit event names it too;
* invalid, and no valid slot exists: the update is held (`held_reason`), never started, the SRE is
  alerted with the reason, and `upkeep calendar` shows it held. A later re-check may re-slot it.

Every move is a compare-and-set on the update's `notice_sequence`, so two processes re-checking the
same update at once (a dispatcher tick and an import) move it once and send one notice.
`plan_only=True` says what would happen without writing anything (`inventory import --dry-run`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from flows.alerts import alert_sre
from flows.portal_welcome import portal_users, welcome_new_users
from flows.rollout import ring_gate
from flows.run_notices import VendorTerms, move_notice, queue_move_notice, queue_run_notice, update_ref
from flows.runtime import RuntimeNotConfigured, current
from inventory import repo
from inventory.case_tables import Case
from inventory.cases import open_blocking_case
from inventory.importer import ImportSummary, apply_inventory, load_inventory, lock_inventory
from inventory.models import Cluster, Customer, Release, RunState, UpgradeRun
from inventory.releases import RolloutCluster
from inventory.runs import of_known_kind
from inventory.windows import blackouts_for, cluster_windows, notice_policy
from scheduling.blackouts import Blackout as BlackoutRule
from scheduling.errors import NoSlot, SchedulingError
from scheduling.validity import PlannedUpdate, Reason, World, invalid_reasons, replacement_slot
from scheduling.windows import Interval, WeeklyWindow

Action = Literal["valid", "moved", "held", "unheld", "raced"]


@dataclass(frozen=True)
class Outcome:
    """What a re-check found and did about one update, in words for `inventory import` and the log."""

    run_id: int
    label: str  # "acme/acme-c1"
    action: Action
    reasons: tuple[str, ...] = ()
    slot: Interval | None = None  # the new slot when moved
    zone: str = "UTC"
    written: bool = True  # False for a dry run
    state: str = ""  # raced: what the update is now

    def describe(self) -> str:
        from zoneinfo import ZoneInfo

        why = "; ".join(self.reasons)
        head = f"{update_ref(self.run_id).replace('-', ' ')} {self.label}"
        if self.action == "valid":
            return f"{head}: still valid"
        if self.action == "raced":
            meanwhile = "started or changed by another process meanwhile"
            return f"{head}: {why} -> not moved: it is {self.state} ({meanwhile})"
        if self.action in ("moved", "unheld"):
            assert self.slot is not None
            local = self.slot.start.astimezone(ZoneInfo(self.zone)).strftime("%a %d %b %H:%M")
            told = "customer notified" if self.written else "customer would be notified"
            verb = "moved" if self.written else "would move"
            return f"{head}: {why} -> {verb} to {local} {self.zone}, {told}"
        verb = "held" if self.written else "would be held"
        return f"{head}: {why} -> {verb}, no valid slot; SRE alerted" + ("" if self.written else " (dry run)")


def world_of(run: UpgradeRun, *, session: Session) -> tuple[World, Cluster, Customer]:
    """The world one planned update lives in, read from the record now."""
    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None and cluster.id is not None
    customer = repo.customer_of(cluster, session=session)
    world = _world(
        windows=cluster_windows(cluster, customer, session=session),
        blackouts=blackouts_for(customer, session=session),
        customer=customer,
        release=_release(run.to_version, session),
        case=open_blocking_case(cluster.id, session=session),
        gate=_ring_gate(run, session),
    )
    return world, cluster, customer


def worlds_of(
    runs: list[UpgradeRun], *, session: Session, failed: dict[int, str] | None = None
) -> dict[int, tuple[World, Cluster]]:
    """`world_of` for many planned updates at once, with each one's cluster: clusters, customers,
    windows, blackouts, releases, blocking cases and rollout entries read in one query each for all of
    them (the dispatcher re-checks every candidate before its claim: seven queries per candidate
    before, ~10 statements per claim). With `failed`, a run whose world cannot be built (a row this
    version cannot load, e.g. an unknown time zone) is left out and its cause put there, instead of
    failing every run's world (found by the adversarial pass on #19)."""
    from inventory.cases import BLOCKING, CaseCluster, CaseStatus
    from inventory.windows import customer_holidays, window_rows

    if not runs:
        return {}
    cluster_ids = {run.cluster_id for run in runs}
    clusters, customers, windows, blackout_rows = window_rows(cluster_ids, session=session)
    blackouts: dict[int | None, list[BlackoutRule] | Exception] = {}
    for customer in customers.values():
        try:
            blackouts[customer.id] = [
                row.rule() for row in blackout_rows if row.customer_id in (customer.id, None)
            ] + customer_holidays(customer)
        except (ValueError, LookupError, SchedulingError) as exc:
            blackouts[customer.id] = exc
    versions = {run.to_version for run in runs}
    releases = {r.version: r for r in session.exec(select(Release).where(col(Release.version).in_(versions)))}
    cases: dict[int, Case] = {}
    for case, cluster_id in session.exec(
        select(Case, CaseCluster.cluster_id)
        .join(CaseCluster)
        .where(
            col(CaseCluster.cluster_id).in_(cluster_ids),
            Case.status != CaseStatus.closed,
            col(Case.priority).in_(BLOCKING),
        )
        .order_by(col(Case.opened_at), col(Case.id))
    ):
        cases.setdefault(cluster_id, case)  # the oldest, as open_blocking_case
    entries = {
        entry.run_id: entry
        for entry in session.exec(
            select(RolloutCluster).where(col(RolloutCluster.run_id).in_({run.id for run in runs}))
        )
    }
    found: dict[int, tuple[World, Cluster]] = {}
    for run in runs:
        assert run.id is not None
        cluster = clusters[run.cluster_id]
        customer = customers[cluster.customer_id]
        entry = entries.get(run.id)
        try:
            rules = blackouts[customer.id]
            if isinstance(rules, Exception):
                raise rules
            world = _world(
                windows=[row.rule(customer.timezone) for row in windows.get(run.cluster_id, [])],
                blackouts=rules,
                customer=customer,
                release=releases.get(run.to_version),
                case=cases.get(run.cluster_id),
                gate=ring_gate(entry.rollout_id, entry.ring, session=session) if entry is not None else None,
            )
        except (ValueError, LookupError, SchedulingError) as exc:
            if failed is None:
                raise
            failed[run.id] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            continue
        found[run.id] = (world, cluster)
    return found


def _world(
    *,
    windows: list[WeeklyWindow],
    blackouts: list[BlackoutRule],
    customer: Customer,
    release: Release | None,
    case: Case | None,
    gate: tuple[datetime, str] | None,
) -> World:
    return World(
        windows=windows,
        blackouts=blackouts,
        notice=notice_policy(customer),
        deadline=release.deadline if release is not None else None,
        blocking_case=f"{case.ref} ({case.priority})" if case is not None else None,
        withdrawn=release is None,
        ring_ready_at=gate[0] if gate else None,
        ring_note=gate[1] if gate else "",
    )


def _ring_gate(run: UpgradeRun, session: Session) -> tuple[datetime, str] | None:
    """A cloud release run's ring gate (its rollout's earlier rings plus soak), so a re-slot keeps
    announced slots in ring order."""
    entry = session.exec(select(RolloutCluster).where(RolloutCluster.run_id == run.id)).first()
    return ring_gate(entry.rollout_id, entry.ring, session=session) if entry is not None else None


def planned_of(run: UpgradeRun) -> PlannedUpdate:
    assert run.slot_start is not None and run.slot_end is not None
    return PlannedUpdate(
        Interval(run.slot_start, run.slot_end),
        kind=run.kind,
        urgent=run.urgent,
        told_at=run.told_at,
        started=run.started_at is not None,
    )


def reasons_for(
    run: UpgradeRun, *, now: datetime, session: Session, world: World | None = None
) -> list[Reason]:
    """Why the planned update `run` may not start in its slot at `now` ([] = it may). `world`: the
    run's world as `worlds_of` read it in this transaction, else it is read here."""
    if run.held_reason:
        return [Reason("window", f"held: {run.held_reason}")]
    if run.slot_start is None or run.slot_end is None:
        return []
    if world is None:
        world, _, _ = world_of(run, session=session)
    return invalid_reasons(planned_of(run), world, now)


def recheck(
    run: UpgradeRun,
    *,
    now: datetime,
    session: Session,
    actor: str,
    vendor: VendorTerms | None = None,
    plan_only: bool = False,
    why: str = "",
) -> Outcome:
    """Re-check one planned (or held) update and move or hold it when invalid (module docstring)."""
    assert run.id is not None
    world, cluster, customer = world_of(run, session=session)
    label = f"{customer.name}/{cluster.name}"
    zone = customer.timezone
    if run.slot_start is None or run.slot_end is None:
        return Outcome(run.id, label, "valid", zone=zone, written=not plan_only)
    planned = planned_of(run)
    if run.held_reason:
        reasons = [f"held: {run.held_reason}"]
    else:
        found = invalid_reasons(planned, world, now)
        if not found:
            return Outcome(run.id, label, "valid", zone=zone, written=not plan_only)
        reasons = [r.text for r in found]
    try:
        slot = replacement_slot(planned, world, now)
    except (NoSlot, SchedulingError) as exc:
        if run.held_reason:  # still nowhere to go: nothing new to say
            return Outcome(run.id, label, "held", (run.held_reason,), zone=zone, written=not plan_only)
        held = f"{'; '.join(reasons)}; no valid slot: {exc}"
        if not plan_only and not _hold(
            run, held, now=now, session=session, actor=actor, vendor=vendor, why=why
        ):
            return _raced(run, label, reasons, zone, session)
        return Outcome(
            run.id, label, "held", (*reasons, f"no valid slot: {exc}"), zone=zone, written=not plan_only
        )
    action: Action = "unheld" if run.held_reason else "moved"
    if not plan_only and not _move(
        run, slot, reasons, now=now, session=session, actor=actor, vendor=vendor, why=why
    ):
        return _raced(run, label, reasons, zone, session)
    return Outcome(run.id, label, action, tuple(reasons), slot, zone, written=not plan_only)


def recheck_planned(
    *,
    now: datetime,
    session: Session,
    actor: str,
    vendor: VendorTerms | None = None,
    plan_only: bool = False,
    clusters: Iterable[int] | None = None,
    versions: Iterable[str] | None = None,
    why: str = "",
) -> list[Outcome]:
    """Re-check every planned update (of `clusters` / to `versions` when given); the changed ones."""
    query = select(UpgradeRun).where(
        UpgradeRun.state == RunState.planned, col(UpgradeRun.slot_start).is_not(None), of_known_kind()
    )
    if clusters is not None:
        query = query.where(col(UpgradeRun.cluster_id).in_(list(clusters)))
    if versions is not None:
        query = query.where(col(UpgradeRun.to_version).in_(list(versions)))
    outcomes = []
    for run in session.exec(query.order_by(col(UpgradeRun.id))).all():
        was_held = bool(run.held_reason)
        outcome = recheck(
            run, now=now, session=session, actor=actor, vendor=vendor, plan_only=plan_only, why=why
        )
        # Still valid, or held before and still without a slot: nothing new to report.
        if outcome.action != "valid" and not (outcome.action == "held" and was_held):
            outcomes.append(outcome)
    return outcomes


def _move(
    run: UpgradeRun,
    slot: Interval,
    reasons: list[str],
    *,
    now: datetime,
    session: Session,
    actor: str,
    vendor: VendorTerms | None,
    why: str,
) -> bool:
    previous, sequence = run.slot_start, run.notice_sequence
    won = session.execute(
        update(UpgradeRun)
        .where(
            col(UpgradeRun.id) == run.id,
            col(UpgradeRun.state) == RunState.planned,
            col(UpgradeRun.notice_sequence) == sequence,
        )
        .values(slot_start=slot.start, slot_end=slot.end, notice_sequence=sequence + 1, held_reason="")
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return False  # someone else moved or started it first
    session.refresh(run)
    detail = {
        "from": previous.isoformat() if previous else None,
        "to": slot.start.isoformat(),
        "reasons": reasons,
        "sequence": run.notice_sequence,
        "trigger": why,
    }
    repo.record_audit(actor, "update.rescheduled", f"run/{run.id}", detail, session=session)
    # Only a customer who knows of the update hears of its move: an SRE's `request --now` carried over
    # in silence, then moved off a new blackout, was mailed 'rescheduled' as its first word (adv51, as
    # flows/schedule.py `reslot_update`, adv50); its start tells them ('started').
    # One whose every notice bounced is announced anew at the new slot ('scheduled'): `move_notice`.
    if (kind := move_notice(run, session)) is not None:
        queue_move_notice(
            run, kind, session=session, now=now, vendor=vendor, previous=previous, reason="; ".join(reasons)
        )
    return True


def _hold(
    run: UpgradeRun,
    reason: str,
    *,
    now: datetime,
    session: Session,
    actor: str,
    vendor: VendorTerms | None,
    why: str,
) -> bool:
    won = session.execute(
        update(UpgradeRun)
        .where(
            col(UpgradeRun.id) == run.id,
            col(UpgradeRun.state) == RunState.planned,
            col(UpgradeRun.notice_sequence) == run.notice_sequence,
            col(UpgradeRun.held_reason) == "",
        )
        .values(held_reason=reason[:2000])
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.refresh(run)
    repo.record_audit(
        actor, "update.held", f"run/{run.id}", {"reason": reason, "trigger": why}, session=session
    )
    _alert_held(run, reason, now=now, session=session, vendor=vendor)
    return True


def _raced(run: UpgradeRun, label: str, reasons: list[str], zone: str, session: Session) -> Outcome:
    """Another process (the dispatcher's claim, another import or re-check) changed the update between
    our read and our write: say so, rather than report a move or hold that was not written."""
    assert run.id is not None
    session.refresh(run)
    return Outcome(run.id, label, "raced", tuple(reasons), zone=zone, state=str(RunState(run.state).value))


def _alert_held(
    run: UpgradeRun, reason: str, *, now: datetime, session: Session, vendor: VendorTerms | None
) -> None:
    """Tell the SRE, once per held update and slot, through the one SRE-alert function when a
    runtime is configured (CLI, dispatcher, flows); else as an SRE notice."""
    ref = update_ref(run.id)
    try:
        runtime = current()
    except RuntimeNotConfigured:
        queue_run_notice(
            run,
            "failed",
            session=session,
            now=now,
            vendor=vendor,
            to_sre=True,
            variant=f"held-{run.notice_sequence}",
            reason=f"HELD, not started and not failed: {ref} has no valid slot. {reason}",
        )
        return
    alert_sre(
        runtime,
        headline=f"{ref} held: no valid slot, it will not start",
        cause=reason,
        kind="held",
        run_id=run.id,
        action="find a slot: change the deadline, the windows or blackouts, or cancel the update "
        "(`upkeep calendar` shows it HELD)",
        key=f"{ref}:held:{run.notice_sequence}",
        session=session,
    )


def _release(version: str, session: Session) -> Release | None:
    try:
        return repo.get_release(version, session=session)
    except LookupError:
        return None


def import_and_recheck(
    path: Path,
    *,
    engine: Engine,
    actor: str,
    now: datetime,
    vendor: VendorTerms | None = None,
    dry_run: bool = False,
    role_addresses: frozenset[str] = frozenset(),
) -> tuple[ImportSummary, list[Outcome]]:
    """`upkeep inventory import [--dry-run]`: apply the file and re-check every planned update against
    the new inventory in ONE transaction, so the moves, notices and audit commit with the import (or
    not at all). A dry run does all of it and rolls back: the report is exactly what a real import
    would do, and nothing is written. Portal users at a role address (`role_addresses`, local parts
    such as support or noreply: the setting portal_role_addresses) are refused like any bad value."""
    doc = load_inventory(path, role_addresses=role_addresses)
    with Session(engine, expire_on_commit=False) as session:
        try:
            lock_inventory(session)  # before noting the users: a concurrent import commits first
            users_before = portal_users(session)
            summary = apply_inventory(doc, session=session, actor=actor)
            terms = vendor or VendorTerms.configured()
            welcome_new_users(users_before, session=session, now=now, vendor=terms, notes=summary.notes)
            outcomes = recheck_planned(
                now=now,
                session=session,
                actor=actor,
                vendor=vendor,
                plan_only=dry_run,
                why="inventory import",
            )
        except BaseException:
            session.rollback()
            raise
        if dry_run:
            session.rollback()
        else:
            session.commit()
    return summary, outcomes
