"""`upkeep tunnel status`: which tunnel nodes can be reached now and since when, seen from the vendor's
tunnel server, and the planned updates that will need their tunnels. Reads the inventory, probes,
writes nothing.

"Since when" is the tunnel server's word, never Upkeep's memory: the start of the sshd session holding
the node's tunnel port, read by the reporter that is Upkeep's forced command there
(tasks/tunnel_sessions.py). `attention` lists what monitoring should act on: a tunnel server that
could not be asked, or a node whose tunnel is not open while an update of its cluster starts within
`within` (or its window has started and it still waits), or while an update of its cluster runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_
from sqlmodel import col, select

from flows.plan import TunnelServer, tunnel_server
from flows.runtime import Runtime
from inventory import repo
from inventory.db import session_scope
from inventory.models import AccessKind, Cluster, Customer, RunState, UpgradeRun
from tasks.ssh import RemoteError, SshSettings, SshTarget, probe_tunnels

SOON = timedelta(hours=72)
NEEDED_WITHIN = timedelta(hours=1)
# A tunnel cluster as read: its server, (hostname, tunnel port) per node, names, planned updates soon.
_Found = tuple[TunnelServer, list[tuple[str, int | None]], dict[str, str], list[dict[str, Any]]]
START = "upkeep-agent tunnel start"


def tunnel_status(
    runtime: Runtime, *, customer: str | None, now: datetime, within: timedelta = NEEDED_WITHIN
) -> list[dict[str, Any]]:
    """One entry per tunnel cluster (of `customer`, if given): per node open (since when, per the
    tunnel server) or closed (with what the customer runs to open it), its planned updates within 72 h,
    and `attention`: why monitoring should look (see the module's docstring)."""
    with session_scope(runtime.engine) as session:
        query = select(Cluster).where(Cluster.access == AccessKind.tunnel).order_by(col(Cluster.name))
        if customer is not None:
            owner = session.exec(select(Customer).where(Customer.name == customer)).first()
            if owner is None:
                raise repo.NotFound(f"no customer {customer!r} in the inventory")
            query = query.where(Cluster.customer_id == owner.id)
        clusters: list[_Found] = []
        for cluster in session.exec(query).all():
            server = tunnel_server(cluster)
            assert server is not None
            soon_start = col(UpgradeRun.slot_start) <= now + SOON
            planned = and_(col(UpgradeRun.state) == RunState.planned, soon_start)
            running = col(UpgradeRun.state) == RunState.running
            runs = session.exec(
                select(UpgradeRun)
                .where(UpgradeRun.cluster_id == cluster.id, or_(planned, running))
                .order_by(col(UpgradeRun.id))
            ).all()
            # A running update needs its tunnels now, whenever its slot began (or with no slot: an SRE's
            # `upkeep update`); one waiting mid-run for a closed tunnel is exactly what to act on.
            soon = [
                {
                    "update": r.id,
                    "to_version": r.to_version,
                    "slot_start": start.isoformat(),
                    "needs_tunnel_now": r.state == RunState.running or start <= now + within,
                }
                for r in runs
                if (start := r.slot_start or r.started_at) is not None
            ]
            hosts = [(n.hostname, n.tunnel_port) for n in repo.cluster_nodes(cluster, session=session)]
            owner_name = repo.customer_of(cluster, session=session).name
            clusters.append((server, hosts, {"customer": owner_name, "cluster": cluster.name}, soon))
    settings = runtime.ssh
    if not isinstance(settings, SshSettings):
        raise TypeError("tunnel status probes over SSH: the runtime's connector has no SSH settings")
    result = []
    for server, hosts, entry, soon in clusters:
        target = SshTarget(
            f"tunnel:{server.host}", server.host, server.port, server.user, host_key=server.host_key
        )
        ports = [port for _, port in hosts if port is not None]
        try:
            probe = probe_tunnels(target, ports, settings)
            seen, since, problem, since_problem = probe.ports, probe.since, None, probe.since_problem
        except RemoteError as exc:
            seen, since, problem, since_problem = {}, {}, str(exc), None
        nodes = []
        for hostname, port in hosts:
            state = seen.get(port or 0, "unknown")
            node: dict[str, Any] = {"node": hostname, "tunnel_port": port, "open": state.startswith("open")}
            node["state"] = state if problem is None else f"unknown: tunnel server unreachable ({problem})"
            opened = since.get(port or 0) if node["open"] else None
            node["since"] = opened.isoformat() if opened is not None else None
            if not node["open"] and problem is None:
                node["customer_runs"] = START
            nodes.append(node)
        needed = [u for u in soon if u["needs_tunnel_now"]]
        attention = []
        if problem is not None:
            attention.append(f"tunnel server {server.host}:{server.port} unreachable: state unknown")
        for update in needed:
            closed = [n["node"] for n in nodes if not n["open"]]
            if closed and problem is None:
                attention.append(
                    f"update {update['update']} at {update['slot_start']} needs the tunnel of "
                    f"{', '.join(closed)}: closed"
                )
        result.append(
            {
                **entry,
                "tunnel_server": f"{server.user}@{server.host}:{server.port}",
                "error": problem,
                "since_unknown": since_problem,
                "nodes": nodes,
                "updates_soon": soon,
                "attention": attention,
            }
        )
    return result
