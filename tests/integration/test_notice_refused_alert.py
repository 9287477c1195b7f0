"""A customer notice the mail server refuses for good alerts the SRE, in the transaction that marks it
failed: a real aiosmtpd server answering 550 for the customer's only contact, the real dispatcher tick
delivering the outbox, the alert posted to a real local HTTP receiver (Apprise json://).

Before, the refusal was only logged by `notices send` and not even that by the tick: an update whose
'scheduled' bounced was never told, slid on at every re-check, and nobody heard."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows.alerts import deliver_alerts
from flows.dispatch import dispatch
from flows.notify import deliver_pending
from flows.run_notices import VendorTerms
from flows.runtime import Runtime
from flows.schedule import schedule_update
from inventory.alerts import Alert
from inventory.db import session_scope
from inventory.models import RunState, UpgradeRun
from inventory.outbox import Notice, NoticeState
from tasks.alerts import AppriseChannel
from tasks.fileserver import HttpFileServer
from tasks.mail import OutgoingMessage
from tasks.ssh import SshSettings
from tests.integration.test_notices import SENDER, T0, Overlap, SmtpServer, notices, queue
from tests.integration.webhook import WebhookReceiver
from tests.support.update_world import CLUSTER, TARGET, World

pytestmark = pytest.mark.smtp
CONTACT = "ops@fakeco.example"  # tests/support/update_world.py's only contact
REFUSAL = "550 5.1.1 <ops@fakeco.example>: Recipient address rejected: User unknown"


def _schedule(world: World) -> int:
    runtime = world.runtime
    with session_scope(world.engine) as session:
        run = schedule_update(
            CLUSTER, TARGET, now=world.clock(), requested_by="sre", session=session,
            vendor=VendorTerms.from_runtime(runtime),
        )  # fmt: skip
        assert run.id is not None
        return run.id


def _alerts(engine: Engine) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert).order_by(col(Alert.id))).all())


@pytest.mark.prefect
def test_a_scheduled_notice_refused_for_good_alerts_the_sre_once_and_every_slide_after_it_too(
    prefect_world: World, smtp: SmtpServer, webhook: WebhookReceiver
) -> None:
    world = prefect_world
    world.runtime.mailer = smtp.transport()
    world.runtime.mail_from = "Upkeep <upkeep@vendor.example>"
    world.runtime.alert_channels = (AppriseChannel(webhook.url, timeout=2),)
    smtp.handler.refuse[CONTACT] = REFUSAL
    run_id = _schedule(world)
    ref = f"update-{run_id}"

    dispatch(max_running=2)  # delivers the outbox last: the 550, and the alert queued with it
    dispatch(max_running=2)  # its SRE alerts first: the one queued by the tick before
    dispatch(max_running=2)  # nothing new: one failure, one alert

    with session_scope(world.engine) as session:
        (scheduled,) = session.exec(select(Notice).where(Notice.update_ref == ref)).all()
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.told_at is None and run.slot_start is not None
        first_slot = run.slot_start
    assert scheduled.state == NoticeState.failed and smtp.handler.messages == []
    (posted,) = webhook.received
    assert posted["title"] == (
        f"[Upkeep] fakeco/{CLUSTER}: 'scheduled' notice of {ref} not delivered: "
        "refused for good by the mail server"
    )
    body = posted["message"]
    # The server's answer, on the cause's one line (the channel shows '>' as a look-alike: tasks/alerts.py).
    server = f"SMTP 127.0.0.1:{smtp.port}"
    assert f"\nCause: {server} refused every recipient: {CONTACT}: 550 5.1.1 <{CONTACT}" in body
    assert "Recipient address rejected: User unknown\n" in body
    assert f"Not delivered to: {CONTACT}\n" in body
    assert f"The customer has not been told of {ref}, so it cannot start:" in (" ".join(body.split()))
    assert f"`upkeep reschedule {ref} --to START --reason TEXT`" in body
    assert "`upkeep inventory import FILE`" in body
    (alert,) = _alerts(world.engine)
    assert alert.key == f"notice-{scheduled.id}:failed:1" and alert.run_id == run_id

    # Its slot comes, never told: the tick's re-check moves it on and announces it anew ('scheduled') to
    # the same gone address - refused too, so this slide is told to the SRE, not silent.
    world.clock.now = first_slot + timedelta(minutes=1)
    dispatch(max_running=2)
    dispatch(max_running=2)
    with session_scope(world.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.state == RunState.planned and run.slot_start is not None
        assert run.slot_start > first_slot and run.told_at is None
    assert [p["title"].split(": ", 1)[1] for p in webhook.received] == [
        f"'scheduled' notice of {ref} not delivered: refused for good by the mail server",
        f"'scheduled' notice of {ref} not delivered: refused for good by the mail server",
    ]
    assert world.upgraded() == [0, 0, 0]


def _runtime(engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver) -> Runtime:
    return Runtime(
        engine=engine,
        fileserver=HttpFileServer(url="https://127.0.0.1:9", user="u", password="p"),
        ssh=SshSettings(known_hosts=tmp_path / "kh", key_path=tmp_path / "key"),
        work_dir=tmp_path,
        mailer=smtp.transport(),
        alert_channels=(AppriseChannel(webhook.url, timeout=2),),
        clock=lambda: T0,
    )


def test_a_notice_that_cannot_be_built_alerts_too_once_however_often_the_delivery_runs(
    engine: Engine, customer_id: int, smtp: SmtpServer, webhook: WebhookReceiver, tmp_path: Path
) -> None:
    with session_scope(engine) as session:
        (notice,) = queue(session, customer_id, 1)
    with engine.begin() as conn:  # a row that can never become a message (written by hand, or by a bug)
        conn.execute(text("UPDATE notice SET recipients = :r"), {"r": '["ops@acme.example\\r\\nBcc: x@y"]'})

    for hours in (0, 1):  # the tick's delivery, twice
        report = deliver_pending(engine, smtp.transport(), now=T0 + timedelta(hours=hours), sender=SENDER)
    runtime = _runtime(engine, tmp_path, smtp, webhook)
    for hours in (0, 1):
        deliver_alerts(runtime, now=T0 + timedelta(hours=hours))

    assert report.failed == [] and notices(engine)[0].state == NoticeState.failed
    (posted,) = webhook.received
    assert posted["title"] == (
        "[Upkeep] Acme Corp: 'scheduled' notice of update-1 not delivered: the message cannot be built"
    )
    assert "Cause: cannot build the message" in posted["message"]
    assert "\r" not in posted["message"] and "\nBcc:" not in posted["message"]  # one line, as written
    (alert,) = _alerts(engine)
    assert alert.key == f"notice-{notice.id}:failed:1"


def test_two_deliverers_refused_for_every_notice_queue_one_alert_per_notice(
    engine: Engine, customer_id: int, smtp: SmtpServer
) -> None:
    smtp.handler.refuse["gone@acme.example"] = "550 5.1.1 no such user"
    with session_scope(engine) as session:
        queue(session, customer_id, 6, recipients=("gone@acme.example",))
    overlap = Overlap(engine)

    class Refused:  # Overlap's gate, told of the other deliverer's refusal too (it waits for a sent one)
        def __init__(self) -> None:
            self.gated = overlap.transport(smtp.transport())

        def send(self, message: OutgoingMessage) -> None:
            try:
                self.gated.send(message)
            finally:
                if overlap.postgres and threading.get_ident() != overlap.holder:
                    overlap.other_reached.set()

    def deliverer() -> None:
        deliver_pending(engine, Refused(), now=T0, sender=SENDER)

    threads = [threading.Thread(target=deliverer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert overlap.other_reached.is_set()  # they did overlap
    rows = notices(engine)
    assert {row.state for row in rows} == {NoticeState.failed}
    assert sorted(a.key for a in _alerts(engine)) == sorted(f"notice-{row.id}:failed:1" for row in rows)


def test_the_fix_the_alert_names_tells_the_customer_at_the_corrected_address(
    sqlite_engine: Engine, smtp: SmtpServer, tmp_path: Path
) -> None:
    """The alert's fix, followed: the contact corrected in the inventory YAML and imported; the import's
    re-check moves the never-told update and announces it anew ('scheduled', not 'rescheduled': they never
    heard of it) to the new address: told at last."""
    import yaml

    from flows.integrity import import_and_recheck

    world = World(sqlite_engine, tmp_path)
    world.runtime.mailer = smtp.transport()
    smtp.handler.refuse[CONTACT] = REFUSAL
    run_id = _schedule(world)
    deliver_pending(sqlite_engine, world.runtime.mailer, now=world.clock(), sender=SENDER)
    assert [a.kind for a in _alerts(sqlite_engine)] == ["notice-failed"]

    inventory = tmp_path / "inventory.yaml"
    document = yaml.safe_load(inventory.read_text())
    document["customers"][0]["contacts"][0]["email"] = "ops-team@fakeco.example"
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    later = world.clock.advance(timedelta(hours=1))
    vendor = VendorTerms.from_runtime(world.runtime)
    _, outcomes = import_and_recheck(inventory, engine=sqlite_engine, actor="sre", now=later, vendor=vendor)
    assert [o.action for o in outcomes] == ["moved"], [o.describe() for o in outcomes]
    deliver_pending(sqlite_engine, world.runtime.mailer, now=later, sender=SENDER)

    (told,) = smtp.handler.messages
    assert told["To"] == "ops-team@fakeco.example" and ":scheduled:" in str(told["X-Upkeep-Idempotency-Key"])
    with session_scope(sqlite_engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.told_at == later
    assert len(_alerts(sqlite_engine)) == 1
