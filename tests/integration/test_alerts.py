"""SRE alerts through real channels: a local HTTP receiver (Apprise json://) and aiosmtpd; on SQLite and
PostgreSQL. Queued in our database, delivered by the dispatcher's delivery, retried per channel."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from flows.alerts import alert_sre, deliver_alerts
from flows.runtime import Runtime
from inventory.alerts import Alert, AlertState
from inventory.db import session_scope
from inventory.outbox import retry_delay
from tasks.alerts import AlertMessage, AppriseChannel, EmailChannel
from tasks.fileserver import HttpFileServer
from tasks.ssh import SshSettings
from tests.integration.test_notices import SmtpServer
from tests.integration.webhook import WebhookReceiver

pytestmark = pytest.mark.smtp
T0 = datetime(2026, 12, 4, 3, 0, tzinfo=UTC)


def _runtime(engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver) -> Runtime:
    mailer = smtp.transport()
    return Runtime(
        engine=engine,
        fileserver=HttpFileServer(url="https://127.0.0.1:9", user="u", password="p"),
        ssh=SshSettings(known_hosts=tmp_path / "kh", key_path=tmp_path / "key"),
        work_dir=tmp_path,
        mailer=mailer,
        sre_email="sre@vendor.example",
        alert_channels=(
            EmailChannel(mailer, "Upkeep <upkeep@vendor.example>", "sre@vendor.example"),
            AppriseChannel(webhook.url, timeout=2),
        ),
        clock=lambda: T0,
    )


def _alerts(engine: Engine) -> list[Alert]:
    with session_scope(engine) as session:
        return list(session.exec(select(Alert)).all())


def test_an_alert_reaches_the_webhook_and_the_sre_mailbox_in_its_own_words(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    runtime = _runtime(engine, tmp_path, smtp, webhook)
    alert_sre(
        runtime,
        headline="run 7 failed at download before any node was touched",
        cause="download of releases/p.tar.gz: HTTP 401 (tried https://files.example/releases/p.tar.gz)",
        customer="acme",
        cluster="acme-c1",
        step="download",
        case_ref="CASE-3",
    )
    assert webhook.received == [] and smtp.handler.messages == []  # queued, not sent by the caller

    report = deliver_alerts(runtime, now=T0)

    assert len(report.sent) == 1 and report.retrying == []
    (posted,) = webhook.received
    assert posted["title"].startswith("[Upkeep] acme/acme-c1: run 7 failed at download")
    assert "https://files.example/releases/p.tar.gz" in posted["message"]
    assert "CASE-3" in posted["message"] and "Hello" not in posted["message"]
    (mail,) = smtp.handler.messages
    assert mail["To"] == "sre@vendor.example" and mail["Subject"] == posted["title"]
    assert deliver_alerts(runtime, now=T0 + timedelta(hours=1)).sent == []  # once


def test_a_channel_that_is_down_delays_only_itself_and_gets_the_alert_later(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    runtime = _runtime(engine, tmp_path, smtp, webhook)
    webhook.stop()
    alert_sre(runtime, headline="pre-flight failed", cause="node-2: disk full", cluster="acme-c1")

    first = deliver_alerts(runtime, now=T0)

    assert first.sent == [] and len(first.retrying) == 1
    (alert,) = _alerts(engine)
    assert alert.state == AlertState.pending and alert.delivered == ["email:sre@vendor.example"]
    assert webhook.url.removeprefix("json://") in alert.last_error
    assert len(smtp.handler.messages) == 1

    webhook.start()
    assert deliver_alerts(runtime, now=T0 + retry_delay(1) - timedelta(seconds=1)).retrying == []  # not due
    later = deliver_alerts(runtime, now=T0 + retry_delay(1))

    assert len(later.sent) == 1 and len(webhook.received) == 1
    assert len(smtp.handler.messages) == 1  # the mailbox that had it is not sent it again
    (alert,) = _alerts(engine)
    assert alert.state == AlertState.sent and alert.attempts == 2


def test_an_unknown_alert_url_is_refused_naming_it_without_its_secret():
    with pytest.raises(ValueError, match=r"alert URL 'nosuch://…' is not an Apprise URL"):
        AppriseChannel("nosuch://user:hunter2@example")


def test_the_same_key_queues_one_alert(engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: Any):
    runtime = _runtime(engine, tmp_path, smtp, webhook)
    first = alert_sre(runtime, headline="h", cause="c", key="run-1:failed")
    assert alert_sre(runtime, headline="h", cause="c", key="run-1:failed") == first
    assert len(_alerts(engine)) == 1


class _Blackhole:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers (a hung alert channel)."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never read from, never answered

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_a_channel_that_never_answers_costs_one_timeout_per_delivery_not_one_per_alert(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    hole = _Blackhole()
    try:
        runtime = _runtime(engine, tmp_path, smtp, webhook)
        hung = AppriseChannel(f"json://127.0.0.1:{hole.port}/hook", timeout=1)
        runtime = replace(runtime, alert_channels=(*runtime.alert_channels, hung))
        for n in range(4):
            alert_sre(runtime, headline=f"alert {n}", cause="c", cluster="acme-c1")

        report = deliver_alerts(runtime, now=T0)

        # The hung channel was tried once; the three other alerts did not each wait for its timeout.
        assert len(hole.accepted) == 1
        assert len(report.retrying) == 4 and len(webhook.received) == 4 and len(smtp.handler.messages) == 4
        assert all(f"127.0.0.1:{hole.port}" in a.last_error for a in _alerts(engine))  # retried later
    finally:
        hole.close()


def test_a_delivery_outlived_by_its_claim_does_not_send_what_another_tick_sent_meanwhile(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    """A slow channel with many alerts queued: the first tick is still sending when its claim on the
    later alerts runs out and the next tick takes and sends them. The first tick must not send them
    again (the on-call got every alert of a burst twice)."""
    clock = {"now": T0}
    base = _runtime(engine, tmp_path, smtp, webhook)
    hook = AppriseChannel(webhook.url, timeout=2)

    class Slow:
        name = hook.name
        calls = 0

        def send(self, message: Any) -> None:
            hook.send(message)
            Slow.calls += 1
            if Slow.calls == 1:  # the first tick is slow: meanwhile, 3 minutes on, the next tick runs
                clock["now"] = T0 + timedelta(minutes=3)
                deliver_alerts(runtime, now=clock["now"])

    runtime = replace(base, alert_channels=(Slow(),), clock=lambda: clock["now"])
    for n in range(4):
        alert_sre(runtime, headline=f"alert {n}", cause="c", cluster="acme-c1", key=f"burst-{n}")

    deliver_alerts(runtime, now=T0)

    titles = [posted["title"] for posted in webhook.received]
    for n in range(1, 4):  # alert 0 was in flight in both (simulated: 3 minutes on one send)
        assert titles.count(f"[Upkeep] acme-c1: alert {n}") == 1, titles


def test_no_secret_reaches_an_alert_channel(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    """A file-server URL with its password in it (allowed by the settings, hidden by `settings`), a
    database URL quoted by its driver's error, a channel token: the alert names what was tried, never
    the secret, in the chat message and in the SRE mail alike."""
    runtime = _runtime(engine, tmp_path, smtp, webhook)
    alert_sre(
        runtime,
        headline="run 7 failed at download before any node was touched",
        cause="download of releases/p.tar.gz: HTTP 401 (tried https://upkeep:Hunter2pw@127.0.0.1:8443/r/p.tar.gz)",
        detail="database: connection to postgresql+psycopg://upkeep:S3cretdb@127.0.0.1:5432/upkeep refused;"
        " channel json://127.0.0.1:9/hook?token=Tok3nabc123 down",
        customer="acme",
        cluster="acme-c1",
    )
    deliver_alerts(runtime, now=T0)
    (posted,) = webhook.received
    (mail,) = smtp.handler.messages
    seen = posted["title"] + posted["message"] + mail.as_string()
    for secret in ("Hunter2pw", "S3cretdb", "Tok3nabc123"):
        assert secret not in seen
    assert "https://upkeep:" in posted["message"] and "127.0.0.1:8443/r/p.tar.gz" in posted["message"]


def test_line_breaks_in_a_headline_never_make_or_break_the_sre_mail_header(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    """A CR (or U+2028, VT, FF) in text that reaches the subject made the SRE mail unbuildable: the
    mailbox never got that alert (retried for ever); and it must not cost the mailbox the other
    alerts of the same delivery either."""
    runtime = _runtime(engine, tmp_path, smtp, webhook)
    alert_sre(
        runtime, headline="escalated by x\rBcc: evil@attacker.example\u2028\x0bX", cause="c", cluster="c1"
    )
    alert_sre(runtime, headline="an ordinary alert", cause="c", cluster="c1")

    report = deliver_alerts(runtime, now=T0)

    assert len(report.sent) == 2 and report.retrying == []
    first, second = smtp.handler.messages
    assert first["Bcc"] is None and "\r" not in first["Subject"] and "\u2028" not in first["Subject"]
    assert first["Subject"] == "[Upkeep] c1: escalated by x Bcc: evil@attacker.example  X"
    assert second["Subject"] == "[Upkeep] c1: an ordinary alert"


def test_a_mail_server_that_never_answers_costs_one_timeout_per_delivery_not_one_per_email(
    engine: Engine, tmp_path: Path, smtp: SmtpServer, webhook: WebhookReceiver
):
    """Pages go to each paged person's address besides the SRE smtp: every address was its own
    channel, so a hung SMTP server cost its timeout once per address per alert."""
    from tasks.mail import SmtpTransport

    hole = _Blackhole()
    try:
        hung = SmtpTransport(host="127.0.0.1", port=hole.port, timeout=1)
        base = _runtime(engine, tmp_path, smtp, webhook)
        runtime = replace(
            base,
            mailer=hung,
            alert_channels=(
                EmailChannel(hung, "upkeep@vendor.example", "sre@vendor.example"),
                base.alert_channels[1],
            ),
        )
        for n in range(3):
            alert_sre(
                runtime, kind="page", headline=f"PAGE {n}", cause="c", cluster="acme-c1",
                targets=["ana@vendor.example", "tess@vendor.example"],
            )  # fmt: skip

        report = deliver_alerts(runtime, now=T0)

        assert len(hole.accepted) == 1
        assert len(report.retrying) == 3 and len(webhook.received) == 3  # the webhook still got them
        assert all(a.delivered == [AppriseChannel(webhook.url).name] for a in _alerts(engine))
    finally:
        hole.close()


def test_hostile_text_in_an_alert_pings_nobody_and_hides_no_link_in_slack(monkeypatch: pytest.MonkeyPatch):
    """A customer's case subject becomes a P0 page's cause; Apprise's Slack plugin turns `<!channel>`
    (even `!channel>`) into a mention of everyone and `<https://x|label>` into a disguised link. The
    Slack API is not reachable here: its request is caught where Apprise makes it."""
    import json

    from apprise.plugins import slack

    posted: list[str] = []

    class Answer:
        status_code, content, text = 200, b"ok", "ok"
        headers: ClassVar[dict[str, str]] = {}

    def request(method: str, url: str, **kw: Any) -> Answer:
        posted.append(kw["data"])
        return Answer()

    monkeypatch.setattr(slack.requests, "request", request)
    channel = AppriseChannel("slack://T1ABCDEFG/B1ABCDEFG/abcdefghijklmnopqrstuvwx")
    channel.send(
        AlertMessage(
            key="k",
            subject="[Upkeep] acme: P0 case CASE-1 opened <!here>",
            text="Cause: <!channel> !everyone> <@U123> see <https://evil.example|your portal>\n"
            "run 3 (9.8.0 -> 9.9.0)",
            html="",
        )
    )
    (data,) = posted
    data = json.dumps(json.loads(data), ensure_ascii=False)
    for forged in ("<!channel", "<!everyone", "<@U123", "<https://evil.example|", "<!here"):
        assert forged not in data, data
    assert "9.8.0 → 9.9.0" in data and "evil.example" in data  # shown, as text
