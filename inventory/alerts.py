"""SRE alerts and on-call pages, queued in our database like customer notices.

An alert is written in the transaction of the change that causes it (a run failed, an update held) and
delivered later by the dispatcher tick (flows/alerts.py) to every channel: the Apprise URLs in
`UPKEEP_ALERT_URLS`, the SRE mailbox, and the people a page is addressed to (`targets`). `delivered`
lists the channels that took it, so a retry goes only to the ones that did not; a channel that is down
delays nothing but itself.

A page (on-call, flows/oncall.py) is the escalating part: who was paged at which level, when it
escalates next unless acknowledged, and who acknowledged it. Each level's message is an Alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, select

from inventory.outbox import retry_delay
from inventory.types import created_field, time_field

ERROR_CHARS = 2000


class AlertState(StrEnum):
    pending = "pending"
    sent = "sent"  # every channel took it


class Alert(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("key", name="uq_alert_key"),
        Index("ix_alert_due", "state", "next_attempt_at"),
    )
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=128)
    kind: str = Field(max_length=32)
    run_id: int | None = Field(default=None, index=True)
    customer: str = Field(default="", max_length=64)
    cluster: str = Field(default="", max_length=64)
    subject: str = Field(max_length=998)
    body_text: str = Field(sa_column=Column(Text, nullable=False))
    body_html: str = Field(sa_column=Column(Text, nullable=False))
    # Addresses or Apprise URLs of people this alert goes to besides the configured channels (pages).
    targets: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    delivered: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: AlertState = Field(default=AlertState.pending, max_length=16)
    attempts: int = 0
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False))
    next_attempt_at: datetime | None = time_field()
    created_at: datetime = created_field()
    sent_at: datetime | None = time_field()


class Page(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=128, unique=True)  # what it is about, e.g. "case:CASE-12": paged once
    reason: str = Field(sa_column=Column(Text, nullable=False))
    inform_vp: bool = False
    level: int = 0  # 0: on-call and team lead; 1..: the escalation chain, one step at a time
    paged: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    escalate_at: datetime | None = time_field()  # None once acknowledged or the chain is exhausted
    acked_at: datetime | None = time_field()
    acked_by: str = Field(default="")  # the user name `upkeep oncall ack` runs as: no limit (migration 0013)
    created_at: datetime = created_field()


def queue_alert(
    *,
    key: str,
    kind: str,
    subject: str,
    body_text: str,
    body_html: str,
    session: Session,
    now: datetime,
    run_id: int | None = None,
    customer: str = "",
    cluster: str = "",
    targets: Sequence[str] = (),
) -> Alert:
    """Add an alert to the caller's transaction; the same key again returns the row already there, also
    when another process queued it between this look and this insert (two dispatchers telling the same
    keyed alert in the same tick): the insert is a savepoint, and the loser reads the winner's row
    instead of raising IntegrityError out of the caller's tick."""
    existing = session.exec(select(Alert).where(Alert.key == key)).first()
    if existing is not None:
        return existing
    alert = Alert(
        key=key,
        kind=kind,
        run_id=run_id,
        customer=customer,
        cluster=cluster,
        subject=subject,
        body_text=body_text,
        body_html=body_html,
        targets=list(targets),
        next_attempt_at=now,
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(alert)
            session.flush()
    except IntegrityError:
        winner = session.exec(select(Alert).where(Alert.key == key)).first()
        if winner is None:
            raise
        return winner
    return alert


def claim_due(session: Session, now: datetime, *, hold: timedelta, limit: int) -> list[Alert]:
    """Pending alerts due at `now`, each claimed by moving its next attempt `hold` ahead with one
    conditional UPDATE (two dispatchers never send the same alert at once). Sending happens outside
    the transaction, so no database lock is held while a channel takes its time."""
    due = session.exec(
        select(Alert)
        .where(Alert.state == AlertState.pending, col(Alert.next_attempt_at) <= now)
        .order_by(col(Alert.next_attempt_at), col(Alert.id))
        .limit(limit)
    ).all()
    claimed = []
    for alert in due:
        won = session.execute(
            update(Alert)
            .where(col(Alert.id) == alert.id, col(Alert.next_attempt_at) == alert.next_attempt_at)
            .values(next_attempt_at=now + hold)
        )
        if won.rowcount == 1:  # type: ignore[attr-defined]
            session.refresh(alert)
            claimed.append(alert)
    return claimed


def renew_claim(session: Session, alert_id: int, claim: datetime, until: datetime) -> Alert | None:
    """Take the claim again right before sending: None when it is no longer ours (a slow delivery
    outlived it and another deliverer took the alert, maybe sent it already)."""
    won = session.execute(
        update(Alert)
        .where(
            col(Alert.id) == alert_id,
            col(Alert.state) == AlertState.pending,
            col(Alert.next_attempt_at) == claim,
        )
        .values(next_attempt_at=until)
    )
    if won.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Alert, alert_id, populate_existing=True)


def record_attempt(
    session: Session,
    alert_id: int,
    *,
    delivered: Sequence[str],
    errors: Sequence[str],
    now: datetime,
    claim: datetime | None = None,
) -> Alert | None:
    """One delivery attempt: the channels that took it are remembered; with errors, the rest are
    tried again after the notices' backoff. With `claim`, only while the claim is still ours (None
    otherwise: the channels that took it are still added, nothing else is changed)."""
    alert = session.get(Alert, alert_id, with_for_update=True, populate_existing=True)
    assert alert is not None
    if claim is not None and (alert.state != AlertState.pending or alert.next_attempt_at != claim):
        alert.delivered = list(dict.fromkeys([*alert.delivered, *delivered]))
        session.add(alert)
        return None
    alert.attempts += 1
    alert.delivered = list(dict.fromkeys([*alert.delivered, *delivered]))
    alert.last_error = "; ".join(errors)[:ERROR_CHARS]
    if errors:
        alert.next_attempt_at = now + retry_delay(alert.attempts)
    else:
        alert.state, alert.sent_at, alert.next_attempt_at = AlertState.sent, now, None
    session.add(alert)
    return alert
