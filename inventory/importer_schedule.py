"""The scheduling parts of the inventory file: a cluster's maintenance `windows`, a customer's `notice`
terms and `blackouts`, and the top-level `vendor_blackouts`. Parsed (ScheduleParts), written
(sync_windows, sync_blackouts) and read back in the file's shape (window_dict, blackout_dict,
customer_terms) so that `inventory show --json` can be imported again.

Values are checked by the `scheduling` rules themselves (day names, HH:MM, durations, zones), so the
file cannot hold a window or blackout that scheduling would later refuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import yaml
from sqlmodel import Session

from inventory.importer_rules import (
    BLACKOUT,
    HOLIDAYS,
    NOTICE,
    VENDOR_BLACKOUT,
    WINDOW,
    Field,
    notice_hours,
)
from inventory.importer_specs import BlackoutSpec, WindowSpec
from inventory.models import Customer
from inventory.windows import DAY_NAMES, Blackout, MaintenanceWindow
from scheduling.errors import SchedulingError
from scheduling.holidays import check_region
from scheduling.windows import WeeklyWindow

SCHEDULE_TABLES = ("window", "blackout")


class _Walker(Protocol):
    """What ScheduleParts needs of importer_parse's parser (an importer_yaml.YamlWalker)."""

    def err(self, node: yaml.Node, message: str) -> None: ...

    def mapping(
        self, node: yaml.Node, what: str, fields: dict[str, Field]
    ) -> tuple[dict[str, Any], dict[str, yaml.Node]]: ...


class _Counts(Protocol):
    created: int
    unchanged: int
    deleted: int


class ScheduleParts:
    """Parsers for the scheduling keys. Method names double as memo keys in the parser."""

    def __init__(self, walker: _Walker) -> None:
        self.p = walker

    def windows(self, node: yaml.Node) -> list[WindowSpec]:
        found = []
        for item in node.value:
            v, _ = self.p.mapping(item, "window", WINDOW)
            if not {"days", "start", "duration"} <= set(v):
                continue  # each problem is reported already
            spec = {"days": v["days"], "start": v["start"], "duration": v["duration"]}
            try:  # the whole window as scheduling will read it (the zone only matters if given)
                rule = WeeklyWindow.parse({**spec, "timezone": v.get("timezone", "UTC")})
            except SchedulingError as exc:
                self.p.err(item, f"window: {exc}")
                continue
            days = [DAY_NAMES[d] for d in sorted(rule.weekdays)]
            minutes = int(rule.duration.total_seconds()) // 60
            found.append(WindowSpec(days, f"{rule.start:%H:%M}", minutes, v.get("timezone", "")))
        return found

    def blackouts(self, node: yaml.Node) -> list[BlackoutSpec]:
        """A customer's: the zone defaults to the customer's (filled in by the caller)."""
        return self._blackouts(node, "blackout", BLACKOUT)

    def vendor(self, node: yaml.Node) -> list[BlackoutSpec]:
        return self._blackouts(node, "vendor blackout", VENDOR_BLACKOUT)

    def _blackouts(self, node: yaml.Node, what: str, fields: dict[str, Field]) -> list[BlackoutSpec]:
        found = []
        for item in node.value:
            v, at = self.p.mapping(item, what, fields)
            if "start" in v and "end" in v and v["end"] < v["start"]:
                self.p.err(at["end"], f"{what}: end {v['end']} is before start {v['start']}")
            elif "start" in v and "end" in v:
                found.append(BlackoutSpec(v["start"], v["end"], v.get("timezone", ""), v.get("reason", "")))
        return found

    def holidays(self, node: yaml.Node) -> tuple[str, str | None] | None:
        """(country, subdivision) whose public holidays are the customer's blackout days."""
        v, at = self.p.mapping(node, "holidays", HOLIDAYS)
        if "country" not in v:
            return None
        try:
            return check_region(v["country"], v.get("subdivision"))
        except SchedulingError as exc:
            self.p.err(
                at.get("subdivision", at["country"]) if "subdivision" in str(exc) else at["country"], str(exc)
            )
            return None

    def notice(self, node: yaml.Node) -> tuple[int | None, int | None]:
        """(product update hours, cloud release hours); None where the vendor default applies."""
        v, _ = self.p.mapping(node, "notice", NOTICE)
        hours = {key: notice_hours(value) for key, value in v.items()}
        return hours.get("product_update"), hours.get("cloud_release")


# --- writing ------------------------------------------------------------------------------------------


def _window_key(row: MaintenanceWindow | WindowSpec) -> tuple[Any, ...]:
    return (tuple(row.days), row.start, row.duration_minutes, row.timezone)


def _blackout_key(row: Blackout | BlackoutSpec) -> tuple[Any, ...]:
    return (row.start, row.end, row.timezone, row.reason)


def sync_windows(
    session: Session,
    cluster_id: int,
    specs: Sequence[WindowSpec],
    have: Sequence[MaintenanceWindow],
    counts: _Counts,
) -> None:
    """The cluster's windows become exactly the file's; identical rows are kept as they are."""
    _sync(
        session,
        specs,
        have,
        _window_key,
        counts,
        lambda spec: MaintenanceWindow(
            cluster_id=cluster_id,
            days=list(spec.days),
            start=spec.start,
            duration_minutes=spec.duration_minutes,
            timezone=spec.timezone,
        ),
    )


def sync_blackouts(
    session: Session,
    customer_id: int | None,
    specs: Sequence[BlackoutSpec],
    have: Sequence[Blackout],
    counts: _Counts,
) -> None:
    """A customer's blackouts (or, with customer_id None, the vendor's) become exactly the file's."""
    _sync(
        session,
        specs,
        have,
        _blackout_key,
        counts,
        lambda spec: Blackout(
            customer_id=customer_id,
            start=spec.start,
            end=spec.end,
            timezone=spec.timezone,
            reason=spec.reason,
        ),
    )


def _sync(
    session: Session, specs: Sequence[Any], have: Sequence[Any], key: Any, counts: _Counts, build: Any
) -> None:
    wanted = Counter(key(spec) for spec in specs)
    for row in have:
        if wanted[key(row)] > 0:
            wanted[key(row)] -= 1
            counts.unchanged += 1
        else:
            session.delete(row)
            counts.deleted += 1
    for spec in specs:
        if wanted[key(spec)] > 0:
            wanted[key(spec)] -= 1
            session.add(build(spec))
            counts.created += 1


# --- reading back in the file's shape ---------------------------------------------------------------


def duration_text(minutes: int) -> str:
    """90 → '1h30m', 240 → '4h', 45 → '45m': how a window's length is written in the file."""
    hours, rest = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{rest}m" if rest or not hours else "")


def window_dict(row: MaintenanceWindow) -> dict[str, Any]:
    data: dict[str, Any] = {
        "days": list(row.days),
        "start": row.start,
        "duration": duration_text(row.duration_minutes),
    }
    return data | ({"timezone": row.timezone} if row.timezone else {})


def blackout_dict(row: Blackout) -> dict[str, Any]:
    data = {"start": row.start.isoformat(), "end": row.end.isoformat(), "timezone": row.timezone}
    return data | ({"reason": row.reason} if row.reason else {})


def customer_terms(customer: Customer) -> dict[str, Any]:
    """The customer's contract keys, only where they differ from the defaults (as the file may omit)."""
    notice = {
        key: f"{hours}h"
        for key, hours in (
            ("product_update", customer.notice_hours_product),
            ("cloud_release", customer.notice_hours_cloud),
        )
        if hours is not None
    }
    region = {"country": customer.holiday_country} | (
        {"subdivision": customer.holiday_subdivision} if customer.holiday_subdivision else {}
    )
    return (
        ({"notice": notice} if notice else {})
        | ({"requires_approval": True} if customer.requires_approval else {})
        | ({"holidays": region} if customer.holiday_country else {})
    )


__all__ = [
    "SCHEDULE_TABLES",
    "ScheduleParts",
    "blackout_dict",
    "customer_terms",
    "duration_text",
    "sync_blackouts",
    "sync_windows",
    "window_dict",
]
