"""The inventory file's YAML, walked node by node into spec objects, collecting every problem with its
line instead of stopping at the first (the generic walking: `importer_yaml`). Knows nothing of files on
disk or of the database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC
from typing import Any

import yaml

from inventory.importer_portal import PortalParts
from inventory.importer_rules import (
    CLUSTER,
    CONTACT,
    CUSTOMER,
    DIRECT,
    JUMP,
    NODE,
    ONCALL,
    PERSON,
    RELEASE,
    TOP,
    VERSION,
    address_key,
    show,
)
from inventory.importer_schedule import ScheduleParts
from inventory.importer_specs import (
    BlackoutSpec,
    ClusterSpec,
    ContactSpec,
    CustomerSpec,
    NodeSpec,
    Problem,
    ReleaseSpec,
)
from inventory.importer_yaml import BAD, YamlWalker, line_of
from scheduling.versions import Version


class _Parser(YamlWalker):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.customers: dict[str, int] = {}
        self.clusters: dict[str, int] = {}
        self.endpoints: dict[tuple[str, int], int] = {}
        self.releases: dict[str, int] = {}
        self.schedule = ScheduleParts(self)
        self.oncall_spec: dict[str, Any] | None = None
        self.portal = PortalParts(self)

    def document(
        self, root: yaml.Node
    ) -> tuple[list[CustomerSpec], list[ReleaseSpec], list[BlackoutSpec] | None]:
        top, _ = self.mapping(root, "top level", TOP)
        customers = [self.customer(item) for item in self.items(top.get("customers"), "customers")]
        releases = [self.release(item) for item in self.items(top.get("releases"), "releases")]
        vendor = top.get("vendor_blackouts")
        self.oncall_spec = self.oncall(top["oncall"]) if "oncall" in top else None
        return customers, releases, None if vendor is None else self.memo(vendor, self.schedule.vendor)

    def oncall(self, node: yaml.Node) -> dict[str, Any]:
        v, at = self.mapping(node, "oncall", ONCALL)
        people = [
            self.person(item, "oncall: engineers") for item in self.items(v.get("engineers"), "engineers")
        ]
        if "engineers" in v and not people:
            self.err(at["engineers"], "oncall: engineers: the rotation needs at least one engineer")
        chain = [
            self.person(item, "oncall: escalation") for item in self.items(v.get("escalation"), "escalation")
        ]
        return {
            "timezone": v.get("timezone", "UTC"),
            "handover": v.get("handover", "09:00"),
            "rotation": v.get("rotation", "weekly"),
            "starts": v["starts"].isoformat() if "starts" in v else "",
            "engineers": people,
            "team_lead": self.person(v["team_lead"], "oncall: team_lead") if "team_lead" in v else {},
            "escalation": chain,
            "informed": [
                self.person(i, "oncall: informed") for i in self.items(v.get("informed"), "informed")
            ],
        }

    def person(self, node: yaml.Node, what: str) -> dict[str, Any]:
        v, _ = self.mapping(node, what, PERSON)
        return {key: v[key] for key in ("name", "email", "notify", "role") if key in v}

    def customer(self, node: yaml.Node) -> CustomerSpec:
        v, at = self.mapping(node, "customer", CUSTOMER)
        if "name" in v:
            self.unique(self.customers, v["name"], at["name"], f"customer: duplicate name {show(v['name'])}")
        contacts = self.memo(v["contacts"], self.contacts) if "contacts" in v else []
        clusters = [self.cluster(item) for item in self.items(v.get("clusters"), "clusters")]
        zone = v.get("timezone", "")
        blackouts = self.memo(v["blackouts"], self.schedule.blackouts) if "blackouts" in v else []
        product, cloud = self.memo(v["notice"], self.schedule.notice) if "notice" in v else (None, None)
        portal_users = []
        if "portal_users" in v and not self.refuse_alias(v["portal_users"], "portal_users"):
            portal_users = self.portal.users(v["portal_users"], v.get("name", ""))
        region = self.memo(v["holidays"], self.schedule.holidays) if "holidays" in v else None
        return CustomerSpec(
            v.get("name", ""),
            zone,
            contacts,
            clusters,
            [replace(b, timezone=b.timezone or zone) for b in blackouts],
            product,
            cloud,
            v.get("requires_approval", False),
            portal_users,
            region,
        )

    def contacts(self, node: yaml.Node) -> list[ContactSpec]:
        seen: dict[Any, int] = {}
        contacts = []
        for item in node.value:
            v, at = self.mapping(item, "contact", CONTACT)
            contact = ContactSpec(v.get("email", ""), v.get("name", ""), v.get("role", "primary"))
            if "email" in v:
                key = (contact.email.lower(), contact.role)
                self.unique(
                    seen,
                    key,
                    at["email"],
                    f"contact: {show(contact.email)} is listed twice as {contact.role}",
                )
            contacts.append(contact)
        return contacts

    def cluster(self, node: yaml.Node) -> ClusterSpec:
        v, at = self.mapping(node, "cluster", CLUSTER)
        if "name" in v:
            message = f"cluster: duplicate name {show(v['name'])} in the file"
            self.unique(self.clusters, v["name"], at["name"], message)
        hostnames: dict[Any, int] = {}
        nodes = [self.node(item, hostnames) for item in self.items(v.get("nodes"), "nodes")]
        if "nodes" in v and not v["nodes"].value:
            self.err(at["nodes"], "cluster: nodes: a cluster needs at least one node")
        access = self.memo(v["access"], self.access) if "access" in v else {}
        keys = ("name", "kind", "version")
        name, kind, version = (v.get(key, "") for key in keys)
        profile, ring = v.get("profile", "standard"), v.get("ring", "broad")
        windows = self.memo(v["windows"], self.schedule.windows) if "windows" in v else []
        return ClusterSpec(name, kind, version, profile, ring, access, nodes, line_of(node), windows)

    def access(self, node: yaml.Node) -> dict[str, Any]:
        pairs = node.value if isinstance(node, yaml.MappingNode) else []
        kind = next((v.value for k, v in pairs if k.value == "type" and isinstance(v, yaml.ScalarNode)), None)
        v, _ = self.mapping(node, "access", DIRECT if kind == "direct" else JUMP)
        if kind == "direct":
            return {"type": "direct"}
        return {
            "type": "jump",
            "host": v.get("host"),
            "port": v.get("port", 22),
            "user": v.get("user", "upkeep"),
        }

    def node(self, node: yaml.Node, hostnames: dict[Any, int]) -> NodeSpec:
        v, at = self.mapping(node, "node", NODE)
        hostname = v.get("hostname", "")
        if hostname:
            message = f"node: duplicate hostname {show(hostname)} in this cluster"
            self.unique(hostnames, hostname.lower(), at["hostname"], message)
        spec = NodeSpec(hostname, v.get("address", hostname), v.get("port", 22), v.get("user", "upkeep"))
        if spec.address and set(at) & {"address", "port"} <= set(v):  # skip when address or port is bad
            message = f"node: address {show(spec.address)} port {spec.port} is already used by another node"
            self.unique(self.endpoints, (address_key(spec.address), spec.port), node, message)
        return spec

    def release(self, node: yaml.Node) -> ReleaseSpec:
        v, at = self.mapping(node, "release", RELEASE)
        version = v.get("version", "")
        if version:
            self.unique(self.releases, version, at["version"], f"release: duplicate version {show(version)}")
        sources: list[tuple[str, yaml.Node]] = self.memo(v["from"], self.versions) if "from" in v else []
        for source, source_node in sources:
            if version and Version.parse(source) >= Version.parse(version):
                self.err(source_node, f"release {version}: from: {source} is not older than {version}")
        deadline = v["deadline"].astimezone(UTC) if "deadline" in v else None
        return ReleaseSpec(
            version, v.get("package", ""), v.get("sha256", ""), [s for s, _ in sources], deadline
        )

    def versions(self, node: yaml.Node) -> list[tuple[str, yaml.Node]]:
        seen: dict[Any, int] = {}
        found = []
        for item in node.value:
            value = self.value(item, "release: from", "str")
            if value is not BAD and (problem := VERSION(value)):
                self.err(item, f"release: from: {problem}")
            elif value is not BAD:
                self.unique(seen, value, item, f"release: from: {value} is listed twice")
                found.append((value, item))
        return found


def parse_inventory(
    path: str, source: str
) -> tuple[
    list[CustomerSpec], list[ReleaseSpec], list[BlackoutSpec] | None, dict[str, Any] | None, list[Problem]
]:
    """The customers, releases, vendor blackouts and on-call rotation (None: no such key) of `source`
    (the text of the file `path`), and every problem found in it, in line order. The specs are only
    meaningful when there are no problems."""
    parser = _Parser(path)
    root = parser.compose(source)
    customers: list[CustomerSpec] = []
    releases: list[ReleaseSpec] = []
    vendor: list[BlackoutSpec] | None = None
    if root is None and not parser.problems:
        parser.problems.append(Problem(path, 1, "the file is empty; expected a mapping with 'customers'"))
    elif root is not None:
        try:
            customers, releases, vendor = parser.document(root)
        except Exception as exc:  # pragma: no cover - a bug here must still not be a traceback
            parser.problems.append(Problem(path, 1, f"internal error, please report: {exc!r}"))
    problems = sorted(parser.problems, key=lambda problem: problem.line or 0)
    return customers, releases, vendor, parser.oncall_spec, problems
