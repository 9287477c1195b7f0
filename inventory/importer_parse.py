"""The inventory file's YAML, walked node by node into spec objects, collecting every problem with its
line instead of stopping at the first. Knows nothing of files on disk or of the database."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import yaml

from inventory.importer_rules import (
    CLUSTER,
    CONTACT,
    CUSTOMER,
    DIRECT,
    JUMP,
    NODE,
    RELEASE,
    TOP,
    VERSION,
    Field,
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
from scheduling.versions import Version

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "seq": "a list",
    "map": "a mapping",
    "time": "a date-time",
    "date": "a date",
    "bool": "true or false",
    "strs": "a string or a list of strings",
}
_TAGS = {"str": ("str",), "int": ("int",), "bool": ("bool",), "time": ("timestamp", "str")}
_TAGS["date"] = _TAGS["time"]
_SCALARS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "null": "null"}
_BAD = object()


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        tag = node.tag.removeprefix("tag:yaml.org,2002:")
        return "nothing (null)" if tag == "null" else f"{_SCALARS.get(tag, tag)} {show(node.value)}"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


class _Loader(yaml.SafeLoader):
    """Composes nodes only. An alias becomes a shallow copy of its anchor's node carrying the alias's own
    position, so problems point at the alias and re-used entities can be told apart and refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases: dict[int, yaml.Node] = {}  # id(copy) -> the anchored node

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark = self.peek_event().start_mark if self.check_event(yaml.AliasEvent) else None
        node = super().compose_node(parent, index)
        if mark is None or node is None:
            return node
        alias = copy.copy(node)
        alias.start_mark = mark
        self.aliases[id(alias)] = node
        return alias


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.aliases: dict[int, yaml.Node] = {}
        self.memos: dict[tuple[int, str], Any] = {}
        self.constructor = yaml.constructor.SafeConstructor()
        self.customers: dict[str, int] = {}
        self.clusters: dict[str, int] = {}
        self.endpoints: dict[tuple[str, int], int] = {}
        self.releases: dict[str, int] = {}
        self.schedule = ScheduleParts(self)

    def err(self, node: yaml.Node, message: str) -> None:
        self.problems.append(Problem(self.path, node.start_mark.line + 1, message))

    def compose(self, text: str) -> yaml.Node | None:
        loader: _Loader | None = None
        try:
            loader = _Loader(text)
            root = loader.get_single_node()
            self.aliases = loader.aliases
            return root
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = f"{exc.context}, {exc.problem}" if exc.context else f"{exc.problem}"
            self.problems.append(Problem(self.path, mark.line + 1 if mark else 1, f"YAML syntax: {message}"))
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else show(exc.character)
            self.problems.append(Problem(self.path, line, f"YAML syntax: character {char} is not allowed"))
        except RecursionError:
            self.problems.append(Problem(self.path, 1, "YAML syntax: nested too deeply"))
        except Exception as exc:  # never a traceback for a bad file
            self.problems.append(Problem(self.path, 1, f"YAML syntax: {type(exc).__name__}: {exc}"))
        finally:
            if loader is not None:
                loader.dispose()
        return None

    def value(self, node: yaml.Node, what: str, kind: str) -> Any:
        """The node's value if it is of `kind`; otherwise report it and return _BAD."""
        if kind == "strs":  # one string, or a list of them (window days)
            items = node.value if isinstance(node, yaml.SequenceNode) else [node]
            ok = all(isinstance(i, yaml.ScalarNode) and i.tag.endswith(":str") for i in items)
            if ok:
                return node.value if isinstance(node, yaml.ScalarNode) else [i.value for i in items]
        elif kind in ("seq", "map"):
            ok = isinstance(node, yaml.SequenceNode if kind == "seq" else yaml.MappingNode)
        else:
            ok = (
                isinstance(node, yaml.ScalarNode)
                and node.tag.removeprefix("tag:yaml.org,2002:") in _TAGS[kind]
            )
        if not ok:
            hint = "; quote it" if kind == "str" and isinstance(node, yaml.ScalarNode) else ""
            self.err(node, f"{what}: expected {_EXPECTED[kind]}, got {_describe(node)}{hint}")
            return _BAD
        if kind in ("seq", "map", "str"):
            return node if kind != "str" else node.value
        try:
            if node.tag.endswith(":str"):  # a quoted deadline or date
                return (date if kind == "date" else datetime).fromisoformat(node.value)
            return self.constructor.construct_object(node)
        except Exception:
            self.err(node, f"{what}: {show(node.value)} is not {_EXPECTED[kind]}")
            return _BAD

    def mapping(
        self, node: yaml.Node, what: str, fields: dict[str, Field]
    ) -> tuple[dict[str, Any], dict[str, yaml.Node]]:
        """(valid values, nodes of all keys present); every problem is reported."""
        values: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        lines: dict[str, int] = {}
        if self.value(node, what, "map") is _BAD:
            return values, nodes
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key_node.tag.endswith(":merge"):
                self.err(key_node, f"{what}: merge keys ('<<') are not supported; write the keys out")
            elif not key_node.tag.endswith(":str") or not isinstance(key, str):
                self.err(key_node, f"{what}: keys must be strings, got {_describe(key_node)}")
            elif key in lines:
                self.err(key_node, f"{what}: duplicate key {show(key)} (first at line {lines[key]})")
            elif key not in fields:
                self.err(key_node, f"{what}: unknown key {show(key)} (allowed: {', '.join(fields)})")
            else:
                lines[key] = _line(key_node)
                kind, rule, required = fields[key]
                if not required and value_node.tag.endswith(":null"):
                    continue  # an optional key left empty (or null) means its default
                value = self.value(value_node, f"{what}: {key}", kind)
                problem = rule(value) if rule and value is not _BAD else None
                if problem:
                    self.err(value_node, f"{what}: {key}: {problem}")
                elif value is not _BAD:
                    values[key] = value
                nodes[key] = value_node
        for key, (_, _, required) in fields.items():
            if required and key not in lines:
                self.err(node, f"{what}: missing required key {key!r}")
        return values, nodes

    def unique(self, seen: dict[Any, int], key: Any, node: yaml.Node, message: str) -> None:
        if key in seen:
            self.err(node, f"{message} (first at line {seen[key]})")
        else:
            seen[key] = _line(node)

    def items(self, node: yaml.Node | None, what: str) -> list[yaml.Node]:
        """The entries of an entity list. Aliased entities are refused: they could only be duplicates,
        and following them would let a small file expand into an enormous one."""
        if node is None or self.refuse_alias(node, what):
            return []
        return [item for item in node.value if not self.refuse_alias(item, what)]

    def refuse_alias(self, node: yaml.Node, what: str) -> bool:
        if id(node) in self.aliases:
            self.err(node, f"{what}: YAML aliases (*name) cannot be used here; write each one out")
        return id(node) in self.aliases

    def memo(self, node: yaml.Node, parse: Callable[[yaml.Node], Any]) -> Any:
        """Parse a re-usable part (contacts, access, from) once however often it is aliased."""
        key = (id(self.aliases.get(id(node), node)), parse.__name__)
        if key not in self.memos:
            self.memos[key] = parse(node)
        return self.memos[key]

    def document(
        self, root: yaml.Node
    ) -> tuple[list[CustomerSpec], list[ReleaseSpec], list[BlackoutSpec] | None]:
        top, _ = self.mapping(root, "top level", TOP)
        customers = [self.customer(item) for item in self.items(top.get("customers"), "customers")]
        releases = [self.release(item) for item in self.items(top.get("releases"), "releases")]
        vendor = top.get("vendor_blackouts")
        return customers, releases, None if vendor is None else self.memo(vendor, self.schedule.vendor)

    def customer(self, node: yaml.Node) -> CustomerSpec:
        v, at = self.mapping(node, "customer", CUSTOMER)
        if "name" in v:
            self.unique(self.customers, v["name"], at["name"], f"customer: duplicate name {show(v['name'])}")
        contacts = self.memo(v["contacts"], self.contacts) if "contacts" in v else []
        clusters = [self.cluster(item) for item in self.items(v.get("clusters"), "clusters")]
        zone = v.get("timezone", "")
        blackouts = self.memo(v["blackouts"], self.schedule.blackouts) if "blackouts" in v else []
        product, cloud = self.memo(v["notice"], self.schedule.notice) if "notice" in v else (None, None)
        return CustomerSpec(
            v.get("name", ""),
            zone,
            contacts,
            clusters,
            [replace(b, timezone=b.timezone or zone) for b in blackouts],
            product,
            cloud,
            v.get("requires_approval", False),
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
        return ClusterSpec(name, kind, version, profile, ring, access, nodes, _line(node), windows)

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
            if value is not _BAD and (problem := VERSION(value)):
                self.err(item, f"release: from: {problem}")
            elif value is not _BAD:
                self.unique(seen, value, item, f"release: from: {value} is listed twice")
                found.append((value, item))
        return found


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def parse_inventory(
    path: str, source: str
) -> tuple[list[CustomerSpec], list[ReleaseSpec], list[BlackoutSpec] | None, list[Problem]]:
    """The customers, releases and vendor blackouts (None: no such key) of `source` (the text of the
    file `path`), and every problem found in it, in line order. The specs are only meaningful when there
    are no problems."""
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
    return customers, releases, vendor, sorted(parser.problems, key=lambda problem: problem.line or 0)
