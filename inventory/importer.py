"""The inventory YAML file: validate all of it (every problem, with its line), then upsert it.

`load_inventory` never touches the database and raises nothing but `InventoryError`, whatever the bytes.
`apply_inventory` writes in the caller's transaction; `import_inventory` does both in one transaction.

The parts live beside this module, which re-exports their public names: `importer_specs` (the document
and problem types), `importer_rules` (what each field may hold), `importer_parse` (YAML to specs, on the
generic walking of `importer_yaml`) and `importer_write` (rows to match the specs, and the ImportSummary
of what changed).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from inventory.db import session_scope
from inventory.importer_parse import parse_inventory
from inventory.importer_portal import refuse_foreign_mailboxes, sync_portal_users
from inventory.importer_rules import (
    CLUSTER,
    CONTACT,
    CUSTOMER,
    DIRECT,
    HOSTNAME,
    JUMP,
    NAME,
    NODE,
    PORT,
    RELEASE,
    SSH_USER,
    TOP,
    VERSION,
    Check,
    Field,
    address_key,
    ip_address,
    is_hostname,
    show,
)
from inventory.importer_schedule import sync_blackouts, sync_windows
from inventory.importer_specs import (
    BlackoutSpec,
    ClusterSpec,
    ContactSpec,
    CustomerSpec,
    InventoryDoc,
    InventoryError,
    NodeSpec,
    Problem,
    ReleaseSpec,
    WindowSpec,
)
from inventory.importer_write import (
    TABLES,
    Counts,
    ImportSummary,
    cluster_values,
    refuse_changes_under_active_runs,
    save_row,
    sync_contacts,
    sync_nodes,
)
from inventory.models import Cluster, Contact, Customer, Node, Release
from inventory.oncall import replace_spec
from inventory.repo import record_audit
from inventory.windows import Blackout, MaintenanceWindow
from scheduling.versions import Version, is_version

__all__ = [
    "CLUSTER",
    "CONTACT",
    "CUSTOMER",
    "DIRECT",
    "HOSTNAME",
    "JUMP",
    "NAME",
    "NODE",
    "PORT",
    "RELEASE",
    "SSH_USER",
    "TABLES",
    "TOP",
    "VERSION",
    "BlackoutSpec",
    "Check",
    "ClusterSpec",
    "ContactSpec",
    "Counts",
    "CustomerSpec",
    "Field",
    "ImportSummary",
    "InventoryDoc",
    "InventoryError",
    "NodeSpec",
    "Problem",
    "ReleaseSpec",
    "WindowSpec",
    "address_key",
    "apply_inventory",
    "import_inventory",
    "ip_address",
    "is_hostname",
    "load_inventory",
    "show",
]


def load_inventory(path: Path) -> InventoryDoc:
    """Parse and validate the whole file; raise InventoryError listing every problem."""
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InventoryError([Problem(name, None, f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        source = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InventoryError([Problem(name, line, f"not UTF-8 text (byte {data[exc.start]:#04x})")]) from None
    customers, releases, vendor_blackouts, oncall, problems = parse_inventory(name, source)
    if problems:
        raise InventoryError(problems)
    digest = hashlib.sha256(data).hexdigest()
    return InventoryDoc(Path(path), digest, customers, releases, vendor_blackouts, oncall)


def apply_inventory(doc: InventoryDoc, *, session: Session, actor: str) -> ImportSummary:
    """Upsert the document by natural keys in the caller's transaction and record one audit event.

    Customers' contacts, blackouts and notice terms, and clusters' nodes and maintenance windows become
    exactly the file's (a key left out means none, or the default); the vendor blackouts too when the
    file has `vendor_blackouts`. Customers, clusters and releases missing from the file are left alone.
    Everything that can refuse the import is checked before the first write, so a refused import writes
    nothing.
    """
    if session.get_bind().dialect.name == "postgresql":  # one import at a time (SQLite: BEGIN IMMEDIATE)
        session.connection().execute(text("SELECT pg_advisory_xact_lock(hashtext('upkeep.inventory'))"))
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
    refuse_changes_under_active_runs(doc, session, customers, clusters, nodes)
    refuse_foreign_mailboxes(str(doc.path), {spec.name: spec.portal_users for spec in doc.customers}, session)

    summary = ImportSummary()
    count = summary.counts
    for spec in doc.customers:
        values: dict[str, Any] = {
            "name": spec.name,
            "timezone": spec.timezone,
            "notice_hours_product": spec.notice_hours_product,
            "notice_hours_cloud": spec.notice_hours_cloud,
            "requires_approval": spec.requires_approval,
            "holiday_country": spec.holidays[0] if spec.holidays else None,
            "holiday_subdivision": spec.holidays[1] if spec.holidays else None,
        }
        customers[spec.name] = save_row(
            session, customers.get(spec.name), Customer, values, count["customer"]
        )
    session.flush()
    for spec in doc.customers:
        customer = customers[spec.name]
        sync_contacts(session, customer, spec.contacts, contacts[customer.id], count["contact"])
        blackout_counts = summary.schedule["blackout"]
        sync_blackouts(session, customer.id, spec.blackouts, blackouts[customer.id], blackout_counts)
        for cluster_spec in spec.clusters:
            row = clusters.get(cluster_spec.name)
            if (
                row
                and is_version(row.version)
                and Version.parse(cluster_spec.version) < Version.parse(row.version)
            ):
                summary.notes.append(
                    f"cluster {row.name!r}: version goes back from {row.version} to "
                    f"{cluster_spec.version}; is the file older than the database?"
                )
            values = cluster_values(cluster_spec, customer.id)
            clusters[cluster_spec.name] = save_row(session, row, Cluster, values, count["cluster"])
    session.flush()
    for spec in doc.customers:
        for cluster_spec in spec.clusters:
            cluster = clusters[cluster_spec.name]
            sync_nodes(session, cluster, cluster_spec.nodes, nodes[cluster.id], summary)
            assert cluster.id is not None
            window_counts = summary.schedule["window"]
            sync_windows(session, cluster.id, cluster_spec.windows, windows[cluster.id], window_counts)
    portal = [(customers[spec.name], spec.portal_users) for spec in doc.customers]
    sync_portal_users(session, portal, summary.notes)
    if doc.vendor_blackouts is not None:
        sync_blackouts(session, None, doc.vendor_blackouts, blackouts[None], summary.schedule["blackout"])
    for release in doc.releases:
        values = {
            "version": release.version,
            "package": release.package,
            "sha256": release.sha256,
            "upgradable_from": release.upgradable_from,
            "deadline": release.deadline,
        }
        save_row(session, releases.get(release.version), Release, values, count["release"])
    if doc.oncall is not None:  # the rotation is replaced whole, like a customer's contacts
        replace_spec(doc.oncall, session=session)
        summary.notes.append(
            f"on-call rotation: {len(doc.oncall['engineers'])} engineers, {doc.oncall['rotation']}"
        )
    session.flush()
    detail = {"file": str(doc.path), "sha256": doc.sha256, **summary.as_dict()}
    record_audit(actor, "inventory.import", str(doc.path), detail, session=session)
    return summary


def import_inventory(path: Path, *, engine: Engine, actor: str) -> ImportSummary:
    """Load, validate and apply `path` in one transaction: all of it or, on any problem, nothing."""
    doc = load_inventory(path)
    with session_scope(engine) as session:
        return apply_inventory(doc, session=session, actor=actor)
