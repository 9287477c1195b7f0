"""What an update will do, worked out from the inventory without touching anything.

`plan_update` only reads: it is what `--dry-run` prints and what the flow then carries out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlmodel import Session

from inventory import repo
from inventory.models import AccessKind, Cluster, Node
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
    tunnel_port: int | None = None  # access tunnel: its forwarded port on the tunnel server
    host_key: str | None = None  # access tunnel: the node's own key, the only one accepted


@dataclass(frozen=True)
class Jump:
    host: str
    port: int
    user: str


@dataclass(frozen=True)
class TunnelServer:
    """The vendor's tunnel server a tunnel cluster's nodes open their reverse tunnels to."""

    host: str
    port: int
    user: str
    host_key: str


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
    tunnel: TunnelServer | None = None
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
        if self.tunnel is not None:
            return tunnel_target(node.hostname, node.user, node.tunnel_port, node.host_key, self.tunnel)
        return ssh_target(node.hostname, node.address, node.port, node.user, self.jump)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ssh_target(hostname: str, address: str, port: int, user: str, jump: Jump | None) -> SshTarget:
    """How to reach a node: directly, or through its cluster's jump host."""
    via = SshTarget(f"jump:{jump.host}", jump.host, jump.port, jump.user) if jump else None
    return SshTarget(hostname, address, port, user, via)


def tunnel_target(
    hostname: str, user: str, tunnel_port: int | None, host_key: str | None, server: TunnelServer
) -> SshTarget:
    """A node behind the customer's reverse tunnel: its forwarded port on the tunnel server's loopback,
    reached from the tunnel server, and known only by its own name and key."""
    if tunnel_port is None or not host_key:
        raise PlanError(f"{hostname}: access tunnel but no tunnel_port or host_key in the inventory")
    via = SshTarget(f"tunnel:{server.host}", server.host, server.port, server.user, host_key=server.host_key)
    return SshTarget(hostname, "127.0.0.1", tunnel_port, user, via, host_key=host_key, via_tunnel=True)


def tunnel_server(cluster: Cluster) -> TunnelServer | None:
    if cluster.access is not AccessKind.tunnel:
        return None
    assert cluster.tunnel_host and cluster.tunnel_port and cluster.tunnel_user and cluster.tunnel_host_key
    return TunnelServer(
        cluster.tunnel_host, cluster.tunnel_port, cluster.tunnel_user, cluster.tunnel_host_key
    )


def node_target(cluster: Cluster, node: Node) -> SshTarget:
    """How to reach a node of the database's inventory: directly, through a jump host or a tunnel."""
    server = tunnel_server(cluster)
    if server is not None:
        return tunnel_target(node.hostname, node.ssh_user, node.tunnel_port, node.host_key, server)
    jump = None
    if cluster.access is AccessKind.jump:
        assert cluster.jump_host and cluster.jump_port and cluster.jump_user
        jump = Jump(cluster.jump_host, cluster.jump_port, cluster.jump_user)
    return ssh_target(node.hostname, node.address, node.port, node.ssh_user, jump)


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
        nodes=[
            PlannedNode(
                n.id or 0, n.hostname, n.address, n.port, n.ssh_user, n.position, n.tunnel_port, n.host_key
            )
            for n in nodes
        ],
        jump=jump,
        tunnel=tunnel_server(cluster),
    )
