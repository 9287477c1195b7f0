"""A slow mail server. Down, 4xx, 5xx and a refused login are covered by
tests/integration/test_notices.py; what is left is slowness: a server that answers late but within
the timeout, one that accepts the connection and never greets, and one that takes longer than the
timeout to answer DATA (the at-least-once window: the copy must be recognisable)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from inventory.db import session_scope
from inventory.models import Customer
from inventory.outbox import NoticeState
from tasks.mail import IDEMPOTENCY_HEADER, SmtpTransport
from tests.faults.netfaults import Blackhole
from tests.integration.test_notices import T0, Recorder, SmtpServer, deliver, notices, queue

pytestmark = [pytest.mark.faults, pytest.mark.smtp]


class SlowRecorder(Recorder):
    """Answers DATA `delay` seconds late (it has the whole message by then)."""

    delay: float = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def customer(sqlite_engine: Engine) -> int:
    with session_scope(sqlite_engine) as session:
        row = Customer(name="Acme Corp", timezone="America/New_York")
        session.add(row)
        session.flush()
        assert row.id is not None
        return row.id


@pytest.fixture
def slow_smtp() -> Any:
    server = SmtpServer()
    server.handler = SlowRecorder()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_slow_server_within_the_timeout_gets_each_notice_once(
    sqlite_engine: Engine, customer: int, slow_smtp: SmtpServer, record: Any
) -> None:
    slow_smtp.handler.delay = 0.8  # type: ignore[attr-defined]
    with session_scope(sqlite_engine) as session:
        queue(session, customer, 2)

    report = deliver(sqlite_engine, slow_smtp.transport(), T0)  # timeout 5 s

    assert len(report.sent) == 2 and not report.retrying and not report.transport_error
    assert set(slow_smtp.handler.ids().values()) == {1} and len(slow_smtp.handler.ids()) == 2
    assert deliver(sqlite_engine, slow_smtp.transport(), T0 + timedelta(hours=1)).sent == []
    record("SMTP", "slow (answers late, within the timeout): sent once")


def test_a_server_that_never_greets_times_out_and_every_notice_waits(
    sqlite_engine: Engine, customer: int, smtp_later: SmtpServer, record: Any
) -> None:
    with session_scope(sqlite_engine) as session:
        queue(session, customer, 3)
    with Blackhole() as hole:
        started = time.monotonic()
        report = deliver(sqlite_engine, SmtpTransport("127.0.0.1", hole.port, timeout=1), T0)
        took = time.monotonic() - started

    assert report.sent == [] and report.failed == [] and len(report.retrying) == 3
    assert "timed out" in report.transport_error
    assert took < 5, f"one timeout for the whole outbox, not one per notice (took {took:.1f} s)"
    assert {(row.state, row.attempts) for row in notices(sqlite_engine)} == {(NoticeState.pending, 1)}

    later = deliver(sqlite_engine, smtp_later.transport(), T0 + timedelta(minutes=1))
    assert len(later.sent) == 3
    assert set(smtp_later.handler.ids().values()) == {1} and len(smtp_later.handler.ids()) == 3
    record("SMTP", "tarpit (connects, never greets): timeout, all queued, later sent once")


def test_a_data_answer_slower_than_the_timeout_is_retried_as_a_recognisable_copy(
    sqlite_engine: Engine, customer: int, slow_smtp: SmtpServer, record: Any
) -> None:
    slow_smtp.handler.delay = 2.0  # type: ignore[attr-defined]
    with session_scope(sqlite_engine) as session:
        queue(session, customer, 1)

    first = deliver(sqlite_engine, SmtpTransport("127.0.0.1", slow_smtp.port, timeout=1), T0)
    assert first.sent == [] and "timed out" in first.transport_error
    assert notices(sqlite_engine)[0].state == NoticeState.pending  # we cannot know it arrived
    time.sleep(1.5)  # the server finishes its side of the first attempt

    slow_smtp.handler.delay = 0.0  # type: ignore[attr-defined]
    later = deliver(sqlite_engine, slow_smtp.transport(), T0 + timedelta(minutes=1))

    assert len(later.sent) == 1
    (row,) = notices(sqlite_engine)
    assert row.state == NoticeState.sent and row.attempts == 2
    copies = slow_smtp.handler.messages
    assert 1 <= len(copies) <= 2
    # A second copy, if the server kept the first, carries the same Message-ID and key: receivers
    # that deduplicate on Message-ID drop it, and a person can tell (notify.py's at-least-once window).
    assert len(Counter(str(m["Message-ID"]) for m in copies)) == 1
    assert {m[IDEMPOTENCY_HEADER] for m in copies} == {row.idempotency_key}
    record(
        "SMTP",
        "DATA answer slower than the timeout: retried, same Message-ID (at-least-once)",
        detail=f"{len(copies)} cop{'y' if len(copies) == 1 else 'ies'} received",
    )


@pytest.fixture
def smtp_later() -> Any:
    server = SmtpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
