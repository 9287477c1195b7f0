"""Making the database's rows match an inventory document: insert or update by natural key, replace a
customer's contacts and a cluster's nodes with the file's, refuse to touch clusters under an active
upgrade run, and count what changed (ImportSummary). Runs in the caller's session; commits nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from sqlalchemy import update
from sqlmodel import Session, SQLModel, col, select

from inventory.importer_specs import ClusterSpec, ContactSpec, InventoryDoc, InventoryError, NodeSpec, Problem
from inventory.models import AccessKind, Cluster, ClusterKind, Contact, Customer, Node, NodeStep, UpgradeRun

TABLES = ("customer", "contact", "cluster", "node", "release")
SCHEDULE_TABLES = ("window", "blackout")  # counted apart: `counts` keeps its shape for existing readers
_M = TypeVar("_M", bound=SQLModel)


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0


@dataclass
class ImportSummary:
    counts: dict[str, Counts] = field(default_factory=lambda: {table: Counts() for table in TABLES})
    notes: list[str] = field(default_factory=list)  # worth a human's attention (removals, version going back)
    schedule: dict[str, Counts] = field(default_factory=lambda: {t: Counts() for t in SCHEDULE_TABLES})

    @property
    def changed(self) -> bool:
        return any(c.created or c.updated or c.deleted for c in self._all().values())

    def _all(self) -> dict[str, Counts]:
        return self.counts | self.schedule

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": {table: asdict(c) for table, c in self.counts.items()},
            "schedule": {table: asdict(c) for table, c in self.schedule.items()},
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        """One line, e.g. "node: 1 created, 2 updated; release: 1 created", then the notes."""
        changes = [
            f"{table}: "
            + ", ".join(f"{n} {what}" for what, n in asdict(c).items() if n and what != "unchanged")
            for table, c in self._all().items()
            if c.created or c.updated or c.deleted
        ]
        unchanged = sum(c.unchanged for c in self._all().values())
        return "\n".join(["; ".join(changes) or f"no changes ({unchanged} rows unchanged)", *self.notes])


def save_row(session: Session, row: _M | None, model: type[_M], values: dict[str, Any], counts: Counts) -> _M:
    """Insert, or update only the columns that differ, counting which it was."""
    if row is None:
        row = model(**values)
        session.add(row)
        counts.created += 1
        return row
    changed = {key: value for key, value in values.items() if getattr(row, key) != value}
    for key, value in changed.items():
        setattr(row, key, value)
    counts.updated += bool(changed)
    counts.unchanged += not changed
    return row


def cluster_values(spec: ClusterSpec, customer_id: int | None) -> dict[str, Any]:
    jump = spec.access["type"] == "jump"
    return {
        "customer_id": customer_id,
        "name": spec.name,
        "kind": ClusterKind(spec.kind),
        "version": spec.version,
        "profile": spec.profile,
        "ring": spec.ring,
        "access": AccessKind(spec.access["type"]),
        "jump_host": spec.access["host"] if jump else None,
        "jump_port": spec.access["port"] if jump else None,
        "jump_user": spec.access["user"] if jump else None,
    }


def node_values(spec: NodeSpec, position: int) -> dict[str, Any]:
    return {
        "hostname": spec.hostname,
        "address": spec.address,
        "port": spec.port,
        "ssh_user": spec.user,
        "position": position,
    }


def _differs(row: SQLModel, values: dict[str, Any]) -> bool:
    return any(getattr(row, key) != value for key, value in values.items())


def refuse_changes_under_active_runs(
    doc: InventoryDoc,
    session: Session,
    customers: dict[str, Customer],
    clusters: dict[str, Cluster],
    nodes: dict[int | None, list[Node]],
) -> None:
    """A running upgrade works from the cluster's rows: changing them under it is refused."""
    query = select(UpgradeRun).where(col(UpgradeRun.active_cluster_id).is_not(None))
    active = {run.cluster_id: run for run in session.exec(query)}
    problems = []
    for customer_spec in doc.customers:
        owner = customers.get(customer_spec.name)
        for spec in customer_spec.clusters:
            row = clusters.get(spec.name)
            run = active.get(row.id or 0) if row else None
            if row is None or run is None:
                continue
            wanted = [node_values(node, i) for i, node in enumerate(spec.nodes, 1)]
            have = nodes[row.id]
            if (
                _differs(row, cluster_values(spec, owner.id if owner else None))
                or len(have) != len(wanted)
                or any(_differs(n, values) for n, values in zip(have, wanted, strict=True))
            ):
                problems.append(
                    Problem(
                        str(doc.path),
                        spec.line,
                        f"cluster {spec.name!r}: upgrade run "
                        f"{run.id} is {run.state}; change the cluster after it ends",
                    )
                )
    if problems:
        raise InventoryError(problems)


def sync_contacts(
    session: Session, customer: Customer, specs: list[ContactSpec], have: list[Contact], counts: Counts
) -> None:
    """Contacts are matched by (email, role): the file's list replaces the customer's."""
    existing: dict[tuple[str, str], Contact] = {}
    for row in have:
        existing.setdefault((row.email.lower(), row.role), row)
    kept = set()
    for spec in specs:
        values = {"customer_id": customer.id, "email": spec.email, "name": spec.name, "role": spec.role}
        kept.add(
            id(save_row(session, existing.get((spec.email.lower(), spec.role)), Contact, values, counts))
        )
    gone = [row for row in have if id(row) not in kept]
    for row in gone:
        session.delete(row)
    counts.deleted += len(gone)


def sync_nodes(
    session: Session, cluster: Cluster, specs: list[NodeSpec], have: list[Node], summary: ImportSummary
) -> None:
    """Make the cluster's nodes exactly `specs`, in order. Positions and hostnames are unique per
    cluster, so moved nodes park at negative positions first and removals are flushed before inserts."""
    counts = summary.counts["node"]
    position = {spec.hostname: i for i, spec in enumerate(specs, 1)}
    existing = {node.hostname: node for node in have}
    gone = [node for node in have if node.hostname not in position]
    if gone:
        ids = [node.id for node in gone]
        # Upgrade history outlives the node: its steps stay, without the link (the audit event names it).
        session.exec(update(NodeStep).where(col(NodeStep.node_id).in_(ids)).values(node_id=None))
        for node in gone:
            session.delete(node)
            summary.notes.append(f"cluster {cluster.name!r}: node {node.hostname!r} removed")
        counts.deleted += len(gone)
    for node in have:
        if node.hostname in position and node.position != position[node.hostname]:
            node.position = -(node.id or 0)
    session.flush()
    for spec in specs:
        values = {"cluster_id": cluster.id, **node_values(spec, position[spec.hostname])}
        save_row(session, existing.get(spec.hostname), Node, values, counts)
    session.flush()
