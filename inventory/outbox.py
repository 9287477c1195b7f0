"""The notice outbox: customer emails queued in the same transaction as the change that causes them.

A schedule change and its notice commit or roll back together, so a customer is never told about a
change that did not happen, and no change happens without its notice waiting to go out. A deliverer
(flows/notify.py) sends due rows later and records the outcome here.

Each notice has an idempotency key, `<update_ref>:<kind>:<sequence>`, unique in the table: queuing the
same notice twice (a retried flow, a double click) yields the existing row, never a second email.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from inventory.types import created_field, time_field, utcnow

__all__ = [
    "ANNOUNCING",
    "BACKOFF",
    "Notice",
    "NoticeState",
    "claim_due",
    "due_notices",
    "idempotency_key",
    "mark_attempt_failed",
    "mark_sent",
    "mark_superseded",
    "newer_notice",
    "pending_of",
    "queue_notice",
    "queue_notices",
    "retry_delay",
    "run_id_of",
]

# Wait before the next attempt after n failed ones: BACKOFF[n-1], the last entry repeating.
BACKOFF = (timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10), timedelta(hours=1))
ERROR_CHARS = 2000


class NoticeState(StrEnum):
    pending = "pending"
    sent = "sent"
    failed = "failed"  # permanently refused by the mail server: a person has to look
    superseded = "superseded"  # a later notice of the same update was queued before this one went out


class Notice(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_notice_idempotency_key"),
        Index("ix_notice_due", "state", "next_attempt_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=128)
    kind: str = Field(max_length=16)
    update_ref: str = Field(max_length=64, index=True)
    sequence: int = 0
    customer_id: int = Field(foreign_key="customer.id", index=True, ondelete="CASCADE")
    recipients: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    subject: str = Field(max_length=998)  # RFC 5322's line limit
    body_text: str = Field(sa_column=Column(Text, nullable=False))
    body_html: str = Field(sa_column=Column(Text, nullable=False))
    ics: str = Field(default="", sa_column=Column(Text, nullable=False))  # empty: no invite
    state: NoticeState = Field(default=NoticeState.pending, max_length=16)
    attempts: int = 0  # tries so far, the successful one included
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False))
    next_attempt_at: datetime | None = time_field(nullable=True)  # NULL once sent or failed
    created_at: datetime = created_field()
    sent_at: datetime | None = time_field(nullable=True)


def idempotency_key(update_ref: str, kind: str, sequence: int, variant: str = "") -> str:
    """`variant` tells apart notices of one kind about the same version of an update (the 72 h and
    the 24 h reminder) while they keep one update_ref, and so one calendar UID."""
    return f"{update_ref}:{kind}:{sequence}" + (f":{variant}" if variant else "")


def queue_notice(
    *,
    update_ref: str,
    kind: str,
    sequence: int,
    customer_id: int,
    recipients: Sequence[str],
    subject: str,
    body_text: str,
    body_html: str,
    ics: str = "",
    session: Session,
    now: datetime | None = None,
    variant: str = "",
) -> Notice:
    """Add a notice to the caller's transaction (it commits or rolls back with the caller's change).

    The same (update_ref, kind, sequence) queued again returns the row already there. The lookup
    handles the usual case; on PostgreSQL the unique constraint, hit inside a savepoint, handles two
    transactions queuing the same notice at once without spoiling the caller's transaction (on SQLite
    they cannot overlap: see below).
    """
    key = idempotency_key(update_ref, kind, sequence, variant)
    existing = _by_key(key, session=session)
    if existing is not None:
        return existing
    if not recipients:
        raise ValueError(f"notice {key}: no recipients")
    now = now or utcnow()
    notice = Notice(
        idempotency_key=key,
        kind=kind,
        update_ref=update_ref,
        sequence=sequence,
        customer_id=customer_id,
        recipients=list(recipients),
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        ics=ics,
        next_attempt_at=now,
        created_at=now,
    )
    if session.get_bind().dialect.name == "sqlite":
        # Our SQLite transactions take the write lock at BEGIN (BEGIN IMMEDIATE, inventory/db.py), so
        # nobody can have queued this key since the lookup above: the savepoint, a third of the cost
        # of queuing, buys nothing there. An IntegrityError is then about something else; it is raised.
        session.add(notice)
        session.flush()
        return notice
    try:
        with session.begin_nested():
            session.add(notice)
    except IntegrityError:
        existing = _by_key(key, session=session)
        if existing is None:  # the violation was about something else, e.g. an unknown customer
            raise
        return existing
    return notice


def queue_notices(rows: Sequence[dict[str, object]], *, session: Session, now: datetime) -> list[bool]:
    """Add many notices to the caller's transaction in one INSERT ... ON CONFLICT (idempotency_key) DO
    NOTHING (PostgreSQL and SQLite alike): a key already queued, by this transaction or a concurrent one,
    is left as it is, never queued twice. `rows`: the Notice columns up to `ics`, with `variant`.
    Returns, for each row, whether it was queued now."""
    from sqlalchemy.dialects import postgresql, sqlite

    if not rows:
        return []
    values = []
    for row in rows:
        fields = dict(row)
        variant = str(fields.pop("variant", ""))
        sequence = fields["sequence"]
        assert isinstance(sequence, int)
        key = idempotency_key(str(fields["update_ref"]), str(fields["kind"]), sequence, variant)
        if not fields["recipients"]:
            raise ValueError(f"notice {key}: no recipients")
        values.append(
            fields
            | {
                "idempotency_key": key,
                "state": NoticeState.pending,
                "attempts": 0,
                "last_error": "",
                "next_attempt_at": now,
                "created_at": now,
                "sent_at": None,
            }
        )
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(Notice)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(col(Notice.idempotency_key))
    )
    # Parameters given as a list: SQLAlchemy batches them into multi-row INSERTs itself
    # ("insertmanyvalues") with one cached compilation; `.values(rows)` compiled each row's
    # parameters anew (~3.6 s of CPU for 500 notices, measured with cProfile at load 30).
    inserted = set(session.execute(statement, values).scalars())
    return [value["idempotency_key"] in inserted for value in values]


def due_notices(now: datetime, *, session: Session, limit: int = 100, lock: bool = False) -> Sequence[Notice]:
    """Pending notices whose next attempt is due, oldest first.

    With `lock`, the rows are claimed for this transaction: on PostgreSQL `FOR UPDATE SKIP LOCKED`, so
    concurrent deliverers each get different rows; SQLite has one writer at a time anyway (our sessions
    begin with BEGIN IMMEDIATE), so there the transaction itself is the claim.
    """
    query = (
        select(Notice)
        .where(Notice.state == NoticeState.pending, col(Notice.next_attempt_at) <= now)
        .order_by(col(Notice.next_attempt_at), col(Notice.id))
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return session.exec(query).all()


def claim_due(now: datetime, *, session: Session) -> tuple[Notice, str | None] | None:
    """The oldest due pending notice, claimed for this transaction as `due_notices(lock=True)` does,
    with the key of a later notice of the same update that supersedes it (`newer_notice`), if any:
    one statement, not two, per notice delivered."""
    row = session.exec(_claim_query(), params={"now": now}).first()
    return (row[0], row[1]) if row is not None else None


@cache
def _claim_query() -> Any:
    """`claim_due`'s statement, built once with `now` as a parameter. Built per notice (select, alias,
    subquery and their coercions) it was ~1 ms of a delivered notice's ~5 ms of CPU: 500 notices
    took 2.3-3.0 CPU-s before, 1.8 now (bench/dispatch_tick.py at 10,000 updates, load ~11)."""
    from sqlalchemy import bindparam
    from sqlalchemy.orm import aliased

    later = aliased(Notice)
    newer = (
        select(later.idempotency_key)
        .where(
            later.update_ref == Notice.update_ref,
            col(later.sequence) > Notice.sequence,
            col(later.state).in_([NoticeState.pending, NoticeState.sent]),
        )
        .order_by(col(later.sequence).desc())
        .limit(1)
        .scalar_subquery()
    )
    return (
        select(Notice, newer)
        .where(Notice.state == NoticeState.pending, col(Notice.next_attempt_at) <= bindparam("now"))
        .order_by(col(Notice.next_attempt_at), col(Notice.id))
        .limit(1)
        .with_for_update(skip_locked=True, of=Notice)
    )


# The last_error of a notice handed to the mail server whole whose answer could not be read
# (flows/notify.py, tasks/mail.py `UnknownDeliveryError`): failed and never resent, but it may have
# arrived. What the customer may believe counts it (flows/run_notices.py `customer_knows`, adv58).
DELIVERY_UNKNOWN = "delivery unknown: "


def maybe_delivered() -> Any:
    """The WHERE clause of a notice of unknown delivery (`DELIVERY_UNKNOWN`)."""
    from sqlalchemy import and_

    return and_(
        col(Notice.state) == NoticeState.failed,
        col(Notice.last_error).startswith(DELIVERY_UNKNOWN, autoescape=True),
    )


def mark_sent(notice: Notice, *, now: datetime, session: Session) -> None:
    notice.state = NoticeState.sent
    notice.attempts += 1
    notice.sent_at = now
    notice.next_attempt_at = None
    notice.last_error = ""
    session.add(notice)


def mark_attempt_failed(
    notice: Notice, error: str, *, permanent: bool, now: datetime, session: Session
) -> None:
    """Record a failed attempt: retry after the backoff, or give up for good if `permanent`."""
    notice.attempts += 1
    notice.last_error = error[:ERROR_CHARS]
    if permanent:
        notice.state = NoticeState.failed
        notice.next_attempt_at = None
    else:
        notice.next_attempt_at = now + retry_delay(notice.attempts)
    session.add(notice)


# Notices that tell the customer when an update will happen: the first one delivered is when the
# customer was told, and the notice period counts from there.
ANNOUNCING = ("scheduled", "reminder", "rescheduled", "deferred", "confirmed")


def run_id_of(update_ref: str) -> int | None:
    """'update-42' -> 42; None for anything else (the SRE's copies are 'update-42-sre')."""
    digits = update_ref.removeprefix("update-")
    return int(digits) if update_ref.startswith("update-") and digits.isascii() and digits.isdigit() else None


def newer_notice(notice: Notice, *, session: Session) -> Notice | None:
    """A later notice of the same update (higher sequence) that is pending or sent: it supersedes
    `notice`, which then must not be delivered (one delivery never carries two notices of one update)."""
    query = select(Notice).where(
        Notice.update_ref == notice.update_ref,
        col(Notice.sequence) > notice.sequence,
        col(Notice.state).in_([NoticeState.pending, NoticeState.sent]),
    )
    return session.exec(query.order_by(col(Notice.sequence).desc())).first()


def mark_superseded(notice: Notice, by: Notice | str | None, *, session: Session) -> None:
    """`by`: the later notice, or its idempotency key."""
    key = by.idempotency_key if isinstance(by, Notice) else by
    notice.state = NoticeState.superseded
    notice.next_attempt_at = None
    notice.last_error = f"superseded by {key}" if key else "superseded"
    session.add(notice)


def pending_of(update_ref: str, *, session: Session) -> Sequence[Notice]:
    query = select(Notice).where(Notice.update_ref == update_ref, Notice.state == NoticeState.pending)
    return session.exec(query.order_by(col(Notice.id))).all()


def retry_delay(failed_attempts: int) -> timedelta:
    return BACKOFF[min(max(failed_attempts, 1), len(BACKOFF)) - 1]


def _by_key(key: str, *, session: Session) -> Notice | None:
    return session.exec(select(Notice).where(Notice.idempotency_key == key)).first()
