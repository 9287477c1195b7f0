"""Customer notices: queue one with the change that causes it, deliver the outbox later (`notices send`).

Exactly once, and where that stops being true:

* Queuing: `queue_for` writes the rendered notice into the caller's transaction, so the notice exists
  if and only if the schedule change committed; its idempotency key (`update_ref:kind:sequence`) is
  unique, so queuing it again returns the same row.
* Delivery: `deliver_pending` handles one row per transaction. It claims the row (PostgreSQL
  `FOR UPDATE SKIP LOCKED`; on SQLite the BEGIN IMMEDIATE write lock), sends it and marks it sent
  before committing, so two deliverers never send the same row and a sent row is never picked again.
  If the mail server is unreachable the rows stay pending with a backoff and go out on a later call.
  The rows of one call share one SMTP connection (tasks/mail.py: RSET between messages, a connection
  found dropped before a message is reopened once); that changes what is sent per row, not when a
  row commits.
* The remaining window is at-least-once: if the process dies, or the commit fails, after the mail
  server accepted the message (its final 250 to DATA) but before the commit, the row is still pending
  and is sent again. SMTP has no two-phase commit, so this cannot be closed, only made recognisable:
  every attempt carries the same Message-ID (derived from the idempotency key) and an
  `X-Upkeep-Idempotency-Key` header, so receivers that deduplicate on Message-ID drop the copy and a
  person can tell it is one. The window is one message wide because each row commits on its own.
* Holding the claim across the SMTP exchange keeps the SQLite write lock for that long: other writers
  wait (busy timeout 30 s) for at most one message's exchange, bounded by the transport's timeout.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from typing import Any

from prefect import flow, get_run_logger
from sqlalchemy.engine import Engine
from sqlmodel import Session

from flows.runtime import current
from inventory.db import session_scope
from inventory.installation import installation_id
from inventory.models import Customer, RunState, UpgradeRun
from inventory.outbox import (
    ANNOUNCING,
    DELIVERY_UNKNOWN,
    Notice,
    claim_due,
    due_notices,
    idempotency_key,
    mark_attempt_failed,
    mark_sent,
    mark_superseded,
    queue_notice,
    queue_notices,
    run_id_of,
)
from inventory.runs import mark_told
from inventory.types import utcnow
from inventory.windows import notice_policy
from scheduling.notice import minimum_notice
from tasks.mail import (
    IDEMPOTENCY_HEADER,
    MailError,
    MailTransport,
    PermanentMailError,
    Refused,
    UnknownDeliveryError,
    build_message,
    check_notice,
    check_sender,
    message_id_for,
)
from templates import NoticeContext, RenderedNotice, render_notice
from templates.ics import INVITE_KINDS, invite

log = logging.getLogger(__name__)
# A notice still answered 'try later' (4xx) at its 6th attempt (~2 h after the first, inventory/outbox.py
# BACKOFF) alerts the SRE once: greylisting is over by then; a full mailbox or a broken relay is not.
STUCK_ATTEMPTS = 6


@dataclass
class FailedNotice:
    key: str
    customer_id: int
    recipients: list[str]
    error: str


@dataclass
class DeliveryReport:
    """What one delivery call did. `failed` and `transport_error` need a person (tell the SRE)."""

    sent: list[str] = field(default_factory=list)  # idempotency keys
    retrying: list[str] = field(default_factory=list)  # still pending, with a later next attempt
    failed: list[FailedNotice] = field(default_factory=list)  # refused for good
    superseded: list[str] = field(default_factory=list)  # not sent: a later notice of the update was due
    transport_error: str = ""  # the mail server could not be used at all during this call
    out_of_time: bool = False  # stopped by the call's time budget: due notices may be left for the next
    unknown: list[FailedNotice] = field(default_factory=list)  # handed over, answer unreadable: not resent
    unexpected: list[FailedNotice] = field(default_factory=list)  # no SMTP answer: an exception, retried

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def queue_for(
    ctx: NoticeContext,
    *,
    customer_id: int,
    session: Session,
    stamp: datetime | None = None,
    variant: str = "",
) -> Notice:
    """Render `ctx` and queue it in the caller's transaction (call it where the change is written).

    Everything `build_message` checks about the notice is checked here (tasks/mime.py `check_notice`),
    so a notice that could never be sent (a recipient that is not an address, CR/LF in the subject)
    fails now, in the caller's transaction, not hours later; the message itself is built once, when
    it is sent (its Date and sender are the sending's).
    """
    rendered = render_notice(ctx.kind, ctx)
    ics = invite(ctx, stamp=stamp) if ctx.kind in INVITE_KINDS else None
    key = idempotency_key(ctx.update_ref, ctx.kind, ctx.sequence, variant)
    check_notice(
        rendered, ics, recipients=ctx.recipients, message_id=message_id_for(key), idempotency_key=key
    )
    return queue_notice(
        update_ref=ctx.update_ref,
        kind=ctx.kind.value,
        sequence=ctx.sequence,
        customer_id=customer_id,
        recipients=ctx.recipients,
        subject=rendered.subject,
        body_text=rendered.text,
        body_html=rendered.html,
        ics=ics.decode() if ics is not None else "",
        session=session,
        now=stamp,
        variant=variant,
    )


def queue_many(
    notices: list[tuple[NoticeContext, int, str]], *, session: Session, stamp: datetime
) -> list[bool]:
    """`queue_for` for many notices ((context, customer id, variant) each) in one INSERT: each rendered
    and checked as `queue_for` does, then written with ON CONFLICT DO NOTHING on the idempotency key
    (inventory/outbox.py `queue_notices`). Returns, for each, whether it was queued now (False: that
    key was queued already)."""
    rows: list[dict[str, object]] = []
    for ctx, customer_id, variant in notices:
        rendered = render_notice(ctx.kind, ctx)
        ics = invite(ctx, stamp=stamp) if ctx.kind in INVITE_KINDS else None
        key = idempotency_key(ctx.update_ref, ctx.kind, ctx.sequence, variant)
        check_notice(
            rendered, ics, recipients=ctx.recipients, message_id=message_id_for(key), idempotency_key=key
        )
        rows.append(
            {
                "update_ref": ctx.update_ref,
                "kind": ctx.kind.value,
                "sequence": ctx.sequence,
                "variant": variant,
                "customer_id": customer_id,
                "recipients": list(ctx.recipients),
                "subject": rendered.subject,
                "body_text": rendered.text,
                "body_html": rendered.html,
                "ics": ics.decode() if ics is not None else "",
            }
        )
    return queue_notices(rows, session=session, now=stamp)


def deliver_pending(
    engine: Engine,
    transport: MailTransport,
    *,
    now: datetime,
    sender: str,
    limit: int = 100,
    budget: timedelta | None = None,
    clock: Callable[[], datetime] | None = None,
) -> DeliveryReport:
    """Send up to `limit` due notices, one transaction each, over one connection (module docstring).
    A `sender` that is not one address is refused before any row is touched (it is configuration,
    not about a notice).

    With `budget`, no further notice is claimed once `clock()` (default: the time now) is that far
    past the call's start: the rest stay pending, oldest first, for the next call (`out_of_time` says
    so). A slow mail server then costs the caller at most the budget plus one message's exchange and
    the QUIT, never `limit` of them. The transport's timeout bounds each reply, not the exchange: a
    server answering every command just inside it takes RSET, MAIL, one RCPT per recipient, DATA and
    its end (with a reopened connection, the greeting and EHLO too), ~15 s each with SMTP's default
    (adversarial pass on #19: the bound is per step, so a tarpit stretches the tick past the budget by
    minutes, not by one timeout)."""
    check_sender(sender)
    report = DeliveryReport()
    clock = clock or utcnow
    began = clock()
    domain = parseaddr(sender)[1].rpartition("@")[2] or "upkeep"
    with session_scope(engine) as session:
        installation = installation_id(session)
    handled = 0
    runs = _RunsOfNotices(engine)
    with _batch(transport) as mailer:
        while handled < limit and not report.transport_error:
            if budget is not None and clock() - began >= budget:
                report.out_of_time = True
                break  # the rest go in the next call, oldest first
            if not runs.read_ahead(now, limit - handled):
                break  # nothing due
            with session_scope(engine) as session:
                claimed = claim_due(now, session=session)
                if claimed is None:
                    break
                notice, newer = claimed
                _deliver_one(
                    notice,
                    newer,
                    mailer,
                    report,
                    now=now,
                    sender=sender,
                    domain=domain,
                    installation=installation,
                    runs=runs,
                    session=session,
                )
            handled += 1
    if report.unexpected and not report.transport_error:
        _alert_unexpected(engine, report, now=now)
    if report.transport_error and handled < limit:
        # The server is down for everyone: record the attempt on the other due rows without trying
        # each (a timeout per row would add up), so they all back off together.
        with session_scope(engine) as session:
            for notice in due_notices(now, session=session, limit=limit - handled, lock=True):
                error = f"not tried, mail server unusable: {report.transport_error}"
                mark_attempt_failed(notice, error, permanent=False, now=now, session=session)
                report.retrying.append(notice.idempotency_key)
    if report.transport_error:
        with session_scope(engine) as session:
            _alert_mail_unusable(report.transport_error, now=now, session=session)
    return report


def _unexpected(exc: Exception, transport: MailTransport) -> str:
    """An exception that is no SMTP answer, as one line naming its kind, scrubbed of the SMTP password
    (plain and base64) when the transport knows it: its text may quote anything the adapter held.
    Scrubbed before it is folded and cut to one line: a password straddling the cut was no longer whole
    for the scrub, and its first characters stayed (adv58)."""
    scrub = _scrubber(transport)
    return f"unexpected {type(exc).__name__}: {_one_line(scrub(_said(exc, str))) or scrub(_said(exc, repr))}"


def _said(exc: Exception, how: Callable[[object], str]) -> str:
    """str(exc) or repr(exc) as the exception makes it, or a placeholder when that itself raises: this
    runs in the handler that keeps one bad notice from blocking the rows behind it (adv58)."""
    try:
        return how(exc)
    except Exception:
        return "(its text cannot be made)"


def _scrubber(transport: MailTransport) -> Callable[[str], str]:
    """The transport's `scrub` (SMTP: the password, plain and base64), or the text as it is."""
    scrub = getattr(transport, "scrub", None)
    if not callable(scrub):
        return lambda text: text
    return lambda text: str(scrub(text))


def _alert_unexpected(engine: Engine, report: DeliveryReport, *, now: datetime) -> None:
    """Notices that failed this call on an exception that is no SMTP answer stay pending (it may pass),
    but never silently. Every message tried failing so (two or more, none sent, refused or retried on
    an SMTP answer) is the mail server unusable: `transport_error`, one alert per outage, none per
    notice. Otherwise each such notice tried STUCK_ATTEMPTS times or more gets its own alert, once
    (`notice-N:stuck`, the 4xx budget and key): queued after the notice's own commit, so a crash between
    the two loses nothing, the next attempt asks again (>=, not ==) and the key keeps it to one."""
    tried = len(report.sent) + len(report.retrying) + len(report.failed) + len(report.unknown)
    if len(report.unexpected) >= 2 and len(report.unexpected) == tried:
        report.transport_error = report.unexpected[0].error
        return
    from sqlmodel import select

    from inventory.outbox import NoticeState

    for failure in report.unexpected:
        with session_scope(engine) as session:
            notice = session.exec(select(Notice).where(Notice.idempotency_key == failure.key)).first()
            if notice is None or notice.state != NoticeState.pending or notice.attempts < STUCK_ATTEMPTS:
                continue
            _alert_undelivered(notice, failure.error, now=now, session=session, stuck=True, unexpected=True)


def _alert_mail_unusable(error: str, *, now: datetime, session: Session) -> None:
    """The mail server unusable for every message (down, our login or sender refused) is retried for
    ever, rightly, but once the oldest waiting notice has been tried STUCK_ATTEMPTS times the SRE
    hears of it: one alert per outage (keyed on that notice), not one per notice."""
    from sqlmodel import col, func, select

    from flows.alerts import alert_sre
    from inventory.outbox import NoticeState

    waiting = select(Notice).where(Notice.state == NoticeState.pending)
    oldest = session.exec(
        waiting.where(Notice.attempts >= STUCK_ATTEMPTS).order_by(col(Notice.id)).limit(1)
    ).first()
    if oldest is None:
        return
    count = session.exec(
        select(func.count()).select_from(Notice).where(Notice.state == NoticeState.pending)
    ).one()
    from tasks.mail import HANDED_OVER

    waiting_line = (
        f"{count} customer notice(s) waiting; the oldest, '{oldest.kind}' of {oldest.update_ref}, tried "
        f"{oldest.attempts} times."
    )
    if HANDED_OVER in error:  # cut after the whole message: each try may be a copy in their mailbox (adv62)
        headline = "customer notices not confirmed: the mail server cuts the connection after taking them"
        told = (
            f"{waiting_line} Each try sent the whole message before the cut, so the customers may have it "
            "once per try (the same Message-ID, which many mail clients fold into one). They are retried "
            "hourly until the server answers; do not tell them again by hand before checking with them."
        )
    else:
        headline = "customer notices not delivered: the mail server cannot be used"
        told = (
            f"{waiting_line} They are retried hourly and go out by themselves once the server takes them; "
            "until then no customer hears of anything, and each never-told update slides at its re-check."
        )
    alert_sre(
        None,
        headline=headline,
        cause=_one_line(error),
        kind="mail-unusable",
        detail=told,
        action="Fix: the mail server, or the SMTP settings (UPKEEP_SMTP_HOST, _PORT, _USER, _PASSWORD, "
        "UPKEEP_MAIL_FROM); `upkeep doctor` checks them.",
        key=f"mail-unusable:notice-{oldest.id}",  # one per outage, however many ticks it lasts
        session=session,
        now=now,
    )


@contextmanager
def _batch(transport: MailTransport) -> Iterator[MailTransport]:
    """The transport's shared session if it has one (SMTP), else the transport itself. A session
    connects at its first message, so a call with nothing due opens no connection."""
    opener = getattr(transport, "session", None)
    if opener is None:
        yield transport
        return
    with opener() as session:
        yield session


class _RunsOfNotices:
    """What delivery needs of each notice's update (its organizer, whether the customer was told),
    read for the next due notices at once instead of one look-up per notice. A delivery transaction
    then reads no run: `told_at` is only ever set once (inventory/runs.py `mark_told`), so a run known
    told needs no UPDATE, and `organizer` is fixed by the update's first notice.

    Measured (bench/dispatch_tick.py, 500 notices on PostgreSQL): 5 statements per notice delivered
    before (claim, newer-notice look-up, run look-up, the notice's UPDATE, the run's told_at UPDATE), 2
    now (claim with the newer-notice look-up as a subquery, the notice's UPDATE)."""

    AHEAD = 100

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.known: dict[int, tuple[str, datetime | None]] = {}
        self.left = 0  # notices read ahead not yet delivered

    def read_ahead(self, now: datetime, most: int) -> bool:
        """Read the runs of the next due notices when those read before are used up; False when no
        notice is due."""
        from sqlmodel import col, select

        from inventory.outbox import NoticeState

        if self.left > 0:
            self.left -= 1
            return True
        with session_scope(self.engine) as session:
            refs = session.exec(
                select(Notice.update_ref)
                .where(Notice.state == NoticeState.pending, col(Notice.next_attempt_at) <= now)
                .order_by(col(Notice.next_attempt_at), col(Notice.id))
                .limit(min(most, self.AHEAD))
            ).all()
            ids = {run_id for ref in refs if (run_id := run_id_of(ref)) is not None} - set(self.known)
            if ids:
                query = select(UpgradeRun.id, UpgradeRun.organizer, UpgradeRun.told_at)
                for run_id, organizer, told_at in session.exec(query.where(col(UpgradeRun.id).in_(ids))):
                    assert run_id is not None
                    self.known[run_id] = (organizer, told_at)
        self.left = max(len(refs) - 1, 0)
        return bool(refs)

    def organizer(self, run_id: int, *, session: Session) -> str | None:
        """The run's organizer ("" if none yet); None if there is no such run."""
        if run_id not in self.known:
            run = session.get(UpgradeRun, run_id)
            if run is None:
                return None
            self.known[run_id] = (run.organizer, run.told_at)
        return self.known[run_id][0]

    def told(self, run_id: int, now: datetime, *, session: Session) -> None:
        """`mark_told`, skipped when the run is known told already."""
        organizer, told_at = self.known.get(run_id, ("", None))
        if told_at is None:
            mark_told(run_id, now=now, session=session)
            self.known[run_id] = (organizer, now)


def _deliver_one(
    notice: Notice,
    newer: str | None,
    transport: MailTransport,
    report: DeliveryReport,
    *,
    now: datetime,
    sender: str,
    domain: str,
    installation: str,
    runs: _RunsOfNotices,
    session: Session,
) -> None:
    key = notice.idempotency_key
    if newer is not None:  # a later notice of this update says it all; this one is not sent
        mark_superseded(notice, newer, session=session)
        report.superseded.append(key)
        return
    run_id = run_id_of(notice.update_ref)
    organizer = runs.organizer(run_id, session=session) if run_id is not None else None
    try:
        message = build_message(
            RenderedNotice(notice.subject, notice.body_text, notice.body_html),
            notice.ics.encode() if notice.ics else None,
            sender=_sender(sender, organizer),
            recipients=notice.recipients,
            message_id=message_id_for(key, domain, installation),
            idempotency_key=key,
            date=now,
        )
    except ValueError as exc:  # cannot become a valid message, however often we try
        _failed(notice, report, f"cannot build the message: {exc}", now=now, session=session)
        return
    try:
        refused = transport.send(message)
    except UnknownDeliveryError as exc:
        # Not resent (it may have arrived: twice is worse than asking), not counted delivered (an update
        # must not start on a notice that may not have arrived): out of the queue, the SRE asked to check.
        # Its error's prefix is what tells it from a refusal later (`maybe_delivered`, adv58).
        error = f"{DELIVERY_UNKNOWN}{exc}"
        mark_attempt_failed(notice, error, permanent=True, now=now, session=session)
        _alert_undelivered(notice, error, now=now, session=session, unknown=True)
        report.unknown.append(
            FailedNotice(notice.idempotency_key, notice.customer_id, list(notice.recipients), error)
        )
        return
    except MailError as exc:
        if exc.transport:
            report.transport_error = str(exc)
        if isinstance(exc, PermanentMailError) and not exc.transport:
            _failed(notice, report, str(exc), now=now, session=session)
            return
        mark_attempt_failed(notice, str(exc), permanent=False, now=now, session=session)
        report.retrying.append(key)
        if not exc.transport and notice.attempts >= STUCK_ATTEMPTS:  # this message's 4xx, again and again
            _alert_undelivered(notice, str(exc), now=now, session=session, stuck=True)
        return
    except Exception as exc:  # a bug in a transport must not block the rows behind this one
        # Its traceback (the alert sends the SRE here for it) scrubbed like the rest: the exception's
        # text may quote the SMTP password, and log.exception wrote it as it is (adv58).
        trace = "".join(traceback.format_exception(exc)).rstrip()
        log.error("sending notice %s failed unexpectedly:\n%s", key, _scrubber(transport)(trace))
        error = _unexpected(exc, transport)
        mark_attempt_failed(notice, error, permanent=False, now=now, session=session)
        report.retrying.append(key)
        # Alerted after the call (`_alert_unexpected`): one notice's, or the outage's if it hit them all.
        report.unexpected.append(FailedNotice(key, notice.customer_id, list(notice.recipients), error))
        return
    mark_sent(notice, now=now, session=session)
    report.sent.append(key)
    if run_id is not None and organizer is not None and notice.kind in ANNOUNCING:
        runs.told(run_id, now, session=session)
    if refused:
        _alert_partly_refused(notice, refused, now=now, session=session)


def _sender(sender: str, organizer: str | None) -> str:
    from email.utils import formataddr

    if not organizer or parseaddr(sender)[1] == organizer:
        return sender
    return formataddr((parseaddr(sender)[0], organizer))


def _failed(notice: Notice, report: DeliveryReport, error: str, *, now: datetime, session: Session) -> None:
    """A notice that will never go out: marked failed, and the SRE alerted in the same transaction
    (before, only `notices send` logged it and the dispatcher's delivery said nothing: a 'scheduled'
    to a gone address left its update never told, sliding on at every re-check, and nobody heard)."""
    mark_attempt_failed(notice, error, permanent=True, now=now, session=session)
    _alert_undelivered(notice, error, now=now, session=session)
    report.failed.append(
        FailedNotice(notice.idempotency_key, notice.customer_id, list(notice.recipients), error)
    )


def _alert_undelivered(
    notice: Notice,
    error: str,
    *,
    now: datetime,
    session: Session,
    stuck: bool = False,
    unknown: bool = False,
    unexpected: bool = False,
) -> None:
    """One SRE alert per failure of a notice (keyed on the notice and its attempt: a retried transaction
    or a second dispatcher queues no second one), saying what it means for the update and the fix.
    `stuck`: not failed but still pending after STUCK_ATTEMPTS 'try later' answers (one alert per notice)."""
    from flows.alerts import alert_sre

    ref, kind = notice.update_ref, notice.kind
    run_id = run_id_of(ref)
    run = session.get(UpgradeRun, run_id) if run_id is not None else None
    customer = session.get(Customer, notice.customer_id)
    fix = "correct the contact (or portal user) in the inventory YAML and run `upkeep inventory import FILE`"
    by_hand = f"Upkeep does not send it again: tell them yourself ({_list_command(notice)})."
    if ref.endswith("-sre"):  # the SRE's own copy (flows/run_notices.py `to_sre`)
        means = "This was the SRE's copy, not the customer's."
        action = "Fix: the SRE mailbox setting (UPKEEP_SRE_EMAIL)."
    elif kind == "stopped" and run is not None:
        means = _stopped_not_told(notice, session, final=not stuck)
        action = f"Fix: {fix}. {by_hand}"
    elif run is None or kind not in ANNOUNCING or run.state != RunState.planned:
        means = f"The customer did not get this '{kind}' notice" + (
            f"; {ref} itself is not held back by it." if run is not None else "."
        )
        action = f"Fix: {fix}. {by_hand}"
    elif run.told_at is not None:
        means = (
            f"The customer was told of {ref} before, but not by this '{kind}' notice: it keeps the slot "
            "Upkeep has, whatever they last heard."
        )
        action = f"Fix: {fix}. {by_hand}"
    elif _needs_no_notice(run, customer):  # a 0 h contract: scheduling/validity.py lets it start
        slot = run.slot_start.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if run.slot_start else "its slot"
        means = (
            f"The customer has not been told of {ref}, and their contract needs no notice: {ref} starts "
            f"at its slot all the same ({slot}), without the customer having heard of it."
        )
        action = (
            f"Fix: {fix}, and tell them yourself before the slot ({_list_command(notice)}), "
            f"or move it: `upkeep reschedule {ref} --to START --reason TEXT`."
        )
    else:
        means = (
            f"The customer has not been told of {ref}, so it cannot start: once less than its notice "
            "period is left (counted from now: never told yet), each re-check, at the latest the "
            "dispatcher's when the slot comes, moves it to the first window with full notice from then "
            "and announces it anew ('scheduled') to the same addresses, or holds it when no valid slot "
            "is left (past the release's deadline, an open P0/P1 case: a separate alert)."
        )
        action = (
            f"Fix: {fix}. If the import does not report {ref} moved (a move mails the corrected "
            f"addresses), re-announce it: `upkeep reschedule {ref} --to START --reason TEXT` "
            "(a START too soon is refused with the earliest valid one)."
        )
    building = error.startswith("cannot build the message")
    headline = f"'{kind}' notice of {ref} not delivered: " + (
        "the message cannot be built" if building else "refused for good by the mail server"
    )
    key = f"notice-{notice.id}:failed:{notice.attempts}"  # one failure, one alert
    if stuck:
        headline = (
            f"'{kind}' notice of {ref} not delivered after {notice.attempts} attempts: "
            "the mail server keeps answering 'try later'"
        )
        means = f"It is still retried hourly; until it goes through: {means}"
        if ref.endswith("-sre"):
            pass  # the SRE mailbox's fix stands
        elif kind == "stopped":
            action = (
                f"Fix: have the customer's mailbox fixed (the server's answer is above), or tell them "
                f"yourself ({_list_command(notice)}): the pending notice keeps its addresses."
            )
        elif run is not None and run.state == RunState.planned:
            action = (
                "Fix: have the customer's mailbox fixed (the server's answer is above), or "
                f"{fix} and re-announce {ref} (`upkeep reschedule {ref} --to START --reason TEXT`): "
                "the pending notice keeps the addresses it was queued with."
            )
        else:
            action = (
                f"Fix: have the customer's mailbox fixed (the server's answer is above), or {fix} and "
                f"tell them yourself ({_list_command(notice)}): the pending notice keeps its addresses."
            )
        key = f"notice-{notice.id}:stuck"  # one per notice, however long it stays stuck
        if unexpected:  # no SMTP answer at all: the exception, not the customer's mailbox
            headline = (
                f"'{kind}' notice of {ref} not delivered after {notice.attempts} attempts: sending it "
                f"fails with {error.split(':', 1)[0].removeprefix('unexpected ')}, not an SMTP answer"
            )
            action = (
                "Fix: the mail transport (the exception above comes from Upkeep's sending of this message, "
                "not from the mail server: a bug or a broken connection; the deliverer's log has its "
                f"traceback), or tell the customer yourself ({_list_command(notice)})."
            )
    listed = "Not delivered to"
    if unknown:
        # Not a refusal: the server took the addresses and the message; only its answer was unreadable.
        # Neither "not delivered" nor "correct the contact", and what follows holds either way (adv58).
        listed = "Delivery unknown to"
        headline = f"'{kind}' notice of {ref}: delivery unknown"
        means = (
            "The mail server was handed the whole message, but its answer to it could not be read: the "
            "customer may have it or not. Upkeep does not send it again (it could arrive twice) and, "
            f"whether it arrived or not, counts it as not delivered, so as for one that was not: {means}"
        )
        action = (
            "Check whether it arrived (the mail server's log, or ask the customer: the message carries "
            f"the header {IDEMPOTENCY_HEADER}: {notice.idempotency_key}). The addresses are not at fault "
            f"(the server took them). If it did not arrive, tell them yourself ({_list_command(notice)})."
        )
        key = f"notice-{notice.id}:unknown"  # one per notice: it is never tried again
    alert_sre(
        None,
        headline=headline,
        cause=_one_line(error),
        kind="notice-failed",
        run_id=run.id if run is not None else None,
        customer=customer.name if customer is not None else "",
        detail=f"{listed}: {_one_line(', '.join(notice.recipients))}\n{means}",
        action=action,
        key=key,
        session=session,
        now=now,
    )


def _stopped_not_told(notice: Notice, session: Session, *, final: bool) -> str:
    """What a 'stopped' that never reached the customer leaves them believing. While it was pending it
    counted as their last word (flows/outcomes.py `last_word`), so the tick did not tell them again, and
    it will not (the run is marked told): their last word is the last notice that went out."""
    from sqlmodel import col, select

    from inventory.outbox import NoticeState

    ref = notice.update_ref
    last = session.exec(
        select(Notice.kind)
        .where(Notice.update_ref == ref, Notice.state == NoticeState.sent)
        .order_by(col(Notice.sequence).desc(), col(Notice.id).desc())
        .limit(1)
    ).first()
    if last is None:
        believes = "they never heard of it"
    elif last == "started":
        believes = "their last word of it is 'started': the customer still believes the update is running"
    else:
        believes = f"their last word of it is '{last}', not that it stopped for now"
    told = "its record counts the stop as told (the notice was queued), so no later tick tells them"
    if not final:  # stuck on 4xx: still retried
        return f"The customer has not got this 'stopped' notice of {ref} yet: {believes}; {told} otherwise."
    return (
        f"The customer did not get this 'stopped' notice of {ref}: {believes}. Upkeep does not send it "
        f"again, and {told}: until you do, nobody does."
    )


def _alert_partly_refused(notice: Notice, refused: Refused, *, now: datetime, session: Session) -> None:
    """The server took the notice for some recipients and refused others: it counts as sent (sending
    it again would mail the others twice), so the ones refused are told to the SRE, once per notice."""
    from flows.alerts import alert_sre

    ref, kind = notice.update_ref, notice.kind
    run_id = run_id_of(ref)
    run = session.get(UpgradeRun, run_id) if run_id is not None else None
    customer = session.get(Customer, notice.customer_id)
    delivered = [address for address in notice.recipients if address not in refused]
    if ref.endswith("-sre"):
        means = "This was the SRE's copy, not the customer's."
        action = "Fix: the SRE mailbox setting (UPKEEP_SRE_EMAIL)."
    else:
        told = run is not None and run.state == RunState.planned and kind in ANNOUNCING
        means = (
            f"The others got this '{kind}' notice"
            + (f", so {ref} counts as told and keeps its slot" if told else "")
            + "; the addresses above did not, and Upkeep does not send it to them again."
        )
        action = (
            "Fix: correct the contact (or portal user) in the inventory YAML and run "
            f"`upkeep inventory import FILE`; tell them yourself ({_list_command(notice)})."
        )
    alert_sre(
        None,
        headline=f"'{kind}' notice of {ref} not delivered to every recipient",
        cause=_one_line("the mail server refused: " + "; ".join(f"{a}: {t}" for a, t in refused.items())),
        kind="notice-refused",
        run_id=run.id if run is not None else None,
        customer=customer.name if customer is not None else "",
        detail=f"Not delivered to: {_one_line(', '.join(refused))}\n"
        f"Delivered to: {_one_line(', '.join(delivered))}\n{means}",
        action=action,
        key=f"notice-{notice.id}:refused-some",  # sent once: one alert
        session=session,
        now=now,
    )


def _list_command(notice: Notice) -> str:
    """The command showing `notice`: `--update` takes only an update's ref (update-42), not a case's
    (case:CASE-7), a welcome's (portal-user-...) or the SRE's copy (update-42-sre)."""
    if run_id_of(notice.update_ref) is not None:
        return f"`upkeep notices list --update {notice.update_ref}`"
    return f"`upkeep notices list`, notice {notice.id}"


def _needs_no_notice(run: UpgradeRun, customer: Customer | None) -> bool:
    """The customer's contract needs no notice for this update (its kind, or urgent)."""
    if customer is None:
        return False
    return minimum_notice(notice_policy(customer), run.kind, run.urgent) <= timedelta(0)


def _one_line(text: str, limit: int = 500) -> str:
    """A server's answer as one terminal-safe line: line breaks folded, other control characters
    escaped (an SMTP reply is the remote server's text)."""
    line = " ".join(text.split())
    line = "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


@flow(name="deliver-notices")
def deliver_notices(limit: int = 100) -> dict[str, Any]:
    """`upkeep notices send`: deliver due notices through the configured mailer; returns the report."""
    runtime = current()
    report = deliver_pending(
        runtime.engine,
        runtime.mailer,
        now=utcnow(),
        sender=runtime.mail_from,
        limit=limit,
    )
    from flows.alerts import deliver_alerts

    alerts = deliver_alerts(runtime)
    logger = get_run_logger()
    logger.info("notices: %d sent, %d retrying later", len(report.sent), len(report.retrying))
    logger.info("SRE alerts: %d sent, %d retrying later", len(alerts.sent), len(alerts.retrying))
    if report.transport_error:
        logger.error("mail server unusable: %s", report.transport_error)
    for failure in report.failed:
        logger.error("notice %s refused for good: %s", failure.key, failure.error)
    for unknown in report.unknown:
        logger.error("notice %s: delivery unknown, not sent again: %s", unknown.key, unknown.error)
    return report.as_dict()
