"""The calendar invitation that travels with a notice (iCalendar, RFC 5545 / iTIP RFC 5546).

One scheduled update is one calendar event for its whole life: the UID is derived from the update's
stable reference, and the caller bumps `sequence` on every change, so calendar clients replace the
entry when an update moves and remove it when it is cancelled (METHOD:CANCEL, STATUS:CANCELLED).
Times are written in UTC; the client shows them in the reader's zone.

Written directly rather than with `icalendar` (which the tests use to read every invite back): its
serializer cost ~0.5 ms per invite, a tenth of sending a notice. Customer text goes through `_text`
(escaped, line breaks as \\n) and lines are folded at 75 octets, as RFC 5545 requires.
"""

from __future__ import annotations

from datetime import UTC, datetime

from templates import NoticeContext, NoticeKind, format_duration, format_slot

__all__ = ["INVITE_KINDS", "invite", "uid_for"]

PRODID = "-//Upkeep//Upkeep notices//EN"
_LINE_OCTETS = 75

# Kinds whose email carries an invite: those that create, refresh, move or withdraw the calendar entry.
# Started/completed/failed/partial report what happened; a continuation slot after a partial update is
# announced as its own (rescheduled) notice with a new sequence. A stopped update withdraws its entry as a
# cancelled one does (the slot will not happen); a later resume puts it back with a 'rescheduled' invite
# of a higher SEQUENCE.
INVITE_KINDS = frozenset(
    {
        NoticeKind.scheduled,
        NoticeKind.reminder,
        NoticeKind.rescheduled,
        NoticeKind.deferred,
        NoticeKind.confirmed,
        NoticeKind.cancelled,
        NoticeKind.stopped,
    }
)
_WITHDRAWN = {NoticeKind.cancelled: "Cancelled", NoticeKind.stopped: "Stopped"}


def uid_for(update_ref: str, installation: str = "") -> str:
    """The event's UID for the update's whole life; with the installation id in it, two installations
    never share one (update-42.3f9a0c1b2d4e@upkeep)."""
    return f"{update_ref}.{installation}@upkeep" if installation else f"{update_ref}@upkeep"


def invite(ctx: NoticeContext, *, stamp: datetime | None = None) -> bytes:
    """The .ics for `ctx`: METHOD:REQUEST, or METHOD:CANCEL for a cancelled or stopped update.

    `stamp` is DTSTAMP (when the invite was made; now by default, aware).
    """
    if ctx.kind not in INVITE_KINDS:
        raise ValueError(f"a {ctx.kind} notice carries no calendar invite")
    stamp = stamp or datetime.now(UTC)
    if stamp.tzinfo is None:
        raise ValueError(f"stamp {stamp!r} is naive")
    cancelled = ctx.kind in _WITHDRAWN
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        f"PRODID:{PRODID}",
        f"METHOD:{'CANCEL' if cancelled else 'REQUEST'}",
        "BEGIN:VEVENT",
        f"SUMMARY:{_text(_summary(ctx, cancelled=cancelled))}",
        f"DTSTART:{_utc(ctx.slot_start)}",
        f"DTEND:{_utc(ctx.slot_end)}",
        f"DTSTAMP:{_utc(stamp)}",
        f"UID:{_text(uid_for(ctx.update_ref, ctx.installation))}",
        f"SEQUENCE:{ctx.sequence}",
        *(
            f"ATTENDEE;PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT;RSVP=FALSE:{_mailto(recipient)}"
            for recipient in ctx.recipients
        ),
        f"DESCRIPTION:{_text(_description(ctx))}",
        f"ORGANIZER;CN=Upkeep:{_mailto(ctx.organizer)}",
        *([f"URL:{_uri(ctx.portal_link)}"] if ctx.portal_link and not cancelled else []),
        *(["PRIORITY:1"] if ctx.urgent else []),
        f"STATUS:{'CANCELLED' if cancelled else 'CONFIRMED'}",
        # Maintenance happens to the cluster, not to the reader: do not block their free/busy time.
        "TRANSP:TRANSPARENT",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return b"".join(_fold(line) + b"\r\n" for line in lines)


def _summary(ctx: NoticeContext, *, cancelled: bool) -> str:
    summary = f"Upgrade of {ctx.cluster} to {ctx.to_version}"
    if cancelled:
        summary = f"{_WITHDRAWN[ctx.kind]}: {summary}"
    return f"URGENT: {summary}" if ctx.urgent else summary


def _description(ctx: NoticeContext) -> str:
    lines = [
        f"{ctx.cluster}: {ctx.from_version} -> {ctx.to_version} ({ctx.update_ref})",
        f"Starts: {format_slot(ctx.slot_start, ctx.customer_timezone)}",
        f"Expected duration: {format_duration(ctx.slot_end - ctx.slot_start)}",
    ]
    if ctx.kind.upcoming:
        lines += [f"To defer: {ctx.defer_instructions}", f"Deferral limits: {ctx.deferral_limits}"]
    if ctx.reason:
        lines.append(f"Note: {ctx.reason}")
    lines.append(f"Support: {ctx.support_contact}")
    return "\n".join(lines)


def _text(value: str) -> str:
    """An RFC 5545 TEXT value: backslash, ';' and ',' escaped, every line break (CRLF, CR, LF) as \\n,
    so customer text can never start a property of its own."""
    value = value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    return value.replace("\r\n", "\\n").replace("\r", "\\n").replace("\n", "\\n")


def _mailto(address: str) -> str:
    if any(char in address for char in "\r\n\0"):
        raise ValueError(f"invite: address {address!r} contains CR, LF or NUL")
    return f"mailto:{address}"


def _uri(value: str) -> str:
    """A URI value (RFC 5545 3.3.13) is not escaped like TEXT: it must not hold what could end the line
    or the property, which a URL we built never does."""
    if any(char in value for char in '\r\n\0"') or " " in value:
        raise ValueError(f"invite: URL {value!r} contains a space, quote, CR, LF or NUL")
    return value


def _utc(moment: datetime) -> str:
    t = moment.astimezone(UTC)
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}{t.minute:02d}{t.second:02d}Z"


def _fold(line: str) -> bytes:
    """Lines of at most 75 octets, continued after CRLF + space, never inside a UTF-8 sequence."""
    raw = line.encode()
    if len(raw) <= _LINE_OCTETS:
        return raw
    parts, start, limit = [], 0, _LINE_OCTETS
    while start < len(raw):
        end = min(start + limit, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:  # a continuation byte: cut before its lead
            end -= 1
        parts.append(raw[start:end])
        start, limit = end, _LINE_OCTETS - 1  # the leading space counts
    return b"\r\n ".join(parts)
