"""The monthly cloud release: plan one release for every cloud cluster, announced, in waves.

    pick the release → record the rollout and its error budget → for every cloud cluster, ring by ring:
    no upgrade path → blocked · open P0/P1 case or another update in flight → skipped (re-slotted later
    by `replan_skipped`) · otherwise schedule the update in its next window after the notice period
    (the customer's `scheduled` notice is queued with it) · no slot before the release deadline →
    blocked → publish the status (artifact "release-status")

Each cluster is planned in its own transaction, behind UNIQUE(rollout, cluster): a crash loses at most
the cluster in hand, and planning the same release again (a retried or second monthly run, two planners
at once) plans only clusters that have no entry yet. Clusters are planned ring by ring, and a later
ring's slot is never announced before the earlier rings' last slot ends plus the soak
(`flows.rollout.ring_gate`, issue #13): the start gate (`flows.rollout.start_gate`) would hold it there,
and the customer's invite would be untrue. Nothing here starts an update: the dispatcher does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from flows.plan import PlanError
from flows.rollout import release_status, ring_gate
from flows.rollout_rules import ACTIVE
from flows.runtime import current
from flows.schedule import schedule_update
from inventory import repo
from inventory.cases import open_blocking_case
from inventory.db import session_scope
from inventory.models import Cluster, ClusterKind, Release, RunKind, UpgradeRun
from inventory.releases import (
    Member,
    MemberStatus,
    ReleaseError,
    Rollout,
    RolloutCluster,
    RolloutState,
    new_rollout,
    rollout_members,
    status_markdown,
)
from inventory.runs import ActiveRunExists
from scheduling.errors import SchedulingError
from scheduling.times import fmt_instant
from scheduling.versions import NoUpgradePath, Version, upgrade_path
from scheduling.waves import RINGS_DEFAULT, ErrorBudget

KIND = RunKind.CLOUD_RELEASE


@dataclass
class PlanReport:
    version: str
    rollout_id: int
    new_rollout: bool
    planned: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    blocked: dict[str, str] = field(default_factory=dict)
    already_planned: int = 0  # entries from an earlier plan of this release, left alone
    up_to_date: int = 0  # cloud clusters already on the release (or newer): not part of it

    def add(self, name: str, outcome: tuple[MemberStatus, str] | None) -> None:
        if outcome is None:
            self.already_planned += 1
        elif outcome[0] is MemberStatus.planned:
            self.planned.append(name)
        else:
            (self.skipped if outcome[0] is MemberStatus.skipped else self.blocked)[name] = outcome[1]

    def summary(self) -> str:
        return (
            f"{len(self.planned)} planned, {len(self.skipped)} skipped, {len(self.blocked)} blocked, "
            f"{self.already_planned} planned before, {self.up_to_date} up to date"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_release(version: str | None, *, session: Session, now: datetime) -> Release:
    """`version` (which must be in the catalog), else the newest release whose deadline is not past and
    that at least one cloud cluster can reach through the catalog's upgrade paths."""
    if version is not None:
        Version.parse(version)  # VersionError (a ValueError) names the bad value
        release = repo.get_release(version, session=session)  # NotFound names close matches
        if release.deadline is not None and release.deadline < now:
            raise ReleaseError(f"release {version}'s deadline {fmt_instant(release.deadline)} has passed")
        return release
    catalog = repo.releases_map(session=session)
    versions = [c.version for c in session.exec(select(Cluster).where(Cluster.kind == ClusterKind.cloud))]
    releases = sorted(session.exec(select(Release)), key=lambda r: Version.parse(r.version), reverse=True)
    for release in releases:
        if release.deadline is not None and release.deadline < now:
            continue
        if any(_reachable(v, release.version, catalog) for v in set(versions)):
            return release
    raise ReleaseError(
        f"no release to roll out: none of the {len(releases)} catalog release(s) without a past deadline "
        f"is reachable from the versions of the {len(versions)} cloud cluster(s)"
    )


def _reachable(current_version: str, target: str, catalog: dict[str, list[str]]) -> bool:
    try:
        upgrade_path(current_version, target, catalog)
    except (NoUpgradePath, ValueError):
        return False
    return True


def plan_rollout(
    version: str | None,
    *,
    engine: Engine,
    now: datetime,
    actor: str = "upkeep",
    max_failures: int | None = 1,
    max_failure_rate: float | None = None,
    soak_minutes: float = 60,
    max_concurrent: int = 10,
    per_customer_limit: int = 2,
) -> PlanReport:
    """Plan `version` (or the newest eligible release) for every cloud cluster; see the module doc.
    A rollout planned before keeps the terms it was first planned with."""
    ErrorBudget(max_failures, max_failure_rate)  # SchedulingError: a rollout needs a brake
    if soak_minutes < 0 or max_concurrent < 1 or per_customer_limit < 1:
        raise ReleaseError("soak_minutes must be >= 0, max_concurrent and per_customer_limit >= 1")
    terms = {"max_failures": max_failures, "max_failure_rate": max_failure_rate, "soak_minutes": soak_minutes}
    terms |= {"max_concurrent": max_concurrent, "per_customer_limit": per_customer_limit}
    with session_scope(engine) as session:
        release = pick_release(version, session=session, now=now)
        target = release.version
        existing = session.exec(select(Rollout).where(Rollout.version == target)).first()
    if existing is None:
        try:
            with session_scope(engine) as session:
                rollout = new_rollout(target, now=now, plan_until=release.deadline, **terms)
                session.add(rollout)
                repo.record_audit(actor, "rollout.created", f"rollout/{target}", terms, session=session)
        except IntegrityError:  # another planner created it a moment ago: use theirs
            pass
    with session_scope(engine) as session:
        rollout = session.exec(select(Rollout).where(Rollout.version == target)).one()
        clusters = session.exec(select(Cluster).where(Cluster.kind == ClusterKind.cloud)).all()
        order = {ring: n for n, ring in enumerate(RINGS_DEFAULT)}
        todo = sorted(clusters, key=lambda c: (order.get(c.ring, len(order)), c.ring, c.name))
    assert rollout.id is not None
    report = PlanReport(target, rollout.id, existing is None)
    for cluster in todo:
        if Version.parse(cluster.version) >= Version.parse(target):
            report.up_to_date += 1
            continue
        try:
            with session_scope(engine) as session:
                outcome = _plan_new(rollout.id, cluster, session=session, now=now, actor=actor)
        except IntegrityError:  # UNIQUE(rollout, cluster): a concurrent planner took this cluster
            outcome = None
        except ActiveRunExists as exc:  # an update claimed the cluster between our check and our claim
            with session_scope(engine) as session:
                entry = _entry(rollout.id, cluster, now)
                outcome = apply(entry, (MemberStatus.skipped, f"{exc}; re-slotted once it ends", None))
                session.add(entry)
        report.add(cluster.name, outcome)
    with session_scope(engine) as session:
        row = session.get(Rollout, rollout.id)
        if row is not None and row.state is RolloutState.planning:
            row.state, row.updated_at = RolloutState.rolling, now
            session.add(row)
    return report


def _entry(rollout_id: int, cluster: Cluster, now: datetime) -> RolloutCluster:
    assert cluster.id is not None
    return RolloutCluster(
        rollout_id=rollout_id, cluster_id=cluster.id, ring=cluster.ring, created_at=now, updated_at=now
    )


def _plan_new(rollout_id: int, cluster: Cluster, *, session: Session, now: datetime, actor: str) -> Outcome:
    query = select(RolloutCluster).where(
        RolloutCluster.rollout_id == rollout_id, RolloutCluster.cluster_id == cluster.id
    )
    if session.exec(query).first() is not None:
        return None
    rollout = session.get(Rollout, rollout_id)
    assert rollout is not None
    entry = _entry(rollout_id, cluster, now)
    session.add(entry)
    session.flush()  # UNIQUE(rollout, cluster) refuses a second planner here, before any slot is taken
    return apply(entry, decide(cluster, rollout, session=session, now=now, actor=actor))


Decision = tuple[MemberStatus, str, UpgradeRun | None]
Outcome = tuple[MemberStatus, str] | None  # None: planned before, left alone


def decide(cluster: Cluster, rollout: Rollout, *, session: Session, now: datetime, actor: str) -> Decision:
    """Block, skip or schedule `cluster` for `rollout` in the caller's transaction."""
    blocked, skipped = MemberStatus.blocked, MemberStatus.skipped
    try:
        path = upgrade_path(cluster.version, rollout.version, repo.releases_map(session=session))
    except NoUpgradePath as exc:
        return blocked, str(exc), None
    if len(path) > 1:
        steps = " → ".join([cluster.version, *path])
        return blocked, f"needs several steps ({steps}); update to {path[0]} first", None
    active = session.exec(select(UpgradeRun).where(UpgradeRun.active_cluster_id == cluster.id)).first()
    if active is not None:
        why = f"update {active.id} ({active.kind} to {active.to_version}) is {active.state.value}"
        return skipped, f"{why}; re-slotted once it ends", None
    assert cluster.id is not None
    case = open_blocking_case(cluster.id, session=session)
    if case is not None:
        return skipped, f"open {case.priority.value} case {case.ref}; re-slotted once it is closed", None
    deadline = rollout.plan_until
    try:
        with session.begin_nested():  # a slot past the deadline is rolled back, notice and all
            assert rollout.id is not None
            gate = ring_gate(rollout.id, cluster.ring, session=session)  # announced slots match the gate
            run = schedule_update(  # source "release": the customer's cloud notice term applies
                cluster.name,
                rollout.version,
                now=now,
                source="release",
                requested_by=actor,
                session=session,
                not_before=gate[0] if gate else None,
            )
            run.kind = KIND
            if deadline is not None and run.slot_start is not None and run.slot_start > deadline:
                start, end = fmt_instant(run.slot_start), fmt_instant(deadline)
                raise _TooLate(f"earliest slot {start} is after the release deadline {end}")
    except _TooLate as late:
        return blocked, str(late), None
    except (SchedulingError, PlanError) as exc:  # no slot, no contacts to tell, no nodes...
        if open_blocking_case(cluster.id, session=session) is not None:  # a case opened just now
            return skipped, f"{exc}; re-slotted once the case is closed", None
        return blocked, str(exc), None
    session.add(run)
    session.flush()
    return MemberStatus.planned, "", run


class _TooLate(Exception):
    pass


def apply(entry: RolloutCluster, decision: Decision) -> tuple[MemberStatus, str]:
    """Record `decision` on the rollout entry (the caller adds it to its transaction)."""
    entry.status, entry.reason, run = decision[0], decision[1][:2000], decision[2]
    entry.run_id = run.id if run is not None else None
    return entry.status, entry.reason


def replan_skipped(*, engine: Engine, now: datetime, actor: str = "upkeep") -> list[str]:
    """Try every skipped cluster of the rolling rollouts again (the dispatcher calls this on its
    interval): one whose case closed or whose other update ended gets a slot and a `scheduled` notice,
    or is blocked if none fits before the deadline. A rolling rollout with nothing left to do becomes
    done. Each cluster is its own transaction. Returns one line per cluster whose status changed."""
    with session_scope(engine) as session:
        query = (
            select(RolloutCluster.id)
            .join(Rollout)
            .where(Rollout.state == RolloutState.rolling, RolloutCluster.status == MemberStatus.skipped)
            .order_by(col(RolloutCluster.id))
        )
        ids = [entry_id for entry_id in session.exec(query) if entry_id is not None]
    changed = []
    for entry_id in ids:
        try:
            with session_scope(engine) as session:
                changed += _replan_one(entry_id, session=session, now=now, actor=actor)
        except ActiveRunExists:
            continue  # another update claimed the cluster meanwhile: still skipped, try next time
    with session_scope(engine) as session:
        for rollout in session.exec(select(Rollout).where(Rollout.state == RolloutState.rolling)):
            members = rollout_members(rollout, session=session)
            if not any(m.entry.status is MemberStatus.skipped or _active(m) for m in members):
                rollout.state, rollout.updated_at = RolloutState.done, now
                session.add(rollout)
    return changed


def _active(member: Member) -> bool:
    return member.run is not None and member.run.state in ACTIVE


def _replan_one(entry_id: int, *, session: Session, now: datetime, actor: str) -> list[str]:
    query = select(RolloutCluster).where(RolloutCluster.id == entry_id).with_for_update()
    entry = session.exec(query).first()
    if entry is None or entry.status is not MemberStatus.skipped:
        return []  # planned meanwhile by another dispatcher
    cluster, rollout = session.get(Cluster, entry.cluster_id), session.get(Rollout, entry.rollout_id)
    assert cluster is not None and rollout is not None
    before = entry.reason
    status, reason = apply(entry, decide(cluster, rollout, session=session, now=now, actor=actor))
    if status is MemberStatus.skipped and reason == before:
        return []
    entry.updated_at = now
    session.add(entry)
    return [f"{cluster.name}: {status.value}" + (f" ({reason})" if reason else "")]


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return f"cloud release {flow_run.parameters.get('version') or '(newest)'}"


@flow(name="cloud-release", flow_run_name=_flow_run_name, retries=0)
def cloud_release(
    version: str | None = None,
    max_failures: int = 1,
    max_failure_rate: float | None = None,
    soak_minutes: float = 60,
    max_concurrent: int = 10,
    per_customer_limit: int = 2,
) -> dict[str, Any]:
    """Plan the monthly cloud release (`version`, else the newest eligible one) for every cloud
    cluster; the dispatcher starts the updates in their slots, ring by ring, within the error budget."""
    from prefect.artifacts import create_markdown_artifact

    runtime, logger = current(), get_run_logger()
    report = plan_rollout(
        version,
        engine=runtime.engine,
        now=runtime.clock(),
        actor=runtime.actor,
        max_failures=max_failures,
        max_failure_rate=max_failure_rate,
        soak_minutes=soak_minutes,
        max_concurrent=max_concurrent,
        per_customer_limit=per_customer_limit,
    )
    logger.info("release %s: %s", report.version, report.summary())
    for name, reason in report.blocked.items():
        logger.warning("release %s: %s blocked: %s", report.version, name, reason)
    with session_scope(runtime.engine) as session:
        status = release_status(report.version, session=session)
    create_markdown_artifact(
        key="release-status",
        markdown=status_markdown(status),
        description=f"Rollout of release {report.version}",
    )
    return {"report": report.as_dict(), "summary": report.summary(), "status": status}
