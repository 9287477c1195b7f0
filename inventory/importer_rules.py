"""Field rules for the inventory file: what each mapping may contain (TOP, CUSTOMER, ... RELEASE) and
the checks its values must pass. A check returns what is wrong with a value, or None."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any

from inventory.models import AccessKind, ClusterKind
from scheduling.errors import SchedulingError
from scheduling.versions import is_version
from scheduling.windows import MAX_DURATION, MIN_DURATION, _parse_start, parse_days, parse_duration

Check = Callable[[Any], str | None]  # what is wrong with a value, or None


def show(value: object) -> str:
    """repr() for messages, so newlines and NULs stay visible; long values are cut."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:80]!r}... ({len(value)} characters)"
    return repr(value)


def _rule(ok: Callable[[Any], object], what: str) -> Check:
    return lambda v: None if ok(v) else f"{show(v)} is not {what}"


def _regex(pattern: str, what: str) -> Check:
    return _rule(re.compile(pattern).fullmatch, what)


def _choice(*allowed: str) -> Check:
    return _rule(lambda v: v in allowed, f"one of {', '.join(allowed)}")


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")


def ip_address(value: str, *versions: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    return address if address.version in versions and "%" not in value else None  # no IPv6 zone ids


def is_hostname(value: str) -> bool:
    """RFC 1123: dot-separated ASCII labels of 1-63 letters, digits and '-', not starting or ending with
    '-', 253 characters at most; an all-numeric last label only as part of a valid IPv4 address."""
    labels = value.split(".")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit() or ip_address(value, 4) is not None


def _is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and len(value) <= 254 and _EMAIL_LOCAL.fullmatch(local) and len(local) <= 64) and (
        is_hostname(domain)
    )


def _is_package(value: str) -> bool:
    parts = value.split("/")
    return (
        bool(re.fullmatch(r"[A-Za-z0-9._/-]{1,255}", value))
        and ".." not in value
        and (parts[0] != "" and not any(part.startswith("-") for part in parts))
    )


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones() - {"localtime", "Factory"})


def _scheduling(parse: Callable[[Any], object]) -> Check:
    """A check from a `scheduling` parser: its message (which names the value) is the problem."""

    def check(value: Any) -> str | None:
        try:
            parse(value)
        except SchedulingError as exc:
            return str(exc).removeprefix("window ")
        return None

    return check


def _span(value: str) -> timedelta | None:
    try:
        return parse_duration(value)
    except SchedulingError:
        return None


def _window_length(value: str) -> str | None:
    span = _span(value)
    if span is None:
        return f"{show(value)} is not a duration (e.g. '4h', '90m', '2h30m' or '1d')"
    if not MIN_DURATION <= span <= MAX_DURATION:
        return f"{show(value)} is not between 1 minute and 7 days"
    return None


MAX_NOTICE = timedelta(days=60)


def notice_hours(value: str) -> int:
    """'72h' or '7d' → whole hours (the value must have passed NOTICE_SPAN)."""
    span = _span(value)
    assert span is not None
    return int(span.total_seconds()) // 3600


def _notice_span(value: str) -> str | None:
    span = _span(value)
    if span is None or span % timedelta(hours=1):
        return f"{show(value)} is not a whole number of hours or days (e.g. '72h' or '7d')"
    if span > MAX_NOTICE:
        return f"{show(value)} is more than 60 days"
    return None


def _whole_day(value: Any) -> str | None:
    if isinstance(value, date) and not isinstance(value, datetime):
        return None
    return f"{show(str(value))} is not a date (whole days, e.g. 2026-12-20)"


def _deadline(value: Any) -> str | None:
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return None if in_date_range(value) else f"{show(str(value))} is {DATE_RANGE}"
    return f"{show(str(value))} must be a date and time with a zone, e.g. 2026-12-31T00:00:00Z"


DATE_RANGE = "out of range (years 1971 to 9998, UTC)"


def in_date_range(value: datetime) -> bool:
    """A zone-aware time Upkeep can store and compute with: in UTC (where 9999-12-31T23:00-12:00
    already overflows) and with room for weeks of window arithmetic on either side."""
    try:
        return 1971 <= value.astimezone(UTC).year <= 9998
    except OverflowError:
        return False


NAME = _regex(r"[a-z0-9][a-z0-9-]{0,62}", "a valid name (1-63 of a-z, 0-9 and '-', not starting with '-')")
SSH_USER = _regex(r"[a-z_][a-z0-9_-]{0,31}", "a valid ssh user (^[a-z_][a-z0-9_-]{0,31}$)")
PORT = _rule(lambda v: 1 <= v <= 65535, "a port number (1-65535)")
VERSION = _rule(is_version, "a version (MAJOR.MINOR.PATCH, e.g. 9.10.0)")
HOSTNAME = _rule(is_hostname, "an RFC 1123 hostname")

ZONE = _rule(lambda v: v in _zones(), "an IANA time zone (e.g. America/New_York)")
REASON = _rule(lambda v: len(v) <= 255 and v.isprintable(), "printable text (255 at most)")

# kind: str, int, bool, seq, map, time (date-time), date (whole day) or strs (a string or list of them)
Field = tuple[str, Check | None, bool]  # kind, rule, required
TOP: dict[str, Field] = {
    "customers": ("seq", None, True),
    "releases": ("seq", None, False),
    "vendor_blackouts": ("seq", None, False),
    "oncall": ("map", None, False),
}
CUSTOMER: dict[str, Field] = {
    "name": ("str", NAME, True),
    "timezone": ("str", ZONE, True),
    "contacts": ("seq", None, False),
    "clusters": ("seq", None, True),
    "notice": ("map", None, False),
    "requires_approval": ("bool", None, False),
    "blackouts": ("seq", None, False),
    "portal_users": ("seq", None, False),  # importer_portal
    "holidays": ("map", None, False),
}
HOLIDAYS: dict[str, Field] = {
    "country": ("str", None, True),
    "subdivision": ("str", None, False),
}
NOTICE: dict[str, Field] = {
    "product_update": ("str", _notice_span, False),
    "cloud_release": ("str", _notice_span, False),
}
BLACKOUT: dict[str, Field] = {
    "start": ("date", _whole_day, True),
    "end": ("date", _whole_day, True),
    "reason": ("str", REASON, False),
    "timezone": ("str", ZONE, False),  # the customer's zone when left out
}
VENDOR_BLACKOUT: dict[str, Field] = {**BLACKOUT, "timezone": ("str", ZONE, True)}
WINDOW: dict[str, Field] = {
    "days": ("strs", _scheduling(parse_days), True),
    "start": (
        "str",
        _rule(lambda v: _scheduling(_parse_start)(v) is None, "a local time HH:MM (e.g. '02:00')"),
        True,
    ),
    "duration": ("str", _window_length, True),
    "timezone": ("str", ZONE, False),  # the customer's zone when left out
}
CONTACT: dict[str, Field] = {
    "email": ("str", _rule(_is_email, "a valid email address"), True),
    # names end up in mail headers: no control characters
    "name": (
        "str",
        _rule(lambda v: len(v) <= 128 and v.isprintable(), "printable text (128 at most)"),
        False,
    ),
    "role": ("str", _choice("primary", "technical", "billing", "escalation"), False),
}
CLUSTER: dict[str, Field] = {
    "name": ("str", NAME, True),
    "kind": ("str", _choice(*ClusterKind), True),
    "version": ("str", VERSION, True),
    "profile": (
        "str",
        _regex(r"[a-z0-9][a-z0-9_-]{0,63}", "a valid profile (^[a-z0-9][a-z0-9_-]{0,63}$)"),
        False,
    ),
    "ring": ("str", _choice("canary", "early", "broad"), False),
    "access": ("map", None, True),
    "nodes": ("seq", None, True),
    "windows": ("seq", None, False),
}
DIRECT: dict[str, Field] = {"type": ("str", _choice(*AccessKind), True)}
JUMP: dict[str, Field] = {
    **DIRECT,
    "host": ("str", _rule(is_hostname, "a hostname or an IPv4 address"), True),
    "port": ("int", PORT, False),
    "user": ("str", SSH_USER, False),
}
NODE: dict[str, Field] = {
    "hostname": ("str", HOSTNAME, True),
    "address": ("str", _rule(lambda v: is_hostname(v) or ip_address(v, 4, 6), "a hostname or an IP"), False),
    "port": ("int", PORT, False),
    "user": ("str", SSH_USER, False),
}
RELEASE: dict[str, Field] = {
    "version": ("str", VERSION, True),
    "package": ("str", _rule(_is_package, "a relative path of [A-Za-z0-9._/-] without '..'"), True),
    "sha256": ("str", _regex(r"[0-9a-f]{64}", "64 lowercase hex digits"), True),
    "from": ("seq", None, True),
    "deadline": ("time", _deadline, False),
}


_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
ONCALL: dict[str, Field] = {
    "timezone": ("str", ZONE, True),
    "handover": ("str", _rule(_HHMM.fullmatch, "a local time HH:MM (e.g. '09:00')"), True),
    "rotation": ("str", _choice("daily", "weekly"), True),
    "starts": ("date", _whole_day, True),  # the first hand-over; weekly: the hand-over weekday
    "engineers": ("seq", None, True),
    "team_lead": ("map", None, True),
    "escalation": ("seq", None, True),  # support manager, then senior director: one level at a time
    "informed": ("seq", None, False),  # kept informed of P0s (the VP of customer success)
}
PERSON: dict[str, Field] = {
    "name": (
        "str",
        _rule(lambda v: 0 < len(v) <= 128 and v.isprintable(), "printable text (128 at most)"),
        True,
    ),
    "email": ("str", _rule(_is_email, "a valid email address"), True),
    # An Apprise URL reaching this person (pager, chat); checked again when the alert is sent.
    "notify": ("str", _regex(r"[a-z][a-z0-9+.-]*://\S+", "an Apprise URL (scheme://...)"), False),
    "role": ("str", REASON, False),
}


def address_key(address: str) -> str:
    """Addresses compared the way a resolver would: IPs in canonical form, names without case."""
    ip = ip_address(address, 4, 6)
    return str(ip) if ip else address.lower()
