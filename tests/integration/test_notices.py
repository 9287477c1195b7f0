"""Notice outbox against a real SMTP server (aiosmtpd on 127.0.0.1), on SQLite and PostgreSQL.

What a customer relies on: a notice exists exactly when its schedule change committed, survives a mail
server outage, and reaches them once; a refusal is reported instead of retried forever.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from flows.notify import deliver_pending, queue_for
from inventory.db import session_scope
from inventory.installation import installation_id
from inventory.models import AuditEvent, Customer
from inventory.outbox import Notice, NoticeState
from tasks.mail import (
    IDEMPOTENCY_HEADER,
    OutboxDirTransport,
    OutgoingMessage,
    SmtpTransport,
    message_id_for,
)
from tests.unit.test_templates import make_ctx

pytestmark = pytest.mark.smtp

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SENDER = "Upkeep <upkeep@vendor.example>"


@dataclass
class Recorder:
    """aiosmtpd handler: keeps what it accepted; `answer` (for DATA) and `refuse` (per RCPT) say no."""

    messages: list[EmailMessage] = field(default_factory=list)
    answer: str = "250 OK"
    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.answer.startswith("250"):
            parsed = message_from_bytes(envelope.content, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            self.messages.append(parsed)
        return self.answer

    def ids(self) -> Counter[str]:
        return Counter(str(message["Message-ID"]) for message in self.messages)


class SmtpServer:
    """A real SMTP server on a fixed free port that can be stopped and started again."""

    def __init__(self, **controller_options: Any) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.handler = Recorder()
        self.options = controller_options
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **self.options)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def transport(self, **options: Any) -> SmtpTransport:
        return SmtpTransport("127.0.0.1", self.port, timeout=5, **options)


def queue(
    session: Session, customer_id: int, count: int, *, first: int = 1, **overrides: Any
) -> list[Notice]:
    return [
        queue_for(
            make_ctx(update_ref=f"update-{n}", **overrides),
            customer_id=customer_id,
            session=session,
            stamp=T0,
        )
        for n in range(first, first + count)
    ]


def notices(engine: Engine) -> list[Notice]:
    with Session(engine) as session:
        return list(session.exec(select(Notice).order_by(col(Notice.id))).all())


def deliver(engine: Engine, transport: Any, now: datetime) -> Any:
    return deliver_pending(engine, transport, now=now, sender=SENDER, limit=100)


def test_notices_commit_or_roll_back_with_the_change_that_caused_them(engine: Engine, customer_id: int):
    with pytest.raises(RuntimeError, match="change failed"), session_scope(engine) as session:
        queue(session, customer_id, 5)
        raise RuntimeError("the schedule change failed")
    assert notices(engine) == []

    with session_scope(engine) as session:
        queue(session, customer_id, 5)
    rows = notices(engine)
    assert [row.idempotency_key for row in rows] == [f"update-{n}:scheduled:2" for n in range(1, 6)]
    assert {row.state for row in rows} == {NoticeState.pending}
    assert all(row.next_attempt_at == T0 and row.created_at == T0 for row in rows)


def test_smtp_down_then_up_delivers_each_notice_exactly_once(
    engine: Engine, customer_id: int, smtp: SmtpServer
):
    with session_scope(engine) as session:
        queue(session, customer_id, 5)
    smtp.stop()

    down = deliver(engine, smtp.transport(), T0)
    assert down.sent == [] and down.failed == [] and len(down.retrying) == 5
    assert f"127.0.0.1:{smtp.port}" in down.transport_error
    rows = notices(engine)
    assert [(row.state, row.attempts) for row in rows] == [(NoticeState.pending, 1)] * 5
    assert {row.next_attempt_at for row in rows} == {T0 + timedelta(seconds=30)}
    assert all(row.last_error for row in rows)

    assert deliver(engine, smtp.transport(), T0 + timedelta(seconds=10)).retrying == []  # backing off
    assert [row.attempts for row in notices(engine)] == [1] * 5

    smtp.start()
    up = deliver(engine, smtp.transport(), T0 + timedelta(seconds=31))
    assert len(up.sent) == 5 and up.retrying == [] and up.failed == [] and not up.transport_error
    keys = [row.idempotency_key for row in notices(engine)]
    with session_scope(engine) as session:
        installation = installation_id(session)  # two installations never share a Message-ID
    ids = {message_id_for(key, "vendor.example", installation): 1 for key in keys}
    assert smtp.handler.ids() == Counter(ids)
    rows = notices(engine)
    assert all(row.state == NoticeState.sent and row.attempts == 2 for row in rows)
    assert all(row.sent_at == T0 + timedelta(seconds=31) and row.next_attempt_at is None for row in rows)

    received = smtp.handler.messages[0]
    assert received[IDEMPOTENCY_HEADER] in keys
    assert "text/calendar" in [part.get_content_type() for part in received.walk()]
    assert received["To"] == "ops@acme.example, cto@acme.example"

    again = deliver(engine, smtp.transport(), T0 + timedelta(hours=2))
    assert again.sent == [] and again.retrying == []
    assert len(smtp.handler.messages) == 5


def test_a_permanent_refusal_fails_the_notice_reports_it_and_spares_the_rest(
    engine: Engine, customer_id: int, smtp: SmtpServer
):
    smtp.handler.refuse["gone@acme.example"] = "550 5.1.1 no such user"
    with session_scope(engine) as session:
        queue(session, customer_id, 1, first=1, recipients=("gone@acme.example",))
        queue(session, customer_id, 2, first=2)

    report = deliver(engine, smtp.transport(), T0)
    assert [failure.key for failure in report.failed] == ["update-1:scheduled:2"]
    failure = report.failed[0]
    assert failure.customer_id == customer_id and failure.recipients == ["gone@acme.example"]
    assert "550" in failure.error
    assert sorted(report.sent) == ["update-2:scheduled:2", "update-3:scheduled:2"]
    assert report.as_dict()["failed"][0]["key"] == "update-1:scheduled:2"

    refused = notices(engine)[0]
    assert refused.state == NoticeState.failed and refused.next_attempt_at is None and refused.attempts == 1
    assert deliver(engine, smtp.transport(), T0 + timedelta(days=1)).failed == []  # reported once
    assert len(smtp.handler.messages) == 2


def test_a_550_to_the_message_itself_is_permanent(engine: Engine, customer_id: int, smtp: SmtpServer):
    smtp.handler.answer = "550 5.7.1 message refused by policy"
    with session_scope(engine) as session:
        queue(session, customer_id, 1)
    report = deliver(engine, smtp.transport(), T0)
    assert len(report.failed) == 1 and "550 5.7.1" in report.failed[0].error
    assert notices(engine)[0].state == NoticeState.failed


def test_a_temporary_refusal_backs_off_and_goes_out_later(engine: Engine, customer_id: int, smtp: SmtpServer):
    smtp.handler.answer = "451 4.3.0 try again later"
    with session_scope(engine) as session:
        queue(session, customer_id, 2)

    now = T0
    for attempt, delay in enumerate([30, 120, 600, 3600, 3600], start=1):
        report = deliver(engine, smtp.transport(), now)
        assert len(report.retrying) == 2 and not report.transport_error  # about the message, not the server
        assert {(row.attempts, row.next_attempt_at) for row in notices(engine)} == {
            (attempt, now + timedelta(seconds=delay))
        }
        assert "451" in notices(engine)[0].last_error
        now += timedelta(seconds=delay)

    smtp.handler.answer = "250 OK"
    assert len(deliver(engine, smtp.transport(), now).sent) == 2
    assert len(smtp.handler.ids()) == 2


def test_a_login_failure_keeps_every_notice_pending_and_never_shows_the_password(
    engine: Engine, customer_id: int
):
    def refuse(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)

    server = SmtpServer(authenticator=refuse, auth_require_tls=False)
    server.start()
    try:
        with session_scope(engine) as session:
            queue(session, customer_id, 3)
        transport = server.transport(user="upkeep", password="s3cret-pw")
        report = deliver(engine, transport, T0)
    finally:
        server.stop()
    assert report.failed == [] and report.sent == [] and len(report.retrying) == 3
    assert "535" in report.transport_error
    assert all(row.state == NoticeState.pending and row.attempts == 1 for row in notices(engine))
    assert "s3cret-pw" not in repr(report) + "".join(row.last_error for row in notices(engine))


def test_queuing_the_same_notice_twice_keeps_one_row(engine: Engine, customer_id: int):
    with session_scope(engine) as session:
        first = queue(session, customer_id, 1)[0]
        assert queue(session, customer_id, 1)[0] is first
    with session_scope(engine) as session:
        assert queue(session, customer_id, 1)[0].id == first.id
    with session_scope(engine) as session:  # a new sequence is a new notice
        assert queue(session, customer_id, 1, sequence=3)[0].id != first.id
    assert len(notices(engine)) == 2


class LockWait:
    """Tells when a second transaction is blocked on a lock another one holds, by asking the database
    (PostgreSQL: its backend waits on a Lock) or, on SQLite, once its BEGIN IMMEDIATE is under way (it
    cannot finish while another writer is open). No sleep decides the outcome."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pid: int | None = None
        self.begun = threading.Event()
        self.thread: int | None = None

    def enter(self) -> None:
        self.thread = threading.get_ident()
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "before_cursor_execute", self._before)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE") and threading.get_ident() == self.thread:
            self.begun.set()

    def connected(self, session: Session) -> None:
        if self.engine.dialect.name == "postgresql":
            self.pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            self.begun.set()

    def until_blocked(self, timeout: float = 30) -> None:
        assert self.begun.wait(timeout), "the second writer never started its transaction"
        if self.engine.dialect.name != "postgresql":
            return
        deadline = time.monotonic() + timeout
        with self.engine.connect() as conn:
            while time.monotonic() < deadline:
                waits = conn.exec_driver_sql(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %(pid)s", {"pid": self.pid}
                ).scalar_one_or_none()
                if waits == "Lock":
                    return
                conn.rollback()  # a fresh snapshot of pg_stat_activity on the next read
                time.sleep(0.01)
        pytest.fail("the second writer never waited on the first one's lock")


def test_a_concurrent_duplicate_returns_the_row_and_keeps_the_callers_transaction(
    engine: Engine, customer_id: int
):
    """The second writer queues while the first has not committed: on PostgreSQL it waits on the unique
    index and recovers in a savepoint; on SQLite it waits for the write lock and finds the row."""
    outcome: dict[str, Any] = {}
    waiting = LockWait(engine)

    def second_writer() -> None:
        waiting.enter()
        with session_scope(engine) as session:
            waiting.connected(session)
            outcome["id"] = queue(session, customer_id, 1)[0].id
            session.add(AuditEvent(actor="test", action="after-duplicate", subject="x"))

    with session_scope(engine) as session:
        first = queue(session, customer_id, 1)[0]
        session.flush()
        thread = threading.Thread(target=second_writer)
        thread.start()
        waiting.until_blocked()  # the second writer reached the lock the first one holds...
        assert thread.is_alive()  # ...and stays behind it until the first transaction ends
    thread.join(timeout=30)
    assert outcome["id"] == first.id
    assert len(notices(engine)) == 1
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(AuditEvent)).one() == 1


class Overlap:
    """Makes two deliverers overlap for certain: the first one to send holds its first message (and
    the row it claimed) until the other has reached the claim too - on PostgreSQL, until the other has
    skipped the held row and sent another one; on SQLite, until the other is beginning its transaction,
    which cannot finish while the first one's is open."""

    def __init__(self, engine: Engine) -> None:
        self.postgres = engine.dialect.name == "postgresql"
        self.lock = threading.Lock()
        self.holder: int | None = None  # thread of the first deliverer to send
        self.holding = False
        self.other_reached = threading.Event()
        self.beginning: set[int] = set()  # threads inside a BEGIN IMMEDIATE (SQLite: waiting for the lock)
        if not self.postgres:
            event.listen(engine, "before_cursor_execute", self._before)
            event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            with self.lock:
                self.beginning.add(threading.get_ident())
                if self.holding and self.beginning - {self.holder}:
                    self.other_reached.set()

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("BEGIN IMMEDIATE"):
            with self.lock:
                self.beginning.discard(threading.get_ident())

    def transport(self, real: Any) -> Any:
        overlap = self

        class Gated:
            def send(self, message: OutgoingMessage) -> None:
                with overlap.lock:
                    first = overlap.holder is None
                    if first:
                        overlap.holder, overlap.holding = threading.get_ident(), True
                        if overlap.beginning - {overlap.holder}:  # already waiting for our lock
                            overlap.other_reached.set()
                if first:
                    reached = overlap.other_reached.wait(30)
                    overlap.holding = False
                    assert reached, "the second deliverer never reached the notices the first one held"
                real.send(message)
                if overlap.postgres and threading.get_ident() != overlap.holder:
                    overlap.other_reached.set()

        return Gated()


def test_two_deliverers_never_send_the_same_notice(engine: Engine, customer_id: int, smtp: SmtpServer):
    with session_scope(engine) as session:
        queue(session, customer_id, 8)
    overlap = Overlap(engine)
    reports: dict[str, Any] = {}

    def deliverer(name: str) -> None:
        reports[name] = deliver(engine, overlap.transport(smtp.transport()), T0)

    threads = [threading.Thread(target=deliverer, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert overlap.other_reached.is_set()  # they did overlap
    sent = [key for report in reports.values() for key in report.sent]
    assert sorted(sent) == sorted(row.idempotency_key for row in notices(engine))
    assert len(smtp.handler.messages) == 8 and set(smtp.handler.ids().values()) == {1}
    if overlap.postgres:  # both sent while the other held rows: SKIP LOCKED split the work
        assert all(report.sent for report in reports.values()), reports


class Crash(BaseException):
    """The process dies: nothing after this runs, the transaction is never committed."""


def test_a_crash_after_the_server_accepted_resends_a_recognisable_copy(
    engine: Engine, customer_id: int, smtp: SmtpServer
):
    """The documented at-least-once window, made visible: same Message-ID, same idempotency key."""
    with session_scope(engine) as session:
        queue(session, customer_id, 1)
    real = smtp.transport()

    class DiesAfterSending:
        def send(self, message: OutgoingMessage) -> None:
            real.send(message)
            raise Crash

    with pytest.raises(Crash):
        deliver(engine, DiesAfterSending(), T0)
    assert notices(engine)[0].state == NoticeState.pending
    assert len(deliver(engine, real, T0).sent) == 1
    first, copy = smtp.handler.messages
    assert first["Message-ID"] == copy["Message-ID"]
    assert first[IDEMPOTENCY_HEADER] == copy[IDEMPOTENCY_HEADER] == "update-1:scheduled:2"
    assert notices(engine)[0].state == NoticeState.sent


def test_the_outbox_dir_transport_writes_parseable_eml_files(
    engine: Engine, customer_id: int, tmp_path: Path
):
    with session_scope(engine) as session:
        queue(session, customer_id, 2)
        queue(session, customer_id, 1, first=3, kind="cancelled")
    outbox = OutboxDirTransport(tmp_path / "outbox")
    report = deliver(engine, outbox, T0)
    assert len(report.sent) == 3

    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == 3 and all(path.suffix == ".eml" for path in files)
    methods = []
    for path in files:
        parsed = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert path.stem == str(parsed["Message-ID"]).strip("<>")
        calendar = next(part for part in parsed.walk() if part.get_content_type() == "text/calendar")
        methods.append(calendar.get_param("method"))
        assert parsed.get_body(preferencelist=("plain",)) is not None
    assert sorted(methods) == ["CANCEL", "REQUEST", "REQUEST"]

    raw = files[0].read_bytes()
    resent = OutgoingMessage(
        str(message_from_bytes(raw)["Message-ID"]), "u@vendor.example", ("o@acme.example",), raw
    )
    outbox.send(resent)
    assert sorted((tmp_path / "outbox").iterdir()) == files  # a resend overwrites its own file


@pytest.mark.prefect
def test_the_flow_delivers_through_the_runtime_mailer(
    sqlite_engine: Engine, prefect_harness: None, smtp: SmtpServer, tmp_path: Path
):
    from flows import runtime as flow_runtime
    from flows.notify import deliver_notices

    with session_scope(sqlite_engine) as session:
        customer = Customer(name="Acme Corp", timezone="America/New_York")
        session.add(customer)
        session.flush()
        assert customer.id is not None
        queue(session, customer.id, 2)
    runtime = flow_runtime.Runtime(
        engine=sqlite_engine,
        fileserver=None,  # type: ignore[arg-type]  (delivery touches neither files nor nodes)
        ssh=None,  # type: ignore[arg-type]
        work_dir=tmp_path,
        mailer=smtp.transport(),
        mail_from=SENDER,
    )
    flow_runtime.configure(runtime)
    try:
        result = deliver_notices(limit=10)
    finally:
        flow_runtime.configure(None)
    assert sorted(result["sent"]) == ["update-1:scheduled:2", "update-2:scheduled:2"]
    assert result["failed"] == [] and result["transport_error"] == ""
    assert len(smtp.handler.ids()) == 2


def test_a_time_budget_stops_the_delivery_and_the_rest_go_next_call_oldest_first(
    engine: Engine, customer_id: int, smtp: SmtpServer
):
    """A slow mail server (each message takes 20 s of the injected clock) against a 30 s budget:
    the call claims no notice once the budget is spent, so it sends two and says it ran out of time;
    the three left stay pending and untouched (no attempt counted) and the next calls send them,
    oldest first, each once (#19: the dispatcher's delivery must not stretch its tick)."""
    with session_scope(engine) as session:
        queue(session, customer_id, 5)
    clock = [T0]
    real = smtp.transport()

    class Slow:
        def send(self, message: OutgoingMessage) -> None:
            real.send(message)
            clock[0] += timedelta(seconds=20)

    def within(transport: Any) -> Any:
        return deliver_pending(
            engine,
            transport,
            now=T0,
            sender=SENDER,
            limit=100,
            budget=timedelta(seconds=30),
            clock=lambda: clock[0],
        )

    first = within(Slow())
    assert first.sent == ["update-1:scheduled:2", "update-2:scheduled:2"] and first.out_of_time
    assert first.retrying == [] and first.failed == []
    rows = notices(engine)
    assert [(row.state, row.attempts) for row in rows] == [(NoticeState.sent, 1)] * 2 + [
        (NoticeState.pending, 0)
    ] * 3
    assert all(row.next_attempt_at == T0 for row in rows[2:])  # due as before: no backoff

    second = within(Slow())  # its own budget, from its own start
    assert second.sent == ["update-3:scheduled:2", "update-4:scheduled:2"] and second.out_of_time
    third = within(Slow())
    assert third.sent == ["update-5:scheduled:2"] and not third.out_of_time  # nothing left: done in time
    assert [m[IDEMPOTENCY_HEADER] for m in smtp.handler.messages] == [
        f"update-{n}:scheduled:2" for n in range(1, 6)
    ]
    assert set(smtp.handler.ids().values()) == {1}
    assert within(Slow()).sent == []


def test_without_a_budget_a_slow_mail_server_still_gets_every_notice(
    engine: Engine, customer_id: int, smtp: SmtpServer
):
    """No budget (`upkeep notices send`): the clock is never a reason to stop; `limit` is."""
    with session_scope(engine) as session:
        queue(session, customer_id, 3)
    clock = [T0]
    real = smtp.transport()

    class Slow:
        def send(self, message: OutgoingMessage) -> None:
            real.send(message)
            clock[0] += timedelta(hours=1)

    report = deliver_pending(engine, Slow(), now=T0, sender=SENDER, limit=2, clock=lambda: clock[0])
    assert len(report.sent) == 2 and not report.out_of_time
