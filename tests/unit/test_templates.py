"""Notice templates and calendar invites: every kind renders, times are right across DST, customer text
is data (escaped in HTML, literal in text), and the invite is one stable calendar event."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import UndefinedError

from templates import (
    NoticeContext,
    NoticeKind,
    environment,
    format_duration,
    format_slot,
    render_notice,
    template_variables,
)
from templates.ics import INVITE_KINDS, invite, uid_for

# 2026-11-03 02:00 in New York is after the DST change of 1 Nov (EST, UTC-5); 27 Oct is before (EDT).
AFTER_DST = datetime(2026, 11, 3, 7, 0, tzinfo=UTC)
BEFORE_DST = datetime(2026, 10, 27, 6, 0, tzinfo=UTC)
HOSTILE = "<script>x</script> & {{ 7*7 }}"


def make_ctx(kind: str = "scheduled", **overrides: Any) -> NoticeContext:
    start = overrides.pop("slot_start", AFTER_DST)
    fields: dict[str, Any] = {
        "kind": kind,
        "update_ref": "update-42",
        "sequence": 2,
        "customer": "Acme Corp",
        "customer_timezone": "America/New_York",
        "cluster": "prod-east",
        "from_version": "4.2.1",
        "to_version": "4.3.0",
        "slot_start": start,
        "slot_end": start + timedelta(hours=2, minutes=30),
        "recipients": ("ops@acme.example", "cto@acme.example"),
        "organizer": "upkeep@vendor.example",
        "support_contact": "support@vendor.example",
        "defer_instructions": "Run `upkeep defer update-42 --to DATE` or reply to this email.",
        "deferral_limits": "at most 2 deferrals of up to 14 days each",
        "reason": "node n2 did not become healthy" if kind == "failed" else "",
        "previous_slot_start": start - timedelta(days=7),
        "next_slot_start": start + timedelta(days=7),
    }
    fields.update(overrides)
    return NoticeContext(**fields)


@pytest.mark.parametrize("kind", list(NoticeKind))
def test_every_kind_renders_the_essentials_in_text_and_html(kind: NoticeKind):
    rendered = render_notice(kind, make_ctx(kind))
    assert "prod-east" in rendered.subject
    assert "\n" not in rendered.subject
    for body in (rendered.text, rendered.html):
        assert "prod-east" in body
        assert "4.2.1" in body and "4.3.0" in body
        assert "Tue 3 Nov 2026 02:00 EST (07:00 UTC)" in body
        assert "2 h 30 min" in body
        assert "support@vendor.example" in body
        assert "update-42" in body
        assert "URGENT" not in body
        deferrable = kind.upcoming
        assert ("upkeep defer update-42" in body) is deferrable
        assert ("at most 2 deferrals of up to 14 days each" in body) is deferrable
    assert rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert rendered.text.endswith("\n")


@pytest.mark.parametrize("kind", list(NoticeKind))
@pytest.mark.parametrize("suffix", ["txt", "html"])
def test_a_missing_variable_is_an_error_not_a_blank(kind: NoticeKind, suffix: str):
    template = environment().get_template(f"{kind}.{suffix}.j2")
    variables = template_variables(make_ctx(kind))
    template.render(variables)  # complete: fine
    del variables["cluster"]
    with pytest.raises(UndefinedError, match="cluster"):
        template.render(variables)
    with pytest.raises(UndefinedError):
        template.render({})


@pytest.mark.parametrize(
    ("start", "zone", "shown"),
    [
        (AFTER_DST, "America/New_York", "Tue 3 Nov 2026 02:00 EST (07:00 UTC)"),
        (BEFORE_DST, "America/New_York", "Tue 27 Oct 2026 02:00 EDT (06:00 UTC)"),
        (datetime(2026, 12, 8, 7, 0, tzinfo=UTC), "America/New_York", "Tue 8 Dec 2026 02:00 EST (07:00 UTC)"),
        # +05:30, and the UTC day differs from the local one, so it is named
        (
            datetime(2026, 10, 27, 20, 30, tzinfo=UTC),
            "Asia/Kolkata",
            "Wed 28 Oct 2026 02:00 IST (Tue 27 Oct 20:30 UTC)",
        ),
        (datetime(2026, 10, 27, 4, 0, tzinfo=UTC), "Asia/Kolkata", "Tue 27 Oct 2026 09:30 IST (04:00 UTC)"),
    ],
)
def test_local_and_utc_times_across_dst_and_half_hour_zones(start: datetime, zone: str, shown: str):
    assert format_slot(start, zone) == shown
    rendered = render_notice("reminder", make_ctx("reminder", slot_start=start, customer_timezone=zone))
    assert shown in rendered.text
    assert shown in rendered.html
    assert zone in rendered.text


def test_the_slot_end_is_shown_in_its_own_offset_when_dst_changes_inside_the_slot():
    # 1 Nov 2026 01:30 EDT + 1 h = 01:30 EST (the hour repeats)
    start = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    ctx = make_ctx(slot_start=start, slot_end=start + timedelta(hours=1))
    text = render_notice("scheduled", ctx).text
    assert "Sun 1 Nov 2026 01:30 EDT (05:30 UTC)" in text
    assert "Sun 1 Nov 2026 01:30 EST (06:30 UTC)" in text
    assert "Expected duration:  1 h" in text


@given(
    moment=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/Berlin", "UTC"]),
)
def test_the_utc_part_always_names_the_utc_time(moment: datetime, zone: str):
    shown = format_slot(moment, zone)
    assert f"{moment:%H:%M} UTC)" in shown
    assert f" {moment.astimezone(ZoneInfo(zone)):%H:%M} " in shown


def test_customer_text_is_data_escaped_in_html_and_literal_in_text():
    ctx = make_ctx("failed", customer=HOSTILE, cluster=f"c{HOSTILE}", reason=HOSTILE, case_ref=HOSTILE)
    rendered = render_notice("failed", ctx)
    assert HOSTILE in rendered.text
    assert "49" not in rendered.text
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;x&lt;/script&gt; &amp; {{ 7*7 }}" in rendered.html
    assert "49" not in rendered.html
    assert HOSTILE in rendered.subject  # the subject is a header, not HTML


def test_preflight_reason_and_links_are_rendered_literally_too():
    summary = "3/3 nodes healthy\n<b>disk</b> 42% free"
    reminder = render_notice("reminder", make_ctx("reminder", preflight=summary))
    assert summary in reminder.text
    assert "&lt;b&gt;disk&lt;/b&gt;" in reminder.html
    bad_url = 'javascript:alert(1)" onclick="x'
    failed = render_notice("failed", make_ctx("failed", bundle_url=bad_url))
    assert "href" not in failed.html.split("Diagnostics bundle")[1].split("</li>")[0]
    assert "onclick=&#34;x" in failed.html


def test_urgent_is_marked_in_subject_and_both_bodies():
    rendered = render_notice("scheduled", make_ctx(urgent=True))
    assert rendered.subject.startswith("URGENT: ")
    assert "URGENT" in rendered.text.splitlines()[0]
    assert "URGENT" in rendered.html


def test_reminder_shows_the_preflight_summary_only_when_given():
    with_summary = render_notice("reminder", make_ctx("reminder", preflight="3/3 nodes healthy"))
    assert "Pre-flight check summary" in with_summary.text and "3/3 nodes healthy" in with_summary.text
    assert "3/3 nodes healthy" in with_summary.html
    without = render_notice("reminder", make_ctx("reminder"))
    assert "Pre-flight" not in without.text and "Pre-flight" not in without.html


def test_failed_shows_reason_case_and_bundle():
    ctx = make_ctx("failed", case_ref="CASE-1234", bundle_url="https://files.vendor.example/b/x.tgz")
    rendered = render_notice("failed", ctx)
    for body in (rendered.text, rendered.html):
        assert "node n2 did not become healthy" in body
        assert "CASE-1234" in body
        assert "https://files.vendor.example/b/x.tgz" in body
    assert '<a href="https://files.vendor.example/b/x.tgz">' in rendered.html
    plain = render_notice("failed", make_ctx("failed"))
    assert "Support case" not in plain.text and "Diagnostics" not in plain.text


def test_partial_says_when_it_continues_and_moves_show_the_old_time():
    partial = render_notice("partial", make_ctx("partial"))
    assert "partially done" in partial.text
    assert "continues on Tue 10 Nov 2026 02:00 EST (07:00 UTC)" in partial.text
    assert "Tue 10 Nov 02:00 EST" in partial.subject
    moved = render_notice("rescheduled", make_ctx("rescheduled"))
    assert "Tue 27 Oct 2026 03:00 EDT (07:00 UTC)" in moved.text  # the previous slot, a week earlier


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"slot_start": datetime(2026, 11, 3, 2, 0)}, "naive"),
        ({"slot_end": AFTER_DST}, "before it starts"),
        ({"customer_timezone": "Mars/Olympus"}, "not an IANA zone"),
        ({"update_ref": "update 42\r\n"}, "update_ref"),
        ({"sequence": -1}, "sequence"),
        ({"recipients": ()}, "recipient"),
        ({"defer_instructions": ""}, "defer_instructions"),
        ({"kind": "failed", "reason": ""}, "reason"),
        ({"kind": "partial", "next_slot_start": None}, "next_slot_start"),
        ({"kind": "deferred", "previous_slot_start": None}, "previous_slot_start"),
        ({"kind": "exploded"}, "exploded"),
    ],
)
def test_contexts_that_would_mislead_a_customer_are_refused(overrides: dict[str, Any], message: str):
    kind = overrides.pop("kind", "scheduled")
    with pytest.raises(ValueError, match=message):
        make_ctx(kind, **overrides)


def test_render_refuses_a_kind_that_is_not_the_contexts():
    with pytest.raises(ValueError, match="describes a scheduled notice"):
        render_notice("cancelled", make_ctx("scheduled"))


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(minutes=45), "45 min"),
        (timedelta(hours=2), "2 h"),
        (timedelta(hours=1, minutes=30), "1 h 30 min"),
        (timedelta(days=1, hours=3), "1 day 3 h"),
        (timedelta(days=2), "2 days"),
    ],
)
def test_durations_read_naturally(span: timedelta, text: str):
    assert format_duration(span) == text


# --- the calendar invite -------------------------------------------------------------------------


def parse(ics: bytes) -> tuple[icalendar.Calendar, icalendar.Event]:
    calendar = icalendar.Calendar.from_ical(ics)
    events = calendar.walk("VEVENT")
    assert len(events) == 1
    return calendar, events[0]


def test_invite_is_a_request_for_the_slot_in_utc():
    ctx = make_ctx(slot_start=datetime(2026, 10, 27, 2, 0, tzinfo=ZoneInfo("America/New_York")))
    calendar, event = parse(invite(ctx, stamp=AFTER_DST))
    assert str(calendar["method"]) == "REQUEST"
    assert event.decoded("dtstart") == ctx.slot_start
    assert event.decoded("dtstart").utcoffset() == timedelta(0)
    assert event.decoded("dtend") == ctx.slot_end
    assert b"DTSTART:20261027T060000Z" in invite(ctx)
    assert str(event["uid"]) == "update-42@upkeep"
    assert int(event["sequence"]) == 2
    assert str(event["status"]) == "CONFIRMED"
    assert "prod-east" in str(event["summary"]) and "4.3.0" in str(event["summary"])
    assert "upkeep defer update-42" in str(event["description"])
    assert str(event["organizer"]) == "mailto:upkeep@vendor.example"
    attendees = event["attendee"]
    assert sorted(str(a) for a in attendees) == ["mailto:cto@acme.example", "mailto:ops@acme.example"]


def test_uid_is_stable_across_sequences_and_kinds():
    first = parse(invite(make_ctx(sequence=0)))[1]
    moved = parse(invite(make_ctx("rescheduled", sequence=5, slot_start=AFTER_DST + timedelta(days=1))))[1]
    assert str(first["uid"]) == str(moved["uid"]) == uid_for("update-42")
    assert int(first["sequence"]) == 0 and int(moved["sequence"]) == 5
    other = parse(invite(make_ctx(update_ref="update-43")))[1]
    assert str(other["uid"]) != str(first["uid"])


def test_cancel_withdraws_the_event():
    calendar, event = parse(invite(make_ctx("cancelled", sequence=3)))
    assert str(calendar["method"]) == "CANCEL"
    assert str(event["status"]) == "CANCELLED"
    assert int(event["sequence"]) == 3
    assert str(event["uid"]) == "update-42@upkeep"


def test_a_stopped_update_withdraws_the_event_as_a_cancelled_one_does():
    """The slot of an update stopped for now will not happen: the same event, withdrawn; a later
    'rescheduled' (a higher SEQUENCE) puts it back."""
    calendar, event = parse(invite(make_ctx("stopped", sequence=4)))
    assert str(calendar["method"]) == "CANCEL"
    assert str(event["status"]) == "CANCELLED" and int(event["sequence"]) == 4
    assert str(event["uid"]) == "update-42@upkeep"
    assert str(event["summary"]) == "Stopped: Upgrade of prod-east to 4.3.0"


def test_a_stopped_notice_says_where_the_cluster_stands_with_hostile_names_as_data():
    ctx = make_ctx(
        "stopped",
        customer=HOSTILE,
        cluster=f"c{HOSTILE}",
        node_versions=(f"n{HOSTILE}: 4.3.0", "n2: 4.2.1 (not upgraded)"),
        nodes_upgraded=1,
        nodes_total=2,
    )
    rendered = render_notice("stopped", ctx)
    text = " ".join(rendered.text.split())
    assert "1 of 2 nodes run 4.3.0 now" in text and f"n{HOSTILE}: 4.3.0" in text
    assert "without a new notice from us" in text and "support@vendor.example" in text
    assert HOSTILE not in rendered.html and "&lt;script&gt;x&lt;/script&gt; &amp; {{ 7*7 }}" in rendered.html
    assert "49" not in rendered.text + rendered.html
    assert "maintenance portal" not in rendered.text  # no portal: no link
    linked = render_notice("stopped", make_ctx("stopped", portal_link="https://portal.example/maintenance/x"))
    assert "maintenance portal: https://portal.example/maintenance/x" in " ".join(linked.text.split())
    assert 'href="https://portal.example/maintenance/x"' in linked.html
    untouched = " ".join(render_notice("stopped", make_ctx("stopped")).text.split())
    assert "Nothing was changed on your cluster: it stays in service on 4.2.1" in untouched
    assert "nodes run" not in untouched


def test_urgent_invite_and_hostile_text_stay_inside_their_properties():
    ics = invite(make_ctx(urgent=True, cluster="evil\r\nATTENDEE:mailto:x@evil.example"))
    _, event = parse(ics)
    assert str(event["summary"]).startswith("URGENT: ")
    assert len(event["attendee"]) == 2
    assert b"\r\nATTENDEE:mailto:x@evil" not in ics


@pytest.mark.parametrize("kind", sorted(set(NoticeKind) - INVITE_KINDS))
def test_reports_of_what_happened_carry_no_invite(kind: NoticeKind):
    with pytest.raises(ValueError, match="no calendar invite"):
        invite(make_ctx(kind))


def test_contexts_are_frozen_values():
    ctx = make_ctx()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.cluster = "x"  # type: ignore[misc]
