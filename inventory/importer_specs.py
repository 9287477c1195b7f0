"""What a valid inventory file says (InventoryDoc and its *Spec parts), and the Problems that keep an
invalid one from becoming an InventoryDoc. Plain data: no YAML, no database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None  # None only when the file as a whole is unusable (cannot be read)
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class InventoryError(ValueError):
    """An inventory that cannot be imported; `errors` lists every problem found."""

    def __init__(self, errors: list[Problem]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(map(str, self.errors)))


@dataclass(frozen=True)
class ContactSpec:
    email: str
    name: str
    role: str


@dataclass(frozen=True)
class NodeSpec:
    hostname: str
    address: str
    port: int
    user: str


@dataclass(frozen=True)
class WindowSpec:
    """A weekly maintenance window as stored: weekday names, local HH:MM, minutes, zone ("" = the
    customer's)."""

    days: list[str]
    start: str
    duration_minutes: int
    timezone: str


@dataclass(frozen=True)
class BlackoutSpec:
    """Whole days, inclusive, read in `timezone` (a customer's blackout defaults to the customer's)."""

    start: date
    end: date
    timezone: str
    reason: str


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    kind: str
    version: str
    profile: str
    ring: str
    access: dict[str, Any]  # {"type": "direct"} or {"type": "jump", "host": ..., "port": ..., "user": ...}
    nodes: list[NodeSpec]
    line: int
    windows: list[WindowSpec] = field(default_factory=list)


@dataclass(frozen=True)
class CustomerSpec:
    name: str
    timezone: str
    contacts: list[ContactSpec]
    clusters: list[ClusterSpec]
    blackouts: list[BlackoutSpec] = field(default_factory=list)
    notice_hours_product: int | None = None  # None: the vendor default
    notice_hours_cloud: int | None = None
    requires_approval: bool = False
    portal_users: list[tuple[str, str, int]] = field(default_factory=list)  # (email, name, line)
    holidays: tuple[str, str | None] | None = None  # (country, subdivision) of its public holidays


@dataclass(frozen=True)
class ReleaseSpec:
    version: str
    package: str
    sha256: str
    upgradable_from: list[str]
    deadline: datetime | None  # UTC


@dataclass(frozen=True)
class InventoryDoc:
    path: Path
    sha256: str  # of the file's bytes, for the audit trail
    customers: list[CustomerSpec]
    releases: list[ReleaseSpec]
    vendor_blackouts: list[BlackoutSpec] | None = None  # None: the file has no vendor_blackouts key
    oncall: dict[str, Any] | None = None  # the on-call rotation (inventory/oncall.py); None: no key
