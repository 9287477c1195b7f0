"""Outgoing mail: hand a built notice (tasks/mime.py) to a transport (SMTP, or .eml files on disk).

Every attempt to send one notice carries the same Message-ID, derived from the notice's idempotency key,
so a redelivery after a crash is recognisable (and is dropped by receivers that deduplicate on
Message-ID). Building and header checks live in tasks/mime.py and are re-exported here.

SMTP: a batch of messages (`SmtpTransport.session()`, one per `deliver_pending` call) shares one
connection, opened at the first message; before each further message an RSET both ends the previous
transaction and proves the connection still works. A connection found dropped there (closed, reset,
421, no 250) is reopened once for that message: nothing of it was sent yet, so this cannot duplicate
it. A message's own refusal (4xx/5xx to MAIL, RCPT or DATA) concerns only that message; smtplib resets
the transaction and the next message goes out on the same connection.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import smtplib
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from tasks.mime import (
    IDEMPOTENCY_HEADER,
    OutgoingMessage,
    RenderedLike,
    build_message,
    calendar_method,
    check_address,
    check_header,
    check_notice,
    check_sender,
    message_id_for,
)

__all__ = [
    "HANDED_OVER",
    "IDEMPOTENCY_HEADER",
    "MailError",
    "MailTransport",
    "OutboxDirTransport",
    "OutgoingMessage",
    "PermanentMailError",
    "Refused",
    "RenderedLike",
    "SmtpSession",
    "SmtpTransport",
    "TemporaryMailError",
    "UnknownDeliveryError",
    "build_message",
    "calendar_method",
    "check_address",
    "check_header",
    "check_notice",
    "check_sender",
    "message_id_for",
]

log = logging.getLogger(__name__)
# In a cut's error when the whole message had been handed over before it (the server's answer never read):
# the message may have arrived, and its resend is another copy (flows/notify.py tells the SRE so) (adv62).
HANDED_OVER = "after the whole message was sent"

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@-]")


class MailError(Exception):
    """Sending failed. `code` is the SMTP reply code if there was one. `transport` is True when the
    failure is not about this message (server unreachable, login or session refused): every other
    message would fail the same way right now."""

    def __init__(self, message: str, *, code: int | None = None, transport: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.transport = transport


class TemporaryMailError(MailError):
    """Worth retrying later: connection refused, timeout, 4xx."""


class PermanentMailError(MailError):
    """Retrying will not help: 5xx."""


class UnknownDeliveryError(MailError):
    """The whole message was handed over, but the server's answer to it could not be read (smtplib's
    own '500 Line too long.' for a reply line over 8 kB): it may have been delivered or not. Sending
    it again may mail the recipients twice; counting it refused or sent may be wrong either way."""


Refused = dict[str, str]  # recipient -> the server's answer ("550 5.1.1 ..."), for the ones it refused


class MailTransport(Protocol):
    def send(self, message: OutgoingMessage) -> Refused | None:
        """Send, or raise MailError. Returns the recipients refused while the others accepted (None or
        {} when every recipient took it): the message went out, so it is not sent again, but those
        addresses did not get it and the caller must say so."""
        ...


@dataclass
class SmtpTransport:
    """SMTP with the configured account. `send` uses a connection of its own; `session()` shares one
    connection among many messages (see the module docstring)."""

    host: str
    port: int = 25
    user: str = ""
    password: str = field(default="", repr=False)  # never shown in logs or reprs
    starttls: bool = False
    timeout: float = 15.0  # per connect and per reply: a silent server costs at most this per step

    @property
    def where(self) -> str:
        return f"SMTP {self.host}:{self.port}"

    def send(self, message: OutgoingMessage) -> Refused | None:
        with self.session() as session:
            return session.send(message)

    def session(self) -> SmtpSession:
        return SmtpSession(self)

    def scrub(self, text: str) -> str:
        """A server's answer without our password, plain or base64 as AUTH sent it (a server may quote
        the credentials it refused; the text redaction takes `password=X`, not `user:X`)."""
        if not self.password:
            return text
        forms = {self.password}
        for sent in (
            self.password,
            f"\0{self.user}\0{self.password}",
            f"{self.user}\0{self.user}\0{self.password}",
        ):
            forms.add(base64.b64encode(sent.encode()).decode())
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "[REDACTED password]")
        return text

    def connect(self) -> smtplib.SMTP:
        """A connection ready for MAIL: EHLO, STARTTLS, login. Every failure here is about the server
        or our account, not a message (`transport=True`)."""
        try:
            return self._connect()
        except MailError as exc:
            raise _scrubbed(exc, self) from None

    def _connect(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP | None = None
        try:
            smtp = _Smtp(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password)
            return smtp
        except smtplib.SMTPResponseException as exc:
            _close(smtp)
            kind = PermanentMailError if exc.smtp_code >= 500 else TemporaryMailError
            raise kind(
                f"{self.where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}",
                code=exc.smtp_code,
                transport=True,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            _close(smtp)
            raise PermanentMailError(f"{self.where}: {exc}", transport=True) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, DNS, TLS
            _close(smtp)
            raise TemporaryMailError(f"{self.where}: {_detail(exc)}", transport=True) from None


class SmtpSession:
    """One SMTP connection for a batch of messages; use it as a context manager (QUIT at the end)."""

    def __init__(self, transport: SmtpTransport) -> None:
        self.transport = transport
        self.connections = 0  # opened so far (a dropped one reopened counts again)
        self._smtp: smtplib.SMTP | None = None

    def scrub(self, text: str) -> str:
        return self.transport.scrub(text)

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                _close(smtp)

    def send(self, message: OutgoingMessage) -> Refused | None:
        scrub = self.transport.scrub
        try:
            refused = self._send(message)
        except MailError as exc:
            raise _scrubbed(exc, self.transport) from None
        if not refused:
            return None
        # Accepted for the others: retrying would send it to them twice. Say so; do not raise: the
        # caller gets the refused ones (flows/notify.py alerts the SRE, it used to be only this log).
        answers = {rcpt: scrub(f"{code} {_text(text)}") for rcpt, (code, text) in refused.items()}
        shown = "; ".join(f"{rcpt}: {answer}" for rcpt, answer in answers.items())
        log.warning("%s accepted %s but refused %s", self.transport.where, message.message_id, shown)
        return answers

    def _send(self, message: OutgoingMessage) -> dict[str, tuple[int, bytes]]:
        where = self.transport.where
        smtp = self._ready()
        try:
            refused = smtp.sendmail(message.envelope_from, list(message.recipients), message.data)
        except smtplib.SMTPRecipientsRefused as exc:
            self._drop_if_closed(smtp)
            codes = [code for code, _ in exc.recipients.values()]
            kind = PermanentMailError if all(code >= 500 for code in codes) else TemporaryMailError
            transport = 421 in codes  # the server ended the session
            raise kind(
                f"{where} refused every recipient: {_refusals(exc.recipients)}",
                code=max(codes),
                transport=transport,
            ) from None
        except smtplib.SMTPResponseException as exc:
            if _unreadable(exc):  # smtplib's own 500, not the server's: it closed the connection
                self._drop()
                if getattr(smtp, "body_sent", False):
                    raise UnknownDeliveryError(
                        f"{where}: the whole message was sent, but the server's answer "
                        "to it is a line over 8 kB, which smtplib cannot read (its own '500 Line too long.')"
                    ) from None
                raise TemporaryMailError(
                    f"{where}: an answer line over 8 kB, which smtplib cannot read (its own '500 Line too "
                    "long.'), before the message was sent: nothing of it went out"
                ) from None
            self._drop_if_closed(smtp)
            kind = PermanentMailError if exc.smtp_code >= 500 else TemporaryMailError
            # 421 closes the session; a refused sender address fails every message alike.
            transport = exc.smtp_code == 421 or isinstance(exc, smtplib.SMTPSenderRefused)
            raise kind(
                f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}", code=exc.smtp_code, transport=transport
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            # Cut off inside the exchange: whether the server kept the message is unknown (the
            # at-least-once window in flows/notify.py), so it stays queued and is not resent here.
            self._drop()
            if getattr(smtp, "body_sent", False):  # the server may have kept it: each try another copy
                raise TemporaryMailError(
                    f"{where}: {_detail(exc)} {HANDED_OVER} (it may have arrived; sent again at the next "
                    "try under the same Message-ID)",
                    transport=True,
                ) from None
            raise TemporaryMailError(f"{where}: {_detail(exc)}", transport=True) from None
        return refused

    def _ready(self) -> smtplib.SMTP:
        """The open connection after a successful RSET, or a new one (reopened at most once here)."""
        if self._smtp is not None:
            try:
                code, _ = self._smtp.rset()
                if code == 250:
                    return self._smtp
            except (smtplib.SMTPException, OSError):
                pass
            log.info("%s: the connection was dropped between messages; reopening it", self.transport.where)
            self._drop()
        self._smtp = self.transport.connect()
        self.connections += 1
        return self._smtp

    def _drop_if_closed(self, smtp: smtplib.SMTP) -> None:
        if smtp.sock is None:  # smtplib closes the socket itself after a 421
            self._drop()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        _close(smtp)


@dataclass
class OutboxDirTransport:
    """Writes each message to `<directory>/<Message-ID>.eml` (no SMTP configured: the embedded default).

    The file appears atomically (temp file + rename); sending the same notice again overwrites its own
    file, so the directory holds each notice once.
    """

    directory: Path

    def send(self, message: OutgoingMessage) -> None:
        if not message.message_id:
            raise PermanentMailError("a message without Message-ID cannot be named in the outbox")
        name = _UNSAFE_NAME.sub("_", message.message_id.strip().strip("<>"))[:200] + ".eml"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(message.data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.directory / name)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TemporaryMailError(f"outbox {self.directory}: {exc}", transport=True) from None


class _Smtp(smtplib.SMTP):
    """smtplib.SMTP that knows whether the current message was handed over whole (`body_sent`: its
    terminating '.' sent), so an unreadable answer after it is told from one before it."""

    body_sent = False

    def mail(self, sender: str, options: Sequence[str] = ()) -> tuple[int, bytes]:
        self.body_sent = False
        return super().mail(sender, options)

    def send(self, s: Any) -> None:  # smtplib's `ReadableBuffer | str` (typeshed's, no module to import)
        super().send(s)
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):  # smtplib's data(): the message's end
            self.body_sent = True


def _unreadable(exc: smtplib.SMTPResponseException) -> bool:
    """smtplib's own reply for an answer line over its 8192-byte limit (it closes the connection)."""
    error = exc.smtp_error
    text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
    return exc.smtp_code == 500 and text == "Line too long."


def _scrubbed(exc: MailError, transport: SmtpTransport) -> MailError:
    return type(exc)(transport.scrub(str(exc)), code=exc.code, transport=exc.transport)


def _close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()


def _detail(exc: BaseException) -> str:
    """What failed, named by its kind (SMTPServerDisconnected, SSLError, ConnectionResetError...): its
    text alone ('Connection unexpectedly closed', '[Errno 104] ...') left the SRE guessing."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(text)}" for rcpt, (code, text) in refused.items())
