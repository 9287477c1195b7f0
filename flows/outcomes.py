"""How an update run ends or stops, each in one transaction with the notices it causes:
succeeded, failed, cancelled, paused by request, or carried over to the next window."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlmodel import Session

from flows import lease
from flows.alerts import alert_sre as send_alert
from flows.endings import mid_way, tell_ending, versions_at_stop
from flows.oncall import stall_headline, stall_page_key
from flows.plan import UpdatePlan
from flows.records import STALLED_REASON, node_done, nodes_touched, stopped_at
from flows.run_notices import VendorTerms, customer_knows, move_notice, queue_move_notice, queue_run_notice
from flows.run_window import announced_end, has_window, past_cutoff, window_at, window_now, window_over
from flows.runtime import Runtime
from flows.schedule import next_window
from inventory import repo
from inventory.db import retrying, session_scope
from inventory.models import RequestedAction, RunState, UpgradeRun
from inventory.runs import STALLED_AFTER, finish_run, get_run
from scheduling.errors import SchedulingError
from tasks.failpoints import failpoint
from templates import NoticeKind

log = logging.getLogger(__name__)

CUSTOMER_FAILURE = (
    "The update could not be completed. Nodes not yet upgraded were left untouched and keep running "
    "the current version; our support team has been alerted and will contact you."
)


def _notify(
    run: UpgradeRun, kind: str, runtime: Runtime, session: Session, now: datetime, **extra: Any
) -> None:
    if not queue_run_notice(
        run, kind, vendor=VendorTerms.from_runtime(runtime), session=session, now=now, **extra
    ):
        log.warning("run %s: customer has no contacts; %s notice not queued", run.id, kind)


def mark_started(runtime: Runtime, run_id: int) -> None:
    """The customer hears that work began: called once pre-flight and approval have passed, right
    before the first node is touched (once per announced slot: the notice key includes it)."""
    with session_scope(runtime.engine) as session:
        _notify(get_run(run_id, session=session), "started", runtime, session, runtime.clock())


def fail_before_nodes(runtime: Runtime, plan: UpdatePlan, run_id: int, cause: str) -> None:
    """A failure before any node was touched is ours (file server, credentials, package, settings,
    a node's pre-flight): the run ends `failed` with the cause, the customer is told nothing (they
    heard nothing had started) and no customer case is opened; the SRE is alerted with what was
    tried. The update can be asked for again once the cause is fixed."""
    node, step = stopped_at(runtime.engine, run_id)
    reason = f"{cause} (no node touched; customer not notified)"
    with session_scope(runtime.engine) as session:
        finish_run(get_run(run_id, session=session), RunState.failed, reason=reason, session=session)
        send_alert(
            runtime,
            kind="vendor-side",
            headline=f"run {run_id} failed at {step or 'start'} before any node was touched",
            cause=cause,
            run_id=run_id,
            node=node,
            step=step or "start",
            detail="The customer was told nothing and no case was opened (vendor-side failure).",
            action=f"Fix the cause, then ask for the update again: upkeep request {plan.cluster} "
            f"--to {plan.to_version} (or upkeep update for now).",
            key=f"run-{run_id}:vendor-side",
            session=session,
        )
    page_if_urgent(runtime, run_id, f"run {run_id} failed before any node was touched", cause)


def finish(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    state: RunState,
    reason: str = "",
    *,
    owner: str | None = None,
) -> None:
    """Record how the run ended, with its notices. `owner`: the lease this process holds; if the
    run is no longer held under it, nothing is written (`lease.LeaseHeld`)."""
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        if owner is not None:
            lease.ensure_held(session, run_id, owner)
        run = get_run(run_id, session=session)
        finish_run(run, state, reason=reason, session=session)
        if state is RunState.succeeded:
            cluster = repo.get_cluster(plan.cluster, session=session)
            cluster.version = plan.to_version
            session.add(cluster)
            _notify(run, "completed", runtime, session, now)
        elif state is RunState.failed:
            versions = versions_at_stop(run, session) if mid_way(run, session) else ()
            _notify(run, "failed", runtime, session, now, reason=CUSTOMER_FAILURE, node_versions=versions)


def refused(runtime: Runtime, plan: UpdatePlan, run_id: int, owner: str | None = None) -> None:
    """The approval gate said no (flows/approval.py recorded who and why in the run's reason): the
    run ends cancelled, no node touched; the customer hears why, when the update was announced to
    them; the SRE is alerted."""
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        if owner is not None:  # only the lease holder records an ending (flows/lease.py)
            lease.ensure_held(session, run_id, owner)
        run = get_run(run_id, session=session)
        why = run.reason or "approval refused"
        finish_run(run, RunState.cancelled, reason=why, session=session)
        tell_ending(
            runtime,
            run,
            session=session,
            now=now,
            notice="cancelled",
            customer_reason=f"the update was not approved: {_refusal_reason(run_id, why, session)}",
            alert="approval-refused",
            headline=f"run {run_id} ({plan.label}) was refused at its approval gate; no node was touched",
            cause=why,
        )


def _refusal_reason(run_id: int, why: str, session: Session) -> str:
    """Why the gate said no, as the customer may hear it: the refusal's own reason (its decision, which
    the gate and `upkeep approve --refuse` both record), never read out of the run's reason ("approval
    refused by WHO: REASON"): an approver named in the Prefect UI may hold a ': ' of its own, and the rest
    of their name would be told to the customer."""
    from sqlmodel import col, select

    from inventory.models import AuditEvent

    said = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject == f"run/{run_id}", AuditEvent.action == "run.refused")
        .order_by(col(AuditEvent.id).desc())
    ).first()
    if said is not None:
        return str(said.detail.get("reason") or "") or "no reason given"
    return why.partition(": ")[2] or why  # no decision recorded (a run refused before decisions were)


def cancelled_while_stopped(runtime: Runtime, run: UpgradeRun, *, reason: str, session: Session) -> None:
    """`upkeep cancel` of a run no flow is carrying out (planned, paused, or crashed): a planned update
    never started is withdrawn (flows/schedule.py); one that started ends here, told like a cancel
    between nodes."""
    from flows.schedule import cancel_update

    now = runtime.clock()
    if RunState(run.state) is RunState.planned and run.started_at is None and run.slot_start is not None:
        assert run.id is not None
        cancel_update(
            run.id, now=now, reason=reason, session=session, vendor=VendorTerms.from_runtime(runtime)
        )
        return
    was = run.state
    finish_run(run, RunState.cancelled, reason=f"{reason} (while {was})", session=session)
    _tell_cancelled(runtime, run, session, now, reason)


def _tell_cancelled(runtime: Runtime, run: UpgradeRun, session: Session, now: datetime, reason: str) -> None:
    tell_ending(
        runtime,
        run,
        session=session,
        now=now,
        notice="cancelled",
        customer_reason=reason.partition(": ")[2] or reason,
        alert="run-cancelled",
        headline=f"run {run.id} was cancelled",
        cause=run.reason,
        # 'cancelled' tells the customer "our support team is checking this node" for a node whose
        # upgrade did not complete, and a cancel opens no case: this alert asks for it (adv50).
        action=_check_nodes(run, session).strip(),
    )


def alert_sre(runtime: Runtime, run_id: int, reason: str) -> None:
    """After a failure once nodes were touched: collect diagnostics and open (or link) a case, then
    tell the SRE, naming both. Diagnostics trouble never hides the failure itself: the SRE is told
    either way."""
    from flows.failed_run_case import handle_failed_run

    case_id, bundle_url, detail = "", "", ""
    try:
        report = handle_failed_run(run_id, runtime=runtime, now=runtime.clock())
        case_id, bundle_url = report.case_id, report.bundle_url or ""
        if report.error:
            detail = f"diagnostics: {report.error}"
    except Exception as exc:
        log.exception("run %s: diagnostics after the failure did not complete", run_id)
        detail = f"diagnostics could not be collected: {exc}"
    node, step = stopped_at(runtime.engine, run_id)
    send_alert(
        runtime,
        kind="run-failed",
        headline=f"run {run_id} failed"
        + (f" at {node}" if node else "")
        + (f", step {step}" if step else ""),
        cause=reason.splitlines()[0] if reason else "unknown",
        run_id=run_id,
        node=node,
        step=step,
        detail="\n".join(
            filter(None, [*reason.splitlines()[1:], detail, "The customer was told it failed."])
        ),
        case_ref=case_id,
        bundle_url=bundle_url,
        key=f"run-{run_id}:failed",
    )
    page_if_urgent(runtime, run_id, f"run {run_id} failed" + (f" at {node}" if node else ""), reason)


def page_if_urgent(runtime: Runtime, run_id: int, headline: str, cause: str, *, key: str = "") -> None:
    """A failed urgent update pages the engineer on call and the team lead, at any hour. `key`: the
    page's, when not the run's failure (`run:ID`, paged once): a stall pages under its own."""
    from flows.oncall import page

    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session)
        urgent, case_ref = run.urgent, run.case_ref or ""
    if urgent:
        page(runtime, key=key or f"run:{run_id}", headline=f"URGENT update {headline}",
             cause=cause.splitlines()[0], run_id=run_id, case_ref=case_ref)  # fmt: skip


def stop(runtime: Runtime, plan: UpdatePlan, run_id: int, action: str) -> str:
    """Honour `upkeep pause|cancel` between nodes; returns the run's new state. `action` is what the
    caller read; the stop pending when it is written, read under the run's row lock, decides: a cancel
    recorded over a pause since that read (`upkeep cancel` accepts that) is the cancel (adv37)."""
    done = sum(1 for node in plan.nodes if node_done(runtime.engine, run_id, node.id))
    if done == len(plan.nodes):
        # Every node verified (a take-over after the last node's verify, its process dead before it
        # recorded the end): nothing is left to stop, and a live run asked during its last node records
        # it succeeded too. 'cancelled (after 3 of 3 nodes)' told the customer a complete update was
        # cancelled and left the inventory at the old version (adv37).
        finish(runtime, plan, run_id, RunState.succeeded, reason=f"{action} asked once every node was done")
        return "succeeded"
    where = f"after {done} of {len(plan.nodes)} nodes"
    now = runtime.clock()
    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session, lock=True)
        if run.requested_action == RequestedAction.cancel:
            action = "cancel"
        if action == "cancel":
            asked = run.reason if run.reason.startswith("cancelled by") else "cancelled by request"
            finish_run(run, RunState.cancelled, reason=f"{asked} ({where})", session=session)
            _tell_cancelled(runtime, run, session, now, asked)
            return "cancelled"
        run.state, run.requested_action = RunState.paused, RequestedAction.none
        run.reason = f"paused by request {where}"
        session.add(run)
    return "paused"


def window_closing(runtime: Runtime, run_id: int) -> bool:
    """The cutoff rule (scheduling/cutoff.py): a node starts only if the time left in the run's
    window (the whole window, not a slot sized to the estimate) fits its estimate. The window is read
    as it is now, not only as recorded when the run started: an inventory import during the run that
    shortens or removes the window, or adds a blackout over the rest of it, ends it where it now ends."""
    now = runtime.clock()

    def read(conn: Any) -> bool:  # repeated if the database server drops the connection (inventory.db)
        with Session(bind=conn) as session:
            run = get_run(run_id, session=session)
            current = window_now(run, now, session=session)
            return past_cutoff(run, now, runtime.per_node_estimate, current)

    return retrying(runtime.engine, read)


TUNNEL_START = "upkeep-agent tunnel start"


def tunnel_closed_reason(closed: tuple[str, ...] | list[str], progress: str = "") -> str:
    """What the customer reads when their support tunnel was closed: at the window's start (nothing
    changed), or mid-run (`progress`: how far the update got), with the exact command on each closed
    node."""
    where = "; ".join(f"on {name}: {TUNNEL_START}" for name in closed)
    what = (
        f"during the update (on {', '.join(closed)}), {progress}. The remaining nodes continue in the next "
        "window"
        if progress
        else f"(on {', '.join(closed)}). Nothing was changed"
    )
    return (
        f"we could not reach your cluster: the support tunnel was closed {what}. Please open it before the "
        f"next window by running as the node's upkeep user {where}"
    )


def tunnel_stalled_reason(closed: tuple[str, ...] | list[str]) -> str:
    """What the customer reads in the 'stopped' of a stall whose last window was lost to their closed
    support tunnel: the cause they were told at each move, the command, and that opening it does not
    restart the update by itself (it is paused until support plans it again with them)."""
    where = "; ".join(f"on {name}: {TUNNEL_START}" for name in closed)
    return (
        f"we could not reach your cluster in your last maintenance window: the support tunnel was closed (on "
        f"{', '.join(closed)}). Opening it does not restart the upgrade by itself: please open it (as the "
        f"node's upkeep user {where}) and tell us, and we will plan the upgrade again with you"
    )


def carry_over_tunnel_closed(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    closed: tuple[str, ...],
    *,
    during: str = "",
    owner: str | None = None,
) -> str:
    """The customer's support tunnel was closed, at the window's start or `during` a step ("the
    upgrade of NODE": that node's outcome is unknown until it is asked), and stayed closed while the
    run waited: not a failure of anyone's doing but theirs to fix, so no failure, no case, no 'failed'
    notice. The run moves to the next window; the customer hears why (and how far it got, once a node
    was touched) and the exact command to run on each closed node; the SRE hears it carried over."""
    names = ", ".join(closed)
    why = f"the customer's support tunnel was closed on {names} " + (
        f"during {during}" if during else "at the window's start"
    )
    if not nodes_touched(runtime.engine, run_id):
        return carry_over(
            runtime,
            plan,
            run_id,
            why=why,
            customer_reason=tunnel_closed_reason(closed),
            owner=owner,
            tunnel_closed=closed,
        )
    done = sum(1 for node in plan.nodes if node_done(runtime.engine, run_id, node.id))
    return carry_over(
        runtime,
        plan,
        run_id,
        why=f"{why} ({done} of {len(plan.nodes)} nodes done; the node in progress is asked its state when "
        "the run goes on)",
        customer_reason=tunnel_closed_reason(
            closed, f"after {done} of {len(plan.nodes)} nodes were upgraded"
        ),
        touched=True,
        owner=owner,
        tunnel_closed=closed,
    )


def _release_deadline(run: UpgradeRun, session: Session) -> datetime | None:
    try:
        return repo.get_release(run.to_version, session=session).deadline
    except LookupError:
        return None


def carry_over(
    runtime: Runtime,
    plan: UpdatePlan,
    run_id: int,
    *,
    why: str = "",
    customer_reason: str = "",
    touched: bool = False,
    owner: str | None = None,
    tunnel_closed: tuple[str, ...] = (),
) -> str:
    """Stop before the window closes and move the rest to the next window with room for at least one
    node (the whole window is the run's then), telling the customer if they were told of the update
    (`customer_knows`, as a stall's 'stopped': else the SRE's alert says they were not).
    `why`/`customer_reason`: another cause than the window's end (the SRE's and the customer's words),
    before any node was touched unless `touched` (a tunnel closed mid-run); `tunnel_closed`: the nodes
    whose support tunnel was closed, when that is the cause (a stall then tells the customer so).
    `owner`: the lease the caller holds; a run no longer running, or held under another lease, is left
    as it is (`TAKEN_OVER`).

    A pause/cancel committed after the run's last look for one (`upkeep cancel` as the window ends) is
    honoured instead, read under the run's row lock (which `upkeep pause|cancel` records under): moved
    to `planned` with it pending, the run was never claimed again (the dispatcher skips a planned run
    with a stop pending) and was re-slotted, 'rescheduled' told, window after window (adv35).

    No later window fitting ends the run failed: once a node was touched as any failure from there
    (the customer's 'failed' with each node's version, the run-failed alert, its case); before, the
    SRE's 'failed' e-mail only, the customer told nothing; an urgent update pages either way (adv37)."""
    now = runtime.clock()
    done = sum(1 for node in plan.nodes if node_done(runtime.engine, run_id, node.id))
    touched = touched or nodes_touched(runtime.engine, run_id)  # read before the row is locked (SQLite)
    try:
        with session_scope(runtime.engine) as session:
            run = get_run(run_id, session=session, lock=True)
            if run.state != RunState.running or (owner is not None and run.lease_owner != owner):
                # Moved by another process since this one last looked (it stood still past its lease
                # and the run was taken over and carried over, stalled or ended), or held by it now (the
                # lease `owner`'s no more): not this one's to move. Moved again, a stalled run was
                # re-slotted behind the SRE's back, a carried-over one a second window on, 'rescheduled'
                # told twice, a run moved from under the process upgrading its nodes (adv41).
                log.error("run %s: moved or held by another process now; not carried over here", run_id)
                return TAKEN_OVER
            if not (asked := str(run.requested_action or "")):
                moved = _carry_over(
                    runtime, plan, run, session, now, done, why, customer_reason, touched, tunnel_closed
                )
                failed = run.reason if moved == "failed" else ""
                stalled = run.reason if moved == "paused" else ""
                sequence = run.notice_sequence
        if not asked:
            if failed:  # no later window fits, before any node: a failed urgent update still pages (adv37)
                page_if_urgent(runtime, run_id, f"run {run_id} failed before any node was touched", failed)
            if stalled:  # paused for good until someone acts: an urgent one pages as a failed one (adv41)
                # After the commit, in its own transaction: a process killed in between leaves the page to
                # the dispatcher's tick (flows/oncall.py `page_triggers`, adv49), under the same key.
                page_if_urgent(
                    runtime, run_id, stall_headline(run_id), stalled, key=stall_page_key(run_id, sequence)
                )
            return moved
    except _NoLaterWindowMidWay as none:
        # A node was touched: a failure like any other from there (adv37), where an e-mail to the SRE's
        # address alone left the customer on mixed versions untold, and no alert, case or page.
        finish(runtime, plan, run_id, RunState.failed, reason=str(none))
        alert_sre(runtime, run_id, str(none))
        return "failed"
    return stop(runtime, plan, run_id, asked)


TAKEN_OVER = "taken over"  # the result of a run another process holds (flows/product_update.py)


class _NoLaterWindowMidWay(Exception):
    """`_carry_over` found no later window for a run that had touched a node (its transaction rolled
    back, nothing written): `carry_over` ends it failed as any failure once nodes were touched."""


def _carry_over(
    runtime: Runtime,
    plan: UpdatePlan,
    run: UpgradeRun,
    session: Session,
    now: datetime,
    done: int,
    why: str,
    customer_reason: str,
    touched: bool,
    tunnel_closed: tuple[str, ...] = (),
) -> str:
    """`carry_over`'s move, in its transaction (`session`, the run's row locked)."""
    run_id = run.id
    remaining = len(plan.nodes) - done
    assert run_id is not None
    if (idle := idle_windows(run_id, done, session)) >= STALLED_AFTER:
        return _stalled(runtime, plan, run, session, now, done, idle, why, tunnel_closed)
    # Asked before the move and before the 'partial' below is queued (it would answer for itself): an
    # announcement anew of an update that has not begun gives the full notice period (adv59).
    kind = move_notice(run, session)
    try:
        slot = next_window(
            run,
            now=now,
            not_before=max(now, run.window_end or run.slot_end or now),
            estimate=runtime.per_node_estimate,
            urgent=True,  # the customer was promised this update; an open case must not strand it
            session=session,
            announcing=kind is NoticeKind.scheduled and not (done or touched),
        )
        window = window_at(run, slot.start, session=session) or slot
    except SchedulingError as exc:
        cause = why or f"window closed after {done} of {len(plan.nodes)} nodes"
        reason = f"{cause} and no later window fits: {exc}"
        if done or touched:
            raise _NoLaterWindowMidWay(reason) from exc
        finish_run(run, RunState.failed, reason=reason, session=session)
        queue_run_notice(
            run,
            "failed",
            vendor=VendorTerms.from_runtime(runtime),
            session=session,
            now=now,
            to_sre=True,
            reason=reason,
        )
        return "failed"
    previous = run.slot_start
    run.state = RunState.planned
    run.window_start, run.window_end = window.start, window.end
    run.slot_start = window.start
    run.slot_end = min(window.end, window.start + runtime.per_node_estimate * remaining)
    deadline = _release_deadline(run, session)
    if deadline is not None and window.start > deadline:
        # Schedule integrity: never moved past the release deadline - held (it will not start) and
        # the SRE finds a slot; the customer is not told of a move the rules forbid. Partly done
        # (some nodes upgraded, or one in progress when its tunnel closed) alike: the SRE also
        # reads that the cluster runs mixed versions until the rest is upgraded.
        cause = why or f"window closed after {done} of {len(plan.nodes)} nodes"
        mixed = (
            f" ({done} of {len(plan.nodes)} nodes done: the cluster runs mixed versions until the "
            "rest is upgraded)"
            if (done or touched) and why
            else ""
        )
        run.held_reason = (
            f"{cause}{mixed}; the next window {window.start:%Y-%m-%d %H:%M} UTC is past the release "
            f"deadline {deadline:%Y-%m-%d %H:%M} UTC"
        )[:2000]
        run.reason = f"held: {run.held_reason}"
        tell_ending(
            runtime,
            run,
            session=session,
            now=now,
            notice=None,
            customer_reason="",
            alert="held",
            headline=f"run {run_id} ({plan.label}) held: no valid slot, it will not start"
            + (f" ({done} of {len(plan.nodes)} nodes done)" if done or touched else ""),
            cause=run.held_reason,
            action="find a slot: change the deadline, the windows or blackouts, or cancel the update "
            "(`upkeep calendar` shows it HELD)"
            + ("; the customer was told it started, not that it stopped" if done or touched else ""),
        )
        session.add(run)
        return "held"
    run.reason = (
        f"{why}; continues {window.start.isoformat()}"
        if why
        else f"partially done ({done} of {len(plan.nodes)} nodes); continues {window.start.isoformat()}"
    )
    # Told of the move as every move is (`move_notice`): 'rescheduled' to a customer who knows of the update;
    # announced anew ('scheduled') when every notice of it was refused - a pending 'scheduled' anew (a
    # move earlier, the outbox not run since) is superseded by this notice, and a 'rescheduled' was their
    # first word of it (adv57, h-ending); nothing when never announced: an SRE's `upkeep request --now`
    # taken up past its cutoff mailed "rescheduled" for an update never announced (adv50). `kind` was
    # asked above, before the move.
    moved = customer_reason or "partially done; the remaining nodes continue in the next window"
    # A 'scheduled' anew announces an update that has not begun ("we will upgrade ... from <old>"): once a
    # node changed, that is false, and at the next SEQUENCE it superseded the 'started' and 'partial' still
    # on their way - the customer's one word of an update that changed their nodes (adv59). Begun, the
    # customer's word is the 'partial' (each node's version, where it continues, why), queued to a customer
    # with a notice of it on its way ('started'); no move notice after it.
    begun = kind is NoticeKind.scheduled and bool(done or touched)
    if begun:
        kind = None
    tell_ending(
        runtime,
        run,
        session=session,
        now=now,
        # another cause: the 'rescheduled' notice below says it (begun: the 'partial' says it)
        notice="partial" if begun or not why else None,
        customer_reason=moved if begun and why else "",
        alert="carried-over",
        headline=f"run {run_id} ({plan.label}) carried over to {window.start:%Y-%m-%d %H:%M} UTC",
        cause=why or f"the window had no room for another node after {done} of {len(plan.nodes)} nodes",
        action=_begun_told(moved)
        if begun
        else _carried_over_told(kind, moved)
        if why or kind is NoticeKind.scheduled
        else "",
    )
    run.notice_sequence += 1  # the calendar entry moves: a new invite SEQUENCE
    detail = {"verified": done, "continues": window.start.isoformat(), "why": why[:500]}
    repo.record_audit(runtime.actor, CARRIED_OVER, f"run/{run_id}", detail, session=session)
    if kind is not None and not queue_move_notice(
        run,
        kind,
        session=session,
        now=now,
        vendor=VendorTerms.from_runtime(runtime),
        previous=previous or now,
        reason=moved,
    ):
        log.warning("run %s: customer has no contacts; %s notice not queued", run.id, kind.value)
    session.add(run)
    return "carried over"


CARRIED_OVER, STALLED = "run.carried_over", "run.stalled"


def _begun_told(moved: str) -> str:
    """The carry-over's alert action for a begun update whose 'scheduled' was refused (adv59)."""
    return (
        "The update's announcement was refused (nothing of it delivered) but it has begun: it is not "
        "announced anew ('scheduled' would say it has not started); the customer is sent the 'partial' "
        "notice if its 'started' is on its way (see above). What it says, for you to pass on if it needs "
        f"them: {moved}"
    )


def _carried_over_told(kind: NoticeKind | None, moved: str) -> str:
    """What the carry-over's alert says the customer is sent (`move_notice`'s `kind`); `moved`: what the
    'rescheduled' notice says, for the SRE to pass on when the customer gets something else."""
    if kind is NoticeKind.rescheduled:
        return (
            "The customer is sent the 'rescheduled' notice saying why, with the command to run on each node "
            "named; nothing else to do unless they ask for help."
        )
    if kind is NoticeKind.scheduled:
        return (
            "Every notice of the update was refused (nothing delivered): the customer is sent it announced "
            "anew ('scheduled' at the new slot), which says nothing of the move. What the 'rescheduled' "
            f"notice would have said, for you to pass on if it needs them: {moved}"
        )
    return (
        "The customer was not told (the update was never announced to them). What the 'rescheduled' "
        f"notice would have said, for you to pass on if it needs them: {moved}"
    )


def idle_windows(run_id: int, done: int, session: Session) -> int:
    """How many windows in a row, this one included, ended with no node of the run newly verified: this
    one (`done` nodes verified now) and those before it carried over with as many, back to the run's
    start (none verified), a window that verified one, or the SRE's resume of a stalled run."""
    from sqlmodel import col, select

    from inventory.models import AuditEvent

    events = session.exec(
        select(AuditEvent)
        .where(AuditEvent.subject == f"run/{run_id}", col(AuditEvent.action).in_((CARRIED_OVER, STALLED)))
        .order_by(col(AuditEvent.id))
    ).all()
    counts = [0]
    for event in events:
        if event.action == STALLED:  # a human looked at it then: counted afresh from there
            counts = [int(event.detail.get("verified") or 0)]
        else:
            counts.append(int(event.detail.get("verified") or 0))
    counts.append(done)
    idle = 0
    while idle < len(counts) - 1 and counts[-1 - idle] <= counts[-2 - idle]:
        idle += 1
    return idle


def _stalled(
    runtime: Runtime,
    plan: UpdatePlan,
    run: UpgradeRun,
    session: Session,
    now: datetime,
    done: int,
    idle: int,
    why: str,
    tunnel_closed: tuple[str, ...] = (),
) -> str:
    """The run made no progress in `idle` windows in a row (`STALLED_AFTER`): it is not re-slotted
    again but paused, where nothing picks it up by itself (the dispatcher starts planned runs, schedule
    integrity moves planned ones), its progress kept (nodes done, an approval, copies on the nodes),
    and the SRE is told once, with what to do. The customer, who was told it starts (or started) in this
    window, is sent the 'stopped' notice: stopped for now, how many nodes run the new version, nothing
    more without a new notice, the support contact; its invite withdraws the slot. Sent nothing, a
    customer told 'started' heard nothing after it (adv41). The SRE's resume tells them when it starts
    ('rescheduled', or 'started' inside a window). Its words are fixed (the SRE's cause may name hosts
    and internal state), but for a last window lost to the customer's closed support tunnel
    (`tunnel_closed`): the cause they were told at each move and can fix, and that opening it does not
    restart the update by itself (left out, they opened the tunnel and waited for a window that never
    came)."""
    run_id = run.id
    cause = why or f"the window had no room for another node after {done} of {len(plan.nodes)} nodes"
    run.state, run.requested_action = RunState.paused, RequestedAction.none
    run.reason = (
        f"{STALLED_REASON}no node upgraded in {idle} windows in a row, the last as {cause}; not re-slotted: "
        f"fix the cause, then `upkeep resume {run_id}` (in a window it goes on now; outside one it is "
        f"planned for the next, the customer told) or `upkeep cancel {run_id}`"
    )[:2000]
    detail = {"verified": done, "windows": idle, "why": cause[:500]}
    repo.record_audit(runtime.actor, STALLED, f"run/{run_id}", detail, session=session)
    tell_ending(
        runtime,
        run,
        session=session,
        now=now,
        notice="stopped",  # fixed words: the SRE's cause may name hosts and internal state
        customer_reason=tunnel_stalled_reason(tunnel_closed) if tunnel_closed else "",
        alert="stalled",
        headline=f"run {run_id} ({plan.label}) made no progress in {idle} windows in a row; not re-slotted",
        cause=cause,
        action=_check_nodes(run, session) + f"Find why it does not get going (its alerts, `upkeep show "
        f"{run_id}`); fix it, then "
        f"`upkeep resume {run_id}` (inside a window it goes on at once; outside one it is planned for the "
        f"next window with room, the customer told, and the dispatcher starts it there), or `upkeep cancel "
        f"{run_id}`. It is paused and not re-slotted until then. {_last_told(run, session)}",
    )
    session.add(run)
    return "paused"


def _check_nodes(run: UpgradeRun, session: Session) -> str:
    """The ask to check each node whose upgrade did not complete, for an ending that opens no case (a
    stall, a cancel): its notice ('stopped', 'cancelled') and the portal tell the customer "our support
    team is checking this node" - this alert is the one call to a person that backs those words."""
    from flows.endings import being_checked

    if not (nodes := being_checked(run, session)):
        return ""
    told = "; the customer was told our support team is checking it" if customer_knows(run, session) else ""
    return f"Check {', '.join(nodes)}: its upgrade did not complete{told}. Tell the customer what you find. "


def _last_told(run: UpgradeRun, session: Session) -> str:
    """What the customer heard of `run` before its stall, for the SRE who contacts them: the last notice
    queued for it, read before the 'stopped' one is queued. "Last told it starts <slot>" was false after
    a 'started' in this window (a node touched, then the take-over past the cutoff stalled it): they were
    told it started (adv41)."""
    from sqlmodel import col, select

    from flows.run_notices import update_ref
    from inventory.outbox import Notice

    last = session.exec(
        select(Notice.kind, Notice.created_at)
        .where(col(Notice.update_ref) == update_ref(run.id))
        .order_by(col(Notice.id).desc())
        .limit(1)
    ).first()
    if last is None:
        return ""
    kind, at = last
    started = ": they were told it started" if kind == "started" else ""
    return (
        f"Before the stall, the customer's last notice of it was '{kind}' ({at:%Y-%m-%d %H:%M} UTC)"
        f"{started}. Tell them what happens next once you know it."
    )


def tell_paused_past_window(runtime: Runtime, now: datetime) -> list[int]:
    """The dispatcher's tick: each run an SRE paused (`upkeep pause`) whose announced window has ended
    with it still paused, its customer told of the update, is told stopped for now - the stall's own
    'stopped' notice (fixed words: no SRE reason, no hosts; N of M nodes on the new version, or nothing
    changed; a CANCEL at the next SEQUENCE) - and the SRE is alerted, asked to check each node the notice
    says our support team is checking. The customer was told the update happens in that window ('started':
    "you will hear from us when it is done"); a pause resumed inside it tells nothing more, one still
    paused at its end left them with nothing. Returns the runs told now.

    Once per pause: the run's reason is marked (`PAUSED_STOPPED_REASON`) in the transaction that queues
    the notice, under the run's row lock, re-read there: two dispatchers at once tell it once (the second
    waits, then finds it marked), as two processes stalling one run; a process killed before its commit
    wrote nothing and the next tick tells it. A pause still pending on a running run (`requested_action`,
    its node in progress) is its process's to honour, or the take-over's once that process is gone: the
    tick after that tells it. A customer never told of the update is told nothing (`customer_knows`).

    A run whose window was overridden (`--override-window`) is told at the end of the window recorded for
    it (`announced_window_over`): the customer was told 'started' for that window. One with none recorded
    at all has no end to go by and is never told here; `upkeep pause` says so to the SRE."""
    from sqlalchemy import func
    from sqlmodel import col, select

    from inventory.models import UpgradeRun
    from inventory.runs import PAUSED_STOPPED_REASON

    end = func.coalesce(col(UpgradeRun.window_end), col(UpgradeRun.slot_end))
    with session_scope(runtime.engine) as session:
        paused = session.exec(
            select(UpgradeRun)
            .where(
                UpgradeRun.state == RunState.paused,
                ~col(UpgradeRun.reason).startswith(STALLED_REASON),
                ~col(UpgradeRun.reason).startswith(PAUSED_STOPPED_REASON),
                end.is_not(None),
            )
            .order_by(col(UpgradeRun.id))
        ).all()
        # Its window over as the inventory says now, not only as recorded at its start: shortened or
        # removed by an import since the pause, it ended then (the cutoff's reading, adv52).
        candidates = []
        for run in paused:
            try:
                if announced_window_over(run, now, session=session):
                    candidates.append(run.id)
            except Exception:  # one run's trouble never stops the tick for the others
                log.exception(
                    "run %s: its window could not be read; its pause is looked at next tick", run.id
                )
    told = []
    for run_id in candidates:
        assert run_id is not None
        try:
            if tell_paused_stopped(runtime, run_id, now):
                told.append(run_id)
        except Exception:  # one run's trouble never stops the tick for the others
            log.exception("run %s: the 'stopped' notice of its pause past its window was not queued", run_id)
    return told


def announced_window_over(run: UpgradeRun, now: datetime, *, session: Session) -> bool:
    """Whether the window the customer was told of is over for a paused `run`: as the cutoff reads it
    (`window_over`: the window as the inventory says now); for a run whose window was overridden, the
    recorded window's end (`announced_end`: the override lets the run go on outside it, it does not take
    back the 'started' the customer was told for it; decided in h-ending). False with none recorded."""
    if has_window(run):
        return window_over(run, now, session=session)
    end = announced_end_of(run, session)
    return end is not None and end <= now


def announced_end_of(run: UpgradeRun, session: Session) -> datetime | None:
    """`announced_end`, for a run whose window was overridden only when the customer's latest 'started' of
    it was told before that end: resumed with `--override-window` after its recorded window had ended (a
    pause told 'stopped' at 01:00, resumed at 14:00), its 'started' was for no window - told 'stopped' at
    the next tick, minutes after "we have started", the customer read "stopped during your maintenance
    window ... the window has ended" of a window over before it (adv59). Such a run has no window the
    customer was told of: as one with none recorded, it is not told automatically (None)."""
    from sqlmodel import col, select

    from flows.run_notices import update_ref
    from inventory.outbox import Notice

    end = announced_end(run)
    if end is None or has_window(run):
        return end
    query = (
        select(Notice.created_at)
        .where(col(Notice.update_ref) == update_ref(run.id), col(Notice.kind) == "started")
        .order_by(col(Notice.created_at).desc())
        .limit(1)
    )
    started = session.exec(query).first()
    return None if started is not None and started >= end else end


def tell_paused_stopped(runtime: Runtime, run_id: int, now: datetime) -> bool:
    """`tell_paused_past_window` for one run, in one transaction under its row lock: True when it is told
    (or marked, its last word already 'stopped') now, False when there is nothing to do (resumed,
    cancelled or told meanwhile - by another dispatcher, or by `upkeep resume` doing the tick's part -
    its window not over, or nobody to tell). The tick's and `upkeep resume`'s one path (h-ending)."""
    from inventory.models import Cluster
    from inventory.runs import PAUSED_STOPPED_REASON, paused_stopped, stalled

    with session_scope(runtime.engine) as session:
        run = get_run(run_id, session=session, lock=True)
        end = announced_end_of(run, session)
        if (
            RunState(run.state) is not RunState.paused
            or stalled(run)
            or paused_stopped(run)
            or end is None
            or not announced_window_over(run, now, session=session)
            or not customer_knows(run, session)
        ):
            return False  # resumed, cancelled or told meanwhile (another dispatcher), or nobody to tell
        before = run.reason
        # Resumed after a 'stopped' and paused again before it started (no 'started' since): the customer's
        # last word of it already says it stopped for now. Marked, not told twice in a row (adv52).
        again = last_word(run, session) == "stopped"
        ended = min(end, now)  # by now at the latest: an import may have shortened it since the start
        run.reason = (
            f"{PAUSED_STOPPED_REASON}{before or 'paused'}; its window ended {ended:%Y-%m-%d %H:%M} UTC "
            "with it paused"
        )[:2000]
        cluster = session.get(Cluster, run.cluster_id)
        label = f"{cluster.name if cluster else run.cluster_id} {run.from_version}→{run.to_version}"
        told = (
            "the customer's last notice of it already said it stopped for now ('stopped'): not told again"
            if again
            else "the customer is told it stopped for now"
        )
        tell_ending(
            runtime,
            run,
            session=session,
            now=now,
            notice=None if again else "stopped",  # the stall's fixed words: the SRE's reason may name hosts
            customer_reason="",
            alert="paused-stopped",
            headline=f"run {run_id} ({label}) still paused at its window's end: {told}",
            cause=before or "paused by request",
            action=_check_nodes(run, session)
            + f"`upkeep resume {run_id}` ("
            + (
                "its window overridden: it goes on at once, the customer told 'started'"
                if run.override_reason
                else "inside a window it goes on at once, the customer told 'started'; outside one it is "
                "planned for the next window with room, the customer told 'rescheduled'"
            )
            + f"), or `upkeep cancel {run_id} --reason TEXT`.",
        )
        session.add(run)
        session.flush()
        failpoint("paused-stopped:queued")  # the mark, the notice and the alert written, not committed
    return True


def last_word(run: UpgradeRun, session: Session) -> str:
    """The kind of the customer's latest notice of `run` that went out or is on its way ("" if none)."""
    from sqlmodel import col, select

    from flows.run_notices import update_ref
    from inventory.outbox import Notice, NoticeState

    last = session.exec(
        select(Notice.kind)
        .where(
            col(Notice.update_ref) == update_ref(run.id),
            col(Notice.state).in_((NoticeState.pending, NoticeState.sent)),
        )
        .order_by(col(Notice.sequence).desc(), col(Notice.id).desc())
        .limit(1)
    ).first()
    return str(last or "")
