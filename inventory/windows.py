"""When a customer may be touched: maintenance windows per cluster, freeze (blackout) ranges, and the
notice the customer is owed before an update (their contract terms over the vendor defaults).

Stored as the customer wrote them (weekday names, local start time, zone); `scheduling` turns them into
instants. A blackout with no customer is vendor-wide (e.g. the year-end freeze).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, time, timedelta
from typing import NamedTuple

from sqlalchemy import JSON, Column
from sqlmodel import Field, Session, SQLModel, col, or_, select

from inventory.models import Cluster, Customer
from inventory.types import utcnow
from scheduling.blackouts import Blackout as BlackoutRule
from scheduling.holidays import holiday_blackouts
from scheduling.notice import NoticePolicy
from scheduling.windows import WeeklyWindow

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class MaintenanceWindow(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    cluster_id: int = Field(foreign_key="cluster.id", index=True, ondelete="CASCADE")
    days: list[str] = Field(sa_column=Column(JSON, nullable=False), description="e.g. ['tue', 'thu']")
    start: str = Field(max_length=5, description="local HH:MM")
    duration_minutes: int
    timezone: str = Field(default="", max_length=64, description="empty: the customer's zone")

    def rule(self, customer_timezone: str) -> WeeklyWindow:
        hours, minutes = (int(part) for part in self.start.split(":"))
        return WeeklyWindow(
            weekdays=frozenset(DAY_NAMES.index(day) for day in self.days),
            start=time(hours, minutes),
            duration=timedelta(minutes=self.duration_minutes),
            tz=self.timezone or customer_timezone,
        )


class Blackout(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int | None = Field(default=None, foreign_key="customer.id", index=True, ondelete="CASCADE")
    start: date
    end: date
    timezone: str = Field(max_length=64)
    reason: str = Field(default="", max_length=255)

    def rule(self) -> BlackoutRule:
        return BlackoutRule(
            start=self.start,
            end=self.end,
            tz=self.timezone,
            reason=self.reason,
            scope="customer" if self.customer_id else "vendor",
        )


def cluster_windows(cluster: Cluster, customer: Customer, *, session: Session) -> list[WeeklyWindow]:
    rows = session.exec(
        select(MaintenanceWindow)
        .where(MaintenanceWindow.cluster_id == cluster.id)
        .order_by(col(MaintenanceWindow.id))
    ).all()
    return [row.rule(customer.timezone) for row in rows]


def blackouts_for(customer: Customer, *, session: Session) -> list[BlackoutRule]:
    """The customer's own freezes, its public holidays (last year to two years ahead: the slot search
    looks 120 days out), and every vendor-wide freeze."""
    rows = session.exec(
        select(Blackout)
        .where(or_(col(Blackout.customer_id) == customer.id, col(Blackout.customer_id).is_(None)))
        .order_by(col(Blackout.start))
    ).all()
    return [row.rule() for row in rows] + customer_holidays(customer)


class WindowRows(NamedTuple):
    """What decides when many clusters may be touched, read for all of them at once."""

    clusters: dict[int | None, Cluster]
    customers: dict[int | None, Customer]
    windows: dict[int, list[MaintenanceWindow]]  # per cluster, in id order
    blackouts: list[Blackout]  # the customers' and the vendor-wide ones (customer_id None), by start


def window_rows(cluster_ids: Iterable[int], *, session: Session) -> WindowRows:
    """The clusters, their customers, windows and blackouts in four queries, whatever their number:
    the dispatcher reads them for every due run and every claim candidate of a tick (four queries per
    run before #19)."""
    ids = set(cluster_ids)
    clusters = {c.id: c for c in session.exec(select(Cluster).where(col(Cluster.id).in_(ids)))}
    customer_ids = {c.customer_id for c in clusters.values()}
    customers = {c.id: c for c in session.exec(select(Customer).where(col(Customer.id).in_(customer_ids)))}
    windows: dict[int, list[MaintenanceWindow]] = {}
    for row in session.exec(
        select(MaintenanceWindow)
        .where(col(MaintenanceWindow.cluster_id).in_(ids))
        .order_by(col(MaintenanceWindow.id))
    ):
        windows.setdefault(row.cluster_id, []).append(row)
    blackouts = session.exec(
        select(Blackout)
        .where(or_(col(Blackout.customer_id).in_(customer_ids), col(Blackout.customer_id).is_(None)))
        .order_by(col(Blackout.start))
    ).all()
    return WindowRows(clusters, customers, windows, list(blackouts))


def customer_holidays(customer: Customer, years: range | None = None) -> list[BlackoutRule]:
    """The customer's public holidays as blackout days in its zone (none when it names no region)."""
    if not customer.holiday_country:
        return []
    this = utcnow().year
    return holiday_blackouts(
        customer.holiday_country,
        customer.holiday_subdivision,
        customer.timezone,
        years or range(this - 1, this + 3),
    )


def notice_policy(customer: Customer) -> NoticePolicy:
    """The vendor defaults, with the customer's contract terms where it has them."""
    default = NoticePolicy()
    product, cloud = customer.notice_hours_product, customer.notice_hours_cloud
    return NoticePolicy(
        product_update=default.product_update if product is None else timedelta(hours=product),
        cloud_release=default.cloud_release if cloud is None else timedelta(hours=cloud),
    )
