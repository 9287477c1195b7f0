"""Adversarial pass adv58 on h-signal (notice failure signals): the SMTP password in the places the change
did not scrub, and what the rest of the product does with a 'delivery unknown' notice. Real aiosmtpd
servers, the real deliverer and schedule changes, both databases."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.notify import deliver_pending
from flows.run_notices import VendorTerms
from flows.schedule import cancel_update, schedule_update
from inventory.db import session_scope
from inventory.outbox import Notice, NoticeState
from tasks.mail import SmtpTransport
from tests.integration.test_notice_signals import SECRET
from tests.integration.test_notices import SENDER, T0, Recorder, SmtpServer, queue
from tests.support.update_world import CLUSTER, TARGET, World

pytestmark = pytest.mark.smtp
ENCODED = base64.b64encode(f"\0upkeep\0{SECRET}".encode()).decode()


def _notices(engine: Engine) -> list[Notice]:
    with session_scope(engine) as session:
        return list(session.exec(select(Notice).order_by(col(Notice.id))).all())


class _Raising:
    """The real SMTP transport behind an adapter with a bug: every message raises `error` (no SMTP
    answer); `scrub` is the real transport's."""

    def __init__(self, real: Any, error: Exception) -> None:
        self.real, self.error = real, error

    def scrub(self, text: str) -> str:
        return str(self.real.scrub(text))

    def send(self, message: Any) -> Any:
        raise self.error


def _account() -> SmtpTransport:
    """The configured SMTP account (never reached: the adapter fails before it connects)."""
    return SmtpTransport("127.0.0.1", 9, user="upkeep", password=SECRET, timeout=5)


def test_an_unexpected_exception_quoting_the_smtp_password_does_not_put_it_in_the_deliverers_log(
    engine: Engine, customer_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    """h-signal scrubs the exception's text in last_error and in the alert, and the alert sends the SRE
    to "the deliverer's log" for the traceback: `log.exception` wrote that traceback with the exception's
    message as it is, SMTP password and AUTH PLAIN base64 included, to the worker's and `notices send`'s
    log (journald, Prefect's log shipping). The traceback stays (the alert points at it), scrubbed."""
    with session_scope(engine) as session:
        queue(session, customer_id, 1, recipients=("ops@acme.example",))
    error = RuntimeError(f"adapter state lost\n(auth upkeep:{SECRET} {ENCODED})")
    adapter = _Raising(_account(), error)
    with caplog.at_level(logging.DEBUG):
        deliver_pending(engine, adapter, now=T0, sender=SENDER)

    (row,) = _notices(engine)
    assert row.state == NoticeState.pending and SECRET not in row.last_error
    logged = caplog.text  # each record formatted as a handler would, tracebacks included
    assert "RuntimeError: adapter state lost" in logged and "Traceback" in logged, logged
    assert SECRET not in logged and ENCODED not in logged, logged


def test_an_unexpected_exception_whose_text_is_cut_at_500_characters_leaks_no_part_of_the_password(
    engine: Engine, customer_id: int
) -> None:
    """`_unexpected` folded the text to one line of at most 500 characters and scrubbed it after: a
    password straddling the cut was no longer whole, so the scrub missed it and its first characters
    stayed in last_error (and the alert). Scrubbed first, then cut."""
    with session_scope(engine) as session:
        queue(session, customer_id, 1, recipients=("ops@acme.example",))
    error = ValueError("config dump: " + "x" * 466 + f" password={SECRET} user=upkeep")
    adapter = _Raising(_account(), error)
    deliver_pending(engine, adapter, now=T0, sender=SENDER)

    (row,) = _notices(engine)
    assert row.last_error.startswith("unexpected ValueError: config dump"), row.last_error
    assert SECRET[:6] not in row.last_error, row.last_error


class _LongAnswer(Recorder):
    """Takes the message, answers the end of DATA with a 250 in a line over 8 kB: 'delivery unknown'."""

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        await super().handle_DATA(server, session, envelope)
        return "250 2.0.0 Ok: queued as " + "Q" * 9000


def test_an_update_whose_scheduled_notice_is_of_unknown_delivery_still_tells_the_customer_its_cancel(
    engine: Engine, tmp_path: Path
) -> None:
    """The 'scheduled' (with its calendar invite) went to the mail server whole and the server kept it;
    its answer was unreadable, so the notice is 'delivery unknown': failed, the run not marked told.
    The SRE then cancels the update. `cancel_update` took `told_at is None` for "never announced" and
    withdrew it in silence: a customer who may well have the announcement and the invite in their
    calendar is never told it is off, and keeps the window free for an update that never comes. A
    notice that may have arrived must be followed by the cancellation (a 'cancelled' about an update
    they did not hear of is a puzzle; a silent calendar entry is a false promise)."""
    world = World(engine, tmp_path)
    with session_scope(engine) as session:
        run = schedule_update(
            CLUSTER, TARGET, now=world.clock(), requested_by="sre", session=session,
            vendor=VendorTerms.from_runtime(world.runtime),
        )  # fmt: skip
        run_id = run.id
    assert run_id is not None
    server = SmtpServer()
    server.handler = _LongAnswer()
    server.start()
    try:
        deliver_pending(engine, server.transport(), now=world.clock(), sender=SENDER)
    finally:
        server.stop()
    assert len(server.handler.messages) == 1  # the customer's server has it
    (scheduled,) = _notices(engine)
    assert scheduled.state == NoticeState.failed and "delivery unknown" in scheduled.last_error

    with session_scope(engine) as session:
        cancel_update(
            run_id, now=world.clock(), reason="customer migrates first", session=session,
            vendor=VendorTerms.from_runtime(world.runtime),
        )  # fmt: skip
    kinds = [(n.kind, n.state) for n in _notices(engine)]
    assert kinds == [("scheduled", NoticeState.failed), ("cancelled", NoticeState.pending)], kinds


def test_the_delivery_unknown_alert_neither_says_not_delivered_nor_sends_the_sre_to_fix_the_contact(
    engine: Engine, tmp_path: Path
) -> None:
    """The 'delivery unknown' alert's headline says the outcome is unknown, but its detail still opened
    with "Not delivered to: ops@...", the refusal's line, about a message the customer's server kept;
    and its action, built from the bounce's, told the SRE to "correct the contact (or portal user) in
    the inventory YAML" when the server took the address and only its answer was unreadable. The SRE
    who checks and finds it arrived is left with a false line and a needless fix."""
    from tests.integration.test_notice_signals import _alerts

    world = World(engine, tmp_path)
    with session_scope(engine) as session:
        schedule_update(
            CLUSTER, TARGET, now=world.clock(), requested_by="sre", session=session,
            vendor=VendorTerms.from_runtime(world.runtime),
        )  # fmt: skip
    server = SmtpServer()
    server.handler = _LongAnswer()
    server.start()
    try:
        deliver_pending(engine, server.transport(), now=world.clock(), sender=SENDER)
    finally:
        server.stop()
    (alert,) = _alerts(engine)
    text = " ".join(alert.body_text.split())
    assert "delivery unknown" in text.lower(), text
    assert "Not delivered to" not in text and "correct the contact" not in text, text
    assert "ops@fakeco.example" in text, text


@pytest.mark.xfail(
    strict=True,
    reason="Product question (adv58 on h-signal): 'every message of a call failing on an unexpected "
    "exception is one outage alert' is decided per call, and needs two messages in it. The dispatcher's "
    "tick cut by its time budget after one message (an adapter that hangs, then raises), `notices send "
    "--limit 1`, or two deliverers at once each claiming one row (SKIP LOCKED; SQLite's lock handing rows "
    "to alternate callers) see one message per call: each notice of the one outage gets its own 'stuck' "
    "alert (three here, one per waiting notice: 100 for a full outbox), and no 'mail server unusable'. "
    "Should the outage be told from the outbox (other pending notices failing with the same exception "
    "kind since the last one sent) rather than from one call, or the per-notice alert be keyed on the "
    "exception kind (one per kind while it lasts)?",
)
def test_an_unexpected_exception_at_every_message_is_one_alert_when_each_call_gets_one_message(
    engine: Engine, customer_id: int
) -> None:
    from datetime import timedelta

    from tests.integration.test_notice_signals import _alerts

    with session_scope(engine) as session:
        queue(session, customer_id, 3, recipients=("ops@acme.example",))
    clock = [T0]

    class Hanging(_Raising):
        def send(self, message: Any) -> Any:
            clock[0] += timedelta(minutes=1)  # it hangs a minute, then raises
            raise self.error

    adapter = Hanging(_account(), RuntimeError("adapter state lost"))
    now = T0
    for _ in range(3 * 8):  # a tick when the earliest is due, each cut by its 30 s budget
        clock[0] = max(clock[0], now)
        report = deliver_pending(
            engine, adapter, now=now, sender=SENDER, budget=timedelta(seconds=30), clock=lambda: clock[0]
        )
        assert report.out_of_time or len(report.retrying) == 1, report
        now = min(n.next_attempt_at for n in _notices(engine) if n.next_attempt_at is not None)
    assert all(n.attempts >= 6 for n in _notices(engine))
    kinds = [(a.kind, a.key) for a in _alerts(engine)]
    assert [kind for kind, _ in kinds] == ["mail-unusable"], kinds


HOSTILE = "550 5.1.1 \x1b]0;owned\x07\x1b[2J[bold red]mailbox fine, ignore this[/bold red] [link=http://127.0.0.1:9/x]fix[/link]"


def test_notices_send_prints_a_refusal_s_hostile_answer_as_plain_inert_text(tmp_path: Path) -> None:
    """The real `upkeep notices send` against a server whose refusal carries terminal escapes (set the
    window title, clear the screen) and Rich markup: h-signal prints its new 'delivery unknown' lines
    with markup off, but the 'refused for good' line next to it printed the server's text through Rich
    markup (the tags rendered, the text between them lost) and let ESC through to the operator's
    terminal. One line, the answer's characters escaped, its brackets as they are."""
    from tests.integration.test_calendar_cli import imported
    from tests.support.cli import no_traceback, upkeep_here

    home = imported(tmp_path)
    assert upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0").returncode == 0
    server = SmtpServer()
    server.handler.refuse["ops@acme.example"] = HOSTILE
    server.start()
    try:
        env = {"UPKEEP_SMTP_HOST": "127.0.0.1", "UPKEEP_SMTP_PORT": str(server.port)}
        result = upkeep_here(home, "notices", "send", **env)
    finally:
        server.stop()
    no_traceback(result)
    assert result.returncode == 1, (result.stdout, result.stderr)
    out = result.stdout + result.stderr
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "[bold red]mailbox fine, ignore this[/bold red]" in out, out


def test_two_deliverers_at_once_against_unreadable_answers_send_each_notice_once_and_alert_it_once(
    engine: Engine, customer_id: int
) -> None:
    """`notices send` and the dispatcher delivering at the same moment, to a server whose every final
    answer is unreadable: each notice is claimed by one of them (SKIP LOCKED / SQLite's write lock),
    handed over once, marked 'delivery unknown' once, and alerted once (held)."""
    import threading

    from tests.integration.test_notice_signals import _alerts

    with session_scope(engine) as session:
        queued = queue(session, customer_id, 6, recipients=("ops@acme.example",))
    server = SmtpServer()
    server.handler = _LongAnswer()
    server.start()
    reports: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def deliver() -> None:
        try:
            start.wait()
            reports.append(deliver_pending(engine, server.transport(), now=T0, sender=SENDER))
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert errors == []
    assert sorted(server.handler.ids().values()) == [1] * 6, server.handler.ids()
    unknown = sorted(f.key for report in reports for f in report.unknown)
    assert unknown == sorted(n.idempotency_key for n in queued)
    assert {n.state for n in _notices(engine)} == {NoticeState.failed}
    assert sorted(a.key for a in _alerts(engine)) == sorted(f"notice-{n.id}:unknown" for n in queued)


@pytest.mark.xfail(
    strict=True,
    reason="Product question (adv58 on h-signal): a relay whose every final answer is unreadable (a queue-id "
    "plugin answering in a 9 kB line) turns, in one call, every due notice into 'delivery unknown': each is "
    "handed over, taken out of the queue for good (never resent once the relay is fixed) and alerted on its "
    "own (six alerts here, one per notice of a full outbox). After the first unknown answer of a call, "
    "should the deliverer stop handing that server messages (the rest 'not tried', retried at the next "
    "call, one unknown per call at most) and tell it as one outage?",
)
def test_a_server_answering_every_message_unreadably_loses_at_most_one_notice_per_call(
    engine: Engine, customer_id: int
) -> None:
    from tests.integration.test_notice_signals import _alerts

    with session_scope(engine) as session:
        queue(session, customer_id, 6, recipients=("ops@acme.example",))
    server = SmtpServer()
    server.handler = _LongAnswer()
    server.start()
    try:
        report = deliver_pending(engine, server.transport(), now=T0, sender=SENDER)
    finally:
        server.stop()
    assert len(report.unknown) == 1, [f.key for f in report.unknown]
    assert [n.state for n in _notices(engine)].count(NoticeState.pending) == 5
    assert len(_alerts(engine)) == 1


class _Unprintable(Exception):
    """An exception whose text cannot be made (its __str__ reads an attribute its raiser never set, as
    some libraries' do when built with other arguments)."""

    def __str__(self) -> str:
        return f"{self.detail}"  # type: ignore[attr-defined]


class _Poison(_Raising):
    """Fails the poison recipient's messages with `error`; the others go out through the real server."""

    def send(self, message: Any) -> Any:
        if "poison@acme.example" in message.recipients:
            raise self.error
        return self.real.send(message)


def test_an_unexpected_exception_whose_text_cannot_be_made_does_not_stop_the_queue(
    engine: Engine, customer_id: int, smtp: SmtpServer
) -> None:
    """h-signal turned the exception into text with str(exc) inside the handler meant to keep one bad
    notice from blocking the rows behind it: an exception whose __str__ itself raises escaped that
    handler, the claim rolled back, the whole call failed, and the next call failed at the same oldest
    notice, for ever: no notice delivered, no alert (the tick itself crashed). It is one more unexpected
    failure of that notice, named by its kind; the other notice goes out."""
    with session_scope(engine) as session:
        queue(session, customer_id, 1, recipients=("poison@acme.example",))
        queue(session, customer_id, 1, first=2, recipients=("ops@acme.example",))
    adapter = _Poison(smtp.transport(), _Unprintable())
    report = deliver_pending(engine, adapter, now=T0, sender=SENDER)

    poison, other = _notices(engine)
    assert other.state == NoticeState.sent and len(smtp.handler.messages) == 1, report
    assert poison.state == NoticeState.pending and poison.attempts == 1, poison
    assert poison.last_error.startswith("unexpected _Unprintable"), poison.last_error


def test_a_deliverer_killed_between_the_sixth_failed_attempt_and_its_alert_alerts_once_later(
    engine: Engine, customer_id: int, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the deliverer after the 6th unexpected failure of a notice was committed and before its
    alert was queued (h-signal queues it in a transaction of its own, after the call): the next attempt
    asks again (attempts >= 6) and queues it; later attempts queue nothing more (held)."""
    import flows.notify as notify
    from tests.integration.test_notice_signals import _alerts
    from tests.support.update_world import Killed

    with session_scope(engine) as session:
        queue(session, customer_id, 1, recipients=("poison@acme.example",))
        queue(session, customer_id, 1, first=2, recipients=("ops@acme.example",))
    adapter = _Poison(smtp.transport(), RuntimeError("adapter state lost"))
    real = notify._alert_undelivered

    def killed(*args: Any, **kwargs: Any) -> None:
        raise Killed

    now = T0
    for attempt in range(1, 10):
        with monkeypatch.context() as patch:
            if attempt == 6:  # the process dies right where the alert would be queued
                patch.setattr(notify, "_alert_undelivered", killed)
            try:
                deliver_pending(engine, adapter, now=now, sender=SENDER)
            except Killed:
                assert attempt == 6
        poison = _notices(engine)[0]
        assert poison.attempts == attempt and notify._alert_undelivered is real
        assert [a.key for a in _alerts(engine)] == ([] if attempt <= 6 else [f"notice-{poison.id}:stuck"])
        assert poison.next_attempt_at is not None
        now = poison.next_attempt_at


def test_notices_send_json_keeps_a_login_refusal_quoting_the_password_out_of_its_output(
    tmp_path: Path,
) -> None:
    """The real `upkeep notices send --json` against a server that refuses the login quoting the
    credentials it got (plain and AUTH PLAIN base64) in its 535: the JSON document (transport_error),
    the error line and the notice's note in `notices list --json` carry neither (held)."""
    import json

    from aiosmtpd.smtp import AuthResult

    from tests.integration.test_calendar_cli import imported
    from tests.support.cli import no_traceback, upkeep_here

    def refuse(server: object, session: object, envelope: object, mechanism: str, data: object) -> AuthResult:
        said = f"{data.login.decode()}:{data.password.decode()}"  # type: ignore[attr-defined]
        plain = base64.b64encode(f"\0{said.replace(':', chr(0), 1)}".encode()).decode()
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad {said} ({plain})")

    home = imported(tmp_path)
    assert upkeep_here(home, "schedule", "acme-c1", "--to", "9.9.0").returncode == 0
    server = SmtpServer(auth_require_tls=False, authenticator=refuse)
    server.start()
    env = {
        "UPKEEP_SMTP_HOST": "127.0.0.1",
        "UPKEEP_SMTP_PORT": str(server.port),
        "UPKEEP_SMTP_USER": "upkeep",
        "UPKEEP_SMTP_PASSWORD": SECRET,
    }
    try:
        result = upkeep_here(home, "notices", "send", "--json", **env)
    finally:
        server.stop()
    no_traceback(result)
    document = json.loads(result.stdout)
    assert "535" in document["transport_error"], document
    listed = upkeep_here(home, "notices", "list", "--json", **env)
    for text in (result.stdout, result.stderr, listed.stdout):
        assert SECRET not in text and ENCODED not in text, text
