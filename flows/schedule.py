"""Scheduling service: announce an update for a slot, defer or reschedule it, cancel it, and show what
is coming.

Plain functions, not Prefect flows. Each works in the caller's ONE transaction: the update (an
`UpgradeRun` in state planned, with its slot), its audit event and the customer notice with its
calendar invite commit or roll back together. The rules are `scheduling`'s; `now` is always passed in.
A refusal raises before anything is written, with a message that says why (`ScheduleRefused`, or the
`PlanError`/`LookupError`/`ActiveRunExists` of the parts used).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col

from flows.integrity import world_of
from flows.plan import UpdatePlan, plan_update
from flows.run_notices import (
    DEFERRALS,
    VendorTerms,
    contact_emails,
    move_notice,
    queue_move_notice,
    queue_run_notice,
    update_ref,
)
from inventory import repo
from inventory.cases import CaseError, check_case_ref, open_blocking_case
from inventory.models import Cluster, Customer, RunSource, RunState, UpgradeRun
from inventory.outbox import mark_superseded, pending_of
from inventory.runs import create_run, finish_run, get_run
from inventory.windows import blackouts_for, cluster_windows, notice_policy
from scheduling.deferral import check_deferral
from scheduling.errors import NoSlot, SchedulingError, SlotBlocked
from scheduling.notice import UpdateKind, minimum_notice
from scheduling.slots import estimate_duration, find_slot
from scheduling.times import aware_utc, describe, fmt_instant
from scheduling.validity import PlannedUpdate, Reason, invalid_reasons, replacement_slot
from scheduling.windows import Interval
from templates import NoticeKind

SOURCES = ("support", "customer", "release")


class ScheduleRefused(SchedulingError):
    """A scheduling request Upkeep refuses; the message names the value and the rule."""


class ChangedMeanwhile(ScheduleRefused):
    """The update changed (or started) between reading it and taking its row: another process or
    user committed first. The portal retries a Confirm once when only confirmations happened."""


def parse_update_ref(text: str) -> int:
    """'update-42' or '42' → 42."""
    digits = text.strip().removeprefix("update-")
    # ASCII digits within the database's integer range: str.isdigit() also takes '²' (int() then
    # raised ValueError) and other scripts' digits, and a 20-digit id overflowed SQLite's INTEGER.
    # PostgreSQL's `integer` ends at 2**31 - 1: past it the query failed with "integer out of range".
    if not re.fullmatch(r"[0-9]{1,18}", digits) or int(digits) > 2**31 - 1:
        raise ScheduleRefused(f"update {text[:80]!r}: expected an update id such as update-42 or 42")
    return int(digits)


def schedule_update(
    cluster: str,
    to_version: str,
    *,
    now: datetime,
    urgent: bool = False,
    case: str | None = None,
    source: str = "support",
    requested_by: str,
    session: Session,
    vendor: VendorTerms | None = None,
    not_before: datetime | None = None,
    plan: UpdatePlan | None = None,
) -> UpgradeRun:
    """Plan the update, put it in the first allowed slot (at or after `not_before`: a cloud release's
    ring gate), claim the cluster, queue the `scheduled` notice. Source "release" is a cloud release
    (7 days' notice by default), others product updates. `plan`: the caller's plan of this update, made
    in this transaction (`upkeep request` plans before it checks the case): used as it is, not planned
    a second time (two plans of one update could differ on PostgreSQL, a snapshot per statement)."""
    if source not in SOURCES:
        raise ScheduleRefused(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    if case is not None:
        try:
            check_case_ref(case)
        except CaseError as exc:
            raise ScheduleRefused(str(exc)) from None
    if plan is None:
        plan = plan_update(cluster, to_version, session=session)
    elif (plan.cluster, plan.to_version) != (cluster, to_version):  # a caller's mistake, not input
        raise ValueError(f"plan of {plan.label} given to schedule {cluster} to {to_version}")
    row = session.get(Cluster, plan.cluster_id)
    assert row is not None and row.id is not None
    customer = repo.customer_of(row, session=session)
    kind = UpdateKind.CLOUD_RELEASE if source == "release" else UpdateKind.PRODUCT_UPDATE
    vendor = vendor or VendorTerms.configured()
    blocking = open_blocking_case(row.id, session=session)
    try:
        slot = find_slot(
            now=now,
            windows=cluster_windows(row, customer, session=session),
            blackouts=blackouts_for(customer, session=session),
            notice=minimum_notice(notice_policy(customer), kind, urgent),
            estimate=estimate_duration(len(plan.nodes), vendor.per_node_estimate),
            blocked_by_case=blocking is not None,
            urgent=urgent,
            not_before=not_before,
        )
    except SlotBlocked:
        assert blocking is not None
        raise ScheduleRefused(
            f"{plan.label}: case {blocking.ref} ({blocking.priority}) is open on {row.name}; "
            "only an urgent update may be scheduled there (--urgent)"
        ) from None
    except NoSlot as exc:
        raise ScheduleRefused(f"{plan.label}: no slot: {exc}") from None
    deadline = repo.get_release(to_version, session=session).deadline
    if deadline is not None and slot.start > deadline:
        raise ScheduleRefused(deadline_refusal(plan.label, deadline, slot.start, customer, kind, urgent))
    _recipients(customer, session)  # refuse before claiming the cluster
    run = create_run(
        row,
        to_version=to_version,
        source=source,
        requested_by=requested_by,
        session=session,
        state=RunState.planned,
    )
    run.kind, run.urgent, run.case_ref = kind, urgent, case
    run.slot_start, run.slot_end, run.notice_sequence = slot.start, slot.end, 1
    run.needs_approval = customer.requires_approval
    session.add(run)
    session.flush()
    detail = {"slot": slot.start.isoformat(), "urgent": urgent, "kind": kind.value, "case": case}
    repo.record_audit(requested_by or "upkeep", "update.scheduled", f"run/{run.id}", detail, session=session)
    _notify(run, NoticeKind.scheduled, now=now, session=session, vendor=vendor)
    return run


def deadline_refusal(
    label: str, deadline: datetime, earliest: datetime, customer: Customer, kind: UpdateKind, urgent: bool
) -> str:
    """The one line `schedule`/`request` refuse with when no slot before the release deadline gives the
    customer their notice period (the policy in README, "Deadlines and urgency")."""
    policy = notice_policy(customer)
    notice = describe(minimum_notice(policy, kind, urgent))
    shorter = minimum_notice(policy, kind, True)
    way = "change the release deadline"
    if not urgent and shorter < minimum_notice(policy, kind, False):
        way = f"pass --urgent ({describe(shorter)} notice) or {way}"
    return (
        f"{label}: no slot before the release deadline {fmt_instant(deadline)} gives {customer.name} "
        f"{notice} notice; the earliest slot with full notice starts {fmt_instant(earliest)}; {way}"
    )


def defer_update(
    run_id: int,
    *,
    to: datetime,
    now: datetime,
    session: Session,
    requested_by: str = "customer",
    vendor: VendorTerms | None = None,
) -> UpgradeRun:
    """Move a planned update to the first window start at or after `to`, within the deferral rules
    (count, maximum move, release deadline); queue the `deferred` notice (same invite, next SEQUENCE)."""
    run = _planned(run_id, "defer", session)
    ref, when = update_ref(run.id), aware_utc(to, "deferral time")
    if run.urgent:
        raise ScheduleRefused(
            f"cannot defer {ref}: it is urgent (a security or data-loss fix), and urgent updates "
            "cannot be deferred; ask the vendor's support to reschedule it"
        )
    current, current_end = run.slot_start, run.slot_end
    assert current is not None and current_end is not None  # _planned checked it
    deadline = repo.get_release(run.to_version, session=session).deadline

    def check(new_start: datetime) -> str | None:
        decision = check_deferral(
            DEFERRALS,
            current_start=current,
            new_start=new_start,
            deferrals_so_far=run.deferrals,
            deadline=deadline,
            now=now,
        )
        return None if decision.allowed else decision.reason

    if problem := check(when):
        raise ScheduleRefused(f"cannot defer {ref} to {fmt_instant(when)}: {problem}")
    try:
        slot = next_window(
            run, now=now, not_before=when, estimate=current_end - current, urgent=run.urgent, session=session
        )
    except NoSlot as exc:
        raise ScheduleRefused(f"cannot defer {ref} to {fmt_instant(when)}: {exc}") from None
    if problem := check(slot.start):
        raise ScheduleRefused(
            f"cannot defer {ref} to {fmt_instant(when)}: the first maintenance window at or after it "
            f"starts {fmt_instant(slot.start)}, and that {problem}"
        )
    run.slot_start, run.slot_end = slot.start, slot.end
    run.deferrals += 1
    run.notice_sequence += 1
    session.add(run)
    detail = {"from": current.isoformat(), "to": slot.start.isoformat(), "deferral": run.deferrals}
    repo.record_audit(requested_by, "update.deferred", f"run/{run.id}", detail, session=session)
    _notify(run, NoticeKind.deferred, now=now, session=session, vendor=vendor, previous=current)
    return run


def confirm_update(
    run_id: int,
    *,
    now: datetime,
    session: Session,
    confirmed_by: str,
    vendor: VendorTerms | None = None,
    detail: dict[str, object] | None = None,
) -> UpgradeRun:
    """A designated user acknowledged a planned update at its current time (the portal's Confirm):
    audited as `update.confirmed`, and the `confirmed` notice goes to every contact and designated
    user with the same invite at the next SEQUENCE (same UID; calendars keep one entry). The slot does
    not move. Held like a deferral: a dispatcher claiming the update meanwhile wins, and this refuses."""
    run = _planned(run_id, "confirm", session)
    run.notice_sequence += 1
    session.add(run)
    assert run.slot_start is not None
    audit = {"slot": run.slot_start.isoformat(), "sequence": run.notice_sequence, **(detail or {})}
    repo.record_audit(confirmed_by, "update.confirmed", f"run/{run.id}", audit, session=session)
    queue_run_notice(
        run, NoticeKind.confirmed, session=session, now=now, vendor=vendor, confirmed_by=confirmed_by
    )
    return run


def reschedule_update(
    run_id: int,
    *,
    to: datetime,
    reason: str,
    now: datetime,
    session: Session,
    requested_by: str,
    vendor: VendorTerms | None = None,
) -> UpgradeRun:
    """An SRE moves a planned (or held) update to start at `to`, earlier or later, keeping its length.

    The new slot must be valid by `scheduling.validity.invalid_reasons` (inside a window with the
    estimate fitting, no blackout or holiday, not past the release deadline, no open P0/P1 case unless
    urgent). Moving it earlier needs the full notice period counted from now (the earliest the new
    notice can reach the customer; an urgent update's shorter notice applies); a later slot keeps the
    notice counted from when the customer was first told. A refusal names the value, every rule broken
    and the earliest valid slot, and writes nothing. On success: one `rescheduled` notice (same invite,
    next SEQUENCE) with the reason, an `update.rescheduled` audit event; the customer's deferral count
    is not touched (this is the vendor's move, not the customer's).

    The notice is `move_notice`'s, as every move's; an update never announced (an SRE's `request --now`
    carried over in silence) is announced by this move ('scheduled', its first word), with the notice
    period counted from now, a refusal on it saying so (h-ending)."""
    if not reason.strip():
        get_run(run_id, session=session)  # an unknown update is named first
        raise ScheduleRefused("reschedule needs --reason TEXT (it is recorded and told to the customer)")
    run = _planned(run_id, "reschedule", session)  # takes the row, as defer does: no claim slips in
    ref, when = update_ref(run.id), aware_utc(to, "new time")
    current, current_end = run.slot_start, run.slot_end
    assert current is not None and current_end is not None  # _planned checked it
    head = f"cannot reschedule {ref} to {fmt_instant(when)}"
    if when == current:
        raise ScheduleRefused(f"{head}: it already starts then")
    if when <= now:
        raise ScheduleRefused(f"{head}: that is not in the future (now is {fmt_instant(now)})")
    world, _, _ = world_of(run, session=session)
    earlier = when < current
    slot = Interval(when, when + (current_end - current))
    told = None if earlier else run.told_at  # None: notice counted from now
    # Announced anew ('scheduled') when every notice of it bounced, as any other move (`move_notice`): a
    # 'rescheduled' was the customer's first word of it (adv57). Never announced at all (an SRE's `request
    # --now` carried over in silence): announced too - this move is the customer's first word of it, with
    # the full notice rules of any announcement (`told_at` is None: counted from now), never a
    # 'rescheduled' of a slot they never heard of, carrying the SRE's --reason (h-ending).
    kind = move_notice(run, session) or NoticeKind.scheduled
    found = invalid_reasons(PlannedUpdate(slot, kind=run.kind, urgent=run.urgent, told_at=told), world, now)
    if found:
        rules = "; ".join(f"{r.code}: {r.text}" for r in found)
        try:
            best = replacement_slot(PlannedUpdate(slot, kind=run.kind, urgent=run.urgent), world, now)
            same = " (its current slot)" if best.start == current else ""
            earliest = f"the earliest valid slot starts {fmt_instant(best.start)}{same}"
        except (NoSlot, SchedulingError) as exc:
            earliest = f"there is no valid slot: {exc}"
        raise ScheduleRefused(f"{head}: {rules}; {earliest}{_first_word(run, kind, found, session)}")
    was_held = run.held_reason
    run.slot_start, run.slot_end, run.held_reason = slot.start, slot.end, ""
    run.notice_sequence += 1
    session.add(run)
    detail = {
        "from": current.isoformat(),
        "to": slot.start.isoformat(),
        "direction": "earlier" if earlier else "later",
        "reason": reason,
        "sequence": run.notice_sequence,
        "was_held": was_held or None,
    }
    repo.record_audit(requested_by, "update.rescheduled", f"run/{run.id}", detail, session=session)
    queue_move_notice(run, kind, session=session, now=now, vendor=vendor, previous=current, reason=reason)
    return run


def _first_word(run: UpgradeRun, kind: NoticeKind, found: list[Reason], session: Session) -> str:
    """Why the notice period counts from now for a move refused on it, when the move would be the
    customer's first word of the update (`reschedule_update`); "" otherwise."""
    if kind is not NoticeKind.scheduled or not any(reason.code == "notice" for reason in found):
        return ""
    assert run.slot_start is not None
    if _ever_queued(run, session):
        return (
            "; every notice of the update was refused: this move would announce it anew ('scheduled'), so "
            "the full notice period counts from now"
        )
    return (
        "; the update was never announced to the customer: this move would announce it ('scheduled'), so "
        f"the full notice period counts from now; left in its slot ({fmt_instant(run.slot_start)}) it "
        "starts unannounced, its start telling them"
    )


def _ever_queued(run: UpgradeRun, session: Session) -> bool:
    """Whether any notice of `run` was ever queued for the customer (delivered, refused or waiting)."""
    from sqlmodel import select

    from inventory.outbox import Notice

    query = select(Notice.id).where(col(Notice.update_ref) == update_ref(run.id)).limit(1)
    return session.exec(query).first() is not None


def next_window(
    run: UpgradeRun,
    *,
    now: datetime,
    not_before: datetime,
    estimate: timedelta,
    urgent: bool,
    session: Session,
    announcing: bool = False,
) -> Interval:
    """The first slot of `estimate` in the run's cluster's windows at or after `not_before`, outside
    blackouts, with no notice period (the customer was told already). NoSlot says why there is none.

    `announcing`: the move is the customer's first word of the update (every notice of it was refused:
    `move_notice` answers 'scheduled'): the full notice period counts from now, the run's own (its kind,
    its urgency), as for any announcement and as `upkeep reschedule` asks. A carry-over announced it
    anew for the next window, 23 h on, inside a 72 h notice period (adv59)."""
    cluster, customer = _owner(run, session)
    notice = timedelta(0)
    if announcing:
        kind = UpdateKind.CLOUD_RELEASE if run.source == RunSource.release else UpdateKind.PRODUCT_UPDATE
        notice = minimum_notice(notice_policy(customer), kind, bool(run.urgent))
    return find_slot(
        now=now,
        windows=cluster_windows(cluster, customer, session=session),
        blackouts=blackouts_for(customer, session=session),
        notice=notice,
        estimate=estimate,
        urgent=urgent,
        not_before=not_before,
    )


def reslot_update(
    run_id: int, *, now: datetime, reason: str, session: Session, vendor: VendorTerms | None = None
) -> UpgradeRun:
    """A planned update whose window passed without it starting (held by its rollout's waves, or no
    dispatcher ran) moves to the next window; the customer gets a `rescheduled` notice (same invite,
    next SEQUENCE). No notice period applies: the customer already agreed to the update.

    Only if they were told of it (`customer_knows`, as a carry-over's and a stall's): an SRE's `upkeep
    request --now` carried over, or stalled, in silence is planned with a slot and no notice, and its
    'rescheduled' (the resume of the stall, the dispatcher's move) was the customer's first word of an
    update they never heard of (adv50). Its start tells them ('started'), as for any `--now` run."""
    run = _planned(run_id, "re-slot", session)
    previous, previous_end = run.slot_start, run.slot_end
    assert previous is not None and previous_end is not None  # _planned checked it
    kind = move_notice(run, session)  # 'rescheduled'; 'scheduled' anew if every notice bounced; or none
    try:
        # urgent: an open case must not strand an update the customer was already promised
        slot = next_window(
            run,
            now=now,
            not_before=now,
            estimate=previous_end - previous,
            urgent=True,
            session=session,
            announcing=kind is NoticeKind.scheduled,
        )
    except NoSlot as exc:
        raise ScheduleRefused(f"cannot re-slot {update_ref(run.id)}: {exc}") from None
    run.slot_start, run.slot_end = slot.start, slot.end
    run.notice_sequence += 1
    session.add(run)
    if kind is not None:
        queue_move_notice(
            run, kind, session=session, now=now, vendor=vendor, previous=previous, reason=reason
        )
    return run


def cancel_update(
    run_id: int, *, now: datetime, reason: str, session: Session, vendor: VendorTerms | None = None
) -> UpgradeRun:
    """Cancel a planned update; if it was announced (has a slot), queue the `cancelled` notice, whose
    invite (METHOD:CANCEL, next SEQUENCE) removes the calendar entry."""
    run = get_run(run_id, session=session)
    state = RunState(run.state)
    if state is RunState.cancelled:
        # Two operators cancelling at once: the loser is told it is done, not to cancel again.
        raise ScheduleRefused(
            f"{update_ref(run.id)} is already cancelled ({run.reason or 'no reason recorded'})"
        )
    if state is not RunState.planned:
        hint = f" (a running one stops between nodes with `upkeep cancel {run.id}`)" if state.active else ""
        raise ScheduleRefused(
            f"{update_ref(run.id)} is {run.state}: only a planned update is cancelled here{hint}"
        )
    _hold_planned(run, "cancel", session)
    finish_run(run, RunState.cancelled, reason=reason or "cancelled", session=session)
    if run.slot_start is not None and run.told_at is None and not _maybe_told(run, session):
        # Never announced (nothing delivered yet): the waiting notices are withdrawn and the customer
        # hears nothing, rather than "scheduled" and "cancelled" for an update they never knew of. Not
        # so after a notice of unknown delivery (it may have arrived, invite and all: adv58).
        for notice in pending_of(update_ref(run.id), session=session):
            mark_superseded(notice, None, session=session)
        return run
    if run.slot_start is not None:
        run.notice_sequence += 1
        _notify(run, NoticeKind.cancelled, now=now, session=session, vendor=vendor, reason=reason)
    return run


def _maybe_told(run: UpgradeRun, session: Session) -> bool:
    """A notice of the update was handed over whole with its answer unreadable (`maybe_delivered`)."""
    from sqlmodel import select

    from inventory.outbox import Notice, maybe_delivered

    query = select(Notice.id).where(Notice.update_ref == update_ref(run.id), maybe_delivered())
    return session.exec(query.limit(1)).first() is not None


def _planned(run_id: int, action: str, session: Session) -> UpgradeRun:
    run = get_run(run_id, session=session)
    if RunState(run.state) is not RunState.planned or run.slot_start is None:
        what = run.state if run.slot_start else f"{run.state} without an announced slot"
        raise ScheduleRefused(f"cannot {action} {update_ref(run.id)}: it is {what}")
    _hold_planned(run, action, session)
    return run


def _hold_planned(run: UpgradeRun, action: str, session: Session) -> None:
    """Lock the update's row for this transaction, provided it is still the planned update just read.

    A read and the write after it can straddle another process's commit on PostgreSQL: the dispatcher
    claiming the update (cancel would then mark a running update cancelled while its nodes are being
    upgraded; defer would tell the customer it moved), or a re-check moving it. This conditional UPDATE
    takes the row lock (a claim after it waits for our commit, then finds the update no longer
    planned) and refuses when the update changed since the read."""
    held = session.execute(
        update(UpgradeRun)
        .where(
            col(UpgradeRun.id) == run.id,
            col(UpgradeRun.state) == RunState.planned,
            col(UpgradeRun.notice_sequence) == run.notice_sequence,
        )
        .values(notice_sequence=run.notice_sequence)
        .execution_options(synchronize_session=False)
    )
    if held.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(run)
        raise ChangedMeanwhile(
            f"cannot {action} {update_ref(run.id)}: it is {run.state} now (another process started or "
            "changed it just now); see `upkeep show`"
        )


def _owner(run: UpgradeRun, session: Session) -> tuple[Cluster, Customer]:
    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None
    return cluster, repo.customer_of(cluster, session=session)


def _recipients(customer: Customer, session: Session) -> tuple[str, ...]:
    emails = contact_emails(customer, session)
    if not emails:
        raise ScheduleRefused(
            f"customer {customer.name} has no contacts to notify; add some to the inventory"
        )
    return emails


def _notify(
    run: UpgradeRun,
    kind: NoticeKind,
    *,
    now: datetime,
    session: Session,
    vendor: VendorTerms | None,
    previous: datetime | None = None,
    reason: str = "",
) -> None:
    queue_run_notice(
        run, kind, session=session, now=now, vendor=vendor, previous_slot_start=previous, reason=reason
    )
