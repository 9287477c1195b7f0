"""Monthly cloud releases: the catalog entries SREs add or sync, and the rollout of one release.

`Rollout` is one release going out to every cloud cluster in waves (rings); `RolloutCluster` says what
the rollout decided for each cluster. A cluster that got an update links its run (`run_id`), and from
then on the run's own state is the truth (planned, running, succeeded...); `status`/`reason` record what
no run says: why a cluster was skipped (open P0/P1 case, another update in flight) or blocked (no
upgrade path, no slot before the deadline). UNIQUE(rollout, cluster) makes planning idempotent: a
second planner (or a second run of the monthly flow) finds the row and leaves the cluster alone.

Catalog entries (`upkeep release add|sync`) are checked by `upkeep.cli_release` with the inventory file's
own rules before `save_releases` writes any, so the catalog never holds what the YAML importer refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, Session, SQLModel, col, select

from inventory.models import Cluster, Customer, Release, RunState, UpgradeRun
from inventory.public import RingClusterPublic, RingPublic
from inventory.repo import NotFound, record_audit
from inventory.runs import stalled
from inventory.types import time_field
from scheduling.versions import Version
from scheduling.waves import RINGS_DEFAULT


class ReleaseError(ValueError):
    """A catalog entry Upkeep refuses; the message is one line naming every problem."""


class RolloutState(StrEnum):
    planning = "planning"
    rolling = "rolling"
    halted = "halted"
    done = "done"


class MemberStatus(StrEnum):
    """What the planner decided for a cluster; `planned` means "see the linked run"."""

    planned = "planned"
    skipped = "skipped"  # re-slotted later (`flows.cloud_release.replan_skipped`) once the obstacle is gone
    blocked = "blocked"  # needs a person: no upgrade path, no slot before the deadline


def _enum(kind: type[StrEnum], default: StrEnum) -> Any:
    """Stored as its value in a VARCHAR (no PostgreSQL enum type to migrate when values change)."""
    column_type = SAEnum(
        kind,
        name=f"rollout_{kind.__name__.lower()}",
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )
    return Field(default=default, sa_column=Column(column_type, nullable=False))


class Rollout(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(unique=True, index=True, max_length=32)
    state: RolloutState = _enum(RolloutState, RolloutState.planning)
    halted_reason: str = Field(default="", max_length=2000)
    # Error budget (scheduling.waves.ErrorBudget) and wave pacing, as the monthly flow was asked.
    max_failures: int | None = None  # no column default: it would turn an explicit None into 1 on INSERT
    max_failure_rate: float | None = None
    soak_minutes: float = 60
    max_concurrent: int = 10
    per_customer_limit: int = 2
    # The last allowed slot start: the release deadline, else the next monthly release.
    plan_until: datetime | None = time_field()
    # `upkeep release resume` acknowledges the failures so far: the budget counts from these on.
    acknowledged_started: int = 0
    acknowledged_failed: int = 0
    created_at: datetime = time_field(nullable=False)
    updated_at: datetime = time_field(nullable=False)


class RolloutCluster(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("rollout_id", "cluster_id", name="uq_rolloutcluster_rollout_cluster"),)
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollout.id", index=True, ondelete="CASCADE")
    cluster_id: int = Field(foreign_key="cluster.id", index=True, ondelete="CASCADE")
    ring: str = Field(max_length=32, description="the cluster's ring when it was planned")
    run_id: int | None = Field(default=None, foreign_key="upgraderun.id", index=True)
    status: MemberStatus = _enum(MemberStatus, MemberStatus.planned)
    reason: str = Field(default="", max_length=2000)
    created_at: datetime = time_field(nullable=False)
    updated_at: datetime = time_field(nullable=False)


# -- catalog -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseEntry:
    version: str
    package: str
    sha256: str
    upgradable_from: list[str] = field(default_factory=list)
    deadline: datetime | None = None


def _conflict(row: Release, entry: ReleaseEntry) -> str | None:
    for what, have, new in (("package", row.package, entry.package), ("sha256", row.sha256, entry.sha256)):
        if have != new:
            return (
                f"release {entry.version} is already in the catalog with {what} {have!r}, not {new!r}: "
                "a release's package never changes (publish a new version)"
            )
    return None


def save_releases(
    entries: list[ReleaseEntry], *, session: Session, actor: str, source: str
) -> dict[str, int]:
    """Add new releases; for known ones only `from` may grow and a deadline may be set. Any conflict
    (a different package or checksum under a known version) refuses the whole call before a write."""
    known = {row.version: row for row in session.exec(select(Release))}
    for entry in entries:
        row = known.get(entry.version)
        if row is not None and (problem := _conflict(row, entry)):
            raise ReleaseError(problem)
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for entry in entries:
        row = known.get(entry.version)
        if row is None:
            session.add(
                Release(
                    version=entry.version,
                    package=entry.package,
                    sha256=entry.sha256,
                    upgradable_from=entry.upgradable_from,
                    deadline=entry.deadline,
                )
            )
            counts["created"] += 1
            continue
        sources = sorted({*row.upgradable_from, *entry.upgradable_from}, key=Version.parse)
        deadline = entry.deadline or row.deadline
        if sources == sorted(row.upgradable_from, key=Version.parse) and deadline == row.deadline:
            counts["unchanged"] += 1
            continue
        row.upgradable_from, row.deadline = sources, deadline
        session.add(row)
        counts["updated"] += 1
    session.flush()
    record_audit(
        actor,
        "release.catalog",
        source,
        {**counts, "versions": [e.version for e in entries]},
        session=session,
    )
    return counts


# -- rollouts ------------------------------------------------------------------------------------------


def new_rollout(version: str, *, now: datetime, **terms: Any) -> Rollout:
    return Rollout(version=version, created_at=now, updated_at=now, **terms)


def get_rollout(version: str, *, session: Session, lock: bool = False) -> Rollout:
    """The rollout of `version`; `lock`: its row locked (FOR UPDATE) and read afresh - a copy the session
    loaded before the lock (a halt or resume committed since) is overwritten, never decided on (adv60)."""
    query = select(Rollout).where(Rollout.version == version)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    rollout = session.exec(query).first()
    if rollout is None:
        known = ", ".join(session.exec(select(Rollout.version).order_by(col(Rollout.id)))) or "none yet"
        raise NotFound(f"no rollout of release {version!r} (rollouts: {known}); see `upkeep release plan`")
    return rollout


def rollout_of_run(run_id: int, *, session: Session) -> tuple[Rollout, RolloutCluster] | None:
    query = select(Rollout, RolloutCluster).join(RolloutCluster).where(RolloutCluster.run_id == run_id)
    row = session.exec(query).first()
    return (row[0], row[1]) if row else None


@dataclass(frozen=True)
class Member:
    entry: RolloutCluster
    cluster: Cluster
    run: UpgradeRun | None


def rollout_members(rollout: Rollout, *, session: Session, fresh: bool = False) -> list[Member]:
    """Every cluster of the rollout with its run (if any), by cluster name. `fresh`: as committed now,
    overwriting what the session loaded before (the start gate, under the rollout's lock: a dispatcher
    reads its batch of due runs first, and a run another one started since must count in flight, adv60)."""
    query = (
        select(RolloutCluster, Cluster, UpgradeRun)
        .join(Cluster, col(Cluster.id) == RolloutCluster.cluster_id)
        .outerjoin(UpgradeRun, col(UpgradeRun.id) == RolloutCluster.run_id)
        .where(RolloutCluster.rollout_id == rollout.id)
        .order_by(col(Cluster.name))
    )
    if fresh:
        query = query.execution_options(populate_existing=True)
    return [Member(entry, cluster, run) for entry, cluster, run in session.exec(query)]


# -- read model ----------------------------------------------------------------------------------------

STATUSES = (
    "planned",
    "notified",
    "running",
    "paused",
    "stalled",
    "done",
    "failed",
    "cancelled",
    "deferred",
    "skipped",
    "blocked",
)
# The columns `upkeep release status` and the release-status artifact print, and the statuses they list
# with their reason: those a person has to act on.
COLUMNS = tuple(status for status in STATUSES if status != "cancelled")
ATTENTION = ("paused", "stalled", "skipped", "blocked", "failed")


def member_status(member: Member) -> str:
    """planned | deferred (planned, moved by the customer) | running | paused (by an SRE: nothing goes on
    until one resumes it; counted running, the release looked under way there, adv49) | stalled (paused
    by the bound on idle windows: nothing starts it until someone acts) | done | failed | cancelled, from
    the run; skipped | blocked from the entry when there is no run."""
    run = member.run
    if run is None:
        return member.entry.status.value
    if run.state is RunState.planned:
        return "deferred" if run.deferrals > 0 else "planned"
    if stalled(run):
        return "stalled"
    return {"succeeded": "done"}.get(run.state.value, run.state.value)


def ring_rows(members: list[Member], *, notified: set[int], session: Session) -> list[dict[str, Any]]:
    """Per ring (RINGS_DEFAULT first): a count per status and one row per cluster. `notified` holds the
    ids of runs whose `scheduled` notice was sent; it counts among planned and deferred runs."""
    customers = {c.id: c.name for c in session.exec(select(Customer))}
    rings = list(RINGS_DEFAULT) + sorted({m.entry.ring for m in members} - set(RINGS_DEFAULT))
    result = []
    for ring in rings:
        counts, rows = dict.fromkeys(STATUSES, 0), []
        for member in (m for m in members if m.entry.ring == ring):
            run, status = member.run, member_status(member)
            told = run is not None and run.id in notified
            counts[status] += 1
            counts["notified"] += told and status in ("planned", "deferred")
            row = RingClusterPublic(
                cluster=member.cluster.name,
                customer=customers.get(member.cluster.customer_id, ""),
                status=status,
                notified=told,
                run_id=run.id if run else None,
                slot_start=run.slot_start if run else None,
                deferrals=run.deferrals if run else 0,
                reason=run.reason if run else member.entry.reason,
            )
            rows.append(row)
        if rows or ring in RINGS_DEFAULT:
            result.append(
                RingPublic.model_validate({"ring": ring, **counts, "clusters": rows}).model_dump(mode="json")
            )
    return result


def status_markdown(status: dict[str, Any], limit: int = 200) -> str:
    """The "release-status" artifact: a table per ring, then who needs a person and why."""
    head = f"# Release {status['version']}: {status['state']}"
    lines = [head, ""]
    if status["halted"]:
        lines += [f"**Halted:** {status['halted_reason']}", ""]
    columns = COLUMNS
    lines += ["| ring | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for ring in status["rings"]:
        lines.append(f"| {ring['ring']} | " + " | ".join(str(ring[c]) for c in columns) + " |")
    attention = [
        f"- {row['cluster']} ({ring['ring']}): {row['status']} — {row['reason']}"
        for ring in status["rings"]
        for row in ring["clusters"]
        if row["status"] in ATTENTION
    ]
    if attention:
        more = [f"- … and {len(attention) - limit} more (`upkeep release status {status['version']}`)"]
        lines += ["", "## Needs attention", "", *attention[:limit], *(more if len(attention) > limit else [])]
    return "\n".join(lines) + "\n"
