"""What a customer's designated user may see and do about their maintenance, through the portal.

Every function takes the signed-in user's customer and refuses (`NotYours`, a LookupError: the portal
answers 404) any update that is not that customer's, so changing an id in a URL reaches nothing. Deferral
goes through `flows.schedule.defer_update`, the same code path as `upkeep defer`, after checking that the
chosen start is one of the times `defer_choices` offered (the same rules, enforced on the server).
Plain functions in the caller's transaction; `now` is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from flows.portal_links import PortalLinks, link_expiry
from flows.run_notices import DEFERRALS, VendorTerms, deferral_options, update_ref
from flows.schedule import ChangedMeanwhile, ScheduleRefused, confirm_update, defer_update, next_window
from inventory import repo
from inventory.alerts import queue_alert
from inventory.cases import Case, CaseError, CaseStatus, EscalatedBy, check_case_ref, escalate, open_case
from inventory.importer_model import mailbox_key
from inventory.models import AuditEvent, Cluster, Customer, Node, RunState, UpgradeRun
from inventory.runs import paused_stopped, stopped_for_now
from scheduling.deferral import check_deferral
from scheduling.errors import NoSlot
from scheduling.windows import Interval
from templates import format_duration, format_slot

MAX_CHOICES = 12


class AlreadyEscalated(CaseError):
    """The customer asked to escalate a case that is escalated already (409, nothing sent)."""


class NotYours(LookupError):
    """No such update for this customer (whether it exists for another is not said)."""


@dataclass(frozen=True)
class UpcomingUpdate:
    id: int
    ref: str
    cluster: str
    from_version: str
    to_version: str
    start: datetime
    end: datetime
    start_text: str  # "Tue 8 Dec 2026 02:00 EST (07:00 UTC)"
    end_text: str
    duration: str
    nodes: int
    urgent: bool
    deferrals_used: int
    deferrals_left: int
    deferral_note: str  # what the notices say the customer may do
    confirmed_by: tuple[str, ...]  # who confirmed this version of the schedule (this SEQUENCE)
    needs_approval: bool


def upcoming_updates(customer: Customer, *, session: Session) -> list[UpcomingUpdate]:
    """The customer's announced updates that have not started, soonest first."""
    query = _announced(customer, RunState.planned).order_by(col(UpgradeRun.slot_start), col(UpgradeRun.id))
    return [_view(run, customer, session) for run in session.exec(query)]


def _announced(customer: Customer, state: RunState) -> Any:
    """The customer's runs in `state` that have a slot (were announced): what the portal lists."""
    return (
        select(UpgradeRun)
        .join(Cluster, col(Cluster.id) == UpgradeRun.cluster_id)
        .where(
            Cluster.customer_id == customer.id,
            UpgradeRun.state == state,
            col(UpgradeRun.slot_start).is_not(None),
        )
    )


def customer_update(run_id: int, customer: Customer, *, session: Session) -> UpgradeRun:
    """The planned, announced update `run_id` of this customer; NotYours otherwise."""
    run = session.get(UpgradeRun, run_id)
    cluster = session.get(Cluster, run.cluster_id) if run is not None else None
    if run is None or cluster is None or cluster.customer_id != customer.id:
        raise NotYours(f"no update {update_ref(run_id)} for {customer.name}")
    if RunState(run.state) is not RunState.planned or run.slot_start is None:
        raise NotYours(f"{update_ref(run_id)} is {run.state}; only upcoming updates are shown here")
    return run


def update_view(run_id: int, customer: Customer, *, session: Session) -> UpcomingUpdate:
    return _view(customer_update(run_id, customer, session=session), customer, session)


def defer_choices(run: UpgradeRun, *, now: datetime, session: Session) -> list[Interval]:
    """The maintenance-window starts this update may be deferred to, soonest first: none for an urgent
    update or with no deferral left; otherwise every window start after the current one that the
    deferral rules (`scheduling.deferral`: count, maximum move, release deadline) allow."""
    current, current_end = run.slot_start, run.slot_end
    if run.urgent or current is None or current_end is None or run.deferrals >= DEFERRALS.max_count:
        return []
    deadline = repo.get_release(run.to_version, session=session).deadline
    choices: list[Interval] = []
    not_before = current + timedelta(minutes=1)
    while len(choices) < MAX_CHOICES:
        try:
            slot = next_window(
                run,
                now=now,
                not_before=not_before,
                estimate=current_end - current,
                urgent=False,
                session=session,
            )
        except NoSlot:
            break
        decision = check_deferral(
            DEFERRALS,
            current_start=current,
            new_start=slot.start,
            deferrals_so_far=run.deferrals,
            deadline=deadline,
            now=now,
        )
        if not decision.allowed:  # every later start is further away: none of them is allowed either
            break
        choices.append(slot)
        not_before = slot.start + timedelta(minutes=1)
    return choices


def defer_to(
    run_id: int,
    customer: Customer,
    start: datetime,
    *,
    now: datetime,
    actor: str,
    session: Session,
    vendor: VendorTerms | None = None,
) -> UpgradeRun:
    """Defer the customer's update to `start`, which must be one of `defer_choices`; audited as `actor`
    (the user's address) and announced to the customer's contacts and designated users."""
    run = customer_update(run_id, customer, session=session)
    if run.urgent:
        raise ScheduleRefused(
            f"{update_ref(run.id)} is urgent (a security or data-loss fix) and cannot be deferred"
        )
    offered = [slot.start for slot in defer_choices(run, now=now, session=session)]
    if start not in offered:
        raise ScheduleRefused(
            f"{update_ref(run.id)} cannot be deferred to that time: choose one of the times offered"
            if offered
            else f"{update_ref(run.id)} cannot be deferred any more"
        )
    try:
        return defer_update(
            run.id or 0, to=start, now=now, session=session, requested_by=actor, vendor=vendor
        )
    except ChangedMeanwhile:  # the operator's wording names `upkeep show`; the customer reloads
        raise ChangedMeanwhile(
            f"{update_ref(run_id)} changed while you deferred it (someone confirmed, moved or started it "
            "just now); reload the page to see its current time and the times it may move to"
        ) from None


def confirm(
    run_id: int,
    customer: Customer,
    *,
    now: datetime,
    actor: str,
    session: Session,
    vendor: VendorTerms | None = None,
) -> UpgradeRun:
    """Record that `actor` acknowledged the update at its current time and tell the customer's contacts
    and designated users: `flows.schedule.confirm_update` (the usual notice, a new invite SEQUENCE).
    Confirming the same schedule twice records and sends it once. Another user's Confirm committing
    between this one's read and its write is no conflict (the time is the same): it is retried once;
    any other change meanwhile (moved, started) is refused, telling the user to look again."""
    run = customer_update(run_id, customer, session=session)
    seen = run.slot_start
    for attempt in (1, 2):
        base, confirmed = _confirmations(run, session)
        if has_confirmed(actor, confirmed):
            return run
        try:
            with session.begin_nested():
                return confirm_update(
                    run.id or 0, now=now, session=session, confirmed_by=actor, vendor=vendor,
                    detail={"base": base},
                )  # fmt: skip
        except ChangedMeanwhile:
            session.expire(run)
            run = customer_update(run_id, customer, session=session)  # NotYours once it started
            if attempt == 2 or run.slot_start != seen:
                raise ChangedMeanwhile(
                    f"{update_ref(run_id)} changed while you confirmed it (someone moved it just now); "
                    "reload the page to see its current time and confirm that if it suits you"
                ) from None
    raise AssertionError("unreachable")


def has_confirmed(email: str, confirmed_by: tuple[str, ...]) -> bool:
    """Whether `email`'s person is among `confirmed_by`: by mailbox (case and +tag dropped), as the
    import knows a user; a re-spelt address in the inventory is the same person."""
    return mailbox_key(email) in {mailbox_key(who) for who in confirmed_by}


def _confirmations(run: UpgradeRun, session: Session) -> tuple[int, tuple[str, ...]]:
    """(base, who): `base` is the notice sequence at which the update got its current time, `who` the
    users who confirmed that time. A confirmation itself moves the sequence on (its notice carries a new
    invite SEQUENCE), so each one records the base it confirmed: the base carries over while nothing but
    confirmations happened since (the newest one's sequence is still the update's)."""
    events = session.exec(
        select(AuditEvent.actor, AuditEvent.detail)
        .where(AuditEvent.action == "update.confirmed", AuditEvent.subject == f"run/{run.id}")
        .order_by(col(AuditEvent.id))
    ).all()

    def base_of(detail: Mapping[str, Any]) -> Any:
        return detail.get("base", detail.get("sequence"))

    base = run.notice_sequence
    if events and events[-1][1].get("sequence") == run.notice_sequence:
        base = base_of(events[-1][1])
    return base, tuple(dict.fromkeys(actor for actor, detail in events if base_of(detail) == base))


def _view(run: UpgradeRun, customer: Customer, session: Session) -> UpcomingUpdate:
    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None and run.id is not None
    start, end = run.slot_start, run.slot_end
    assert start is not None and end is not None
    nodes = len(session.exec(select(Node.id).where(Node.cluster_id == cluster.id)).all())
    return UpcomingUpdate(
        id=run.id,
        ref=update_ref(run.id),
        cluster=cluster.name,
        from_version=run.from_version,
        to_version=run.to_version,
        start=start,
        end=end,
        start_text=format_slot(start, customer.timezone),
        end_text=format_slot(end, customer.timezone),
        duration=format_duration(end - start),
        nodes=nodes,
        urgent=run.urgent,
        deferrals_used=run.deferrals,
        deferrals_left=0 if run.urgent else max(DEFERRALS.max_count - run.deferrals, 0),
        deferral_note=deferral_options(run, start, customer.timezone, session),
        confirmed_by=_confirmations(run, session)[1],
        needs_approval=run.needs_approval,
    )


@dataclass(frozen=True)
class StoppedUpdate:
    """An update stopped for now as its customer was told ('stopped': stalled by the bound on idle windows,
    or paused by an SRE past its window's end; inventory/runs.py `stopped_for_now`), as the customer sees
    it: what their 'stopped' notice said, never the SRE's reason (hosts, commands)."""

    id: int
    ref: str
    cluster: str
    from_version: str
    to_version: str
    slot_text: str  # the slot it stopped in
    nodes_upgraded: int
    nodes_total: int
    nodes: tuple[str, ...]  # "node-1: 9.10.0", per node in upgrade order (flows/endings.py)
    paused_by_us: bool = False  # paused by an SRE past its window, not stalled: the notice's own words


def stopped_updates(customer: Customer, *, session: Session) -> list[StoppedUpdate]:
    """The customer's announced updates stopped for now, oldest first. Neither upcoming (planned) nor
    past (ended), a stalled run vanished from the portal while the customer was told it stopped."""
    # Not only those with a slot: a `request --now` (no slot, 'started' its first word) paused past its
    # window is told 'stopped' too, and was listed "in progress ... you will hear from us when it is done"
    # (adv59). Told of as the in-progress list counts it (`_told_of`).
    query = (
        select(UpgradeRun)
        .join(Cluster, col(Cluster.id) == UpgradeRun.cluster_id)
        .where(Cluster.customer_id == customer.id, UpgradeRun.state == RunState.paused)
        .order_by(col(UpgradeRun.id))
    )
    return [
        _stopped(run, customer, session)
        for run in session.exec(query)
        if stopped_for_now(run) and _told_of(run, session)
    ]


def stopped_update(run_id: int, customer: Customer, *, session: Session) -> StoppedUpdate:
    """The stopped update `run_id` of this customer (its page, from a notice's link); NotYours otherwise."""
    run = session.get(UpgradeRun, run_id)
    cluster = session.get(Cluster, run.cluster_id) if run is not None else None
    if run is None or cluster is None or cluster.customer_id != customer.id:
        raise NotYours(f"no update {update_ref(run_id)} for {customer.name}")
    if not stopped_for_now(run) or not _told_of(run, session):
        raise NotYours(f"{update_ref(run_id)} is {run.state}; not stopped")
    return _stopped(run, customer, session)


def _stopped(run: UpgradeRun, customer: Customer, session: Session) -> StoppedUpdate:
    from flows.endings import versions_at_stop  # the notice's own words per node
    from inventory.run_report import node_rows

    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None and run.id is not None
    # The slot it stopped in; a `request --now` has none: the window it ran in, or when it started.
    start = run.slot_start or run.window_start or run.started_at
    assert start is not None
    rows = node_rows(run, session)
    return StoppedUpdate(
        id=run.id,
        ref=update_ref(run.id),
        cluster=cluster.name,
        from_version=run.from_version,
        to_version=run.to_version,
        slot_text=format_slot(start, customer.timezone),
        nodes_upgraded=sum(1 for row in rows if row["after"]),
        nodes_total=len(rows),
        nodes=versions_at_stop(run, session),
        paused_by_us=paused_stopped(run),
    )


@dataclass(frozen=True)
class InProgressUpdate:
    """An update under way: running, or paused by an SRE (not stopped for now), as the customer sees it:
    where each node stands, in the words of the stopped view; never why an SRE paused it, or who."""

    id: int
    ref: str
    cluster: str
    from_version: str
    to_version: str
    slot_text: str  # the window it started in (or when, started at once), in the customer's zone
    in_window: bool  # it started in an announced maintenance window
    nodes_upgraded: int
    nodes_total: int
    nodes: tuple[str, ...]  # "node-1: 9.10.0", per node in upgrade order


# A node being upgraded right now (inventory/run_report.py `node_rows`: "in progress").
_NODE_UNDER_WAY = "being upgraded now"


def in_progress_updates(
    customer: Customer,
    *,
    session: Session,
    stopped: list[StoppedUpdate] | None = None,
    upcoming: list[UpcomingUpdate] | None = None,
) -> list[InProgressUpdate]:
    """The customer's announced updates under way, oldest first: running, or paused and not shown as
    stopped for now. The paused ones are those `stopped_updates` leaves out, whatever it counts as
    stopped, so the two lists never both show a run and never both miss one. A page showing both passes
    the `stopped` list it shows: a run changing between two reads is then still shown once. Likewise the
    `upcoming` list it shows: a run the dispatcher starts after that read (read committed) is listed
    once, as upcoming, not also in progress (adv53)."""
    if stopped is None:
        stopped = stopped_updates(customer, session=session)
    shown_stopped = {s.id for s in stopped} | {u.id for u in upcoming or ()}
    query = (
        select(UpgradeRun)
        .join(Cluster, col(Cluster.id) == UpgradeRun.cluster_id)
        .where(
            Cluster.customer_id == customer.id,
            col(UpgradeRun.state).in_((RunState.running, RunState.paused)),
        )
        .order_by(col(UpgradeRun.id))
    )
    return [
        _in_progress(run, customer, session)
        for run in session.exec(query)
        if run.id not in shown_stopped and _told_of(run, session)
    ]


def in_progress_update(run_id: int, customer: Customer, *, session: Session) -> InProgressUpdate:
    """The update `run_id` of this customer under way (its page, from the 'started' notice's link);
    NotYours otherwise, and for a paused one `stopped_update` shows."""
    run = _customers_run(run_id, customer, session)
    state = RunState(run.state)
    if state not in (RunState.running, RunState.paused) or not _told_of(run, session):
        raise NotYours(f"{update_ref(run_id)} is {run.state}; not in progress")
    if state is RunState.paused:
        try:
            stopped_update(run_id, customer, session=session)
        except NotYours:
            pass
        else:
            raise NotYours(f"{update_ref(run_id)} is stopped for now; not in progress")
    return _in_progress(run, customer, session)


def _told_of(run: UpgradeRun, session: Session) -> bool:
    """Whether the customer was told of this update under way: it was announced for a slot, or (started
    at once, `upkeep update`: no slot) its 'started' notice was queued. Before that (pre-flight) the
    portal knows nothing of it, as of an update planned and not announced."""
    from inventory.outbox import Notice

    if run.slot_start is not None:
        return True
    started = select(Notice.id).where(Notice.update_ref == update_ref(run.id), Notice.kind == "started")
    return session.exec(started).first() is not None


def _customers_run(run_id: int, customer: Customer, session: Session) -> UpgradeRun:
    run = session.get(UpgradeRun, run_id)
    cluster = session.get(Cluster, run.cluster_id) if run is not None else None
    if run is None or cluster is None or cluster.customer_id != customer.id:
        raise NotYours(f"no update {update_ref(run_id)} for {customer.name}")
    return run


def _in_progress(run: UpgradeRun, customer: Customer, session: Session) -> InProgressUpdate:
    from flows.endings import versions_at_stop
    from inventory.run_report import node_rows

    cluster = session.get(Cluster, run.cluster_id)
    began = run.slot_start or run.started_at or run.created_at
    assert cluster is not None and run.id is not None
    rows = node_rows(run, session)
    # A carry-over's words (`continues`): a node stopped part-way is checked when the update goes on,
    # not "our support team is checking" (nobody is told to); a node at work now is said to be, and one
    # not reached yet is "not upgraded yet" (the update goes on).
    lines = versions_at_stop(run, session, continues=True)
    under_way = {"in progress": _NODE_UNDER_WAY, "pending": f"{run.from_version} (not upgraded yet)"}
    nodes = tuple(
        f"{row['node']}: {under_way[row['result']]}" if row["result"] in under_way else line
        for row, line in zip(rows, lines, strict=True)
    )
    return InProgressUpdate(
        id=run.id,
        ref=update_ref(run.id),
        cluster=cluster.name,
        from_version=run.from_version,
        to_version=run.to_version,
        slot_text=format_slot(began, customer.timezone),
        in_window=run.slot_start is not None,
        nodes_upgraded=sum(1 for row in rows if row["after"]),
        nodes_total=len(rows),
        nodes=nodes,
    )


def customer_clusters(customer: Customer, *, session: Session) -> list[Cluster]:
    query = select(Cluster).where(Cluster.customer_id == customer.id).order_by(col(Cluster.name))
    return list(session.exec(query))


def cases_of(customer: Customer, *, session: Session, limit: int = 200) -> list[Case]:
    """The customer's cases, newest first (closed ones included: the customer's history)."""
    query = select(Case).where(Case.customer_id == customer.id).order_by(col(Case.id).desc()).limit(limit)
    return list(session.exec(query))


def open_customer_case(
    customer: Customer,
    *,
    cluster: str,
    subject: str,
    description: str,
    category: str,
    priority: str,
    now: datetime,
    actor: str,
    session: Session,
    vendor: VendorTerms | None = None,
) -> Case:
    """Open a case for the customer through `inventory.cases.open_case` (its rules and SLA), about one
    of the customer's own clusters or none; the description is kept with the case's audit trail. A
    P0/P1 case re-checks the cluster's planned updates, as `upkeep case open` does."""
    from flows.integrity import recheck_planned

    clusters = []
    if cluster:
        found = session.exec(
            select(Cluster).where(Cluster.name == cluster, Cluster.customer_id == customer.id)
        ).first()
        if found is None:
            raise NotYours(f"no cluster {cluster[:64]!r} for {customer.name}")
        clusters.append(found)
    description = description.strip()
    if len(description) > 10_000:
        raise CaseError("case description: at most 10,000 characters")
    case = open_case(
        customer=customer,
        clusters=clusters,
        subject=subject,
        category=category,
        priority=priority,
        now=now,
        opened_by=actor,
        session=session,
    )
    if description:
        detail = {"description": description, "via": "portal"}
        repo.record_audit(actor, "case.description", f"case/{case.ref}", detail, session=session)
    if str(case.priority) in ("P0", "P1") and clusters:
        recheck_planned(
            now=now,
            session=session,
            actor=actor,
            vendor=vendor,
            clusters=[c.id for c in clusters if c.id is not None],
            why=f"case opened: {case.ref}",
        )
    return case


@dataclass(frozen=True)
class PastUpdate:
    ref: str
    cluster: str
    from_version: str
    to_version: str
    outcome: str  # succeeded, failed or cancelled
    reason: str
    started: str
    finished: str
    case: str  # the case about it (failed ones), or ""
    nodes: list[dict[str, Any]]  # inventory.run_report.node_rows


# What History says of an update that did not succeed: the customer's words, as its notices put them. The
# run's `reason` is the SRE's: a failure's exception text (SSH command lines, hosts and their addresses, a
# traceback's last line), a cancel's "cancelled by USER: what they wrote (while paused)" (adv49).
_PAST_WORDS = {
    RunState.failed: "it could not be completed; our support team was alerted, and nodes not upgraded keep "
    "the version they had",
    RunState.cancelled: "it was cancelled before it was completed",
}
# A node whose step failed, as the 'failed' notice words it (flows/endings.py `versions_at_stop`), not the
# last line of the command's output ("failed at upgrade: E: Sub-process /usr/bin/dpkg returned ...").
_NODE_FAILED = "did not complete; our support team is checking this node"


def _customer_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "result": _NODE_FAILED} if str(row["result"]).startswith("failed") else row


_ENDED = (RunState.succeeded, RunState.failed, RunState.cancelled)


def past_updates(customer: Customer, *, session: Session, limit: int = 50) -> list[PastUpdate]:
    """The customer's finished updates, newest first, with per-node results and the failure's case."""
    query = (
        select(UpgradeRun, Cluster.name)
        .join(Cluster, col(Cluster.id) == UpgradeRun.cluster_id)
        .where(Cluster.customer_id == customer.id, col(UpgradeRun.state).in_(_ENDED))
        .order_by(col(UpgradeRun.finished_at).desc(), col(UpgradeRun.id).desc())
        .limit(limit)
    )
    return [_past(run, cluster, customer, session) for run, cluster in session.exec(query).all()]


def past_update(run_id: int, customer: Customer, *, session: Session) -> PastUpdate:
    """The ended update `run_id` of this customer as History shows it (a notice's link to an update that
    has ended since); NotYours otherwise."""
    run = _customers_run(run_id, customer, session)
    cluster = session.get(Cluster, run.cluster_id)
    if RunState(run.state) not in _ENDED or cluster is None:
        raise NotYours(f"{update_ref(run_id)} is {run.state}; not ended")
    return _past(run, cluster.name, customer, session)


def _past(run: UpgradeRun, cluster: str, customer: Customer, session: Session) -> PastUpdate:
    from flows.failed_run_case import RUN_CASE
    from inventory.run_report import node_rows

    case = run.case_ref or ""
    if not case:
        event = session.exec(
            select(AuditEvent.detail).where(
                AuditEvent.action == RUN_CASE, AuditEvent.subject == f"run/{run.id}"
            )
        ).first()
        case = str(event.get("case", "")) if event else ""

    def when(moment: datetime | None) -> str:
        return format_slot(moment, customer.timezone) if moment else "-"

    return PastUpdate(
        ref=update_ref(run.id),
        cluster=cluster,
        from_version=run.from_version,
        to_version=run.to_version,
        outcome=str(run.state),
        reason=_PAST_WORDS.get(RunState(run.state), ""),
        started=when(run.started_at),
        finished=when(run.finished_at),
        case=case,
        nodes=[_customer_row(row) for row in node_rows(run, session)],
    )


def customer_case(ref: str, customer: Customer, *, session: Session) -> Case:
    """The customer's case `ref`; NotYours for another customer's or a malformed id."""
    try:
        check_case_ref(ref)
    except CaseError:
        raise NotYours(f"no case {ref[:40]!r}") from None
    case = session.exec(select(Case).where(Case.ref == ref, Case.customer_id == customer.id)).first()
    if case is None:
        raise NotYours(f"no case {ref} for {customer.name}")
    return case


def case_thread(case: Case, *, session: Session) -> list[tuple[datetime, str, str]]:
    """(when, who, text) of the case's description and comments, oldest first."""
    query = select(AuditEvent).where(
        AuditEvent.subject == f"case/{case.ref}",
        col(AuditEvent.action).in_(["case.description", "case.comment"]),
    )
    return [(e.at, e.actor, str(e.detail.get("description") or e.detail.get("text") or ""))
            for e in session.exec(query.order_by(col(AuditEvent.id)))]  # fmt: skip


def comment_on_case(case: Case, text: str, *, actor: str, session: Session) -> None:
    text = text.strip()
    if not text or len(text) > 10_000:
        raise CaseError("comment: expected 1-10,000 characters")
    if case.status is CaseStatus.closed:
        raise CaseError(f"{case.ref} is closed; open a new case")
    repo.record_audit(
        actor, "case.comment", f"case/{case.ref}", {"text": text, "via": "portal"}, session=session
    )


def request_escalation(case: Case, reason: str, *, now: datetime, actor: str, session: Session) -> None:
    """The customer asks for management attention: the case is escalated by the customer (audited) and
    the SRE side alerted through the alert outbox (its channels: the SRE mailbox, UPKEEP_ALERT_URLS)."""
    from templates.alert import AlertContext, render_alert

    # Once: the row is locked and re-read, so two requests racing (or a script repeating one) cannot
    # page the SRE side again for a case that a manager already holds.
    session.refresh(case, with_for_update=True)
    if case.status is CaseStatus.escalated:
        since = f" since {case.escalated_at:%Y-%m-%d %H:%M} UTC" if case.escalated_at else ""
        raise AlreadyEscalated(f"{case.ref} is already escalated{since}; a manager on our side has it")
    customer = session.get(Customer, case.customer_id)
    escalate(case, by=EscalatedBy.customer, reason=reason, now=now, actor=actor, session=session)
    rendered = render_alert(
        AlertContext(
            headline=f"Customer escalation: {case.ref} ({case.priority}) {case.subject}",
            cause=f"{actor} asked for escalation to management: {reason.strip()[:500]}",
            at=now,
            customer=customer.name if customer else "",
            case_ref=case.ref,
            action=f"Take over {case.ref} as Escalation Manager and answer the customer.",
        )
    )
    queue_alert(
        key=f"case-escalation:{case.ref}:{now.isoformat()}",
        kind="case_escalation",
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        session=session,
        now=now,
        customer=customer.name if customer else "",
    )


def new_feed(customer: Customer, token_hash: str, *, now: datetime, actor: str, session: Session) -> None:
    """Give the customer a calendar feed with this token (hashed), replacing any earlier one."""
    from inventory.portal_tables import PortalFeed

    assert customer.id is not None
    old = session.get(PortalFeed, customer.id)
    if old is not None:
        session.delete(old)
        session.flush()
    session.add(PortalFeed(customer_id=customer.id, token_hash=token_hash, created_by=actor, created_at=now))
    detail = {"replaced": old is not None}
    repo.record_audit(actor, "portal.feed_created", f"customer/{customer.name}", detail, session=session)


def revoke_feed(customer: Customer, *, actor: str, session: Session) -> bool:
    from inventory.portal_tables import PortalFeed

    old = session.get(PortalFeed, customer.id)
    if old is None:
        return False
    session.delete(old)
    repo.record_audit(actor, "portal.feed_revoked", f"customer/{customer.name}", {}, session=session)
    return True


def has_feed(customer: Customer, *, session: Session) -> bool:
    from inventory.portal_tables import PortalFeed

    return session.get(PortalFeed, customer.id) is not None


def feed_ics(
    token_hash: str, *, now: datetime, portal_url: str, session: Session, links: PortalLinks | None = None
) -> bytes | None:
    """The customer's scheduled maintenance as an iCalendar feed for the feed with this token, or None
    (unknown or revoked). Each update keeps the UID and SEQUENCE of its emailed invite, and links to its
    page in the portal (signed by `links` when given, as in the notices)."""
    from icalendar import Calendar, Event

    from inventory.installation import installation_id
    from inventory.portal_tables import PortalFeed
    from templates.ics import uid_for

    feed = session.exec(select(PortalFeed).where(PortalFeed.token_hash == token_hash)).first()
    customer = session.get(Customer, feed.customer_id) if feed is not None else None
    if customer is None:
        return None
    calendar = Calendar()
    calendar.add("prodid", "-//Upkeep//customer portal//EN")
    calendar.add("version", "2.0")
    calendar.add("x-wr-calname", f"Maintenance: {customer.name}")
    installation = installation_id(session)
    for update in upcoming_updates(customer, session=session):
        event = Event()
        event.add("uid", uid_for(update.ref, installation))
        run = session.get(UpgradeRun, update.id)
        event.add("sequence", run.notice_sequence if run is not None else 0)
        event.add("dtstamp", now)
        event.add("dtstart", update.start)
        event.add("dtend", update.end)
        event.add(
            "summary", f"{'URGENT ' if update.urgent else ''}Upgrade {update.cluster} to {update.to_version}"
        )
        link = f"{portal_url}/maintenance/{update.ref}" if portal_url else ""
        if links is not None and customer.id is not None:
            link = links.update_link(update.id, customer.id, expires=link_expiry(update.end, now))
        if link:
            event.add("url", link)
        event.add(
            "description", f"{update.cluster}: {update.from_version} -> {update.to_version}. {link}".strip()
        )
        event.add("transp", "TRANSPARENT")
        event.add("status", "CONFIRMED")
        calendar.add_component(event)
    return bytes(calendar.to_ical())


@dataclass(frozen=True)
class Download:
    version: str
    package: str  # path on the file server
    filename: str
    sha256: str
    clusters: tuple[str, ...]  # the customer's clusters that may move to it


def downloads(customer: Customer, *, session: Session) -> list[Download]:
    """Releases some cluster of the customer may be upgraded to (its version is in the release's
    `from`), newest first."""
    from inventory.models import Release
    from scheduling.versions import Version, is_version

    clusters = customer_clusters(customer, session=session)
    found = []
    for release in session.exec(select(Release)).all():
        fits = tuple(c.name for c in clusters if c.version in (release.upgradable_from or []))
        if fits:
            name = release.package.rsplit("/", 1)[-1]
            found.append(Download(release.version, release.package, name, release.sha256, fits))
    zero = Version.parse("0.0.0")
    return sorted(
        found, key=lambda d: Version.parse(d.version) if is_version(d.version) else zero, reverse=True
    )


def customer_download(version: str, customer: Customer, *, session: Session) -> Download:
    for download in downloads(customer, session=session):
        if download.version == version:
            return download
    raise NotYours(f"no release {version[:40]!r} for {customer.name}")
