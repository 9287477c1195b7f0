"""Case rules not covered by tests/unit/scheduling/test_sla.py: fall-back DST for the wall-clock
targets, holidays for P0-P2, the customer's own zone for P3, Europe's DST weekend, a holiday after a
DST change, auto-close across DST, and the case-id and category/status parsing of inventory.cases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from inventory.cases import CaseError, CaseStatus, check_case_ref, parse_category, parse_status
from scheduling.sla import BusinessCalendar, Category, auto_close_due, first_response_due, queue_for
from scheduling.times import load_zone

NY = load_zone("America/New_York")
BERLIN = load_zone("Europe/Berlin")
TOKYO = load_zone("Asia/Tokyo")


@pytest.mark.parametrize(
    ("priority", "hours", "wall", "offset"),
    [("P0", 1, "01:30", -4), ("P1", 2, "01:30", -5), ("P2", 4, "03:30", -5)],  # 01:30 happens twice
)
def test_wall_clock_targets_across_fall_back_count_elapsed_hours(
    priority: str, hours: int, wall: str, offset: int
) -> None:
    opened = datetime(2026, 11, 1, 0, 30, tzinfo=NY)
    due = first_response_due(opened, priority, BusinessCalendar("America/New_York"))
    assert due - opened == timedelta(hours=hours)
    local = due.astimezone(NY)
    assert (local.strftime("%H:%M"), local.utcoffset()) == (wall, timedelta(hours=offset))


@pytest.mark.parametrize("priority", ["P0", "urgent", "sev2", "High", "P2", "3"])
def test_wall_clock_targets_ignore_holidays(priority: str) -> None:
    christmas = BusinessCalendar("Europe/Berlin", holidays=frozenset({date(2026, 12, 25)}))
    opened = datetime(2026, 12, 25, 10, tzinfo=BERLIN)
    due = first_response_due(opened, priority, christmas)
    assert timedelta(hours=1) <= due - opened <= timedelta(hours=4)


def test_p3_uses_the_customers_zone_and_business_hours() -> None:
    opened = datetime(2026, 6, 5, 7, tzinfo=UTC)  # Fri: 16:00 in Tokyo, 03:00 in New York
    tokyo = first_response_due(opened, "P3", BusinessCalendar("Asia/Tokyo"))
    new_york = first_response_due(opened, "P3", BusinessCalendar("America/New_York"))
    assert tokyo == datetime(2026, 6, 8, 16, tzinfo=TOKYO)  # 1 h Fri + 7 h Mon
    assert new_york == datetime(2026, 6, 5, 17, tzinfo=NY)  # opened before hours: that day's close


def test_p3_across_europes_spring_forward_weekend() -> None:
    opened = datetime(2026, 3, 27, 16, tzinfo=BERLIN)  # Fri CET; clocks go forward Sun 29th
    due = first_response_due(opened, "P3", BusinessCalendar("Europe/Berlin"))
    assert due == datetime(2026, 3, 30, 16, tzinfo=BERLIN)
    assert opened.utcoffset() == timedelta(hours=1)
    assert due.astimezone(BERLIN).utcoffset() == timedelta(hours=2)


def test_p3_holiday_monday_after_fall_back() -> None:
    cal = BusinessCalendar("America/New_York", holidays=frozenset({date(2026, 11, 2)}))
    due = first_response_due(datetime(2026, 10, 30, 16, tzinfo=NY), "low", cal)
    assert due == datetime(2026, 11, 3, 16, tzinfo=NY)  # 1 h Fri, Mon off, 7 h Tue (now EST)
    assert due.tzinfo is UTC


def test_p3_opened_on_a_holiday_evening_before_a_weekend() -> None:
    cal = BusinessCalendar("Europe/Berlin", holidays=frozenset({date(2026, 4, 3), date(2026, 4, 6)}))
    due = first_response_due(datetime(2026, 4, 2, 18, tzinfo=BERLIN), "P3", cal)  # Thu after close
    assert due == datetime(2026, 4, 7, 17, tzinfo=BERLIN)  # Good Friday, weekend, Easter Monday off


def test_auto_close_waits_fourteen_elapsed_days_across_dst() -> None:
    since = datetime(2026, 10, 25, 12, tzinfo=NY)  # EDT; EST from Nov 1
    assert auto_close_due(since, 2, datetime(2026, 11, 8, 11, tzinfo=NY))  # 14 x 24 h exactly
    assert not auto_close_due(since, 2, datetime(2026, 11, 8, 10, 59, tzinfo=NY))
    assert not auto_close_due(since, 1, datetime(2027, 1, 1, tzinfo=UTC))  # silence alone is not enough
    assert auto_close_due(since, 5, datetime(2026, 11, 8, 16, tzinfo=UTC))


@pytest.mark.parametrize(
    "ref", ["CASE-1", "CASE-000123456789", "SUP-4711", "JIRA2-17", "AB-1", "Z123456789-0"]
)
def test_valid_case_ids(ref: str) -> None:
    assert check_case_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    ["../../etc", "CASE-1/../x", "CASE-1;id", "$(id)", "`id`", "CASE-", "case-1", "CASE-1 ", " CASE-1",
     "A-1", "ABCDEFGHIJK-1", "SUP-12345678901", "SUP_1", "SUP-1-2", "SUP-1\n", "", None, 7],
)  # fmt: skip
def test_case_ids_refused(ref: object) -> None:
    with pytest.raises(CaseError, match="is not CASE-<digits> or an external id"):
        check_case_ref(ref)


@pytest.mark.parametrize(
    ("text", "category", "queue"),
    [
        ("Issue", Category.ISSUE, "Systems Reliability Engineer"),
        ("issue", Category.ISSUE, "Systems Reliability Engineer"),
        ("Feature Request", Category.FEATURE_REQUEST, "Customer Success Representative"),
        ("feature-request", Category.FEATURE_REQUEST, "Customer Success Representative"),
        ("FEATURE_REQUEST", Category.FEATURE_REQUEST, "Customer Success Representative"),
    ],
)
def test_categories_route_to_queues(text: str, category: Category, queue: str) -> None:
    assert parse_category(text) is category
    assert queue_for(parse_category(text)) == queue


def test_bad_category_and_status() -> None:
    with pytest.raises(CaseError, match="expected Issue or Feature Request"):
        parse_category("question")
    with pytest.raises(CaseError, match="expected new, open, waiting on customer, escalated, closed"):
        parse_status("pending")
    assert parse_status("Waiting on customer") is CaseStatus.waiting_on_customer
