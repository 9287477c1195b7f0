"""The inventory file's models against the database: rows made to match a valid file (insert or update
by natural key; a customer's contacts, blackouts and portal users and a cluster's nodes and windows
replaced with the file's), refusals only the database can show (a cluster under an active upgrade run,
a mailbox another customer owns), the ImportSummary of what changed, and the way back: the database
as the same models, which `inventory show --json` prints and `inventory import` takes again.

Runs in the caller's session; commits nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from sqlalchemy import update
from sqlmodel import Session, SQLModel, col, delete, select

from inventory import importer_model as m
from inventory.importer_yaml import InventoryDoc, Loc
from inventory.models import (
    AccessKind,
    Cluster,
    ClusterKind,
    Contact,
    Customer,
    Node,
    NodeStep,
    Release,
    UpgradeRun,
)
from inventory.oncall import current_spec
from inventory.portal_tables import PortalFeed, PortalLink, PortalSession, PortalUser
from inventory.windows import Blackout, MaintenanceWindow
from scheduling.versions import Version, is_version

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


# --- columns from the models ------------------------------------------------------------------------


def customer_values(spec: m.Customer) -> dict[str, Any]:
    notice = spec.notice or m.Notice()
    return {
        "name": spec.name,
        "timezone": spec.timezone,
        "notice_hours_product": m.Notice.hours(notice.product_update),
        "notice_hours_cloud": m.Notice.hours(notice.cloud_release),
        "requires_approval": spec.requires_approval,
        "holiday_country": spec.holidays.country if spec.holidays else None,
        "holiday_subdivision": spec.holidays.subdivision if spec.holidays else None,
    }


def cluster_values(spec: m.Cluster, customer_id: int | None) -> dict[str, Any]:
    jump = spec.access if isinstance(spec.access, m.Jump) else None
    tunnel = spec.access if isinstance(spec.access, m.Tunnel) else None
    return {
        "customer_id": customer_id,
        "name": spec.name,
        "kind": ClusterKind(spec.kind),
        "version": spec.version,
        "profile": spec.profile,
        "ring": spec.ring,
        "access": AccessKind(spec.access.type),
        "jump_host": jump.host if jump else None,
        "jump_port": jump.port if jump else None,
        "jump_user": jump.user if jump else None,
        "tunnel_host": tunnel.host if tunnel else None,
        "tunnel_port": tunnel.port if tunnel else None,
        "tunnel_user": tunnel.user if tunnel else None,
        "tunnel_host_key": tunnel.host_key if tunnel else None,
        "tunnel_allow_cloud": tunnel.allow_cloud if tunnel else False,
    }


def node_values(spec: m.Node, position: int) -> dict[str, Any]:
    return {
        "hostname": spec.hostname,
        "address": spec.endpoint,
        "port": spec.port,
        "ssh_user": spec.user,
        "position": position,
        "tunnel_port": spec.tunnel_port,
        "host_key": spec.host_key,
    }


def release_values(spec: m.Release) -> dict[str, Any]:
    return {
        "version": spec.version,
        "package": spec.package,
        "sha256": spec.sha256,
        "upgradable_from": list(spec.from_),
        "deadline": spec.deadline,
    }


def version_going_back(row: Cluster | None, spec: m.Cluster) -> str | None:
    if row and is_version(row.version) and Version.parse(spec.version) < Version.parse(row.version):
        return (
            f"cluster {row.name!r}: version goes back from {row.version} to {spec.version}; "
            "is the file older than the database?"
        )
    return None


# --- refusals only the database can show ---------------------------------------------------------------


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
    problems: list[tuple[Loc, str]] = []
    for c, customer_spec in enumerate(doc.customers):
        owner = customers.get(customer_spec.name)
        for k, spec in enumerate(customer_spec.clusters):
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
                where = ("customers", c, "clusters", k)
                problems.append(
                    (
                        where,
                        f"cluster {spec.name!r}: upgrade run {run.id} is {run.state}; "
                        "change the cluster after it ends",
                    )
                )
    doc.refuse(problems)


def refuse_foreign_mailboxes(doc: InventoryDoc, session: Session) -> None:
    """A mailbox in the file that the database has as another customer's portal user, where that
    customer is not in the file (so keeps its users), is refused before anything is written."""
    owners = {
        mailbox: name
        for mailbox, name in session.exec(
            select(PortalUser.mailbox, Customer.name).join(
                Customer, col(Customer.id) == PortalUser.customer_id
            )
        )
    }
    listed = {customer.name for customer in doc.customers}
    doc.refuse(
        (
            ("customers", c, "portal_users", u, "email"),
            f"portal user {m.show(user.email)} is already a portal user of customer {m.show(owners[key])}, "
            "which this file does not list; remove it there first",
        )
        for c, customer in enumerate(doc.customers)
        for u, user in enumerate(customer.portal_users)
        if (key := m.mailbox_key(user.email)) in owners
        and owners[key] != customer.name
        and owners[key] not in listed
    )


def refuse_moved_clusters(doc: InventoryDoc, clusters: dict[str, Cluster], owners: dict[Any, str]) -> None:
    """A cluster stays its customer's: listed under another customer (a copy-paste, a guess), it would
    take its update history and reports along, and that customer's notices would go elsewhere."""
    doc.refuse(
        (
            ("customers", c, "clusters", k, "name"),
            f"cluster {spec.name!r} is customer {owners[row.customer_id]!r}'s; an import does not move a "
            "cluster to another customer (its update history and reports would go with it)",
        )
        for c, customer in enumerate(doc.customers)
        for k, spec in enumerate(customer.clusters)
        if (row := clusters.get(spec.name)) is not None
        and row.customer_id in owners
        and owners[row.customer_id] != customer.name
    )


def refuse_shared_endpoints(
    doc: InventoryDoc,
    session: Session,
    clusters: dict[str, Cluster],
    nodes: dict[int | None, list[Node]],
) -> None:
    """A node's address and port may be used once: the file checks its own nodes (cross_checks); this
    checks them against the nodes of clusters the file does not list (another customer's, or the old
    name of a renamed cluster), which keep theirs. Two clusters on one machine could be updated at once."""
    listed = {cluster.name for customer in doc.customers for cluster in customer.clusters}
    owners = dict(session.exec(select(Customer.id, Customer.name)).all())
    taken: dict[tuple[str, int], tuple[Node, Cluster]] = {}
    # A tunnel port is one listening socket on the tunnel server: two nodes given it (two customers)
    # would race for it, and Upkeep would reach whichever node holds it.
    tunnels: dict[tuple[str, int, int], tuple[Node, Cluster]] = {}
    tunnels_by_key: dict[tuple[str, int], tuple[Node, Cluster]] = {}  # (server host key, tunnel port)
    keys: dict[str, tuple[Node, Cluster]] = {}  # a tunnel node's own key: its only identity
    for name, cluster in clusters.items():
        if name not in listed:
            for node in nodes[cluster.id]:
                taken.setdefault((m.address_key(node.address), node.port), (node, cluster))
                if cluster.tunnel_host is not None and node.tunnel_port is not None:
                    server = (m.address_key(cluster.tunnel_host), cluster.tunnel_port or 22, node.tunnel_port)
                    tunnels.setdefault(server, (node, cluster))
                    if cluster.tunnel_host_key:  # the same machine, whatever name the file reaches it by
                        by_key = (cluster.tunnel_host_key.split()[1], node.tunnel_port)
                        tunnels_by_key.setdefault(by_key, (node, cluster))
                if node.host_key:
                    keys.setdefault(node.host_key.split()[1], (node, cluster))
    problems: list[tuple[Loc, str]] = []
    for c, customer in enumerate(doc.customers):
        for k, spec in enumerate(customer.clusters):
            for n, node_spec in enumerate(spec.nodes):
                access, here = spec.access, ("customers", c, "clusters", k, "nodes", n)
                if node_spec.host_key and (held := keys.get(node_spec.host_key.split()[1])) is not None:
                    node, cluster = held
                    problems.append(
                        (
                            (*here, "host_key"),
                            f"node {node_spec.hostname!r}: host_key is already listed for node "
                            f"{node.hostname!r} of cluster {cluster.name!r} (customer "
                            f"{owners.get(cluster.customer_id, '?')!r}), which this file does not list",
                        )
                    )
                if isinstance(access, m.Tunnel) and node_spec.tunnel_port is not None:
                    server = (m.address_key(access.host), access.port, node_spec.tunnel_port)
                    by_key = (access.host_key.split()[1], node_spec.tunnel_port)
                    if (held := tunnels.get(server) or tunnels_by_key.get(by_key)) is not None:
                        node, cluster = held
                        problems.append(
                            (
                                (*here, "tunnel_port"),
                                f"node {node_spec.hostname!r}: tunnel_port {node_spec.tunnel_port} on tunnel "
                                f"server {access.host}:{access.port} is already assigned to node "
                                f"{node.hostname!r} of cluster {cluster.name!r} (customer "
                                f"{owners.get(cluster.customer_id, '?')!r}), which this file does not list",
                            )
                        )
                found = taken.get((m.address_key(node_spec.endpoint), node_spec.port))
                if found is None:
                    continue
                node, cluster = found
                problems.append(
                    (
                        here,
                        f"node: address {m.show(node_spec.endpoint)} port {node_spec.port} is already used "
                        f"by node {node.hostname!r} of cluster {cluster.name!r} (customer "
                        f"{owners.get(cluster.customer_id, '?')!r}), which this file does not list; two "
                        "clusters cannot share a machine",
                    )
                )
    doc.refuse(problems)


# --- replacing a customer's or cluster's parts with the file's ------------------------------------------


def sync_contacts(
    session: Session, customer: Customer, specs: list[m.Contact], have: list[Contact], counts: Counts
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
    session: Session, cluster: Cluster, specs: list[m.Node], have: list[Node], summary: ImportSummary
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


def _window_key(row: MaintenanceWindow) -> tuple[Any, ...]:
    return (tuple(row.days), row.start, row.duration_minutes, row.timezone)


def _blackout_key(row: Blackout) -> tuple[Any, ...]:
    return (row.start, row.end, row.timezone, row.reason)


def sync_windows(
    session: Session,
    cluster_id: int,
    specs: Sequence[m.Window],
    have: Sequence[MaintenanceWindow],
    counts: Counts,
) -> None:
    """The cluster's windows become exactly the file's; identical rows are kept as they are."""
    wanted = [
        MaintenanceWindow(
            cluster_id=cluster_id,
            days=list(spec.days),
            start=spec.start,
            duration_minutes=spec.minutes,
            timezone=spec.timezone or "",  # "": the customer's
        )
        for spec in specs
    ]
    _sync(session, wanted, have, _window_key, counts)


def sync_blackouts(
    session: Session,
    customer_id: int | None,
    zone: str,
    specs: Sequence[m.Blackout],
    have: Sequence[Blackout],
    counts: Counts,
) -> None:
    """A customer's blackouts (or, with customer_id None, the vendor's) become exactly the file's; a
    customer's blackout is read in the customer's zone (`zone`) unless it names one."""
    wanted = [
        Blackout(
            customer_id=customer_id,
            start=spec.start,
            end=spec.end,
            timezone=spec.timezone or zone,
            reason=spec.reason,
        )
        for spec in specs
    ]
    _sync(session, wanted, have, _blackout_key, counts)


def _sync(
    session: Session, wanted: Sequence[_M], have: Sequence[_M], key: Callable[[Any], Any], counts: Counts
) -> None:
    want = Counter(key(row) for row in wanted)
    for row in have:
        if want[key(row)] > 0:
            want[key(row)] -= 1
            counts.unchanged += 1
        else:
            session.delete(row)
            counts.deleted += 1
    for row in wanted:
        if want[key(row)] > 0:
            want[key(row)] -= 1
            session.add(row)
            counts.created += 1


def sync_portal_users(
    session: Session, wanted: list[tuple[Customer, list[m.PortalUser]]], notes: list[str]
) -> None:
    """Make each listed customer's portal users exactly the file's. A removed user's sessions and
    sign-in links are deleted with them, and the calendar feed they made is revoked: their access ends
    with this transaction. A user moved to another customer is removed and added again (their old
    sessions name the old customer)."""
    ids = [customer.id for customer, _ in wanted]
    rows = list(session.exec(select(PortalUser).where(col(PortalUser.customer_id).in_(ids))))
    want = {
        m.mailbox_key(user.email): (customer, user.email, user.name)
        for customer, users in wanted
        for user in users
    }
    names = {customer.id: customer.name for customer, _ in wanted}
    gone = [row for row in rows if row.mailbox not in want or want[row.mailbox][0].id != row.customer_id]
    gone_keys = {id(row) for row in gone}
    if gone:
        gone_ids = [row.id for row in gone]
        session.exec(delete(PortalSession).where(col(PortalSession.user_id).in_(gone_ids)))
        session.exec(delete(PortalLink).where(col(PortalLink.user_id).in_(gone_ids)))
        # The calendar feed URL a removed user made was shown to them: it stops working too.
        feeds = session.exec(select(PortalFeed).where(col(PortalFeed.customer_id).in_(ids))).all()
        gone_by = {(row.customer_id, row.mailbox) for row in gone}
        for feed in feeds:
            if (feed.customer_id, m.mailbox_key(feed.created_by)) in gone_by:
                session.delete(feed)
                notes.append(
                    f"customer {names[feed.customer_id]!r}: calendar feed made by {feed.created_by!r} revoked"
                )
        for row in gone:
            session.delete(row)
            notes.append(
                f"customer {names[row.customer_id]!r}: portal user {row.email!r} removed (signed out)"
            )
        session.flush()
    kept = {row.mailbox: row for row in rows if id(row) not in gone_keys}
    for key, (customer, email, name) in want.items():
        found = kept.get(key)
        if found is None:
            assert customer.id is not None
            session.add(PortalUser(customer_id=customer.id, email=email, mailbox=key, name=name))
            notes.append(f"customer {customer.name!r}: portal user {email!r} added")
        elif (found.email, found.name) != (email, name):
            found.email, found.name = email, name
            session.add(found)
    session.flush()


# --- the way back: the database as the file's models -------------------------------------------------------


def duration_text(minutes: int) -> str:
    """90 -> '1h30m', 240 -> '4h', 45 -> '45m': how a window's length is written in the file."""
    hours, rest = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{rest}m" if rest or not hours else "")


def _set(**values: Any) -> dict[str, Any]:
    """Only the keys that say something (the file may leave the rest out)."""
    return {key: value for key, value in values.items() if value not in (None, [], False, "")}


def _window(row: MaintenanceWindow) -> m.Window:
    return m.Window.model_construct(
        days=list(row.days),
        start=row.start,
        duration=duration_text(row.duration_minutes),
        **_set(timezone=row.timezone),
    )


def _blackout(row: Blackout, model: type[m.Blackout]) -> m.Blackout:
    return model.model_construct(
        start=row.start, end=row.end, timezone=row.timezone, **_set(reason=row.reason)
    )


def _cluster(row: Cluster, nodes: list[Node], windows: list[m.Window]) -> m.Cluster:
    access: m.Direct | m.Jump | m.Tunnel = (
        m.Jump.model_construct(type="jump", host=row.jump_host, port=row.jump_port, user=row.jump_user)
        if row.access == AccessKind.jump
        else m.Tunnel.model_construct(
            type="tunnel",
            host=row.tunnel_host,
            port=row.tunnel_port,
            user=row.tunnel_user,
            host_key=row.tunnel_host_key,
            **_set(allow_cloud=row.tunnel_allow_cloud),
        )
        if row.access == AccessKind.tunnel
        else m.Direct.model_construct(type="direct")
    )
    return m.Cluster.model_construct(
        name=row.name,
        kind=str(row.kind),
        version=row.version,
        profile=row.profile,
        ring=row.ring,
        access=access,
        nodes=[
            m.Node.model_construct(
                hostname=n.hostname,
                address=n.address,
                port=n.port,
                user=n.ssh_user,
                **_set(tunnel_port=n.tunnel_port, host_key=n.host_key),
            )
            for n in nodes
        ],
        **_set(windows=windows),
    )


def _customer(
    row: Customer,
    contacts: list[Contact],
    clusters: list[m.Cluster],
    blackouts: list[m.Blackout],
    users: list[PortalUser],
) -> m.Customer:
    notice = _set(
        product_update=f"{row.notice_hours_product}h" if row.notice_hours_product is not None else None,
        cloud_release=f"{row.notice_hours_cloud}h" if row.notice_hours_cloud is not None else None,
    )
    holidays = (
        m.Holidays.model_construct(country=row.holiday_country, **_set(subdivision=row.holiday_subdivision))
        if row.holiday_country
        else None
    )
    return m.Customer.model_construct(
        name=row.name,
        timezone=row.timezone,
        contacts=[m.Contact.model_construct(email=c.email, name=c.name, role=c.role) for c in contacts],
        clusters=clusters,
        **_set(
            notice=m.Notice.model_construct(**notice) if notice else None,
            requires_approval=row.requires_approval,
            blackouts=blackouts,
            portal_users=[m.PortalUser.model_construct(email=u.email, name=u.name) for u in users],
            holidays=holidays,
        ),
    )


def _sort_key(version: str) -> tuple[int, Version | None, str]:
    return (0, Version.parse(version), "") if is_version(version) else (1, None, version)


def database_inventory(*, session: Session) -> m.Inventory:
    """The inventory as the file's models, in a stable order: customers and clusters by name, contacts
    as imported, nodes in upgrade order, releases by version. Keys the file may leave out are set only
    where they say something (see `inventory_snapshot`)."""
    contacts: dict[int | None, list[Contact]] = defaultdict(list)
    for contact in session.exec(select(Contact).order_by(col(Contact.id))):
        contacts[contact.customer_id].append(contact)
    nodes: dict[int | None, list[Node]] = defaultdict(list)
    for node in session.exec(select(Node).order_by(col(Node.position))):
        nodes[node.cluster_id].append(node)
    windows: dict[int | None, list[m.Window]] = defaultdict(list)
    for window in session.exec(select(MaintenanceWindow).order_by(col(MaintenanceWindow.id))):
        windows[window.cluster_id].append(_window(window))
    clusters: dict[int | None, list[m.Cluster]] = defaultdict(list)
    for cluster in session.exec(select(Cluster).order_by(col(Cluster.name))):
        clusters[cluster.customer_id].append(_cluster(cluster, nodes[cluster.id], windows[cluster.id]))
    blackouts: dict[int | None, list[Blackout]] = defaultdict(list)
    for blackout in session.exec(select(Blackout).order_by(col(Blackout.start), col(Blackout.id))):
        blackouts[blackout.customer_id].append(blackout)
    users: dict[int | None, list[PortalUser]] = defaultdict(list)
    for user in session.exec(select(PortalUser).order_by(col(PortalUser.id))):
        users[user.customer_id].append(user)
    customers = [
        _customer(
            row,
            contacts[row.id],
            clusters[row.id],
            [_blackout(b, m.Blackout) for b in blackouts[row.id]],
            users[row.id],
        )
        for row in session.exec(select(Customer).order_by(col(Customer.name)))
    ]
    releases = [
        m.Release.model_construct(
            version=r.version,
            package=r.package,
            sha256=r.sha256,
            from_=list(r.upgradable_from),
            deadline=r.deadline,
        )
        for r in sorted(session.exec(select(Release)), key=lambda r: _sort_key(r.version))
    ]
    vendor = [_blackout(b, m.VendorBlackout) for b in blackouts[None]]
    spec = current_spec(session)
    return m.Inventory.model_construct(
        customers=customers,
        releases=releases,
        **_set(
            vendor_blackouts=vendor,
            oncall=_oncall(spec) if spec else None,
        ),
    )


def _oncall(spec: dict[str, Any]) -> m.OnCall:
    data = {key: value for key, value in spec.items() if key != "informed" or value}
    try:
        return m.OnCall.model_validate(data)
    except ValueError:  # stored under older rules: shown as stored
        return m.OnCall.model_construct(**data)


def inventory_snapshot(*, session: Session) -> dict[str, Any]:
    """Everything in the inventory as JSON-able data in the inventory file's shape (same keys and
    nesting, so it can be written back out and imported again). No database ids. Keys the file may
    leave out (windows, blackouts, notice, requires_approval, holidays, portal_users, vendor_blackouts,
    oncall) appear only when set."""
    inventory = database_inventory(session=session)
    return inventory.model_dump(mode="json", by_alias=True, exclude_unset=True, warnings=False)
