"""Small queries over the inventory tables. The session is always a keyword argument and never committed
here: callers own the transaction (see `inventory.db.session_scope`)."""

from __future__ import annotations

import difflib
from collections import defaultdict
from typing import Any

from sqlmodel import Session, col, select

from inventory.importer_schedule import blackout_dict, customer_terms, window_dict
from inventory.models import AccessKind, AuditEvent, Cluster, Contact, Customer, Node, Release
from inventory.windows import Blackout, MaintenanceWindow
from scheduling.versions import Version, is_version


class NotFound(LookupError):
    """No such customer, cluster or release; the message names close matches when there are any."""


def _not_found(what: str, wanted: str, known: list[str]) -> NotFound:
    close = difflib.get_close_matches(wanted, known, n=5, cutoff=0.6)
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif known:
        hint = f" (there are {len(known)}; `upkeep inventory show` lists them)"
    else:
        hint = " (there are none; import an inventory file first)"
    return NotFound(f"no {what} {wanted!r}{hint}")


def get_cluster(name: str, *, session: Session) -> Cluster:
    """The cluster called `name`, given as "cluster" or "customer/cluster"."""
    customer_name, _, cluster_name = name.rpartition("/")
    cluster = session.exec(select(Cluster).where(Cluster.name == cluster_name)).first()
    if cluster is None:
        names = list(session.exec(select(Cluster.name)))
        if customer_name:
            names += [f"{c}/{k}" for c, k in session.exec(select(Customer.name, Cluster.name).join(Cluster))]
        raise _not_found("cluster", name, names)
    if customer_name:
        owner = customer_of(cluster, session=session)
        if owner.name != customer_name:
            raise NotFound(
                f"no cluster {name!r}: cluster {cluster_name!r} belongs to customer {owner.name!r}"
            )
    return cluster


def cluster_nodes(cluster: Cluster, *, session: Session) -> list[Node]:
    """The cluster's nodes in upgrade order."""
    query = select(Node).where(Node.cluster_id == cluster.id).order_by(col(Node.position))
    return list(session.exec(query))


def customer_of(cluster: Cluster, *, session: Session) -> Customer:
    customer = session.get(Customer, cluster.customer_id)
    if customer is None:  # impossible with the foreign key, but say so rather than return None
        raise NotFound(f"cluster {cluster.name!r} has no customer (id {cluster.customer_id})")
    return customer


def get_release(version: str, *, session: Session) -> Release:
    release = session.exec(select(Release).where(Release.version == version)).first()
    if release is None:
        raise _not_found("release", version, list(session.exec(select(Release.version))))
    return release


def releases_map(*, session: Session) -> dict[str, list[str]]:
    """Release version → the versions it can be installed over (input for `upgrade_path`)."""
    return {r.version: list(r.upgradable_from) for r in session.exec(select(Release))}


def record_audit(
    actor: str, action: str, subject: str, detail: dict[str, Any], *, session: Session
) -> AuditEvent:
    """Add an audit event to the caller's transaction. Over-long text is cut to fit the columns rather
    than failing the action being audited (PostgreSQL enforces VARCHAR lengths, SQLite does not)."""
    event = AuditEvent(actor=actor[:128], action=action[:64], subject=subject[:255], detail=detail)
    session.add(event)
    session.flush()
    return event


def list_clusters(*, session: Session) -> list[Cluster]:
    return list(session.exec(select(Cluster).order_by(col(Cluster.name))))


def _sort_key(version: str) -> tuple[int, Version | None, str]:
    return (0, Version.parse(version), "") if is_version(version) else (1, None, version)


def inventory_snapshot(*, session: Session) -> dict[str, Any]:
    """Everything in the inventory as JSON-able data shaped like the inventory YAML file (same keys and
    nesting, so it can be written back out and re-imported), in a stable order: customers and clusters by
    name, contacts as imported, nodes in upgrade order, releases by version. No database ids. Schedule
    keys (windows, blackouts, notice, requires_approval, vendor_blackouts) and portal_users appear only
    when set."""
    contacts: dict[int | None, list[Contact]] = defaultdict(list)
    for contact in session.exec(select(Contact).order_by(col(Contact.id))):
        contacts[contact.customer_id].append(contact)
    nodes: dict[int | None, list[Node]] = defaultdict(list)
    for node in session.exec(select(Node).order_by(col(Node.position))):
        nodes[node.cluster_id].append(node)
    clusters: dict[int | None, list[Cluster]] = defaultdict(list)
    for cluster in list_clusters(session=session):
        clusters[cluster.customer_id].append(cluster)
    windows: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for window in session.exec(select(MaintenanceWindow).order_by(col(MaintenanceWindow.id))):
        windows[window.cluster_id].append(window_dict(window))
    blackouts: dict[int | None, list[dict[str, Any]]] = defaultdict(list)
    for blackout in session.exec(select(Blackout).order_by(col(Blackout.start), col(Blackout.id))):
        blackouts[blackout.customer_id].append(blackout_dict(blackout))
    customers = [
        {
            "name": customer.name,
            "timezone": customer.timezone,
            "contacts": [{"email": c.email, "name": c.name, "role": c.role} for c in contacts[customer.id]],
            "clusters": [
                _cluster_dict(cluster, nodes[cluster.id]) | _some("windows", windows[cluster.id])
                for cluster in clusters[customer.id]
            ],
            **customer_terms(customer),
            **_some("blackouts", blackouts[customer.id]),
            **_some("portal_users", _portal_users(customer.id, session)),
        }
        for customer in session.exec(select(Customer).order_by(col(Customer.name)))
    ]
    releases = sorted(session.exec(select(Release)), key=lambda r: _sort_key(r.version))
    snapshot = {"customers": customers, "releases": [_release_dict(release) for release in releases]}
    return snapshot | _some("vendor_blackouts", blackouts[None])


def _portal_users(customer_id: int | None, session: Session) -> list[dict[str, Any]]:
    from inventory.portal_tables import PortalUser

    query = select(PortalUser).where(PortalUser.customer_id == customer_id).order_by(col(PortalUser.id))
    return [{"email": user.email, "name": user.name} for user in session.exec(query)]


def _some(key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: items} if items else {}


def _cluster_dict(cluster: Cluster, nodes: list[Node]) -> dict[str, Any]:
    access: dict[str, Any] = {"type": str(cluster.access)}
    if cluster.access == AccessKind.jump:
        access |= {"host": cluster.jump_host, "port": cluster.jump_port, "user": cluster.jump_user}
    return {
        "name": cluster.name,
        "kind": str(cluster.kind),
        "version": cluster.version,
        "profile": cluster.profile,
        "ring": cluster.ring,
        "access": access,
        "nodes": [
            {"hostname": n.hostname, "address": n.address, "port": n.port, "user": n.ssh_user} for n in nodes
        ],
    }


def _release_dict(release: Release) -> dict[str, Any]:
    return {
        "version": release.version,
        "package": release.package,
        "sha256": release.sha256,
        "from": list(release.upgradable_from),
        "deadline": release.deadline.isoformat() if release.deadline else None,
    }
