"""Small queries over the inventory tables. The session is always a keyword argument and never committed
here: callers own the transaction (see `inventory.db.session_scope`)."""

from __future__ import annotations

import difflib
from typing import Any

from sqlmodel import Session, col, select

from inventory.models import AuditEvent, Cluster, Customer, Node, Release


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
    than failing the action being audited (PostgreSQL enforces VARCHAR lengths, SQLite does not); the
    actor never is: its column has no limit since 0012, and a cut name is another (or no) user's, a lie
    in the trail beside the run's whole requested_by/approved_by (adv43)."""
    event = AuditEvent(actor=actor, action=action[:64], subject=subject[:255], detail=detail)
    session.add(event)
    session.flush()
    return event


def list_clusters(*, session: Session) -> list[Cluster]:
    return list(session.exec(select(Cluster).order_by(col(Cluster.name))))
