"""SRE alert channels: where an alert Upkeep has queued goes out.

Two kinds behind one protocol:

* `AppriseChannel`: one Apprise URL (Slack, PagerDuty, Opsgenie, a JSON webhook, mailto, ...), from
  `UPKEEP_ALERT_URLS`. Apprise ships with Prefect; its plugins know each service's API.
* `EmailChannel`: the SRE mailbox (`sre_email`) through the same mail transport as customer notices.

A channel's `send` raises `AlertError` when the message did not get through; the caller (flows/alerts.py)
keeps the alert queued and tries that channel again later. Channels never raise anything else for a
delivery problem, so one broken channel cannot stop the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from tasks.mail import MailError, MailTransport, build_message, message_id_for

__all__ = [
    "AlertChannel",
    "AlertError",
    "AlertMessage",
    "AlertMessageError",
    "AppriseChannel",
    "EmailChannel",
    "parse_alert_urls",
]


@dataclass(frozen=True)
class AlertMessage:
    """One rendered alert. `key` is stable across attempts (the email's Message-ID derives from it)."""

    key: str
    subject: str
    text: str
    html: str


class AlertError(Exception):
    """The channel did not take the alert; the message names the channel (secrets masked)."""


class AlertMessageError(AlertError):
    """This message cannot go through this channel (the channel itself may be fine for others)."""


class AlertChannel(Protocol):
    @property
    def name(self) -> str:
        """How the channel is shown and recorded: secrets masked, stable across processes."""
        ...

    def send(self, message: AlertMessage) -> None: ...


class AppriseChannel:
    """One Apprise URL. Invalid URLs are refused when the channel is built (configuration), naming them
    with their secrets masked."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        import apprise

        plugin = apprise.Apprise.instantiate(url.strip())
        if plugin is None:
            # Only a scheme is shown, and only one that looks like a scheme: anything else may be a token.
            scheme = url.strip().split("://", 1)[0] if "://" in url else ""
            looks_like_one = re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", scheme)
            shown = scheme + "://…" if looks_like_one else "(not shown)"
            raise ValueError(f"alert URL {shown!r} is not an Apprise URL this installation knows")
        # Connect and read timeouts: a channel that does not answer delays only the alert delivery.
        plugin.socket_connect_timeout = plugin.socket_read_timeout = timeout
        self._plugin = plugin
        self._name = str(plugin.url(privacy=True)).split("?", 1)[0]

    @property
    def name(self) -> str:
        return self._name

    def send(self, message: AlertMessage) -> None:
        try:
            ok = self._plugin.notify(title=_defused(message.subject), body=_defused(message.text))
        except Exception as exc:  # a plugin's own bug must not escape as anything but "not delivered"
            raise AlertError(f"{self._name}: {type(exc).__name__}: {exc}") from exc
        if not ok:
            raise AlertError(f"{self._name}: not delivered (see the apprise log line before this)")


def _defused(text: str) -> str:
    """Alert text quotes what others wrote (a customer's case subject, a node's output). Chat plugins
    turn `<!channel>`, `!here>`, `<@U123>` and `<https://x|label>` into mentions of everyone and
    disguised links, even from plain text: every `>` that could close one is shown as `›` instead."""
    return text.replace("->", "→").replace(">", "›")


@dataclass
class EmailChannel:
    """The SRE mailbox, through the notices' mail transport (SMTP, or .eml files in the outbox)."""

    transport: MailTransport
    sender: str
    recipient: str

    @property
    def name(self) -> str:
        return f"email:{self.recipient}"

    def send(self, message: AlertMessage) -> None:
        try:
            built = build_message(
                message,
                None,
                sender=self.sender,
                recipients=(self.recipient,),
                message_id=message_id_for(message.key),
                idempotency_key=message.key,
                date=datetime.now(UTC),
            )
        except ValueError as exc:
            raise AlertMessageError(f"{self.name}: cannot build the message: {exc}") from exc
        try:
            self.transport.send(built)
        except MailError as exc:
            if not exc.transport:  # this message or recipient, not the mail server
                raise AlertMessageError(f"{self.name}: {exc}") from exc
            raise AlertError(f"{self.name}: {exc}") from exc

    @property
    def outage(self) -> str:
        """What is down when sending fails for the transport: the mail server, for every address."""
        return "email"


def parse_alert_urls(value: str) -> list[str]:
    """`UPKEEP_ALERT_URLS`: comma-separated, blanks ignored."""
    return [part.strip() for part in value.split(",") if part.strip()]
