"""Customer notices: one Jinja2 environment, one template pair (text + HTML) per kind of notice.

Templates share a layout through inheritance (`base.txt.j2`, `base.html.j2`). Every value a template
sees is data: it is printed, never evaluated, and `.html.j2` output is autoescaped, so a customer called
`<script>x</script> & {{ 7*7 }}` appears exactly like that. `StrictUndefined` makes a missing or
misspelt variable an error instead of a silent blank in a customer's inbox.

Times are shown twice, in the customer's zone with its abbreviation and in UTC, e.g.
"Tue 8 Dec 2026 02:00 EST (07:00 UTC)". Month and day names are spelt out here, not by the locale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

__all__ = [
    "NoticeContext",
    "NoticeKind",
    "RenderedNotice",
    "environment",
    "format_duration",
    "format_slot",
    "render_notice",
    "template_variables",
]

TEMPLATE_DIR = Path(__file__).parent
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class NoticeKind(StrEnum):
    scheduled = "scheduled"
    reminder = "reminder"
    rescheduled = "rescheduled"
    deferred = "deferred"
    confirmed = "confirmed"  # a designated user acknowledged the time (the portal's Confirm)
    cancelled = "cancelled"
    started = "started"
    completed = "completed"
    failed = "failed"
    partial = "partial"
    # Stopped for now, not re-slotted (a run that made no progress in windows in a row: flows/outcomes.py
    # `_stalled`): the slot the customer was told of will not happen, nor anything more without a notice.
    stopped = "stopped"

    @property
    def upcoming(self) -> bool:
        """The update is still ahead, so the customer can plan around it and may defer it."""
        return self in _UPCOMING


_UPCOMING = frozenset(
    {
        NoticeKind.scheduled,
        NoticeKind.reminder,
        NoticeKind.rescheduled,
        NoticeKind.deferred,
        NoticeKind.confirmed,
        NoticeKind.partial,
    }
)

_SUBJECTS = {
    NoticeKind.scheduled: "Upgrade scheduled: {cluster} {from_version} → {to_version} on {start_short}",
    NoticeKind.reminder: "Reminder: {cluster} upgrade to {to_version} on {start_short}",
    NoticeKind.rescheduled: "Upgrade rescheduled: {cluster} to {to_version}, now on {start_short}",
    NoticeKind.deferred: "Upgrade deferred: {cluster} to {to_version}, now on {start_short}",
    NoticeKind.confirmed: "Upgrade confirmed: {cluster} to {to_version} on {start_short}",
    NoticeKind.cancelled: "Upgrade cancelled: {cluster} to {to_version} (was {start_short})",
    NoticeKind.started: "Upgrade started: {cluster} {from_version} → {to_version}",
    NoticeKind.completed: "Upgrade completed: {cluster} is now on {to_version}",
    NoticeKind.failed: "Upgrade failed: {cluster} to {to_version}",
    NoticeKind.partial: "Upgrade partially done: {cluster} to {to_version}, continues on {next_short}",
    NoticeKind.stopped: "Upgrade stopped for now: {cluster} to {to_version}",
}


@dataclass(frozen=True, kw_only=True)
class NoticeContext:
    """Everything a notice says. Strings are shown as given (they may come from customers)."""

    kind: NoticeKind
    update_ref: str  # stable id of the scheduled update, e.g. "update-42"; the invite's UID derives from it
    sequence: int  # bumped by the caller on every change of the update (the invite's SEQUENCE)
    customer: str
    customer_timezone: str  # IANA zone, e.g. "America/New_York"
    cluster: str
    from_version: str
    to_version: str
    slot_start: datetime  # aware
    slot_end: datetime  # aware
    recipients: tuple[str, ...]  # the customer's contacts (addresses)
    organizer: str  # the vendor's address that sends the invite, e.g. "upkeep@vendor.example"
    support_contact: str
    defer_instructions: str = ""  # required for upcoming kinds: CLI command and/or reply instruction
    deferral_limits: str = ""  # required for upcoming kinds, e.g. "2 deferrals, 14 days each"
    urgent: bool = False
    reason: str = ""  # why it failed/was cancelled/was moved; required for failed
    preflight: str = ""  # pre-flight summary, shown in reminders
    # A cluster reached through the customer's support tunnel: its nodes, each of which must have the
    # tunnel open for the window (reminders say so, with the command).
    tunnel_nodes: tuple[str, ...] = ()
    tunnel_command: str = "upkeep-agent tunnel start"
    case_ref: str = ""
    bundle_url: str = ""
    previous_slot_start: datetime | None = None  # required for rescheduled and deferred
    next_slot_start: datetime | None = None  # required for partial
    installation: str = ""  # this installation's id: part of the invite's UID
    # Where each node stands when an update stopped mid-way ("node-1: 9.10.0"): cancelled, failed, partial,
    # stopped.
    node_versions: tuple[str, ...] = ()
    # How many of the cluster's nodes run `to_version` now, of how many (stopped: the cluster's state).
    nodes_upgraded: int = 0
    nodes_total: int = 0
    paused_by_us: bool = False  # stopped: paused by an SRE past its window, not stalled (its own words)
    confirmed_by: str = ""  # who confirmed the time (confirmed notices)
    portal_link: str = ""  # the update's page in the customer portal (a signed deep link), if any

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", NoticeKind(self.kind))
        object.__setattr__(self, "recipients", tuple(self.recipients))
        object.__setattr__(self, "node_versions", tuple(self.node_versions))
        object.__setattr__(self, "tunnel_nodes", tuple(self.tunnel_nodes))
        if not _REF.fullmatch(self.update_ref):
            raise ValueError(f"update_ref {self.update_ref!r}: expected letters, digits, '.', '_' or '-'")
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int) or self.sequence < 0:
            raise ValueError(f"sequence {self.sequence!r}: expected an integer >= 0")
        try:
            ZoneInfo(self.customer_timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"customer_timezone {self.customer_timezone!r} is not an IANA zone") from None
        for name in ("slot_start", "slot_end", "previous_slot_start", "next_slot_start"):
            value = getattr(self, name)
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"{name} {value!r} is naive: notices need time-zone-aware datetimes")
        if self.slot_end <= self.slot_start:
            raise ValueError(f"slot ends ({self.slot_end}) before it starts ({self.slot_start})")
        if not self.recipients:
            raise ValueError(f"{self.update_ref}: a notice needs at least one recipient")
        required = {"support_contact": True, "organizer": True}
        required |= {"defer_instructions": self.kind.upcoming, "deferral_limits": self.kind.upcoming}
        required |= {"reason": self.kind is NoticeKind.failed}
        required |= {"previous_slot_start": self.kind in (NoticeKind.rescheduled, NoticeKind.deferred)}
        required |= {"next_slot_start": self.kind is NoticeKind.partial}
        missing = [name for name, needed in required.items() if needed and not getattr(self, name)]
        if missing:
            raise ValueError(f"a {self.kind} notice needs {', '.join(missing)}")


@dataclass(frozen=True)
class RenderedNotice:
    subject: str
    text: str
    html: str


@cache
def environment() -> Environment:
    """The one environment for all notices (reads no settings, so caching it is safe)."""
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # templates ship with the code: no stat() of each file per notice
    )


def format_slot(moment: datetime, zone: str) -> str:
    """'Tue 8 Dec 2026 02:00 EST (07:00 UTC)'; the UTC part names its day when that differs."""
    local = moment.astimezone(ZoneInfo(zone))
    utc = moment.astimezone(UTC)
    utc_part = f"{utc:%H:%M} UTC" if utc.date() == local.date() else f"{_day(utc)} {utc:%H:%M} UTC"
    return f"{_day(local)} {local.year} {local:%H:%M} {local.tzname()} ({utc_part})"


def format_duration(span: timedelta) -> str:
    minutes = round(span.total_seconds() / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{days} day{'s' if days != 1 else ''}"] if days else []
    parts += [f"{hours} h"] if hours else []
    parts += [f"{minutes} min"] if minutes or not parts else []
    return " ".join(parts)


_FIELDS = tuple(item.name for item in fields(NoticeContext))


def template_variables(ctx: NoticeContext) -> dict[str, Any]:
    """What the templates see: the context's fields plus the formatted times."""
    zone = ctx.customer_timezone
    # A shallow copy: templates only read, and asdict's deep copy of every datetime is slow.
    variables = {name: getattr(ctx, name) for name in _FIELDS}
    variables |= {
        "kind": ctx.kind.value,
        "upcoming": ctx.kind.upcoming,
        "start": format_slot(ctx.slot_start, zone),
        "end": format_slot(ctx.slot_end, zone),
        "start_short": _short(ctx.slot_start, zone),
        "duration": format_duration(ctx.slot_end - ctx.slot_start),
        "previous_start": format_slot(ctx.previous_slot_start, zone) if ctx.previous_slot_start else "",
        "next_start": format_slot(ctx.next_slot_start, zone) if ctx.next_slot_start else "",
        "next_short": _short(ctx.next_slot_start, zone) if ctx.next_slot_start else "",
    }
    return variables


def render_notice(kind: NoticeKind | str, context: NoticeContext) -> RenderedNotice:
    """Subject, plain text and HTML of one notice. `kind` must be the context's own kind."""
    kind = NoticeKind(kind)
    if kind is not context.kind:
        raise ValueError(f"render_notice({kind}): the context describes a {context.kind} notice")
    variables = template_variables(context)
    env = environment()
    subject = _SUBJECTS[kind].format_map(variables)
    if context.urgent:
        subject = f"URGENT: {subject}"
    return RenderedNotice(
        subject=subject,
        text=env.get_template(f"{kind}.txt.j2").render(variables),
        html=env.get_template(f"{kind}.html.j2").render(variables),
    )


def _day(moment: datetime) -> str:
    return f"{_DAYS[moment.weekday()]} {moment.day} {_MONTHS[moment.month - 1]}"


def _short(moment: datetime, zone: str) -> str:
    local = moment.astimezone(ZoneInfo(zone))
    return f"{_day(local)} {local:%H:%M} {local.tzname()}"
