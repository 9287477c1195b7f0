"""The hand-written invite (templates/ics.py) read back by `icalendar`: whatever text a customer's
names and reasons hold, it stays inside its property and comes back as given, lines are folded at 75
octets without splitting a character, and a CR/LF in an address is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from templates.ics import invite
from tests.unit.test_templates import make_ctx

STAMP = datetime(2026, 11, 23, 12, 0, 59, 123456, tzinfo=UTC)
free_text = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from('\r\n;,\\:"'), max_size=200
)


def event_of(ics: bytes) -> icalendar.Event:
    (event,) = icalendar.Calendar.from_ical(ics).walk("VEVENT")
    return event


def read_back(text: str) -> str:
    """Every line break comes back as LF."""
    return re.sub(r"\r\n|\r", "\n", text)


def assert_folded(ics: bytes) -> None:
    assert ics.endswith(b"\r\n") and re.search(rb"[^\r]\n|\r[^\n]", ics) is None
    for line in ics.split(b"\r\n"):
        assert len(line) <= 75
        line.decode()  # never cut inside a UTF-8 sequence


@settings(deadline=None)
@given(cluster=free_text.filter(str.strip), reason=free_text, urgent=st.booleans())
def test_customer_text_comes_back_as_given_and_stays_in_its_property(cluster: str, reason: str, urgent: bool):
    ctx = make_ctx("rescheduled", cluster=cluster, reason=reason, urgent=urgent)
    ics = invite(ctx, stamp=STAMP)
    assert_folded(ics)
    event = event_of(ics)
    as_read = read_back(cluster)
    assert str(event["summary"]) == f"{'URGENT: ' if urgent else ''}Upgrade of {as_read} to 4.3.0"
    assert str(event["description"]).startswith(f"{as_read}: 4.2.1 -> 4.3.0 (update-42)\n")
    if reason:
        # read back as a whole: a CR at the end of the reason and the line break after it are one break
        assert str(event["description"]).endswith(
            read_back(f"\nNote: {reason}\nSupport: support@vendor.example")
        )
    assert len(event["attendee"]) == 2 and str(event["organizer"]) == "mailto:upkeep@vendor.example"
    assert event.decoded("dtstamp") == STAMP.replace(microsecond=0)
    assert (int(event["priority"]) == 1) if urgent else ("priority" not in event)


def test_long_non_ascii_lines_fold_between_characters():
    ics = invite(make_ctx(cluster="é" * 100 + "→" * 40), stamp=STAMP)
    assert_folded(ics)
    assert str(event_of(ics)["summary"]) == "Upgrade of " + "é" * 100 + "→" * 40 + " to 4.3.0"


@pytest.mark.parametrize("field", ["organizer", "recipients"])
def test_an_address_with_a_line_break_is_refused(field: str):
    bad = "ops@acme.example\r\nATTENDEE:mailto:x@evil.example"
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        invite(make_ctx(**{field: (bad,) if field == "recipients" else bad}), stamp=STAMP)


def test_text_is_escaped_as_rfc_5545_says():
    ics = invite(make_ctx(cluster="a,b;c\\d"), stamp=STAMP)
    assert b"SUMMARY:Upgrade of a\\,b\\;c\\\\d to 4.3.0\r\n" in ics
    assert b"DTSTAMP:20261123T120059Z\r\n" in ics
