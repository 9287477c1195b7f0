"""Notice emails without a mail server: the structure a mail client sees, and refusal of header injection."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from tasks.mail import (
    IDEMPOTENCY_HEADER,
    OutgoingMessage,
    SmtpTransport,
    build_message,
    calendar_method,
    check_address,
    message_id_for,
)
from templates import RenderedNotice, render_notice
from templates.ics import invite
from tests.unit.test_templates import make_ctx

KEY = "update-42:scheduled:2"
INJECTION = "x\r\nBcc: victim@evil.example"
STAMP = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def build(
    rendered: RenderedNotice | None = None,
    ics: bytes | None = b"",
    *,
    sender: str = "Upkeep <upkeep@vendor.example>",
    recipients: tuple[str, ...] = ("ops@acme.example", "cto@acme.example"),
    key: str = KEY,
) -> OutgoingMessage:
    ctx = make_ctx()
    return build_message(
        rendered or render_notice("scheduled", ctx),
        invite(ctx, stamp=STAMP) if ics == b"" else ics,
        sender=sender,
        recipients=recipients,
        message_id=message_id_for(key, "vendor.example"),
        idempotency_key=key,
        date=STAMP,
    )


def reparse(message: OutgoingMessage) -> EmailMessage:
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def unix(text: str) -> str:
    return text.replace("\r\n", "\n")


def test_message_parses_back_with_text_html_and_calendar_parts():
    rendered = render_notice("scheduled", make_ctx())
    parsed = reparse(build(rendered))
    assert parsed["Subject"] == rendered.subject  # non-ASCII arrow survives the RFC 2047 round trip
    assert parsed["To"] == "ops@acme.example, cto@acme.example"
    assert parsed["From"] == "Upkeep <upkeep@vendor.example>"
    assert parsed["Message-ID"] == message_id_for(KEY, "vendor.example")
    assert parsed[IDEMPOTENCY_HEADER] == KEY
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed.get_content_type() == "multipart/mixed"

    plain = parsed.get_body(preferencelist=("plain",))
    html = parsed.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    assert unix(plain.get_content()) == rendered.text
    assert unix(html.get_content()) == rendered.html

    types = [part.get_content_type() for part in parsed.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "text/calendar",
        "application/ics",
    ]
    calendar = next(part for part in parsed.walk() if part.get_content_type() == "text/calendar")
    assert calendar.get_param("method") == "REQUEST"
    assert "UID:update-42@upkeep" in calendar.get_content()
    attachments = list(parsed.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["invite.ics"]
    assert attachments[0].get_content() == invite(make_ctx(), stamp=STAMP)  # byte for byte (base64)


def test_lines_end_in_crlf_as_smtp_wants():
    raw = build().as_bytes()
    assert b"\r\n" in raw
    assert re.search(rb"[^\r]\n", raw) is None


def test_a_cancellation_says_method_cancel_in_the_mime_part():
    ctx = make_ctx("cancelled")
    parsed = reparse(build(render_notice("cancelled", ctx), invite(ctx)))
    calendar = next(part for part in parsed.walk() if part.get_content_type() == "text/calendar")
    assert calendar.get_param("method") == "CANCEL"
    assert calendar_method(invite(ctx)) == "CANCEL"


def test_without_an_invite_there_is_no_calendar_part():
    parsed = reparse(build(render_notice("completed", make_ctx("completed")), None))
    assert "text/calendar" not in [part.get_content_type() for part in parsed.walk()]
    assert list(parsed.iter_attachments()) == []


def test_the_message_id_is_a_function_of_the_idempotency_key():
    assert message_id_for(KEY) == message_id_for(KEY)
    assert message_id_for(KEY) != message_id_for("update-42:scheduled:3")
    assert re.fullmatch(r"<update-42\.scheduled\.2\.[0-9a-f]{16}@upkeep>", message_id_for(KEY))
    # keys that sanitise alike still differ by their digest
    assert message_id_for("a:b:1") != message_id_for("a.b:1")
    # Two installations never share a Message-ID for the same notice key.
    one, two = message_id_for(KEY, installation="3f9a0c1b2d4e"), message_id_for(KEY, installation="77aa01")
    assert one != two and one != message_id_for(KEY) and ".3f9a0c1b2d4e." in one
    assert build().message_id == build().message_id == message_id_for(KEY, "vendor.example")
    assert reparse(build())["Message-ID"] == message_id_for(KEY, "vendor.example")


@pytest.mark.parametrize(
    "field",
    ["subject", "sender", "recipient", "key"],
)
@pytest.mark.parametrize("bad", [INJECTION, "x\nBcc: victim@evil.example", "x\rBcc: y", "x\x00y"])
def test_header_injection_is_refused_naming_the_value(field: str, bad: str):
    rendered = render_notice("scheduled", make_ctx())
    with pytest.raises(ValueError) as refused:
        if field == "subject":
            build(RenderedNotice(bad, rendered.text, rendered.html))
        elif field == "sender":
            build(sender=bad)
        elif field == "recipient":
            build(recipients=("ops@acme.example", bad))
        else:
            build(key=bad)
    assert repr(bad) in str(refused.value) or "CR" in str(refused.value)


def test_a_customer_named_to_inject_headers_cannot():
    ctx = make_ctx(cluster=f"prod{INJECTION}")
    rendered = render_notice("scheduled", ctx)
    with pytest.raises(ValueError, match=re.escape(repr(rendered.subject))):
        build(rendered, invite(ctx))


@pytest.mark.parametrize(
    "bad", ["not-an-address", "a@", "@b.example", "A <a@b.example>", "a@b.example, c@d.example"]
)
def test_recipients_must_be_plain_addresses(bad: str):
    with pytest.raises(ValueError, match="not an email address"):
        check_address("To", bad)
    with pytest.raises(ValueError):
        build(recipients=(bad,))


def test_a_message_needs_recipients_and_a_well_formed_message_id():
    rendered = render_notice("scheduled", make_ctx())
    with pytest.raises(ValueError, match="recipient"):
        build(recipients=())
    with pytest.raises(ValueError, match="Message-ID"):
        build_message(
            rendered,
            None,
            sender="u@v.example",
            recipients=["a@b.example"],
            message_id="nope",
            idempotency_key=KEY,
        )


def test_the_smtp_password_never_shows_in_reprs():
    transport = SmtpTransport("mail.example", 587, user="upkeep", password="hunter2", starttls=True)
    assert "hunter2" not in repr(transport)
