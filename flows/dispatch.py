"""The dispatcher: a short-interval flow that makes scheduled updates happen.

Each tick, in this order:
1. reminders: 72 h and 24 h before a planned slot; the 72 h one runs a pre-flight first and carries
   its result (a failing pre-flight also alerts the SRE; the start-time pre-flight then blocks);
2. starts: first runs orphaned by a crash (`running`, their lease ran out: flows/lease.py), taken over
   and resumed as `upkeep resume RUN` would; then planned runs whose slot has come, earliest first; at
   most `max_running` at once, counting only runs under a live lease. A cloud release run starts only
   when its rollout's gate (waves, error budget) allows. Every claim is one conditional UPDATE that
   also writes the lease, so two dispatchers never start or take over the same run;
3. on-call pages, escalations and SRE alerts; (before the reminders) the customers of runs an SRE paused
   whose window has ended told 'stopped' (flows/outcomes.py `tell_paused_past_window`);
4. delivery of the customers' notice outbox, last and bounded (DELIVERY_LIMIT notices, DELIVERY_BUDGET
   of time): the tick's decisions never wait behind the mail server.

Runs start as `product-update` deployment runs (spread over the workers) or, from `upkeep dispatch`,
in this process: there `max_running` workers each claim the next due run as soon as their previous
one ends, so the tick keeps that many clusters busy until nothing is due.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from threading import Lock, Semaphore
from typing import Any, NamedTuple, Protocol

from prefect import flow, get_run_logger, tags
from sqlalchemy import bindparam, text, update
from sqlalchemy import select as columns  # sqlmodel's select types at most four columns
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from flows import lease
from flows.alerts import alert_sre, deliver_alerts
from flows.cloud_release import replan_skipped
from flows.integrity import reasons_for, recheck
from flows.notify import deliver_pending
from flows.oncall import escalate_due, page_triggers
from flows.outcomes import tell_paused_past_window
from flows.plan import plan_update
from flows.records import first_step
from flows.report import held_summaries
from flows.run_notices import Reminder, VendorTerms, queue_reminders, update_ref
from flows.runtime import Runtime, current
from flows.schedule import ScheduleRefused, reslot_update
from flows.steps import NodeConnections, TunnelDown, preflight_step
from inventory import repo
from inventory.db import session_scope
from inventory.models import AccessKind, Cluster, RunKind, RunState, UpgradeRun
from inventory.outbox import Notice, idempotency_key
from inventory.runs import of_known_kind
from inventory.types import utcnow
from scheduling.cutoff import node_may_start, open_window

REMINDERS = (("72h", timedelta(hours=72)), ("24h", timedelta(hours=24)))
_CLAIM_BATCH = 50  # due runs read per query while looking for the next one to claim
# Reminders queued per tick, earliest slot first; the rest stay due for the next tick (a minute later
# with the default interval). The tick's outbox delivery is bounded the same way (500 notices).
REMINDER_LIMIT = 500
# The tick's time for the 72 h reminders' SSH pre-flights (one after another, before the tick claims due
# runs): once spent, no further pre-flight starts in this tick and those reminders go in the next ones
# (a 72 h reminder has 48 h before its 24 h one). 500 slow pre-flights held every due claim for minutes.
PREFLIGHT_BUDGET = timedelta(seconds=30)
# The tick's customer-notice delivery, after its decisions: at most this many notices, and no new one
# begun once this much of the tick's clock has passed since the delivery began (the rest go in the next
# tick, oldest first). Measured (bench/dispatch_tick.py, PostgreSQL, an fsync'd outbox directory): 500
# notices took 22-28 s at load 39-54, 8.4 s at load 9; they ran before the tick's on-call pages and SRE
# alerts, and a slow mail server stretched the tick without bound.
DELIVERY_LIMIT = 500
DELIVERY_BUDGET = timedelta(seconds=30)
# Reminder candidates looked up (queued already? announced when? anybody to tell?) per round, earliest
# slot first, until the tick's REMINDER_LIMIT is found.
_CANDIDATE_CHUNK = 1000
# Reminders queued per transaction (one INSERT each): a tick's 500 in five commits, not 500.
_REMINDER_CHUNK = 100
# A reminder ready to queue: run id, label, pre-flight summary, and the run's sequence when found due.
_Ready = tuple[int, str, str, int]


class Claim(NamedTuple):
    run_id: int
    cluster: str
    to_version: str
    owner: str  # the lease written with the claim; the flow started for it must find it still there
    taken_over: bool = False  # an orphan resumed, not a planned run started


def _tick_name() -> str:
    return f"dispatch {current().clock():%H:%M}"


@flow(name="dispatch", flow_run_name=_tick_name)
def dispatch(max_running: int = 10, via_deployments: bool = False) -> dict[str, Any]:
    runtime = current()
    now = runtime.clock()
    replan_skipped(engine=runtime.engine, now=now, actor=runtime.actor)  # skipped clusters whose case closed
    reslot_missed(runtime, now)
    # Runs an SRE paused whose announced window has now ended: the customer told 'stopped' (once each).
    stopped = tell_paused_past_window(runtime, now)
    reminded = send_reminders(runtime, now)
    from flows.escalation import check_update_cadence

    check_update_cadence(runtime, now)  # escalated cases whose update is overdue alert their manager
    tick_began = utcnow()
    claims = start_due_runs(runtime, now, max_running=max_running, via_deployments=via_deployments)
    held_summaries(runtime, _held_since(runtime, tick_began))  # the Prefect UI tells "held" too
    started = [c.run_id for c in claims if not c.taken_over]
    taken_over = [c.run_id for c in claims if c.taken_over]
    paged = page_triggers(runtime, now)  # P0 cases, rollouts halted by their error budget
    escalated = escalate_due(runtime, now)  # on-call pages nobody acknowledged in time
    alerts = deliver_alerts(runtime, now=now)
    # The customers' outbox last, as its own step bounded in count and time: the tick's decisions
    # (claims, pages, SRE alerts) never wait behind a slow mail server, and what is left goes in the
    # next tick, oldest first (the same deliverer: one transaction per notice, so the at-least-once
    # window stays one message wide). bench/dispatch_tick.py reports the two apart.
    report = deliver_pending(
        runtime.engine,
        runtime.mailer,
        now=now,
        sender=runtime.mail_from,
        limit=DELIVERY_LIMIT,
        budget=DELIVERY_BUDGET,
        clock=runtime.clock,
    )
    get_run_logger().info(
        "reminders %s, started %s, taken over %s, notices sent %d",
        reminded,
        started,
        taken_over,
        len(report.sent),
    )
    result = {
        "reminders": reminded,
        "started": started,
        "taken_over": taken_over,
        "notices_sent": len(report.sent),
        "alerts_sent": len(alerts.sent),
        "paged": paged,
        "escalated": escalated,
        "stopped": stopped,
    }
    name_tick(now, result)
    return result


def _held_since(runtime: Runtime, since: datetime) -> list[int]:
    """Runs this tick held (flows/integrity.py audits each hold)."""
    from inventory.models import AuditEvent

    with session_scope(runtime.engine) as session:
        subjects = session.exec(
            select(AuditEvent.subject).where(AuditEvent.action == "update.held", col(AuditEvent.at) >= since)
        ).all()
    return sorted({int(subject.removeprefix("run/")) for subject in subjects if subject.startswith("run/")})


def tick_name(now: datetime, result: dict[str, Any]) -> str:
    """What a tick did, as its flow run's name in the UI: `dispatch 17:03: 3 started, 12 notices`."""
    counts = [
        (len(result["started"]), "started"),
        (len(result["taken_over"]), "taken over"),
        (len(result["reminders"]), "reminders"),
        (result["notices_sent"], "notices"),
        (result["alerts_sent"], "alerts"),
        (len(result.get("paged", [])), "paged"),
        (len(result.get("escalated", [])), "escalated"),
        (len(result.get("stopped", [])), "stopped"),
    ]
    did = ", ".join(f"{n} {what}" for n, what in counts if n)
    return f"dispatch {now:%H:%M}: {did or 'idle'}"


def name_tick(now: datetime, result: dict[str, Any]) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from flows.report import best_effort

    if flow_run.id is None:
        return

    def rename() -> None:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(flow_run.id), name=tick_name(now, result))

    best_effort("tick name", rename)


class PlannedRun(NamedTuple):
    """What the reslot check and the reminders read of a planned run in their slot range: eight
    columns as a tuple, not an UpgradeRun (40-odd columns, an ORM identity and its instance state).
    Measured (10,000 planned runs read in a fresh session, PostgreSQL, best of three, load ~11): 34 us
    of CPU per run as ORM objects, 6 us as tuples; a tick at 100,000 reads ~6,000 in its ranges."""

    id: int
    cluster_id: int
    slot_start: datetime | None
    slot_end: datetime | None
    told_at: datetime | None
    notice_sequence: int
    held_reason: str
    to_version: str


class _RunRef(Protocol):
    """A planned run as these helpers read it: a PlannedRun, or an UpgradeRun."""

    @property
    def id(self) -> int | None: ...
    @property
    def cluster_id(self) -> int: ...
    @property
    def slot_start(self) -> datetime | None: ...
    @property
    def notice_sequence(self) -> int: ...


def _planned(session: Session, *, after: datetime | None = None, until: datetime) -> list[PlannedRun]:
    """Planned runs whose slot starts in (`after`, `until`], earliest first. Only that range is read
    (index ix_upgraderun_state_slot): a tick must not load every planned run of the fleet."""
    query = columns(
        col(UpgradeRun.id),
        col(UpgradeRun.cluster_id),
        col(UpgradeRun.slot_start),
        col(UpgradeRun.slot_end),
        col(UpgradeRun.told_at),
        col(UpgradeRun.notice_sequence),
        col(UpgradeRun.held_reason),
        col(UpgradeRun.to_version),
    ).where(
        col(UpgradeRun.state) == RunState.planned,
        col(UpgradeRun.slot_start).is_not(None),
        col(UpgradeRun.slot_start) <= until,
        of_known_kind(),
    )
    if after is not None:
        query = query.where(col(UpgradeRun.slot_start) > after)
    rows = session.execute(query.order_by(col(UpgradeRun.slot_start), col(UpgradeRun.id)))
    return [PlannedRun(*row) for row in rows]


def reslot_missed(runtime: Runtime, now: datetime) -> list[int]:
    """Planned runs whose window passed unstarted, or has no room left for one node (held by waves, or
    no dispatcher ran), move to their next window with a notice, instead of starting outside the time
    the customer was told."""

    moved = []
    with session_scope(runtime.engine) as session:
        missed = []
        # Slots that have begun; a held run has no valid slot: the re-check (flows/integrity.py) owns it.
        begun = [run for run in _planned(session, until=now) if run.slot_start and not run.held_reason]
        windows = windows_at_slot(begun, session=session)
        for run in begun:
            if run.id not in windows:
                continue  # its world cannot be read: the claims alert the SRE about it (once)
            # The window the slot opens, not the slot sized to the estimate: it is missed once the
            # window has no room left for one node.
            window = windows[run.id]
            end = window.end if window is not None else run.slot_end
            if end is not None and not node_may_start(now, end, runtime.per_node_estimate):
                missed.append(run.id)
    for run_id in missed:
        assert run_id is not None
        with session_scope(runtime.engine) as session:
            if not _move_missed(runtime, run_id, now, session, get_run_logger()):
                continue
        moved.append(run_id)
    return moved


def _move_missed(runtime: Runtime, run_id: int, now: datetime, session: Session, log: Any) -> bool:
    """A run whose window passed before it could start: to its next window, with the customer's
    notice, in a savepoint of `session`; False (said in the log) when it cannot move."""
    try:
        with session.begin_nested():
            reslot_update(
                run_id,
                now=now,
                reason="the window passed before the update could start",
                session=session,
                vendor=VendorTerms.from_runtime(runtime),
            )
    except ScheduleRefused as exc:
        log.error("%s", exc)
        return False
    return True


def windows_at_slot(runs: Sequence[_RunRef], *, session: Session, chunk: int = 1000) -> dict[int | None, Any]:
    """`flows.run_window.window_at(run, run.slot_start)` for many runs at once: the clusters, customers,
    windows and blackouts read in a few queries per `chunk` runs instead of four per run (a tick after a
    backlog checks every due run). A run whose world cannot be read (a row this version cannot load,
    e.g. an unknown time zone) is left out of the answer instead of failing every run's (found by the
    adversarial pass on #19: it ended the tick before reminders and claims).

    `open_window` is pure, so it is computed once per distinct (windows, blackouts, slot start) of
    the call: clusters with the same weekly window and freezes whose slots start together (a release
    wave, a backlog of due runs) share one answer; each customer's freezes are put together once, not
    once per run. Measured (1,000 due runs of bench/dispatch_tick.py's fleet, best of three, load ~11):
    190 ms of CPU before, 50 ms now when their slots start together, 136 ms when every slot differs."""
    from inventory.windows import customer_holidays, window_rows
    from scheduling.errors import SchedulingError

    found: dict[int | None, Any] = {}
    opened: dict[tuple[Any, ...], Any] = {}  # (window rules, id of the freezes, slot start) -> window
    alike: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # equal freezes, one tuple (its id is the key)
    for at in range(0, len(runs), chunk):
        part = runs[at : at + chunk]
        cluster_ids = {run.cluster_id for run in part}
        clusters, customers, windows, blackout_rows = window_rows(cluster_ids, session=session)
        vendor_wide = [row.rule() for row in blackout_rows if row.customer_id is None]
        own: dict[int | None, list[Any]] = {}
        for row in blackout_rows:
            if row.customer_id is not None:
                own.setdefault(row.customer_id, []).append(row)
        freezes: dict[int | None, tuple[Any, ...]] = {}  # per customer, in this chunk
        for run in part:
            assert run.slot_start is not None
            cluster = clusters[run.cluster_id]
            customer = customers[cluster.customer_id]
            try:
                rules = tuple(row.rule(customer.timezone) for row in windows.get(run.cluster_id, []))
                blackouts = freezes.get(customer.id)
                if blackouts is None:
                    mine = (
                        *(row.rule() for row in own.get(customer.id, [])),
                        *vendor_wide,
                        *customer_holidays(customer),
                    )
                    blackouts = freezes[customer.id] = alike.setdefault(mine, mine)
                key = (rules, id(blackouts), run.slot_start)
                if key not in opened:
                    opened[key] = open_window(rules, blackouts, run.slot_start)
                found[run.id] = opened[key]
            except (ValueError, LookupError, SchedulingError):
                continue
    return found


def send_reminders(runtime: Runtime, now: datetime, *, limit: int = REMINDER_LIMIT) -> list[str]:
    """Queue the reminders that are due, earliest slot first, at most `limit` per tick (the rest stay
    due and go in the next ticks): 5,000 reminders falling due at once must not make one tick take
    minutes, and a 72 h reminder runs an SSH pre-flight (at most PREFLIGHT_BUDGET of them per tick)."""
    sent: list[str] = []
    horizon = max(before for _, before in REMINDERS)
    due: list[tuple[PlannedRun, str]] = []
    with session_scope(runtime.engine) as session:
        candidates = [
            (run, label)
            for run in _planned(session, after=now, until=now + horizon)
            for label, before in REMINDERS
            if run.slot_start and not run.held_reason and _reminder_due(run, before, now)
        ]
        # Looked up _CANDIDATE_CHUNK at a time, earliest slot first, until `limit` are found: with 5,000
        # due at once, the first chunk fills the tick and the other 4,000 are not looked up (their
        # turn comes in the next ticks, as before).
        for at in range(0, len(candidates), _CANDIDATE_CHUNK):
            part = candidates[at : at + _CANDIDATE_CHUNK]
            announced = _slot_announced(session, [run for run, _ in part])
            part = [
                (run, label)
                for run, label in part
                if run.id not in announced or _after(announced[run.id], run, label)
            ]
            queued = _queued_keys(session, [_reminder_key(run, label) for run, label in part])
            part = [(run, label) for run, label in part if _reminder_key(run, label) not in queued]
            silent = _nobody_to_tell(runtime, session, [run for run, _ in part])
            due += [(run, label) for run, label in part if run.id not in silent][: limit - len(due)]
            if len(due) >= limit:
                break
    began = runtime.clock()
    deferred: set[int | None] = set()  # runs whose 72 h reminder waits: their 24 h one waits with it
    ready: list[_Ready] = []  # in slot order
    for run, label in due:
        summary = ""
        if run.id in deferred:
            continue
        if label == "72h":
            if runtime.clock() - began >= PREFLIGHT_BUDGET:
                deferred.add(run.id)
                continue  # stays due: queued by a later tick, earliest slot first
            summary = _preflight_summary(runtime, run)
        assert run.id is not None
        ready.append((run.id, label, summary, run.notice_sequence))
    vendor = VendorTerms.from_runtime(runtime)
    for at in range(0, len(ready), _REMINDER_CHUNK):
        chunk = ready[at : at + _REMINDER_CHUNK]
        try:
            with session_scope(runtime.engine) as session:
                sent += _queue_reminders(runtime, chunk, session, now, vendor)
        except Exception:  # one poisoned row: the chunk again one by one, so only that row is held back
            sent += _queue_one_by_one(runtime, chunk, now, vendor)
    return sent


def _nobody_to_tell(runtime: Runtime, session: Session, runs: Sequence[_RunRef]) -> set[int | None]:
    """The runs among `runs` whose customer has no contact and no portal user: their reminders can
    never be queued, so they are left out before the tick's limit, without a pre-flight, and the SRE
    is told once per update and sequence (the alert's key) that nobody hears of it. Found by the
    adversarial pass on #19: such reminders stayed due and, with the earliest slots, filled the tick's
    limit every tick, so no other customer's reminder went. One query per table for all of them."""
    from inventory.alerts import Alert
    from inventory.models import Contact
    from inventory.portal_tables import PortalUser

    if not runs:
        return set()
    owners = dict(
        session.exec(
            select(Cluster.id, Cluster.customer_id).where(col(Cluster.id).in_({r.cluster_id for r in runs}))
        ).all()
    )
    customers = set(owners.values())
    heard = set(session.exec(select(Contact.customer_id).where(col(Contact.customer_id).in_(customers))))
    users = select(PortalUser.customer_id).where(col(PortalUser.customer_id).in_(customers))
    heard |= set(session.exec(users))
    silent = {run.id: run for run in runs if owners.get(run.cluster_id) not in heard}
    keys = {run_id: f"update-{run_id}:nobody-to-tell:{run.notice_sequence}" for run_id, run in silent.items()}
    alerted = set(session.exec(select(Alert.key).where(col(Alert.key).in_(list(keys.values())))))
    for run_id, key in keys.items():
        if key not in alerted:
            _logger().error("update-%s: no reminder, its customer has no contact or portal user", run_id)
            alert_sre(
                runtime,
                kind="reminder",
                headline=f"update-{run_id}: the customer has nobody to tell",
                cause="the customer has no contact and no portal user: no notice or reminder reaches them",
                run_id=run_id,
                detail="Its reminders are not sent and no 72 h pre-flight runs for them; the start-time "
                "pre-flight still checks the nodes.",
                action="add a contact (`upkeep inventory import`), or cancel the update",
                key=key,
                session=session,
            )
    return set(silent)


def _queue_one_by_one(runtime: Runtime, ready: list[_Ready], now: datetime, vendor: VendorTerms) -> list[str]:
    """A chunk whose transaction failed, one reminder per transaction: the others still go, and a
    reminder that fails alone (a row this version cannot render: an unknown time zone written by hand or
    by a newer host) is skipped with one log line and one SRE alert per run, sequence and reminder
    (the alert's key), never a traceback ending the tick before its claims. It stays due, so it goes
    once the row is repaired. Found by the adversarial pass on #19: the chunk of 100 rolled back and
    the exception ended every tick, so one customer's row stopped every reminder and every start."""
    sent: list[str] = []
    for item in ready:
        try:
            with session_scope(runtime.engine) as session:
                sent += _queue_reminders(runtime, [item], session, now, vendor)
        except Exception as exc:
            run_id, label, _, _ = item
            cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            _logger().error("reminder %s of update-%s not queued: %s", label, run_id, cause)
            with session_scope(runtime.engine) as session:
                run = session.get(UpgradeRun, run_id)
                sequence = run.notice_sequence if run is not None else 0
                alert_sre(
                    runtime,
                    kind="reminder",
                    headline=f"the {label} reminder of update-{run_id} cannot be queued",
                    cause=cause,
                    run_id=run_id if run is not None else None,
                    detail="The other reminders went; this one stays due and goes once its record is fixed.",
                    key=f"run-{run_id}:reminder-failed:{sequence}:{label}",
                    session=session,
                )
    return sent


def _logger() -> Any:
    """The flow run's logger in a tick; the module's when called outside a run (tests, scripts)."""
    import logging

    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _queue_reminders(
    runtime: Runtime, ready: list[_Ready], session: Session, now: datetime, vendor: VendorTerms
) -> list[str]:
    """Queue `ready` reminders in one transaction: the runs re-read in it (still planned, not held, at
    the sequence - so the slot - the tick found the reminder due for), then the reminders of those not
    queued already, in one INSERT (flows/run_notices.py `queue_reminders`); a failed 72 h pre-flight
    also alerts the SRE. A run moved since (deferred, rescheduled, re-checked: a new sequence) or held
    is left to the next tick, which finds its reminders due or not for its slot as it is then. Found by
    the adversarial pass on #19: a run deferred by four days in between got a '24 h' reminder under its
    new sequence four days early - which also stood in for the real one - and a held run got one."""
    ids = {run_id for run_id, _, _, _ in ready}
    fresh = {run.id: run for run in session.exec(select(UpgradeRun).where(col(UpgradeRun.id).in_(ids)))}
    wanted = [
        (fresh[run_id], label, summary)
        for run_id, label, summary, sequence in ready
        if run_id in fresh
        and fresh[run_id].state == RunState.planned
        and fresh[run_id].notice_sequence == sequence
        and not fresh[run_id].held_reason
    ]
    queued = _queued_keys(session, [_reminder_key(run, label) for run, label, _ in wanted])
    # Their clusters in the session at once (held here: the identity map keeps only what is referenced),
    # so _tunnel_nodes' look-up reads none.
    clusters = session.exec(
        select(Cluster).where(col(Cluster.id).in_({run.cluster_id for run, _, _ in wanted}))
    ).all()
    todo = [
        Reminder(run, label, summary, _tunnel_nodes(session, run))
        for run, label, summary in wanted
        if _reminder_key(run, label) not in queued
    ]
    done = queue_reminders(todo, session=session, now=now, vendor=vendor)
    del clusters
    for reminder in todo:  # as before: alerted when reached, even for a customer with nobody to tell
        run, label, summary = reminder.run, reminder.variant, reminder.preflight
        if summary.startswith("FAILED"):  # the SRE too, with time to fix it before the slot
            alert_sre(
                runtime,
                kind="preflight",
                headline=f"pre-flight {label} before update-{run.id} failed",
                cause=summary.removeprefix("FAILED: "),
                run_id=run.id,
                step="pre-flight",
                detail="The customer's reminder says so; the start-time pre-flight will block the run.",
                key=f"run-{run.id}:preflight:{run.notice_sequence}:{label}",
                session=session,
            )
    return [f"update-{reminder.run.id}:{reminder.variant}" for reminder in done]


def _tunnel_nodes(session: Session, run: UpgradeRun) -> tuple[str, ...]:
    """The nodes whose support tunnel the customer must open for the window (none: not a tunnel cluster)."""
    cluster = session.get(Cluster, run.cluster_id)
    if cluster is None or cluster.access is not AccessKind.tunnel:
        return ()
    return tuple(node.hostname for node in repo.cluster_nodes(cluster, session=session))


def _reminder_due(run: PlannedRun, before: timedelta, now: datetime) -> bool:
    """A reminder is due once its moment has come, but only if the customer was told of the update
    before that moment: a reminder whose moment passed before the announcement went out is skipped
    (it would arrive with, or right after, the announcement itself)."""
    assert run.slot_start is not None
    moment = run.slot_start - before
    return run.told_at is not None and run.told_at < moment <= now < run.slot_start


def _slot_announced(session: Session, runs: Sequence[_RunRef]) -> dict[int | None, datetime]:
    """When the customer was told of each run's current slot, for runs whose slot moved after their
    first announcement (notice_sequence > 1: a carry-over, a reschedule): the first notice queued at
    that sequence. `told_at` stays the first announcement (the notice period counts from it), so
    without this both reminders of a slot moved a day on were due at once - their moments had passed
    since `told_at` - and went at the next tick, right after the 'rescheduled' notice. Only the
    reminder candidates of this tick are looked up (one query per 1,000 of them)."""
    moved = {update_ref(run.id): run for run in runs if run.notice_sequence > 1}
    found: dict[int | None, datetime] = {}
    refs = list(moved)
    for at in range(0, len(refs), 1000):
        rows = session.exec(
            select(Notice.update_ref, Notice.sequence, Notice.created_at).where(
                col(Notice.update_ref).in_(refs[at : at + 1000]), Notice.kind != "reminder"
            )
        )
        for ref, sequence, created in rows:
            run = moved[ref]
            if sequence == run.notice_sequence and (run.id not in found or created < found[run.id]):
                found[run.id] = created
    return found


def _after(announced: datetime, run: _RunRef, label: str) -> bool:
    """The reminder `label` of `run` falls due after its slot was announced (else that notice said it)."""
    assert run.slot_start is not None
    return announced < run.slot_start - dict(REMINDERS)[label]


def _reminder_key(run: _RunRef, label: str) -> str:
    return idempotency_key(f"update-{run.id}", "reminder", run.notice_sequence, label)


def _queued_keys(session: Session, keys: list[str], chunk: int = 1000) -> set[str]:
    """Which of `keys` are queued already: one query per `chunk` keys instead of one per key."""
    found: set[str] = set()
    for at in range(0, len(keys), chunk):
        part = keys[at : at + chunk]
        found.update(
            session.exec(select(Notice.idempotency_key).where(col(Notice.idempotency_key).in_(part)))
        )
    return found


def _preflight_summary(runtime: Runtime, run: PlannedRun) -> str:
    """Every node reachable, healthy, at the expected version, with disk for the package: one line."""
    assert run.id is not None
    with session_scope(runtime.engine) as session:
        cluster = session.get(Cluster, run.cluster_id)
        assert cluster is not None
        plan = plan_update(cluster.name, run.to_version, session=session)
    conns = NodeConnections(runtime, plan)
    try:
        preflight_step.fn(plan, run.id, runtime, conns, runtime.fileserver.size(plan.package), settle=False)
    except TunnelDown as exc:
        if exc.problems:
            return f"FAILED: {exc}"
        # Theirs to open before the window (the reminder says how), not a failure: no SRE alert.
        names = ", ".join(exc.closed)
        rest = len(plan.nodes) - len(exc.closed)
        passed = (
            f"; the other {rest} passed (reachable, healthy, at {plan.from_version}, disk free)"
            if rest
            else ""
        )
        return (
            f"support tunnel closed on {names}: not checked. Open it before the window with "
            f"`upkeep-agent tunnel start` on each of them{passed}"
        )
    except Exception as exc:  # reported in the reminder and to the SRE, never raised from the tick
        return f"FAILED: {exc}"
    finally:
        conns.close()
    return f"passed on all {len(plan.nodes)} nodes (reachable, healthy, at {plan.from_version}, disk free)"


def start_due_runs(
    runtime: Runtime, now: datetime, *, max_running: int, via_deployments: bool
) -> list[Claim]:
    """Take over orphaned runs, then claim planned runs due at `now`, earliest slot first, keeping at
    most `max_running` running (an orphan counts once it is taken over).

    Via deployments: claim that many and hand them to the workers. In this process: a pool of that
    many workers, each claiming the next due run as soon as its previous one ends, until none is due,
    all within this tick - so K clusters stay busy instead of the tick waiting for the slowest of
    each batch of K."""
    log = get_run_logger()  # the tick's, here: worker threads have no run context
    if cluster_limit_blocks(runtime, now, log):
        return []
    with session_scope(runtime.engine) as session:
        running = lease.count_live(session, now)
    slots = max(0, max_running - running)
    if via_deployments:
        claimed: list[Claim] = []
        taken: set[int] = set()
        while len(claimed) < slots and (
            claim := _take_over_next(runtime, now, taken, runtime.start_lease, log, most=max_running)
        ):
            claimed.append(claim)
        if len(claimed) < slots:
            claimed += _claim_many(
                runtime, now, taken, runtime.start_lease, slots - len(claimed), most=max_running
            )
        _start_deployments(runtime, claimed)
        return claimed
    return _run_in_process(runtime, now, slots, log, most=max_running)


def cluster_limit_blocks(runtime: Runtime, now: datetime, log: Any) -> bool:
    """Whether the Prefect limit UPKEEP_CLUSTER_LIMIT names can grant no slot (none of that name, or its
    limit 0): then the tick starts and takes over nothing. Each run would fail before its first node
    (flows/product_update.py `cluster_slot`): an SRE alert per run, and every announced update of the
    tick dropped, over one setting of the vendor's. Instead the due updates stay planned (past their
    slot, `reslot_missed` moves them to their next window and tells the customer), an orphan keeps its
    record, and the SRE hears it once a day (the alert's key) until the limit is fixed; set to 0 on
    purpose, it is the fleet's brake. One API read per tick, only with the setting; the API away is not
    this (the runs go, and `cluster_slot` says what it meets). Not bounded as the CLI's read is (flows/
    prefect_api.py): the tick is itself a flow run on that API, and cut short the read could only say
    "held" (a false brake alert) or "grants" (runs started on an API that does not answer)."""
    if not runtime.cluster_limit:
        return False
    from flows.product_update import limit_unusable

    why = limit_unusable(runtime.cluster_limit)
    if not why:
        _end_held_episode(runtime, now)
        return False
    log.error("no update started or taken over: %s", why)
    alert_sre(
        runtime,
        kind="held",
        headline="no update starts: the fleet's cluster limit grants no slot",
        cause=why,
        action="fix the limit (or unset UPKEEP_CLUSTER_LIMIT): the due updates start at the next tick, "
        "those whose slot has passed move to their next window (the customer is told). Set to 0 on "
        "purpose, this is the brake working: this alert comes once a day while it holds",
        key=limit_alert_key(runtime.cluster_limit, now),
    )
    _page_held_urgent(runtime, now, why)
    _tell_held_orphans(runtime, now, why)
    return True


def _tell_held_orphans(runtime: Runtime, now: datetime, why: str) -> None:
    """Each run whose lease ran out (its process died mid-update) and that this tick does not take over
    is told to the SRE with its run, once a day while held: its cluster may stand half-upgraded past
    its window, `running` in our record, and the fleet alert names no run or cluster (before the
    gate, the take-over failed it and told the customer and the SRE with its nodes)."""
    from inventory.models import Cluster, NodeStep, StepState

    with session_scope(runtime.engine) as session:
        stranded = []
        for run in lease.orphans(session, now, skip=set()):
            cluster = session.get(Cluster, run.cluster_id)
            nodes = repo.cluster_nodes(cluster, session=session) if cluster is not None else []
            stranded.append((run.id, [node.id for node in nodes]))
        # Each orphan's verified nodes in one read (flows/records.py `node_done`'s question): one query
        # per node of each orphan, every tick while braked, was orphans x nodes reads for alerts sent.
        verified = set(
            session.execute(
                columns(col(NodeStep.run_id), col(NodeStep.node_id)).where(
                    col(NodeStep.run_id).in_([run_id for run_id, _ in stranded if run_id is not None]),
                    col(NodeStep.step) == "verify",
                    col(NodeStep.state) == StepState.succeeded,
                )
            ).all()
            if stranded
            else []
        )
    for run_id, node_ids in stranded:
        if run_id is None:
            continue
        if node_ids and all((run_id, node) in verified for node in node_ids if node is not None):
            # Its process died after the last node's verify, before recording the end: complete, and
            # it needs no slot; "half-upgraded, fix the limit" sent the on-call after the brake (adv39).
            headline = f"update {run_id} has every node verified but its end is not recorded (not taken over)"
            action = (
                f"`upkeep resume {run_id}` records it succeeded and tells the customer (it needs no slot)"
            )
        else:
            headline = f"update {run_id} stopped mid-way, not taken over: the cluster limit grants no slot"
            action = (
                "fix the limit (the next tick takes the run over and resumes it), or "
                f"`upkeep show {run_id}` and decide with the customer; its nodes may be half-upgraded"
            )
        alert_sre(
            runtime,
            kind="held",
            run_id=run_id,
            headline=headline,
            cause=why,
            action=action,
            key=f"held-orphan:{run_id}:{now:%Y-%m-%d}",
        )


def _page_held_urgent(runtime: Runtime, now: datetime, why: str) -> None:
    """Urgent updates due now and held page the engineer on call and the team lead, once a run a day:
    into a limit that grants no slot they used to fail, and a failed urgent update pages (README,
    On-call); held, they were only in the once-a-day SRE alert, perhaps sent that morning for another
    run, and the case's fix sat unstarted at night with nobody woken."""
    from flows.oncall import page

    with session_scope(runtime.engine) as session:
        due = session.execute(
            columns(col(UpgradeRun.id), col(UpgradeRun.case_ref))
            .where(
                col(UpgradeRun.state) == RunState.planned,
                col(UpgradeRun.urgent).is_(True),
                col(UpgradeRun.held_reason) == "",  # held for its own reason: the re-check tells that
                col(UpgradeRun.slot_start) <= now,
                of_known_kind(),
            )
            .order_by(col(UpgradeRun.id))
        ).all()
    for run_id, case_ref in due:
        page(
            runtime, key=f"run:{run_id}:held:{now:%Y-%m-%d}", headline=f"URGENT update {run_id} held",
            cause=why.splitlines()[0], run_id=run_id, case_ref=case_ref or "",
        )  # fmt: skip


def _end_held_episode(runtime: Runtime, now: datetime) -> None:
    """The limit grants slots: today's held alert, if any, is of an episode that ended, so its key is
    set aside (suffixed with the time it was seen ended) and a new hold later today is told again.
    Before, the once-a-day key kept a second hold silent until midnight UTC. One UPDATE on the unique
    key a tick; of two dispatchers, one renames and the other matches nothing."""
    from inventory.alerts import Alert

    key = limit_alert_key(runtime.cluster_limit, now)
    with session_scope(runtime.engine) as session:
        session.execute(update(Alert).where(col(Alert.key) == key).values(key=f"{key}~{now:%H%M%S%f}"))


def limit_alert_key(name: str, now: datetime) -> str:
    """The held alert's key, one a limit and day: `cluster-limit:NAME:YYYY-MM-DD`, a long name cut and
    told apart by its digest (the alert table keeps 128 characters: PostgreSQL refused a longer key and
    every tick failed before its pages and notices, nobody told)."""
    if len(name) > 80:
        name = f"{name[:60]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return f"cluster-limit:{name}:{now:%Y-%m-%d}"


def _next(
    runtime: Runtime, now: datetime, taken: set[int], hold: timedelta, log: Any, most: int | None = None
) -> Claim | None:
    """The next run to carry out, leased for `hold`: an orphan taken over, else a due planned run."""
    return _take_over_next(runtime, now, taken, hold, log, most=most) or _claim_next(
        runtime, now, taken, hold, most=most
    )


def _lock_claims(session: Session) -> None:
    """One dispatcher at a time claims, until the caller's transaction ends, so the running updates it
    counts stay counted until its claims commit (PostgreSQL: an advisory lock per schema; SQLite: BEGIN
    IMMEDIATE already). Found by the adversarial pass on #19: two dispatchers ticking at once each
    counted the running updates before either claimed, and started `max_running` each."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(
            text("SELECT pg_advisory_xact_lock(hashtext('upkeep.dispatch-claims ' || current_schema()))")
        )


def _room(session: Session, now: datetime, most: int | None) -> int | None:
    """How many more updates may start now under `most` running at once (None: no limit), counted
    under `_lock_claims` in the claiming transaction."""
    if most is None:
        return None
    _lock_claims(session)
    return max(0, most - lease.count_live(session, now))


def _take_over_next(
    runtime: Runtime, now: datetime, taken: set[int], hold: timedelta, log: Any, most: int | None = None
) -> Claim | None:
    with session_scope(runtime.engine) as session:
        if _room(session, now, most) == 0:
            return None
        for run in lease.orphans(session, now, skip=taken):
            owner = lease.new_owner()
            until = runtime.clock() + hold
            took = lease.take_over(
                session, run, now=now, owner=owner, until=until, actor=runtime.actor, log=log
            )
            if took and run.id is not None:
                cluster = session.get(Cluster, run.cluster_id)
                assert cluster is not None
                taken.add(run.id)
                return Claim(run.id, cluster.name, run.to_version, owner, taken_over=True)
    return None


def claim_due(runtime: Runtime, now: datetime, hold: timedelta) -> Claim | None:
    """The claim step of a tick alone: the earliest due planned update, re-checked against the world
    right before, moved to running under a lease of `hold`; None when nothing valid is due."""
    return _claim_next(runtime, now, set(), hold)


def _claim_next(
    runtime: Runtime, now: datetime, taken: set[int], hold: timedelta, most: int | None = None
) -> Claim | None:
    """Move the earliest due planned run to `running` (one conditional UPDATE: two dispatchers never
    start the same run); None when nothing is due. `taken`: runs already claimed in this tick."""
    claims = _claim_many(runtime, now, taken, hold, 1, most=most)
    return claims[0] if claims else None


def _claim_many(
    runtime: Runtime, now: datetime, taken: set[int], hold: timedelta, want: int, most: int | None = None
) -> list[Claim]:
    """Claim up to `want` due planned runs, earliest slot first, each re-checked against the world
    right before its claim and claimed by one conditional UPDATE (two dispatchers never start the same
    run). The due runs are read `_CLAIM_BATCH` at a time (keyset: a run claimed or moved in this tick
    never shifts the next page), their worlds in one query per table per chunk (`worlds_of`), one
    transaction per batch: a tick claiming 200 runs paid ~10 statements and a commit per claim before.
    The conditional UPDATE is what makes the re-check hold: it claims only if the run is still what
    was re-checked (sequence, slot, hold, requested action), so an import, release or case re-check
    committing since (which moves or holds the run with a new sequence) makes the claim lose.
    `most`: at most that many running at once, counted again in each batch's transaction under
    `_lock_claims` (another dispatcher may have claimed since the tick counted)."""
    from sqlalchemy import and_, or_

    from flows.integrity import worlds_of
    from flows.rollout import start_gate

    due = (
        select(UpgradeRun)
        .where(UpgradeRun.state == RunState.planned, col(UpgradeRun.slot_start) <= now, of_known_kind())
        .order_by(col(UpgradeRun.slot_start), col(UpgradeRun.id))
        .limit(_CLAIM_BATCH)
    )
    claims: list[Claim] = []
    after: tuple[datetime, int] | None = None
    while len(claims) < want:
        with session_scope(runtime.engine) as session:
            room = _room(session, now, most)
            if room == 0:
                break
            limit = want if room is None else min(want, len(claims) + room)
            page = due
            if after is not None:
                slot, last = after
                page = due.where(
                    or_(
                        col(UpgradeRun.slot_start) > slot,
                        and_(col(UpgradeRun.slot_start) == slot, col(UpgradeRun.id) > last),
                    )
                )
            batch = session.exec(page).all()
            if not batch:
                break
            assert batch[-1].slot_start is not None and batch[-1].id is not None
            after = (batch[-1].slot_start, batch[-1].id)
            candidates = [
                run
                for run in batch
                if run.id is not None and run.id not in taken and not run.requested_action
            ]
            # Worlds read for as many candidates as claims are still wanted (one, in-process, reads one).
            at = 0
            while at < len(candidates) and len(claims) < limit:
                chunk = candidates[at : at + max(1, limit - len(claims))]
                at += len(chunk)
                unreadable: dict[int, str] = {}
                worlds = worlds_of(
                    [run for run in chunk if run.slot_start and run.slot_end],
                    session=session,
                    failed=unreadable,
                )
                for run in chunk:
                    assert run.id is not None
                    if run.id in unreadable:
                        _alert_unreadable(runtime, run, unreadable[run.id], session)
                        continue
                    world, cluster = worlds.get(run.id, (None, None))
                    claim = _claim_one(runtime, run, cluster, now, hold, session, world, start_gate)
                    if claim is not None:
                        taken.add(claim.run_id)
                        claims.append(claim)
                        if len(claims) == limit:
                            break
        if len(claims) == limit:
            break
    return claims


def _alert_unreadable(runtime: Runtime, run: UpgradeRun, cause: str, session: Session) -> None:
    """A due update whose world cannot be read is not started; the SRE is told once per slot (the
    alert's key) and the other due updates go on. Found by the adversarial pass on #19: one customer
    row with an unknown time zone failed the whole chunk's world read, and every tick with it. Logged
    with the alert, once: in-process workers meet it again at every claim (each reads from the start)."""
    from inventory.alerts import Alert

    key = f"update-{run.id}:unreadable:{run.notice_sequence}"
    if session.exec(select(Alert.id).where(Alert.key == key)).first() is not None:
        return
    _logger().error("update-%s not started: its world cannot be read: %s", run.id, cause)
    alert_sre(
        runtime,
        kind="held",
        headline=f"update-{run.id} not started: its record cannot be read",
        cause=cause,
        run_id=run.id,
        action="repair the record (`upkeep inventory import` the customer again); the update starts "
        "at the next tick while its slot is still valid",
        key=key,
        session=session,
    )


def _claim_one(
    runtime: Runtime,
    run: UpgradeRun,
    cluster: Cluster | None,
    now: datetime,
    hold: timedelta,
    session: Session,
    world: Any,
    start_gate: Any,
) -> Claim | None:
    assert run.id is not None
    if run.kind is RunKind.CLOUD_RELEASE and start_gate(run, session=session, now=now):
        return None
    if world is not None and _window_missed(runtime, run, world, now, session):
        return None
    # Immediately before claiming: is the slot still valid in the world as it is now? An invalid
    # update never starts: it moves to its next valid slot, or is held.
    if reasons_for(run, now=now, session=session, world=world):
        recheck(
            run,
            now=now,
            session=session,
            actor=runtime.actor,
            vendor=VendorTerms.from_runtime(runtime),
            why="dispatcher, before starting",
        )
        return None
    owner, at = lease.new_owner(), runtime.clock()
    if not claim_planned(run, at=at, owner=owner, until=at + hold, session=session):
        return None
    cluster = cluster or session.get(Cluster, run.cluster_id)  # worlds_of read it with the world
    assert cluster is not None
    return Claim(run.id, cluster.name, run.to_version, owner)


def _window_missed(runtime: Runtime, run: UpgradeRun, world: Any, now: datetime, session: Session) -> bool:
    """`reslot_missed`'s rule at the claim itself: an in-process run waits unclaimed for a start slot
    and is claimed at the clock of its claim, which the tick's missed-window pass (at the tick's start)
    never saw. A window with no room left for one node by then is missed: the run moves to its next
    window with a notice instead of starting outside the time the customer was told (found by the
    adversarial pass on 92f2c63: the validity rules look at the slot, not at the time left in it)."""

    if run.slot_start is None or run.held_reason:
        return False
    window = open_window(world.windows, world.blackouts, run.slot_start)
    end = window.end if window is not None else run.slot_end
    if end is None or node_may_start(now, end, runtime.per_node_estimate):
        return False
    assert run.id is not None
    _move_missed(runtime, run.id, now, session, _logger())
    return True


def claim_planned(run: UpgradeRun, *, at: datetime, owner: str, until: datetime, session: Session) -> bool:
    """Move `run` to running under the lease `owner` until `until`, if it is still what was read.

    The claim holds only if the update is still what was re-checked: an import, release or case
    re-check committing since may have moved it (new sequence and slot, the customer told) or held
    it; on PostgreSQL that commit can fall between the re-check and this UPDATE.

    A won claim is also written into `run` as the session holds it: the rest of the transaction asks
    about the runs it claimed (flows/rollout.py's start gate counts a rollout's runs in flight from
    the same objects). The statement's values are parameters, which the ORM cannot evaluate to
    synchronise the session as it did with literals: the claimed runs stayed planned there, and one
    tick started every due run of a ring past the rollout's max_concurrent and per-customer limits
    (found by the adversarial pass on #19)."""
    assert run.slot_start is not None  # due: its slot began
    won = session.execute(
        _claim_statement(),
        {
            "run_id": run.id,
            "sequence": run.notice_sequence,
            "slot": run.slot_start,
            "held": run.held_reason,
            "action": run.requested_action,
            "at": at,
            "owner": owner,
            "until": until,
        },
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for key, value in (
        ("state", RunState.running),
        ("started_at", at),
        ("lease_owner", owner),
        ("lease_until", until),
        ("lease_since", at),
    ):
        set_committed_value(run, key, value)
    return True


@cache
def _claim_statement() -> Any:
    """The claim's conditional UPDATE, built once with its values as parameters: building it per claim
    (the WHERE's six comparisons and the SET's five values, each coerced to its column's type) was most
    of a claim's CPU: start_due_runs for 100 claims took 0.30 CPU-s before, 0.12 now
    (bench/dispatch_tick.py at 10,000 updates, load ~11)."""
    table = UpgradeRun.__table__.c  # type: ignore[attr-defined]
    return (
        update(UpgradeRun)
        .where(
            col(UpgradeRun.id) == bindparam("run_id"),
            col(UpgradeRun.state) == RunState.planned,
            col(UpgradeRun.notice_sequence) == bindparam("sequence"),
            col(UpgradeRun.slot_start) == bindparam("slot"),
            col(UpgradeRun.held_reason) == bindparam("held"),
            col(UpgradeRun.requested_action) == bindparam("action"),
        )
        .values(
            state=RunState.running,
            started_at=bindparam("at", type_=table.started_at.type),
            lease_owner=bindparam("owner", type_=table.lease_owner.type),
            lease_until=bindparam("until", type_=table.lease_until.type),
            lease_since=bindparam("at", type_=table.lease_since.type),
        )
        # claim_planned writes a won claim into the session's object: no evaluation of the WHERE over
        # every UpgradeRun the session holds (it could not read the parameters anyway)
        .execution_options(synchronize_session=False)
    )


def _run_in_process(
    runtime: Runtime, now: datetime, slots: int, log: Any, most: int | None = None
) -> list[Claim]:
    from prefect.context import SettingsContext, SyncClientContext, get_settings_context

    from flows.product_update import product_update

    # Worker threads do not inherit context variables: without this the runs would ignore the
    # caller's Prefect settings (the CLI turns off the heartbeat, whose thread costs ~1 s per run).
    settings = get_settings_context()
    # One API client for every worker: the tick's own (its flow run's), shared. A client per worker
    # built an SSL context (certifi's whole bundle, ~27 ms CPU, even for plain http) and fetched a
    # CSRF token for each of the K workers, all at the moment K clusters start. httpx's pool is
    # thread-safe; its 16 connections also cap the requests K starting runs put to the server at once.
    shared = SyncClientContext.get()
    started: list[Claim] = []
    taken: set[int] = set()
    lock = Lock()
    starting = _StartGate(STARTING_AT_ONCE)

    def worker() -> None:
        with (
            SettingsContext(profile=settings.profile, settings=settings.settings),
            _client_context(shared),
        ):
            while True:
                slot = _StartSlot(starting)  # before the claim: a run waits here unclaimed, still planned
                with lock:  # claims in slot order; the runs themselves go on in parallel
                    # checked at the clock of the claim, not the tick's start: a run may have
                    # waited minutes for its slot (_window_missed: its window may have no room left)
                    at = max(now, runtime.clock())
                    # a tick's later claims read the limit again (one API read a claim): an
                    # in-process tick goes on for hours, and a limit deleted or set to 0 meanwhile
                    # failed each later run before its first node, the thing the gate is for
                    if started and cluster_limit_blocks(runtime, at, log):
                        slot.release()
                        return
                    try:
                        claim = _next(runtime, at, taken, runtime.run_lease, log, most=most)
                    except BaseException:  # the claim's transaction failed: this worker ends, its slot not
                        slot.release()
                        raise
                    if claim is None:
                        slot.release()
                        return
                    started.append(claim)
                reached = first_step.set(slot.release)
                try:
                    # Created with its tags: the flow then finds them on its run and sends no PATCH.
                    with tags(*creation_tags(runtime, claim)):
                        product_update(**_parameters(claim), return_state=True)
                except Exception as exc:  # the flow run could not be created or reported (API away)
                    _leave_for_take_over(runtime, claim, exc, log)
                    return  # this worker stops; the others go on, the next tick takes the run over
                finally:
                    first_step.reset(reached)
                    slot.release()

    if slots:
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="dispatch") as pool:
            for future in [pool.submit(worker) for _ in range(slots)]:
                future.result()
    return started


# Runs of one in-process tick between their claim and their first recorded step, at most: the rest
# wait unclaimed, still planned. Creating a flow run and its first task runs is the costly part of a
# run for the Prefect server and the client (~15 requests, a flow and a task run); K runs claimed
# together all did it at once and each reached its first step only after nearly all of them (W4 at
# K=20: claim to first step 10 s median, 13.8 s p95, load 20). A run gives its slot back at its first
# step, or before it waits on the fleet-wide cluster limit (flows.records.off_the_start), so a run
# standing still does not hold the others back.
STARTING_AT_ONCE = 4
# The safety net for starts stuck elsewhere (a Prefect API that stopped answering): when no start has
# given its slot back for this long, the runs still waiting start without one. It was a limit on each
# run's own wait, 10 s: at W4 (200 clusters due at once, K=200) every run not started within 10 s then
# claimed at once and queued behind the others after its claim (p95 claim to first step 89 s); with
# 120 s the same happened at 120 s (p95 117 s, p50 5.3 s). A queue that moves is never given up on.
STARTING_WAIT = 60.0


class _StartGate:
    """The tick's STARTING_AT_ONCE starting slots. `take()` waits for one as long as starts go on: it
    gives up (False) only when no slot was given back for STARTING_WAIT seconds."""

    def __init__(self, slots: int) -> None:
        self._free = Semaphore(slots)
        self._moved = time.monotonic()  # the last time a slot was given back (or the tick began)

    def take(self) -> bool:
        while True:
            left = self._moved + STARTING_WAIT - time.monotonic()
            if self._free.acquire(timeout=max(0.0, left)):
                return True
            if time.monotonic() >= self._moved + STARTING_WAIT:
                return False

    def give(self) -> None:
        self._moved = time.monotonic()
        self._free.release()


class _StartSlot:
    """One of the tick's starting slots, taken (or given up on, see _StartGate) when made; `release()`
    gives it back once, from whichever thread calls it first."""

    def __init__(self, gate: _StartGate) -> None:
        self._gate, self._lock = gate, Lock()
        self._held = gate.take()

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, False
        if held:
            self._gate.give()


def creation_tags(runtime: Runtime, claim: Claim) -> list[str]:
    """The tags the update flow gives its run (flows.product_update.update_tags), for its creation."""
    from flows.product_update import update_tags

    with session_scope(runtime.engine) as session:
        run = session.get(UpgradeRun, claim.run_id)
        cluster = session.get(Cluster, run.cluster_id) if run is not None else None
        if run is None or cluster is None:
            return [f"cluster:{claim.cluster}"]
        return update_tags(repo.customer_of(cluster, session=session).name, cluster.name, run)


def _leave_for_take_over(runtime: Runtime, claim: Claim, exc: Exception, log: Any) -> None:
    """A run whose flow could not be carried out in this process (the Prefect API refused or dropped
    the request): its lease ends now, so the next tick takes it over and resumes it as `upkeep resume`
    would, instead of it waiting out run_lease; one line says so, never a traceback that ends the tick
    (and the other workers' clusters with it)."""
    with session_scope(runtime.engine) as session:
        session.execute(
            update(UpgradeRun)
            .where(col(UpgradeRun.id) == claim.run_id, col(UpgradeRun.lease_owner) == claim.owner)
            .values(lease_until=runtime.clock())
        )
    cause = " ".join(str(exc).split()) or type(exc).__name__
    log.error(
        "update-%s (%s): could not be carried out here (%s: %s); the next tick takes it over",
        claim.run_id,
        claim.cluster,
        type(exc).__name__,
        cause,
    )


@contextmanager
def _client_context(shared: Any) -> Iterator[Any]:
    """In a worker thread: the dispatcher's client context when there is one (the flow engine's
    `SyncClientContext.get_or_create()` then finds it), else one of the worker's own for all its runs."""
    from prefect.context import SyncClientContext

    if shared is None:
        with SyncClientContext.get_or_create() as own:
            yield own
        return
    token = SyncClientContext.__var__.set(shared)
    try:
        yield shared
    finally:
        SyncClientContext.__var__.reset(token)


def _parameters(claim: Claim) -> dict[str, Any]:
    """The resume path (`upkeep resume RUN` runs the same flow with the run's id), under the claim."""
    return {
        "cluster": claim.cluster,
        "to_version": claim.to_version,
        "run_id": claim.run_id,
        "source": "schedule",
        "lease_owner": claim.owner,
    }


def _start_deployments(runtime: Runtime, claimed: list[Claim]) -> None:
    from prefect.deployments import run_deployment

    for claim in claimed:
        run_deployment(
            "product-update/product-update",
            parameters=_parameters(claim),
            timeout=0,  # hand it to a worker; do not wait here
            # Every tag the flow would add (customer:, source:, release:/case:): it finds them on its
            # run and sends no PATCH of its own.
            tags=creation_tags(runtime, claim),
        )
