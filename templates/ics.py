"""The calendar invitation that travels with a notice (iCalendar, RFC 5545 / iTIP RFC 5546).

One scheduled update is one calendar event for its whole life: the UID is derived from the update's
stable reference, and the caller bumps `sequence` on every change, so calendar clients replace the
entry when an update moves and remove it when it is cancelled (METHOD:CANCEL, STATUS:CANCELLED).
Times are written in UTC; the client shows them in the reader's zone.
"""

from __future__ import annotations

from datetime import UTC, datetime

from icalendar import Calendar, Event, vCalAddress, vText

from templates import NoticeContext, NoticeKind, format_duration, format_slot

__all__ = ["INVITE_KINDS", "invite", "uid_for"]

PRODID = "-//Upkeep//Upkeep notices//EN"

# Kinds whose email carries an invite: those that create, refresh, move or withdraw the calendar entry.
# Started/completed/failed/partial report what happened; a continuation slot after a partial update is
# announced as its own (rescheduled) notice with a new sequence.
INVITE_KINDS = frozenset(
    {
        NoticeKind.scheduled,
        NoticeKind.reminder,
        NoticeKind.rescheduled,
        NoticeKind.deferred,
        NoticeKind.cancelled,
    }
)


def uid_for(update_ref: str) -> str:
    return f"{update_ref}@upkeep"


def invite(ctx: NoticeContext, *, stamp: datetime | None = None) -> bytes:
    """The .ics for `ctx`: METHOD:REQUEST, or METHOD:CANCEL for a cancelled update.

    `stamp` is DTSTAMP (when the invite was made; now by default, aware).
    """
    if ctx.kind not in INVITE_KINDS:
        raise ValueError(f"a {ctx.kind} notice carries no calendar invite")
    stamp = stamp or datetime.now(UTC)
    if stamp.tzinfo is None:
        raise ValueError(f"stamp {stamp!r} is naive")
    cancelled = ctx.kind is NoticeKind.cancelled

    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("method", "CANCEL" if cancelled else "REQUEST")

    event = Event()
    event.add("uid", uid_for(ctx.update_ref))
    event.add("sequence", ctx.sequence)
    event.add("dtstamp", stamp.astimezone(UTC))
    event.add("dtstart", ctx.slot_start.astimezone(UTC))
    event.add("dtend", ctx.slot_end.astimezone(UTC))
    event.add("summary", _summary(ctx, cancelled=cancelled))
    event.add("description", _description(ctx))
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    # Maintenance happens to the cluster, not to the reader: do not block their free/busy time.
    event.add("transp", "TRANSPARENT")
    if ctx.urgent:
        event.add("priority", 1)

    organizer = vCalAddress(f"mailto:{ctx.organizer}")
    organizer.params["cn"] = vText("Upkeep")
    event.add("organizer", organizer)
    for recipient in ctx.recipients:
        attendee = vCalAddress(f"mailto:{recipient}")
        attendee.params["role"] = vText("REQ-PARTICIPANT")
        attendee.params["partstat"] = vText("NEEDS-ACTION")
        attendee.params["rsvp"] = vText("FALSE")
        event.add("attendee", attendee)

    calendar.add_component(event)
    return calendar.to_ical()


def _summary(ctx: NoticeContext, *, cancelled: bool) -> str:
    summary = f"Upgrade of {ctx.cluster} to {ctx.to_version}"
    if cancelled:
        summary = f"Cancelled: {summary}"
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
