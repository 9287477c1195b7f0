"""A notice email as the bytes that go on the wire, checked first and built once (tasks/mail.py sends it).

Structure: text and HTML alternatives plus, when there is an invite, a `text/calendar; method=...`
alternative (what calendar clients act on) and the same .ics as an attachment (what people can open):
`multipart/mixed[multipart/alternative[plain, html, calendar], invite.ics]`, or just the alternative.

Why not `email.message.EmailMessage`: it cost ~4 ms to build a notice and ~1.6 ms to flatten it (its
header registry parses every value it is given), most of the time it took to send 10,000 notices. The
shape is fixed, so it is written here directly and kept 7-bit: text parts quoted-printable
(`binascii.b2a_qp`, lines normalised to CRLF like the stdlib does), the attachment base64, non-ASCII
header text as RFC 2047 encoded words. Boundaries start with `=_`, which neither encoding can produce.
The stdlib parser reads every message back in the tests.

Header values are checked before use: CR, LF or NUL in any of them (a subject or address built from
customer data) is refused, because that is how headers such as `Bcc:` get injected. `check_notice` is
every check `build_message` makes about the notice itself, without building it (queue time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from typing import Protocol

IDEMPOTENCY_HEADER = "X-Upkeep-Idempotency-Key"
_FORBIDDEN = ("\r", "\n", "\0")
_METHOD = re.compile(rb"^METHOD:([A-Z-]+)\r?$", re.MULTILINE)
_MESSAGE_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+>")
_PLAIN = re.compile(r"[\x20-\x7e]*")  # header text that can go out as it is (if no '=?' in it)
_WORDS = re.compile(r" *[^ ]+")  # a word with the spaces before it: fold before those
_WIDTH = 78  # RFC 5322's recommended line length; 998 is the hard limit
_ENCODED_CHUNK = 42  # UTF-8 bytes per encoded word: 56 base64 chars + 12 = 68, fits a folded line


class RenderedLike(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def html(self) -> str: ...


@dataclass(frozen=True)
class OutgoingMessage:
    """A built notice: the exact bytes to send (CRLF line ends, 7-bit) and its SMTP envelope."""

    message_id: str
    envelope_from: str  # addr-spec of the From header
    recipients: tuple[str, ...]
    data: bytes = field(repr=False)

    def as_bytes(self) -> bytes:
        return self.data

    def parsed(self) -> EmailMessage:
        """The message read back by the stdlib parser (for looking at it, not for sending)."""
        message = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(message, EmailMessage)
        return message


def check_header(name: str, value: str) -> str:
    """`value` unchanged, or ValueError if it could smuggle in another header."""
    if any(char in value for char in _FORBIDDEN):
        raise ValueError(f"mail header {name}: value {value!r} contains CR, LF or NUL")
    return value


@lru_cache(maxsize=4096)  # contacts repeat across notices; a refusal raises and is not cached
def check_address(name: str, value: str) -> str:
    """A single plain ASCII addr-spec (local@domain), e.g. a contact's email (IDN domains as xn--)."""
    check_header(name, value)
    try:
        address = Address(addr_spec=value)
    # AttributeError: Python 3.11's header parser trips over an unclosed domain literal ('ops@[').
    except (ValueError, IndexError, HeaderParseError, AttributeError) as exc:
        raise ValueError(f"mail header {name}: {value!r} is not an email address ({exc})") from None
    if not address.username or not address.domain or address.addr_spec != value.strip():
        raise ValueError(f"mail header {name}: {value!r} is not an email address")
    if not value.isascii():  # would need SMTPUTF8; the importer only admits ASCII addresses anyway
        raise ValueError(f"mail header {name}: {value!r} is not an email address (non-ASCII)")
    return value.strip()


def message_id_for(idempotency_key: str, domain: str = "upkeep", installation: str = "") -> str:
    """A Message-ID that is the same for every attempt at one notice: readable key plus a digest, and
    the installation id, so two installations never send the same one."""
    check_header("idempotency key", idempotency_key)
    check_header("installation id", installation)
    readable = re.sub(r"[^A-Za-z0-9-]+", ".", idempotency_key).strip(".")[:80]
    digest = hashlib.sha256(f"{installation}/{idempotency_key}".encode()).hexdigest()[:16]
    where = re.sub(r"[^A-Za-z0-9-]+", "", installation)[:32]
    return f"<{readable}.{where}.{digest}@{domain}>" if where else f"<{readable}.{digest}@{domain}>"


def calendar_method(ics: bytes) -> str:
    found = _METHOD.search(ics)
    if not found:
        raise ValueError("the calendar invite has no METHOD line")
    return found.group(1).decode()


def check_notice(
    rendered: RenderedLike,
    ics: bytes | None,
    *,
    recipients: Sequence[str],
    message_id: str,
    idempotency_key: str,
) -> tuple[str, ...]:
    """Everything that would stop `build_message` for this notice, checked without building it.
    Returns the recipients as they will be used."""
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"Message-ID {message_id!r} is not of the form <id@domain>")
    check_header(IDEMPOTENCY_HEADER, idempotency_key)
    check_header("Subject", rendered.subject)
    for name, value in (("Subject", rendered.subject), ("text", rendered.text), ("HTML", rendered.html)):
        _utf8(name, value)
    if ics is not None:
        calendar_method(ics)
    return tuple(check_address("To", recipient) for recipient in recipients)


def build_message(
    rendered: RenderedLike,
    ics: bytes | None,
    *,
    sender: str,
    recipients: Sequence[str],
    message_id: str,
    idempotency_key: str,
    date: datetime | None = None,
) -> OutgoingMessage:
    """The complete notice email; ValueError naming the value if it cannot be one."""
    to = check_notice(
        rendered, ics, recipients=recipients, message_id=message_id, idempotency_key=idempotency_key
    )
    date = date or datetime.now(UTC)
    if date.tzinfo is None:
        raise ValueError(f"date {date!r} is naive")
    envelope_from, from_header = _sender(sender)
    headers = (
        from_header
        + _address_list("To", to)
        + _unstructured("Subject", rendered.subject)
        + f"Date: {format_datetime(date.astimezone(UTC))}\r\n"
        + f"Message-ID: {message_id}\r\n"
        + _unstructured(IDEMPOTENCY_HEADER, idempotency_key)
        + "Auto-Submitted: auto-generated\r\n"  # RFC 3834: no vacation replies, please
        + "MIME-Version: 1.0\r\n"
    )
    alternatives = [_text_part("plain", rendered.text), _text_part("html", rendered.html)]
    if ics is None:
        body = _multipart("alternative", alternatives)
    else:
        alternatives.append(_text_part("calendar", ics.decode(), f'; method="{calendar_method(ics)}"'))
        attachment = (
            b'Content-Type: application/ics\r\nContent-Disposition: attachment; filename="invite.ics"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(ics).replace(b"\n", b"\r\n")
        )
        body = _multipart("mixed", [_multipart("alternative", alternatives), attachment])
    return OutgoingMessage(message_id, envelope_from, to, headers.encode("ascii") + body)


def check_sender(sender: str) -> str:
    """The envelope address of a configured sender such as 'Upkeep <u@x.example>', or ValueError."""
    return _sender(sender)[0]


@lru_cache(maxsize=64)
def _sender(sender: str) -> tuple[str, str]:
    """(envelope address, folded From header) for a configured sender such as 'Upkeep <u@x.example>'.
    The stdlib parses and encodes it (a display name may need RFC 2047); one sender, parsed once."""
    check_header("From", sender)
    header = policy.SMTP.header_factory("From", sender)
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if len(addresses) != 1 or header.defects:
        raise ValueError(f"mail header From: {sender!r} is not one email address")
    envelope = check_address("From", addresses[0].addr_spec)
    return envelope, header.fold(policy=policy.SMTP)


def _utf8(name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate cannot be sent in any encoding
        raise ValueError(f"mail {name}: {value!r} cannot be encoded as UTF-8 ({exc.reason})") from None


def _address_list(name: str, addresses: Sequence[str]) -> str:
    """Checked ASCII addr-specs, comma-separated, folded between addresses."""
    items = [f"{address}," for address in addresses[:-1]] + [addresses[-1]]
    return _fold(f"{name}:", [f" {item}" for item in items])


def _unstructured(name: str, value: str) -> str:
    check_header(name, value)
    # As it is only if a reader gets it back unchanged: parsers strip white space around a value.
    if _PLAIN.fullmatch(value) and "=?" not in value and value == value.strip(" "):
        words = _WORDS.findall(value)
        folded = _fold(f"{name}:", [" ", *words])
        if all(len(line) <= 998 for line in folded.split("\r\n")):
            return folded
    raw = _utf8(name, value)
    chunks, start = [], 0
    while start < len(raw):  # cut on character boundaries: never inside a UTF-8 sequence
        end = min(start + _ENCODED_CHUNK, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:
            end -= 1
        chunks.append(raw[start:end])
        start = end
    words = [f" =?utf-8?b?{base64.b64encode(chunk).decode()}?=" for chunk in chunks] or [" "]
    return _fold(f"{name}:", words)


def _fold(head: str, pieces: list[str]) -> str:
    """`head` then `pieces` (each starting with its folding white space), lines of at most 78 columns
    where a piece allows it; a continuation line starts with the piece's white space."""
    lines, line = [], head
    for piece in pieces:
        # Fold only before white space that has a word after it: no line of white space alone.
        if len(line) + len(piece) > _WIDTH and line != head and piece[:1] == " " and piece.strip():
            lines.append(line)
            line = piece
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _text_part(subtype: str, text: str, params: str = "") -> bytes:
    lines = _utf8(f"text/{subtype} part", text).splitlines()  # CR, LF or CRLF, as the stdlib does
    normalised = b"".join(line + b"\n" for line in lines)
    encoded = binascii.b2a_qp(normalised, istext=True).replace(b"\n", b"\r\n")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"{params}\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    ).encode() + encoded


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    boundary = b"=_" + secrets.token_hex(10).encode()  # keeps the Content-Type line within 78
    body = b"".join(b"\r\n--" + boundary + b"\r\n" + part for part in parts)
    return (
        b"Content-Type: multipart/"
        + subtype.encode()
        + b'; boundary="'
        + boundary
        + b'"\r\n\r\n'
        + body[2:]
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
