"""The inventory YAML file: validate all of it (every problem, with its line), then upsert it.

`load_inventory` never touches the database and raises nothing but `InventoryError`, whatever the bytes.
`apply_inventory` writes in the caller's transaction; `import_inventory` does both in one transaction.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from sqlalchemy import text, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, select

from inventory.db import session_scope
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
from inventory.repo import record_audit
from scheduling.versions import Version, is_version


@dataclass(frozen=True)
class Problem:
    path: str
    line: int | None  # None only when the file as a whole is unusable (cannot be read)
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class InventoryError(ValueError):
    """An inventory that cannot be imported; `errors` lists every problem found."""

    def __init__(self, errors: list[Problem]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(map(str, self.errors)))


@dataclass(frozen=True)
class ContactSpec:
    email: str
    name: str
    role: str


@dataclass(frozen=True)
class NodeSpec:
    hostname: str
    address: str
    port: int
    user: str


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    kind: str
    version: str
    profile: str
    ring: str
    access: dict[str, Any]  # {"type": "direct"} or {"type": "jump", "host": ..., "port": ..., "user": ...}
    nodes: list[NodeSpec]
    line: int


@dataclass(frozen=True)
class CustomerSpec:
    name: str
    timezone: str
    contacts: list[ContactSpec]
    clusters: list[ClusterSpec]


@dataclass(frozen=True)
class ReleaseSpec:
    version: str
    package: str
    sha256: str
    upgradable_from: list[str]
    deadline: datetime | None  # UTC


@dataclass(frozen=True)
class InventoryDoc:
    path: Path
    sha256: str  # of the file's bytes, for the audit trail
    customers: list[CustomerSpec]
    releases: list[ReleaseSpec]


# --- field rules --------------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # what is wrong with a value, or None


def show(value: object) -> str:
    """repr() for messages, so newlines and NULs stay visible; long values are cut."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:80]!r}... ({len(value)} characters)"
    return repr(value)


def _rule(ok: Callable[[Any], object], what: str) -> Check:
    return lambda v: None if ok(v) else f"{show(v)} is not {what}"


def _regex(pattern: str, what: str) -> Check:
    return _rule(re.compile(pattern).fullmatch, what)


def _choice(*allowed: str) -> Check:
    return _rule(lambda v: v in allowed, f"one of {', '.join(allowed)}")


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*")


def ip_address(value: str, *versions: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    return address if address.version in versions and "%" not in value else None  # no IPv6 zone ids


def is_hostname(value: str) -> bool:
    """RFC 1123: dot-separated ASCII labels of 1-63 letters, digits and '-', not starting or ending with
    '-', 253 characters at most; an all-numeric last label only as part of a valid IPv4 address."""
    labels = value.split(".")
    if len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit() or ip_address(value, 4) is not None


def _is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and len(value) <= 254 and _EMAIL_LOCAL.fullmatch(local) and len(local) <= 64) and (
        is_hostname(domain)
    )


def _is_package(value: str) -> bool:
    parts = value.split("/")
    return (
        bool(re.fullmatch(r"[A-Za-z0-9._/-]{1,255}", value))
        and ".." not in value
        and (parts[0] != "" and not any(part.startswith("-") for part in parts))
    )


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones() - {"localtime", "Factory"})


def _deadline(value: Any) -> str | None:
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return None
    return f"{show(str(value))} must be a date and time with a zone, e.g. 2026-12-31T00:00:00Z"


NAME = _regex(r"[a-z0-9][a-z0-9-]{0,62}", "a valid name (1-63 of a-z, 0-9 and '-', not starting with '-')")
SSH_USER = _regex(r"[a-z_][a-z0-9_-]{0,31}", "a valid ssh user (^[a-z_][a-z0-9_-]{0,31}$)")
PORT = _rule(lambda v: 1 <= v <= 65535, "a port number (1-65535)")
VERSION = _rule(is_version, "a version (MAJOR.MINOR.PATCH, e.g. 9.10.0)")
HOSTNAME = _rule(is_hostname, "an RFC 1123 hostname")

Field = tuple[str, Check | None, bool]  # kind (str, int, seq, map or time), rule, required
TOP: dict[str, Field] = {"customers": ("seq", None, True), "releases": ("seq", None, False)}
CUSTOMER: dict[str, Field] = {
    "name": ("str", NAME, True),
    "timezone": ("str", _rule(lambda v: v in _zones(), "an IANA time zone (e.g. America/New_York)"), True),
    "contacts": ("seq", None, False),
    "clusters": ("seq", None, True),
}
CONTACT: dict[str, Field] = {
    "email": ("str", _rule(_is_email, "a valid email address"), True),
    # names end up in mail headers: no control characters
    "name": (
        "str",
        _rule(lambda v: len(v) <= 128 and v.isprintable(), "printable text (128 at most)"),
        False,
    ),
    "role": ("str", _choice("primary", "technical", "billing", "escalation"), False),
}
CLUSTER: dict[str, Field] = {
    "name": ("str", NAME, True),
    "kind": ("str", _choice(*ClusterKind), True),
    "version": ("str", VERSION, True),
    "profile": (
        "str",
        _regex(r"[a-z0-9][a-z0-9_-]{0,63}", "a valid profile (^[a-z0-9][a-z0-9_-]{0,63}$)"),
        False,
    ),
    "ring": ("str", _choice("canary", "early", "broad"), False),
    "access": ("map", None, True),
    "nodes": ("seq", None, True),
}
DIRECT: dict[str, Field] = {"type": ("str", _choice(*AccessKind), True)}
JUMP: dict[str, Field] = {
    **DIRECT,
    "host": ("str", _rule(is_hostname, "a hostname or an IPv4 address"), True),
    "port": ("int", PORT, False),
    "user": ("str", SSH_USER, False),
}
NODE: dict[str, Field] = {
    "hostname": ("str", HOSTNAME, True),
    "address": ("str", _rule(lambda v: is_hostname(v) or ip_address(v, 4, 6), "a hostname or an IP"), False),
    "port": ("int", PORT, False),
    "user": ("str", SSH_USER, False),
}
RELEASE: dict[str, Field] = {
    "version": ("str", VERSION, True),
    "package": ("str", _rule(_is_package, "a relative path of [A-Za-z0-9._/-] without '..'"), True),
    "sha256": ("str", _regex(r"[0-9a-f]{64}", "64 lowercase hex digits"), True),
    "from": ("seq", None, True),
    "deadline": ("time", _deadline, False),
}


# --- parsing ------------------------------------------------------------------------------------------

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "seq": "a list",
    "map": "a mapping",
    "time": "a date-time",
}
_TAGS = {"str": ("str",), "int": ("int",), "time": ("timestamp", "str")}
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
        if kind in ("seq", "map"):
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
            if node.tag.endswith(":str"):  # a quoted deadline
                return datetime.fromisoformat(node.value)
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

    def document(self, root: yaml.Node) -> tuple[list[CustomerSpec], list[ReleaseSpec]]:
        top, _ = self.mapping(root, "top level", TOP)
        customers = [self.customer(item) for item in self.items(top.get("customers"), "customers")]
        releases = [self.release(item) for item in self.items(top.get("releases"), "releases")]
        return customers, releases

    def customer(self, node: yaml.Node) -> CustomerSpec:
        v, at = self.mapping(node, "customer", CUSTOMER)
        if "name" in v:
            self.unique(self.customers, v["name"], at["name"], f"customer: duplicate name {show(v['name'])}")
        contacts = self.memo(v["contacts"], self.contacts) if "contacts" in v else []
        clusters = [self.cluster(item) for item in self.items(v.get("clusters"), "clusters")]
        return CustomerSpec(v.get("name", ""), v.get("timezone", ""), contacts, clusters)

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
        return ClusterSpec(name, kind, version, profile, ring, access, nodes, _line(node))

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


def address_key(address: str) -> str:
    """Addresses compared the way a resolver would: IPs in canonical form, names without case."""
    ip = ip_address(address, 4, 6)
    return str(ip) if ip else address.lower()


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
    parser = _Parser(name)
    root = parser.compose(source)
    customers: list[CustomerSpec] = []
    releases: list[ReleaseSpec] = []
    if root is None and not parser.problems:
        parser.problems.append(Problem(name, 1, "the file is empty; expected a mapping with 'customers'"))
    elif root is not None:
        try:
            customers, releases = parser.document(root)
        except Exception as exc:  # pragma: no cover - a bug here must still not be a traceback
            parser.problems.append(Problem(name, 1, f"internal error, please report: {exc!r}"))
    if parser.problems:
        raise InventoryError(sorted(parser.problems, key=lambda problem: problem.line or 0))
    return InventoryDoc(Path(path), hashlib.sha256(data).hexdigest(), customers, releases)


# --- writing ------------------------------------------------------------------------------------------

TABLES = ("customer", "contact", "cluster", "node", "release")
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

    @property
    def changed(self) -> bool:
        return any(c.created or c.updated or c.deleted for c in self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"counts": {table: asdict(c) for table, c in self.counts.items()}, "notes": list(self.notes)}

    def __str__(self) -> str:
        """One line, e.g. "node: 1 created, 2 updated; release: 1 created", then the notes."""
        changes = [
            f"{table}: "
            + ", ".join(f"{n} {what}" for what, n in asdict(c).items() if n and what != "unchanged")
            for table, c in self.counts.items()
            if c.created or c.updated or c.deleted
        ]
        unchanged = sum(c.unchanged for c in self.counts.values())
        return "\n".join(["; ".join(changes) or f"no changes ({unchanged} rows unchanged)", *self.notes])


def _save(session: Session, row: _M | None, model: type[_M], values: dict[str, Any], counts: Counts) -> _M:
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


def _cluster_values(spec: ClusterSpec, customer_id: int | None) -> dict[str, Any]:
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


def _node_values(spec: NodeSpec, position: int) -> dict[str, Any]:
    return {
        "hostname": spec.hostname,
        "address": spec.address,
        "port": spec.port,
        "ssh_user": spec.user,
        "position": position,
    }


def _differs(row: SQLModel, values: dict[str, Any]) -> bool:
    return any(getattr(row, key) != value for key, value in values.items())


def apply_inventory(doc: InventoryDoc, *, session: Session, actor: str) -> ImportSummary:
    """Upsert the document by natural keys in the caller's transaction and record one audit event.

    Customers' contacts and clusters' nodes become exactly the file's; customers, clusters and releases
    missing from the file are left alone. Everything that can refuse the import is checked before the
    first write, so a refused import writes nothing.
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
    _refuse_changes_under_active_runs(doc, session, customers, clusters, nodes)

    summary = ImportSummary()
    count = summary.counts
    for spec in doc.customers:
        values: dict[str, Any] = {"name": spec.name, "timezone": spec.timezone}
        customers[spec.name] = _save(session, customers.get(spec.name), Customer, values, count["customer"])
    session.flush()
    for spec in doc.customers:
        customer = customers[spec.name]
        _sync_contacts(session, customer, spec.contacts, contacts[customer.id], count["contact"])
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
            values = _cluster_values(cluster_spec, customer.id)
            clusters[cluster_spec.name] = _save(session, row, Cluster, values, count["cluster"])
    session.flush()
    for spec in doc.customers:
        for cluster_spec in spec.clusters:
            cluster = clusters[cluster_spec.name]
            _sync_nodes(session, cluster, cluster_spec.nodes, nodes[cluster.id], summary)
    for release in doc.releases:
        values = {
            "version": release.version,
            "package": release.package,
            "sha256": release.sha256,
            "upgradable_from": release.upgradable_from,
            "deadline": release.deadline,
        }
        _save(session, releases.get(release.version), Release, values, count["release"])
    session.flush()
    detail = {"file": str(doc.path), "sha256": doc.sha256, **summary.as_dict()}
    record_audit(actor, "inventory.import", str(doc.path), detail, session=session)
    return summary


def _refuse_changes_under_active_runs(
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
            wanted = [_node_values(node, i) for i, node in enumerate(spec.nodes, 1)]
            have = nodes[row.id]
            if (
                _differs(row, _cluster_values(spec, owner.id if owner else None))
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


def _sync_contacts(
    session: Session, customer: Customer, specs: list[ContactSpec], have: list[Contact], counts: Counts
) -> None:
    """Contacts are matched by (email, role): the file's list replaces the customer's."""
    existing: dict[tuple[str, str], Contact] = {}
    for row in have:
        existing.setdefault((row.email.lower(), row.role), row)
    kept = set()
    for spec in specs:
        values = {"customer_id": customer.id, "email": spec.email, "name": spec.name, "role": spec.role}
        kept.add(id(_save(session, existing.get((spec.email.lower(), spec.role)), Contact, values, counts)))
    gone = [row for row in have if id(row) not in kept]
    for row in gone:
        session.delete(row)
    counts.deleted += len(gone)


def _sync_nodes(
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
        values = {"cluster_id": cluster.id, **_node_values(spec, position[spec.hostname])}
        _save(session, existing.get(spec.hostname), Node, values, counts)
    session.flush()


def import_inventory(path: Path, *, engine: Engine, actor: str) -> ImportSummary:
    """Load, validate and apply `path` in one transaction: all of it or, on any problem, nothing."""
    doc = load_inventory(path)
    with session_scope(engine) as session:
        return apply_inventory(doc, session=session, actor=actor)
