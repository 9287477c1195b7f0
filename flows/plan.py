"""What an update will do, worked out from the inventory without touching anything.

`plan_update` only reads: it is what `--dry-run` prints and what the flow then carries out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlmodel import Session

from inventory import repo
from inventory.models import AccessKind
from scheduling.versions import NoUpgradePath, Version, upgrade_path
from tasks.ssh import SshTarget


class PlanError(ValueError):
    """The update cannot be planned; the message says why."""


@dataclass(frozen=True)
class PlannedNode:
    id: int
    hostname: str
    address: str
    port: int
    user: str
    position: int


@dataclass(frozen=True)
class Jump:
    host: str
    port: int
    user: str


@dataclass(frozen=True)
class UpdatePlan:
    customer: str
    cluster: str
    cluster_id: int
    from_version: str
    to_version: str
    path: list[str]
    package: str
    sha256: str
    nodes: list[PlannedNode]
    jump: Jump | None = None
    steps: list[str] = field(
        default_factory=lambda: ["pre-flight", "download", "distribute", "upgrade node by node"]
    )

    @property
    def label(self) -> str:
        return f"{self.customer}/{self.cluster} {self.from_version}→{self.to_version}"

    @property
    def package_name(self) -> str:
        return PurePosixPath(self.package).name

    def target(self, node: PlannedNode) -> SshTarget:
        return ssh_target(node.hostname, node.address, node.port, node.user, self.jump)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ssh_target(hostname: str, address: str, port: int, user: str, jump: Jump | None) -> SshTarget:
    """How to reach a node: directly, or through its cluster's jump host."""
    via = SshTarget(f"jump:{jump.host}", jump.host, jump.port, jump.user) if jump else None
    return SshTarget(hostname, address, port, user, via)


def plan_update(cluster_name: str, to_version: str, *, session: Session) -> UpdatePlan:
    try:
        Version.parse(to_version)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    cluster = repo.get_cluster(cluster_name, session=session)
    customer = repo.customer_of(cluster, session=session)
    try:
        path = upgrade_path(cluster.version, to_version, repo.releases_map(session=session))
    except NoUpgradePath as exc:
        raise PlanError(f"{customer.name}/{cluster.name}: {exc}") from None
    if len(path) > 1:
        raise PlanError(
            f"{customer.name}/{cluster.name}: {cluster.version}→{to_version} needs several steps "
            f"({' → '.join([cluster.version, *path])}); update to {path[0]} first"
        )
    release = repo.get_release(to_version, session=session)
    nodes = repo.cluster_nodes(cluster, session=session)
    if not nodes:
        raise PlanError(f"{customer.name}/{cluster.name} has no nodes")
    jump = None
    if cluster.access is AccessKind.jump:
        assert cluster.jump_host and cluster.jump_port and cluster.jump_user
        jump = Jump(cluster.jump_host, cluster.jump_port, cluster.jump_user)
    assert cluster.id is not None
    return UpdatePlan(
        customer=customer.name,
        cluster=cluster.name,
        cluster_id=cluster.id,
        from_version=cluster.version,
        to_version=to_version,
        path=path,
        package=release.package,
        sha256=release.sha256,
        nodes=[PlannedNode(n.id or 0, n.hostname, n.address, n.port, n.ssh_user, n.position) for n in nodes],
        jump=jump,
    )
