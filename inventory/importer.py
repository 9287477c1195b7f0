"""The inventory YAML file: validate all of it (every problem, with its line), then upsert it.

`load_inventory` never touches the database and raises nothing but `InventoryError`, whatever the bytes.
`apply_inventory` writes in the caller's transaction; `import_inventory` does both in one transaction.

The parts, split by meaning: `importer_model` (the file described once, as pydantic models: checks,
JSON Schema), `importer_yaml` (YAML to the models, problems at FILE:LINE) and `importer_db` (the
database made to match the models, and read back as them for `inventory show --json`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from inventory.db import session_scope
from inventory.importer_db import (
    ImportSummary,
    cluster_values,
    customer_values,
    refuse_changes_under_active_runs,
    refuse_foreign_mailboxes,
    refuse_moved_clusters,
    refuse_shared_endpoints,
    release_values,
    save_row,
    sync_blackouts,
    sync_contacts,
    sync_nodes,
    sync_portal_users,
    sync_windows,
    version_going_back,
)
from inventory.importer_yaml import InventoryDoc, InventoryError, Problem, read_inventory, recorded_name
from inventory.models import Cluster, Contact, Customer, Node, Release
from inventory.oncall import current_spec, replace_spec
from inventory.repo import record_audit
from inventory.windows import Blackout, MaintenanceWindow

__all__ = [
    "ImportSummary",
    "InventoryDoc",
    "InventoryError",
    "Problem",
    "apply_inventory",
    "import_inventory",
    "load_inventory",
    "recorded_name",
]


def load_inventory(path: Path, *, role_addresses: frozenset[str] = frozenset()) -> InventoryDoc:
    """Parse and validate the whole file; raise InventoryError listing every problem."""
    return read_inventory(path, role_addresses=role_addresses)


def lock_inventory(session: Session) -> None:
    """One import at a time, until the caller's transaction ends (PostgreSQL: an advisory lock, taken
    again by the same transaction at no cost; SQLite: BEGIN IMMEDIATE). Whoever reads the inventory
    to compare it with the import's result (the portal users before it) reads after taking this."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection().execute(text("SELECT pg_advisory_xact_lock(hashtext('upkeep.inventory'))"))


def apply_inventory(doc: InventoryDoc, *, session: Session, actor: str) -> ImportSummary:
    """Upsert the document by natural keys in the caller's transaction and record one audit event.

    Customers' contacts, blackouts and notice terms, and clusters' nodes and maintenance windows become
    exactly the file's (a key left out means none, or the default); the vendor blackouts too when the
    file has `vendor_blackouts`. Customers, clusters and releases missing from the file are left alone.
    Everything that can refuse the import is checked before the first write, so a refused import writes
    nothing.
    """
    lock_inventory(session)
    customers = {c.name: c for c in session.exec(select(Customer))}
    clusters = {c.name: c for c in session.exec(select(Cluster))}
    releases = {r.version: r for r in session.exec(select(Release))}
    nodes: dict[int | None, list[Node]] = defaultdict(list)
    for node in session.exec(select(Node).order_by(col(Node.position))):
        nodes[node.cluster_id].append(node)
    contacts: dict[int | None, list[Contact]] = defaultdict(list)
    for contact in session.exec(select(Contact).order_by(col(Contact.id))):
        contacts[contact.customer_id].append(contact)
    windows: dict[int | None, list[MaintenanceWindow]] = defaultdict(list)
    for window in session.exec(select(MaintenanceWindow).order_by(col(MaintenanceWindow.id))):
        windows[window.cluster_id].append(window)
    blackouts: dict[int | None, list[Blackout]] = defaultdict(list)
    for blackout in session.exec(select(Blackout).order_by(col(Blackout.id))):
        blackouts[blackout.customer_id].append(blackout)
    refuse_moved_clusters(doc, clusters, {row.id: name for name, row in customers.items()})
    refuse_changes_under_active_runs(doc, session, customers, clusters, nodes)
    refuse_foreign_mailboxes(doc, session)
    refuse_shared_endpoints(doc, session, clusters, nodes)

    summary = ImportSummary()
    count = summary.counts
    for spec in doc.customers:
        row = customers.get(spec.name)
        customers[spec.name] = save_row(session, row, Customer, customer_values(spec), count["customer"])
    session.flush()
    for spec in doc.customers:
        customer = customers[spec.name]
        sync_contacts(session, customer, spec.contacts, contacts[customer.id], count["contact"])
        have = blackouts[customer.id]
        sync_blackouts(
            session, customer.id, spec.timezone, spec.blackouts, have, summary.schedule["blackout"]
        )
        for cluster_spec in spec.clusters:
            cluster = clusters.get(cluster_spec.name)
            if note := version_going_back(cluster, cluster_spec):
                summary.notes.append(note)
            values = cluster_values(cluster_spec, customer.id)
            clusters[cluster_spec.name] = save_row(session, cluster, Cluster, values, count["cluster"])
    session.flush()
    for spec in doc.customers:
        for cluster_spec in spec.clusters:
            cluster = clusters[cluster_spec.name]
            sync_nodes(session, cluster, cluster_spec.nodes, nodes[cluster.id], summary)
            assert cluster.id is not None
            window_counts = summary.schedule["window"]
            sync_windows(session, cluster.id, cluster_spec.windows, windows[cluster.id], window_counts)
    sync_portal_users(
        session, [(customers[spec.name], spec.portal_users) for spec in doc.customers], summary.notes
    )
    if doc.vendor_blackouts is not None:
        have = blackouts[None]
        sync_blackouts(session, None, "", doc.vendor_blackouts, have, summary.schedule["blackout"])
    for release in doc.releases:
        save_row(session, releases.get(release.version), Release, release_values(release), count["release"])
    if doc.oncall is not None:  # the rotation is replaced whole, like a customer's contacts
        if current_spec(session) != doc.oncall.spec():  # the same one again is left as it is
            replace_spec(doc.oncall.spec(), session=session)
        summary.notes.append(
            f"on-call rotation: {len(doc.oncall.engineers)} engineers, {doc.oncall.rotation}"
        )
    session.flush()
    name = recorded_name(doc.path)
    detail = {"file": name, "sha256": doc.sha256, **summary.as_dict()}
    record_audit(actor, "inventory.import", name, detail, session=session)
    return summary


def import_inventory(path: Path, *, engine: Engine, actor: str) -> ImportSummary:
    """Load, validate and apply `path` in one transaction: all of it or, on any problem, nothing."""
    doc = load_inventory(path)
    with session_scope(engine) as session:
        return apply_inventory(doc, session=session, actor=actor)
