"""The hand-written notice serializer (tasks/mime.py) against the stdlib parser: whatever the subject and
bodies hold, the parser reads back exactly what was given, in the structure a mail client expects, and
the bytes are what SMTP wants (7-bit, CRLF, no line over 998)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.mime import (
    OutgoingMessage,
    build_message,
    check_address,
    check_notice,
    message_id_for,
)
from templates import RenderedNotice, render_notice
from templates.ics import invite
from tests.unit.test_templates import make_ctx

KEY = "update-7:scheduled:1"
STAMP = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SENDER = "Upkeep <upkeep@vendor.example>"
header_text = st.text(
    st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)), max_size=300
)
body_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=1000)


def build(rendered: RenderedNotice, ics: bytes | None = None, **overrides: object) -> OutgoingMessage:
    options: dict[str, object] = {
        "sender": SENDER,
        "recipients": ("ops@acme.example",),
        "message_id": message_id_for(KEY, "vendor.example"),
        "idempotency_key": KEY,
        "date": STAMP,
    } | overrides
    return build_message(rendered, ics, **options)  # type: ignore[arg-type]


def lines_of(text: str) -> str:
    """What a text part carries: line ends as LF (CR, LF and CRLF all end a line), a final LF."""
    parts = re.split(r"\r\n|\r|\n", text)
    if parts[-1] == "":
        parts.pop()
    return "".join(f"{line}\n" for line in parts)


def assert_wire_safe(data: bytes) -> None:
    assert data.isascii()
    assert re.search(rb"[^\r]\n|\r[^\n]", data) is None and data.endswith(b"\r\n")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


@settings(deadline=None)
@given(subject=header_text, text=body_text, html=body_text)
def test_any_subject_and_body_read_back_exactly(subject: str, text: str, html: str) -> None:
    message = build(RenderedNotice(subject, text, html))
    assert_wire_safe(message.data)
    parsed = message.parsed()
    assert [part.get_content_type() for part in parsed.walk()] == [
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]
    assert parsed["Subject"] == subject
    plain = parsed.get_body(preferencelist=("plain",))
    rich = parsed.get_body(preferencelist=("html",))
    assert plain is not None and rich is not None
    assert lines_of(plain.get_content()) == lines_of(text)
    assert lines_of(rich.get_content()) == lines_of(html)


@pytest.mark.parametrize(
    "subject",
    [
        "plain ASCII that is long enough to be folded at a space somewhere past column seventy-eight",
        "x" * 990,  # one word too long for a line: encoded words instead
        "  leading and trailing  ",
        "looks encoded =?utf-8?q?x?= but is not",
        "Überraschung → " * 12,
        "",
    ],
)
def test_subjects_that_need_folding_or_encoding(subject: str) -> None:
    message = build(RenderedNotice(subject, "t", "h"))
    assert_wire_safe(message.data)
    assert message.parsed()["Subject"] == subject
    head = message.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))


def test_many_recipients_fold_between_addresses() -> None:
    recipients = tuple(f"person{n}@acme.example" for n in range(12))
    message = build(RenderedNotice("s", "t", "h"), recipients=recipients)
    assert_wire_safe(message.data)
    assert message.recipients == recipients
    parsed = message.parsed()
    assert [address.addr_spec for address in parsed["To"].addresses] == list(recipients)
    assert all(len(line) <= 78 for line in message.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"))


def test_the_invite_goes_as_calendar_alternative_and_byte_exact_attachment() -> None:
    ctx = make_ctx("cancelled")
    ics = invite(ctx, stamp=STAMP)
    message = build(render_notice("cancelled", ctx), ics)
    assert_wire_safe(message.data)
    parsed = message.parsed()
    calendar = next(part for part in parsed.walk() if part.get_content_type() == "text/calendar")
    assert calendar.get_param("method") == "CANCEL"
    assert lines_of(calendar.get_content()) == lines_of(ics.decode())
    (attachment,) = parsed.iter_attachments()
    assert attachment.get_filename() == "invite.ics" and attachment.get_content() == ics


def test_the_envelope_comes_from_the_headers() -> None:
    message = build(RenderedNotice("s", "t", "h"), sender="Jörg from Upkeep <upkeep@vendor.example>")
    assert message.envelope_from == "upkeep@vendor.example"
    assert message.parsed()["From"].addresses[0].display_name == "Jörg from Upkeep"
    assert_wire_safe(message.data)


@pytest.mark.parametrize("sender", ["", "not an address", "a@b.example, c@d.example"])
def test_a_sender_that_is_not_one_address_is_refused_naming_it(sender: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(sender))):
        build(RenderedNotice("s", "t", "h"), sender=sender)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("subject", "a\ud800b", "cannot be encoded as UTF-8"),
        ("text", "a\udfffb", "cannot be encoded as UTF-8"),
        ("recipient", "jörg@acme.example", "is not an email address"),
        ("recipient", "ops@acmé.example", "is not an email address"),
    ],
)
def test_queue_time_check_refuses_what_building_would(field: str, value: str, says: str) -> None:
    rendered = RenderedNotice(value if field == "subject" else "s", value if field == "text" else "t", "h")
    recipients = (value,) if field == "recipient" else ("ops@acme.example",)
    message_id = message_id_for(KEY)
    with pytest.raises(ValueError, match=says):
        check_notice(rendered, None, recipients=recipients, message_id=message_id, idempotency_key=KEY)
    with pytest.raises(ValueError, match=says):
        build(rendered, recipients=recipients)


def test_check_address_remembers_good_addresses_and_still_refuses_bad_ones() -> None:
    assert check_address("To", "ops@acme.example") == "ops@acme.example"
    for _ in range(2):  # a refusal is never cached as an answer
        with pytest.raises(ValueError, match="is not an email address"):
            check_address("To", "ops@")
