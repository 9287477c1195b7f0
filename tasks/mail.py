"""Outgoing mail: build a notice message and hand it to a transport (SMTP, or .eml files on disk).

A message is multipart: text and HTML alternatives plus, when there is an invite, a
`text/calendar; method=...` alternative (what calendar clients act on) and the same .ics as an
attachment (what people can open). Its Message-ID is derived from the notice's idempotency key, so every
attempt to send one notice carries the same Message-ID and a redelivery after a crash is recognisable
(and is dropped by receivers that deduplicate on Message-ID).

Header values are checked before use: CR, LF or NUL in any of them (a subject or address built from
customer data) is refused, because that is how headers such as `Bcc:` get injected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

_FORBIDDEN = ("\r", "\n", "\0")
_METHOD = re.compile(rb"^METHOD:([A-Z-]+)\r?$", re.MULTILINE)
_MESSAGE_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+>")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._@-]")
IDEMPOTENCY_HEADER = "X-Upkeep-Idempotency-Key"


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


class RenderedLike(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def html(self) -> str: ...


class MailTransport(Protocol):
    def send(self, message: EmailMessage) -> None: ...


def check_header(name: str, value: str) -> str:
    """`value` unchanged, or ValueError if it could smuggle in another header."""
    if any(char in value for char in _FORBIDDEN):
        raise ValueError(f"mail header {name}: value {value!r} contains CR, LF or NUL")
    return value


def check_address(name: str, value: str) -> str:
    """A single plain addr-spec (local@domain), e.g. a contact's email."""
    check_header(name, value)
    try:
        address = Address(addr_spec=value)
    # AttributeError: Python 3.11's header parser trips over an unclosed domain literal ('ops@[').
    except (ValueError, IndexError, HeaderParseError, AttributeError) as exc:
        raise ValueError(f"mail header {name}: {value!r} is not an email address ({exc})") from None
    if not address.username or not address.domain or address.addr_spec != value.strip():
        raise ValueError(f"mail header {name}: {value!r} is not an email address")
    return value.strip()


def message_id_for(idempotency_key: str, domain: str = "upkeep") -> str:
    """A Message-ID that is the same for every attempt at one notice: readable key plus a digest."""
    check_header("idempotency key", idempotency_key)
    readable = re.sub(r"[^A-Za-z0-9-]+", ".", idempotency_key).strip(".")[:80]
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
    return f"<{readable}.{digest}@{domain}>"


def build_message(
    rendered: RenderedLike,
    ics: bytes | None,
    *,
    sender: str,
    recipients: Sequence[str],
    message_id: str,
    idempotency_key: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The complete notice email (SMTP policy: CRLF line ends, RFC 2047-encoded non-ASCII headers)."""
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"Message-ID {message_id!r} is not of the form <id@domain>")
    date = date or datetime.now(UTC)
    if date.tzinfo is None:
        raise ValueError(f"date {date!r} is naive")
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = check_header("From", sender)
    message["To"] = ", ".join(check_address("To", recipient) for recipient in recipients)
    message["Subject"] = check_header("Subject", rendered.subject)
    message["Date"] = format_datetime(date.astimezone(UTC))
    message["Message-ID"] = message_id
    message[IDEMPOTENCY_HEADER] = check_header(IDEMPOTENCY_HEADER, idempotency_key)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies, please
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    if ics is not None:
        method = calendar_method(ics)
        message.add_alternative(ics.decode(), subtype="calendar", params={"method": method})
        message.add_attachment(ics, maintype="application", subtype="ics", filename="invite.ics")
    return message


def calendar_method(ics: bytes) -> str:
    found = _METHOD.search(ics)
    if not found:
        raise ValueError("the calendar invite has no METHOD line")
    return found.group(1).decode()


@dataclass
class SmtpTransport:
    """One SMTP connection per message (notices are few; nothing to keep alive between runs)."""

    host: str
    port: int = 25
    user: str = ""
    password: str = field(default="", repr=False)  # never shown in logs or reprs
    starttls: bool = False
    timeout: float = 15.0

    def send(self, message: EmailMessage) -> None:
        where = f"SMTP {self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                self._open_session(smtp, where)
                refused = smtp.send_message(message)
        except MailError:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            kind = PermanentMailError if all(code >= 500 for code in codes) else TemporaryMailError
            raise kind(
                f"{where} refused every recipient: {_refusals(exc.recipients)}", code=max(codes)
            ) from None
        except smtplib.SMTPResponseException as exc:
            kind = PermanentMailError if exc.smtp_code >= 500 else TemporaryMailError
            # 421 closes the session; a refused greeting or sender address fails every message alike.
            transport = exc.smtp_code == 421 or isinstance(
                exc, smtplib.SMTPConnectError | smtplib.SMTPSenderRefused
            )
            raise kind(
                f"{where}: {exc.smtp_code} {_text(exc.smtp_error)}", code=exc.smtp_code, transport=transport
            ) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timeout, DNS, TLS
            detail = "timed out" if isinstance(exc, socket.timeout | TimeoutError) else str(exc) or repr(exc)
            raise TemporaryMailError(f"{where}: {detail}", transport=True) from None
        if refused:
            # Accepted for the others: retrying would send it to them twice. Say so; do not raise.
            log.warning("%s accepted %s but refused %s", where, message["Message-ID"], _refusals(refused))

    def _open_session(self, smtp: smtplib.SMTP, where: str) -> None:
        """EHLO, STARTTLS, login. A refusal here is about the server or our account, not the message."""
        try:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self.password)
        except smtplib.SMTPResponseException as exc:
            kind = PermanentMailError if exc.smtp_code >= 500 else TemporaryMailError
            raise kind(
                f"{where} refused the session: {exc.smtp_code} {_text(exc.smtp_error)}",
                code=exc.smtp_code,
                transport=True,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentMailError(f"{where}: {exc}", transport=True) from None


@dataclass
class OutboxDirTransport:
    """Writes each message to `<directory>/<Message-ID>.eml` (no SMTP configured: the embedded default).

    The file appears atomically (temp file + rename); sending the same notice again overwrites its own
    file, so the directory holds each notice once.
    """

    directory: Path

    def send(self, message: EmailMessage) -> None:
        message_id = message["Message-ID"]
        if not message_id:
            raise PermanentMailError("a message without Message-ID cannot be named in the outbox")
        name = _UNSAFE_NAME.sub("_", str(message_id).strip().strip("<>"))[:200] + ".eml"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(message.as_bytes(policy=policy.SMTP))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.directory / name)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TemporaryMailError(f"outbox {self.directory}: {exc}", transport=True) from None


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{rcpt}: {code} {_text(text)}" for rcpt, (code, text) in refused.items())
