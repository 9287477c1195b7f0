"""Adversarial pass on the refused-notice alert (branch h-bounce): a real aiosmtpd server, the real
deliverer, alerts posted to a real local HTTP receiver (Apprise json://)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.alerts import deliver_alerts
from flows.integrity import recheck
from flows.notify import deliver_pending
from flows.run_notices import VendorTerms
from flows.runtime import Runtime
from flows.schedule import schedule_update
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import Customer, UpgradeRun
from inventory.outbox import NoticeState
from tasks.alerts import AppriseChannel
from tasks.fileserver import HttpFileServer
from tasks.ssh import SshSettings
from tests.integration.test_notices import SENDER, T0, SmtpServer, notices, queue
from tests.integration.webhook import WebhookReceiver
from tests.support.update_world import CLUSTER, TARGET, World

pytestmark = pytest.mark.smtp
CONTACT = "ops@fakeco.example"  # tests/support/update_world.py's only contact
REFUSAL = "550 5.1.1 <ops@fakeco.example>: Recipient address rejected: User unknown"


def _alerts(engine: Engine) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert).order_by(col(Alert.id))).all())


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_a_refused_scheduled_notice_on_a_0h_contract_does_not_claim_the_update_cannot_start(
    sqlite_engine: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    """A contract of 0 h notice (accepted by the inventory: scheduling/validity.py "a 0 h contract needs
    no telling first") lets the never-told update start at its slot. The alert said "it cannot start",
    so the SRE would think nothing happens to a customer who never heard of it."""
    world = World(sqlite_engine, tmp_path)
    with session_scope(sqlite_engine) as session:
        (customer,) = session.exec(select(Customer)).all()
        customer.notice_hours_product = 0
        session.add(customer)
    smtp.handler.refuse[CONTACT] = REFUSAL
    with session_scope(sqlite_engine) as session:
        run = schedule_update(
            CLUSTER, TARGET, now=world.clock(), requested_by="sre", session=session,
            vendor=VendorTerms.from_runtime(world.runtime),
        )  # fmt: skip
        run_id = run.id
    deliver_pending(sqlite_engine, smtp.transport(), now=world.clock(), sender=SENDER)

    (alert,) = _alerts(sqlite_engine)
    # What really happens: at its slot the re-check finds nothing wrong, and the update starts untold.
    with session_scope(sqlite_engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.slot_start is not None and run.told_at is None
        outcome = recheck(run, now=run.slot_start, session=session, actor="t", plan_only=True)
    assert outcome.action == "valid"
    body = _flat(alert.body_text)
    assert "cannot start" not in body
    assert f"update-{run_id} starts at its slot all the same" in body


def test_one_of_several_recipients_refused_for_good_alerts_naming_that_address_only(
    engine: Engine, customer_id: int, smtp: SmtpServer
) -> None:
    """The others accept, so the notice is sent (retrying would mail them twice), but the refused
    address used to be only a log line: that contact silently never heard."""
    smtp.handler.refuse["gone@acme.example"] = "550 5.1.1 <gone@acme.example>: no such user"
    with session_scope(engine) as session:
        (notice,) = queue(session, customer_id, 1, recipients=("ops@acme.example", "gone@acme.example"))

    for hours in (0, 1):
        deliver_pending(engine, smtp.transport(), now=T0 + timedelta(hours=hours), sender=SENDER)

    assert notices(engine)[0].state == NoticeState.sent and len(smtp.handler.messages) == 1
    (alert,) = _alerts(engine)
    assert alert.key == f"notice-{notice.id}:refused-some"
    assert "'scheduled' notice of update-1 not delivered to every recipient" in alert.subject
    body = _flat(alert.body_text)
    assert "Not delivered to: gone@acme.example " in body
    assert "550 5.1.1 <gone@acme.example" in body or "550 5.1.1 ‹gone@acme.example" in body
    assert "Delivered to: ops@acme.example" in body


def test_a_notice_refused_with_4xx_at_every_attempt_alerts_once_when_it_has_been_stuck_for_long(
    engine: Engine, customer_id: int, smtp: SmtpServer
) -> None:
    """A mailbox that answers 452 (over quota) forever kept the notice pending for good, retried hourly,
    while its update slid on untold: no alert ever. Now one, once it has failed for a while."""
    smtp.handler.refuse["ops@acme.example"] = "452 4.2.2 mailbox over quota"
    with session_scope(engine) as session:
        (notice,) = queue(session, customer_id, 1, recipients=("ops@acme.example",))

    now = T0
    for _ in range(12):  # every retry as soon as it is due: 30 s, 2 min, 10 min, then hourly
        deliver_pending(engine, smtp.transport(), now=now, sender=SENDER)
        (row,) = notices(engine)
        assert row.state == NoticeState.pending and row.next_attempt_at is not None
        now = row.next_attempt_at

    alerts = _alerts(engine)
    assert [a.key for a in alerts] == [f"notice-{notice.id}:stuck"]
    body = _flat(alerts[0].body_text)
    assert "452 4.2.2 mailbox over quota" in body and "still retried" in body


def test_the_alert_channel_down_when_the_notice_fails_loses_nothing_and_blocks_no_notice(
    engine: Engine, customer_id: int, smtp: SmtpServer, tmp_path: Path
) -> None:
    """The json:// receiver is not there (connection refused) when the refusal is recorded: the notice is
    failed, the next notice still goes out, and the alert is posted once the receiver is back."""
    smtp.handler.refuse["gone@acme.example"] = "550 5.1.1 no such user"
    with session_scope(engine) as session:
        queue(session, customer_id, 1, recipients=("gone@acme.example",))
        queue(session, customer_id, 1, first=2, recipients=("ops@acme.example",))
    receiver = WebhookReceiver()  # its port is chosen, nothing listens yet
    runtime = Runtime(
        engine=engine,
        fileserver=HttpFileServer(url="https://127.0.0.1:9", user="u", password="p"),
        ssh=SshSettings(known_hosts=tmp_path / "kh", key_path=tmp_path / "key"),
        work_dir=tmp_path,
        mailer=smtp.transport(),
        alert_channels=(AppriseChannel(receiver.url, timeout=2),),
        clock=lambda: T0,
    )

    deliver_pending(engine, smtp.transport(), now=T0, sender=SENDER)
    down = deliver_alerts(runtime, now=T0)
    assert [n.state for n in notices(engine)] == [NoticeState.failed, NoticeState.sent]
    assert down.sent == [] and len(down.retrying) == 1

    receiver.start()
    try:
        up = deliver_alerts(runtime, now=T0 + timedelta(hours=1))
        again = deliver_alerts(runtime, now=T0 + timedelta(hours=2))
    finally:
        receiver.stop()
    assert up.sent == down.retrying and again.sent == []
    (posted,) = receiver.received
    assert "'scheduled' notice of update-1 not delivered" in posted["title"]


KILLED_BETWEEN_MARKING_AND_COMMIT = """
import os, signal, sys
from datetime import datetime
import flows.alerts
from flows.notify import deliver_pending
from inventory.db import make_engine
from tasks.mail import SmtpTransport

queue_alert = flows.alerts.alert_sre

def then_die(*args, **kwargs):  # the alert queued and the notice marked failed, not committed
    queue_alert(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

flows.alerts.alert_sre = then_die
url, schema, port, now = sys.argv[1], sys.argv[2], int(sys.argv[3]), datetime.fromisoformat(sys.argv[4])
engine = make_engine(url, schema=schema) if schema else make_engine(url)
deliver_pending(engine, SmtpTransport("127.0.0.1", port, timeout=5), now=now, sender="upkeep@vendor.example")
"""


def test_a_deliverer_killed_between_marking_failed_and_committing_leaves_one_alert_after_the_retry(
    engine: Engine, customer_id: int, smtp: SmtpServer
) -> None:
    """kill -9 of a real process after the notice is marked failed and its alert queued, before the
    commit: both roll back together; the next delivery fails it again with the same attempt number,
    so the SRE gets one alert, not none and not two."""
    import os
    import subprocess
    import sys

    smtp.handler.refuse["gone@acme.example"] = "550 5.1.1 no such user"
    with session_scope(engine) as session:
        (notice,) = queue(session, customer_id, 1, recipients=("gone@acme.example",))
    url = engine.url.render_as_string(hide_password=False)
    schema = ""  # the test's own PostgreSQL schema (tests/support/databases.py)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = str(conn.execute(text("SELECT current_schema()")).scalar())
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_BETWEEN_MARKING_AND_COMMIT,
            url,
            schema,
            str(smtp.port),
            T0.isoformat(),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr
    (row,) = notices(engine)
    assert row.state == NoticeState.pending and row.attempts == 0 and _alerts(engine) == []

    deliver_pending(engine, smtp.transport(), now=T0, sender=SENDER)
    deliver_pending(engine, smtp.transport(), now=T0 + timedelta(hours=1), sender=SENDER)
    assert notices(engine)[0].state == NoticeState.failed
    assert [a.key for a in _alerts(engine)] == [f"notice-{notice.id}:failed:1"]


def test_a_hostile_refusal_reaches_the_alert_as_one_bounded_line_naming_no_other_customer(
    engine: Engine, smtp: SmtpServer
) -> None:
    """The server's 5xx to DATA is several lines with ANSI escapes, a bidi override and 20 kB of text
    (in lines smtplib takes: one over 8192 characters becomes its own '500 Line too long'); the same
    connection then carries another customer's notice. The alert of the first is one line
    of at most 500 characters, with no raw control character, and names no address of the second."""
    from tests.integration.test_notices import Recorder

    with session_scope(engine) as session:
        ids = []
        for name in ("Acme Corp", "Globex"):
            customer = Customer(name=name, timezone="UTC")
            session.add(customer)
            session.flush()
            ids.append(customer.id)
        queue(session, ids[0], 1, recipients=("ops@acme.example",))
        queue(session, ids[1], 1, first=2, recipients=("ops@globex.example", "cto@globex.example"))

    class Hostile(Recorder):
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            if "ops@acme.example" in envelope.rcpt_tos:  # type: ignore[attr-defined]
                long = "".join(f"550-{'x' * 5000}\r\n" for _ in range(4))  # smtplib reads 8192 a line
                return f"550-5.7.1 \x1b[31mrejected\x1b[0m \u202eevil\r\n{long}550 end"
            return await super().handle_DATA(server, session, envelope)

    server = SmtpServer(enable_SMTPUTF8=True)
    server.handler = Hostile()
    server.start()
    try:
        deliver_pending(engine, server.transport(), now=T0, sender=SENDER)
    finally:
        server.stop()

    assert [n.state for n in notices(engine)] == [NoticeState.failed, NoticeState.sent]
    (alert,) = _alerts(engine)
    cause = next(line for line in alert.body_text.splitlines() if line.startswith("Cause:"))
    assert len(cause) <= len("Cause: ") + 500 and "rejected" in cause and "\\x1b" in cause
    assert not any(c in alert.body_text + alert.subject for c in "\x1b\u202e\r")
    assert "globex" not in (alert.body_text + alert.body_html + alert.subject).lower()


@pytest.mark.parametrize("ref", ["case:CASE-7", "portal-user-3-20261123120000000000"])
def test_the_command_the_alert_names_for_a_notice_of_no_update_is_one_the_cli_takes(
    sqlite_engine: Engine, smtp: SmtpServer, ref: str
) -> None:
    """A case's or a portal welcome's notice refused for good: the alert said to run
    `upkeep notices list --update case:CASE-7`, which the CLI refuses ("expected an update id such as
    update-42"), so the SRE's first step was an error."""
    import re

    from flows.schedule import parse_update_ref
    from inventory.outbox import queue_notice

    smtp.handler.refuse["gone@acme.example"] = "550 5.1.1 no such user"
    with session_scope(sqlite_engine) as session:
        customer = Customer(name="Acme Corp", timezone="UTC")
        session.add(customer)
        session.flush()
        assert customer.id is not None
        queue_notice(
            update_ref=ref, kind="case-escalated", sequence=0, customer_id=customer.id,
            recipients=["gone@acme.example"], subject="s", body_text="t", body_html="<p>t</p>",
            session=session, now=T0,
        )  # fmt: skip
    deliver_pending(sqlite_engine, smtp.transport(), now=T0, sender=SENDER)

    (alert,) = _alerts(sqlite_engine)
    commands = re.findall(r"`(upkeep notices list[^`]*)`", alert.body_text)
    assert commands, alert.body_text
    for command in commands:
        if "--update" in command:
            parse_update_ref(command.split("--update", 1)[1].split()[0])  # what the CLI does with it


def test_a_mail_server_that_refuses_our_sender_for_hours_alerts_the_sre_once_for_every_notice(
    engine: Engine, customer_id: int
) -> None:
    """550 to MAIL FROM (the relay no longer takes our sender; a rotated SMTP password is alike: 535
    at login) is about the server, not a message: every notice stays pending and is retried for ever.
    The tick only logged it, so no customer was told of anything and nobody heard. Now one alert, once
    the oldest notice has been tried as often as a stuck one, not one per notice."""
    from tests.integration.test_notices import Recorder

    class NoSender(Recorder):
        async def handle_MAIL(
            self, server: object, session: object, envelope: object, address: str, options: object
        ) -> str:
            return "550 5.7.1 <upkeep@vendor.example>: Sender address rejected: not owned by user"

    with session_scope(engine) as session:
        queue(session, customer_id, 3, recipients=("ops@acme.example",))
    server = SmtpServer()
    server.handler = NoSender()
    server.start()
    try:
        now = T0
        for _ in range(10):
            report = deliver_pending(engine, server.transport(), now=now, sender=SENDER)
            assert report.transport_error and report.failed == []
            rows = notices(engine)
            assert {row.state for row in rows} == {NoticeState.pending}
            now = min(row.next_attempt_at for row in rows if row.next_attempt_at is not None)
    finally:
        server.stop()

    (alert,) = _alerts(engine)
    assert alert.kind == "mail-unusable"
    body = _flat(alert.body_text)
    assert "Sender address rejected" in body and "3 customer notice(s) waiting" in body


def test_a_customer_with_no_contact_at_all_cannot_be_scheduled_so_nothing_slides_unheard(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    """Gap (c) of h-bounce: scheduling refuses it with one line (flows/schedule.py `_recipients`); a
    contact removed later is the tick's 'nobody to tell' alert (flows/dispatch.py)."""
    from flows.schedule import ScheduleRefused
    from inventory.models import Contact

    world = World(sqlite_engine, tmp_path)
    with session_scope(sqlite_engine) as session:
        for contact in session.exec(select(Contact)).all():
            session.delete(contact)
    refused = pytest.raises(ScheduleRefused, match="customer fakeco has no contacts to notify")
    with refused, session_scope(sqlite_engine) as session:
        schedule_update(
            CLUSTER, TARGET, now=world.clock(), requested_by="sre", session=session,
            vendor=VendorTerms.from_runtime(world.runtime),
        )  # fmt: skip
    with session_scope(sqlite_engine) as session:
        assert session.exec(select(UpgradeRun)).all() == []


def test_a_login_refusal_echoing_our_smtp_password_reaches_no_alert_and_no_notice_row(
    engine: Engine, customer_id: int
) -> None:
    """A server whose 535 quotes the credentials it got (seen in the wild: 'bad credentials user:pass').
    The mail-unusable alert carries the session's error to every SRE channel, and the text redaction
    takes `password=X`, not `upkeep:X`: the configured password itself must be scrubbed."""
    import base64

    from aiosmtpd.smtp import AuthResult

    secret = "hunter2-S3cret"

    def echoing(
        server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        login, password = data.login.decode(), data.password.decode()  # type: ignore[attr-defined]
        return AuthResult(
            success=False, handled=False, message=f"535 5.7.8 bad credentials {login}:{password}"
        )

    with session_scope(engine) as session:
        queue(session, customer_id, 1, recipients=("ops@acme.example",))
    server = SmtpServer(auth_require_tls=False, authenticator=echoing)
    server.start()
    try:
        now = T0
        for _ in range(7):
            deliver_pending(engine, server.transport(user="upkeep", password=secret), now=now, sender=SENDER)
            (row,) = notices(engine)
            assert row.next_attempt_at is not None
            now = row.next_attempt_at
    finally:
        server.stop()

    (alert,) = _alerts(engine)
    (row,) = notices(engine)
    assert "bad credentials upkeep:" in row.last_error  # the server's answer is kept, the secret is not
    encoded = base64.b64encode(secret.encode()).decode()
    for text_ in (alert.subject, alert.body_text, alert.body_html, row.last_error):
        assert secret not in text_ and encoded not in text_


def test_a_refused_scheduled_notice_says_the_update_is_held_when_no_slot_is_left_before_the_deadline(
    sqlite_engine: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    """The alert said each re-check "moves it to the first window with full notice". With a release
    deadline closer than the notice period the re-check holds it instead (flows/integrity.py `recheck`:
    no valid slot); the alert must not promise a move."""
    from inventory.models import Release

    world = World(sqlite_engine, tmp_path)
    smtp.handler.refuse[CONTACT] = REFUSAL
    with session_scope(sqlite_engine) as session:
        run = schedule_update(
            CLUSTER, TARGET, now=world.clock(), requested_by="sre", session=session,
            vendor=VendorTerms.from_runtime(world.runtime),
        )  # fmt: skip
        run_id, slot = run.id, run.slot_start
        assert slot is not None
        (release,) = session.exec(select(Release)).all()
        release.deadline = slot + timedelta(hours=12)  # the slot is fine; no later one with full notice
        session.add(release)
    deliver_pending(sqlite_engine, smtp.transport(), now=world.clock(), sender=SENDER)

    with session_scope(sqlite_engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        outcome = recheck(run, now=slot, session=session, actor="t", plan_only=True)
    assert outcome.action == "held"
    (alert,) = _alerts(sqlite_engine)
    body = _flat(alert.body_text)
    assert "or holds it when no valid slot is left (past the release's deadline" in body


def test_the_sres_own_copy_stuck_on_4xx_points_at_the_sre_mailbox_not_the_customer(
    sqlite_engine: Engine, smtp: SmtpServer
) -> None:
    """The stuck alert's fix said "have the customer's mailbox fixed" for the SRE's copy too."""
    from inventory.outbox import queue_notice

    smtp.handler.refuse["sre@vendor.example"] = "452 4.2.2 mailbox over quota"
    with session_scope(sqlite_engine) as session:
        customer = Customer(name="Acme Corp", timezone="UTC")
        session.add(customer)
        session.flush()
        assert customer.id is not None
        queue_notice(
            update_ref="update-9-sre", kind="started", sequence=0, customer_id=customer.id,
            recipients=["sre@vendor.example"], subject="s", body_text="t", body_html="<p>t</p>",
            session=session, now=T0,
        )  # fmt: skip
    now = T0
    for _ in range(6):
        deliver_pending(sqlite_engine, smtp.transport(), now=now, sender=SENDER)
        (row,) = notices(sqlite_engine)
        assert row.next_attempt_at is not None
        now = row.next_attempt_at

    (alert,) = _alerts(sqlite_engine)
    body = _flat(alert.body_text)
    assert "This was the SRE's copy" in body and "UPKEEP_SRE_EMAIL" in body
    assert "customer's mailbox" not in body
