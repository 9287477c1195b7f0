"""The inventory file, described once: pydantic models for every mapping it may hold, the checks each
value must pass, and the checks across entries (unique names, endpoints, portal mailboxes).

The same models validate an imported file (`importer_yaml` feeds them the YAML's data and maps their
errors to FILE:LINE), shape `inventory show --json` (`importer_db.inventory_snapshot`), and publish the
JSON Schema editors use (`upkeep inventory schema`). Unknown keys are refused everywhere.

A new inventory key: add a field to its model here (type, check, default, description), then write and
read it back in `importer_db` (`apply_inventory` and `inventory_snapshot`). Plain data: no YAML, no
database.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import zoneinfo
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from inventory.portal_tables import MAX_PORTAL_USERS
from inventory.windows import DAY_NAMES
from scheduling.errors import SchedulingError
from scheduling.holidays import check_region
from scheduling.versions import Version, is_version
from scheduling.windows import (
    MAX_DURATION,
    MIN_DURATION,
    WeeklyWindow,
    parse_days,
    parse_duration,
    parse_start,
)

Check = Callable[[Any], str | None]  # what is wrong with a value, or None


def show(value: object) -> str:
    """repr() for messages, so newlines and NULs stay visible; long values are cut."""
    if isinstance(value, str) and len(value) > 80:
        return f"{value[:80]!r}... ({len(value)} characters)"
    return repr(value)


def problem(message: str) -> PydanticCustomError:
    """A check's finding, kept word for word by pydantic (no "Value error, " prefix)."""
    return PydanticCustomError("inventory", "{problem}", {"problem": message})


def checked(check: Check) -> AfterValidator:
    def run(value: Any) -> Any:
        if found := check(value):
            raise problem(found)
        return value

    return AfterValidator(run)


_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")


def is_host_key(value: str) -> bool:
    """'TYPE BASE64' as in known_hosts, the blob naming the same type (no comment, no options)."""
    kind, _, blob = value.partition(" ")
    if kind not in _KEY_TYPES or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", blob):
        return False
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return False
    return raw[4 : 4 + len(kind)] == kind.encode() and int.from_bytes(raw[:4], "big") == len(kind)


def _rule(ok: Callable[[Any], object], what: str) -> Check:
    return lambda v: None if ok(v) else f"{show(v)} is not {what}"


def _regex(pattern: str, what: str) -> Check:
    return _rule(re.compile(pattern).fullmatch, what)


# --- value checks ------------------------------------------------------------------------------------

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


def address_key(address: str) -> str:
    """Addresses compared the way a resolver would: IPs in canonical form, names without case."""
    ip = ip_address(address, 4, 6)
    return str(ip) if ip else address.lower()


def mailbox_key(email: str) -> str:
    """The person behind an address: 'Ann+Portal@X.example' -> 'ann@x.example'."""
    local, _, domain = email.strip().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}".lower()


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


def _span(value: str) -> timedelta | None:
    try:
        return parse_duration(value)
    except SchedulingError:
        return None


def _window_length(value: str) -> str | None:
    span = _span(value)
    if span is None:
        return f"{show(value)} is not a duration (e.g. '4h', '90m', '2h30m' or '1d')"
    if not MIN_DURATION <= span <= MAX_DURATION:
        return f"{show(value)} is not between 1 minute and 7 days"
    return None


def _notice_span(value: str) -> str | None:
    span = _span(value)
    if span is None or span % timedelta(hours=1):
        return f"{show(value)} is not a whole number of hours or days (e.g. '72h' or '7d')"
    if span > timedelta(days=60):
        return f"{show(value)} is more than 60 days"
    return None


def _start(value: str) -> str | None:
    try:
        parse_start(value)
    except SchedulingError:
        return f"{show(value)} is not a local time HH:MM (e.g. '02:00')"
    return None


DATE_RANGE = "out of range (years 1971 to 9998, UTC)"


def in_date_range(value: datetime) -> bool:
    """A zone-aware time Upkeep can store and compute with: in UTC (where 9999-12-31T23:00-12:00
    already overflows) and with room for weeks of window arithmetic on either side."""
    try:
        return 1971 <= value.astimezone(UTC).year <= 9998
    except OverflowError:
        return False


def _day(value: Any) -> Any:
    """A whole day: a YAML date, or the same written as a string (JSON has no dates)."""
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise problem(f"{show(value)} is not a date (whole days, e.g. 2026-12-20)") from None
    if isinstance(value, datetime):
        raise problem(f"{show(str(value))} is not a date (whole days, e.g. 2026-12-20)")
    return value


def _instant(value: Any) -> Any:
    """A date and time with a zone: a YAML timestamp, or an ISO 8601 string (JSON, quoted YAML)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise problem(f"{show(value)} is not a date-time (e.g. 2026-12-31T00:00:00Z)") from None
    if isinstance(value, date) and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise problem(f"{show(str(value))} must be a date and time with a zone, e.g. 2026-12-31T00:00:00Z")
    if isinstance(value, datetime) and not in_date_range(value):
        raise problem(f"{show(str(value))} is {DATE_RANGE}")
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _days(value: Any) -> Any:
    """A window's days: 'mon-fri', 'tue,thu' or a list of names; returned as sorted 3-letter names."""
    if not isinstance(value, str) and not (
        isinstance(value, list) and all(isinstance(item, str) for item in value)
    ):
        raise PydanticCustomError("strs_type", "expected a string or a list of strings")
    try:
        return [DAY_NAMES[day] for day in sorted(parse_days(value))]
    except SchedulingError as exc:
        raise problem(str(exc).removeprefix("window ")) from None


def _text(limit: int, *, empty: bool = True) -> Check:
    ok = (lambda v: len(v) <= limit and v.isprintable()) if empty else lambda v: 0 < len(v) <= limit
    return _rule(lambda v: ok(v) and v.isprintable(), f"printable text ({limit} at most)")


NAME = _regex(r"[a-z0-9][a-z0-9-]{0,62}", "a valid name (1-63 of a-z, 0-9 and '-', not starting with '-')")
VERSION = _rule(is_version, "a version (MAJOR.MINOR.PATCH, e.g. 9.10.0)")

Name = Annotated[str, checked(NAME), Field(json_schema_extra={"pattern": "^[a-z0-9][a-z0-9-]{0,62}$"})]
Zone = Annotated[
    str,
    checked(_rule(lambda v: v in _zones(), "an IANA time zone (e.g. America/New_York)")),
    Field(
        description="An IANA time zone, e.g. America/New_York",
        json_schema_extra=lambda schema: schema.update(enum=sorted(_zones())),
    ),
]
Port = Annotated[
    int,
    checked(_rule(lambda v: 1 <= v <= 65535, "a port number (1-65535)")),
    Field(json_schema_extra={"minimum": 1, "maximum": 65535}),
]
# A node's tunnel port is a listening socket its unprivileged tunnel identity opens on the tunnel server:
# sshd lets only root listen below 1024, so such a port would be accepted here and refused at the first
# `tunnel start` (ExitOnForwardFailure), with the customer the only one to see why.
TunnelPort = Annotated[
    int,
    checked(
        _rule(
            lambda v: 1024 <= v <= 65535,
            "a tunnel port (1024-65535: below 1024 only root may listen on the tunnel server)",
        )
    ),
    Field(json_schema_extra={"minimum": 1024, "maximum": 65535}),
]
SshUser = Annotated[
    str,
    checked(_regex(r"[a-z_][a-z0-9_-]{0,31}", "a valid ssh user (^[a-z_][a-z0-9_-]{0,31}$)")),
    Field(json_schema_extra={"pattern": "^[a-z_][a-z0-9_-]{0,31}$"}),
]
Hostname = Annotated[str, checked(_rule(is_hostname, "an RFC 1123 hostname"))]
HostKey = Annotated[
    str,
    checked(_rule(is_host_key, "an SSH host key 'TYPE BASE64' (e.g. 'ssh-ed25519 AAAAC3...')")),
    Field(examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI..."]),
]
Email = Annotated[str, checked(_rule(_is_email, "a valid email address"))]
Text128 = Annotated[str, checked(_text(128))]  # names end up in mail headers: no control characters
Reason = Annotated[str, checked(_text(255))]
VersionText = Annotated[
    str,
    checked(VERSION),
    Field(
        json_schema_extra={"pattern": r"^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$"},
        examples=["9.10.0"],
    ),
]
Day = Annotated[
    date,
    BeforeValidator(_day),
    Field(description="A whole day, e.g. 2026-12-20", json_schema_extra={"type": "string", "format": "date"}),
]


# --- the models --------------------------------------------------------------------------------------


class Part(BaseModel):
    """A mapping of the file. `WHAT` names it in messages. A key left empty (null) means its default."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=False)
    WHAT: ClassVar[str] = "top level"

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        optional = {f.alias or name for name, f in cls.model_fields.items() if not f.is_required()}
        return {key: value for key, value in data.items() if value is not None or key not in optional}


class Contact(Part):
    """Someone the customer wants told about updates (notices go to every contact)."""

    WHAT: ClassVar[str] = "contact"
    email: Email
    name: Text128 = ""
    role: Literal["primary", "technical", "billing", "escalation"] = "primary"


class Node(Part):
    """A machine of the cluster, reached over SSH; nodes are upgraded in the order listed."""

    WHAT: ClassVar[str] = "node"
    hostname: Hostname
    address: Annotated[
        str | None,
        checked(_rule(lambda v: v is None or is_hostname(v) or ip_address(v, 4, 6), "a hostname or an IP")),
        Field(description="Where to connect; the hostname when left out"),
    ] = None
    port: Port = 22
    user: SshUser = "upkeep"
    tunnel_port: Annotated[
        TunnelPort | None,
        Field(description="access tunnel: the port this node's tunnel listens on at the server"),
    ] = None
    host_key: Annotated[
        HostKey | None, Field(description="access tunnel: the node's own SSH host key, 'TYPE BASE64'")
    ] = None

    @property
    def endpoint(self) -> str:
        return self.address or self.hostname


class Direct(Part):
    """Upkeep connects to the nodes directly."""

    WHAT: ClassVar[str] = "access"
    type: Literal["direct"]


class Jump(Part):
    """Upkeep connects to the nodes through an SSH jump host."""

    WHAT: ClassVar[str] = "access"
    type: Literal["jump"]
    host: Annotated[str, checked(_rule(is_hostname, "a hostname or an IPv4 address"))]
    port: Port = 22
    user: SshUser = "upkeep"


class Window(Part):
    """A weekly maintenance window, in the cluster's customer's zone unless it names one."""

    WHAT: ClassVar[str] = "window"
    days: Annotated[
        list[str],
        PlainValidator(_days, json_schema_input_type=str | list[str]),
        Field(description="'mon-fri', 'tue,thu' or a list of weekday names"),
    ]
    start: Annotated[str, checked(_start), Field(description="Local time HH:MM, e.g. '02:00'")]
    duration: Annotated[str, checked(_window_length), Field(description="e.g. '4h', '90m', '2h30m', '1d'")]
    timezone: Zone | None = Field(default=None, description="The customer's zone when left out")

    @model_validator(mode="after")
    def _as_scheduling_reads_it(self) -> Window:
        try:  # the whole window as scheduling will read it (the zone only matters if given)
            rule = WeeklyWindow.parse(
                {"days": self.days, "start": self.start, "duration": self.duration, "timezone": "UTC"}
            )
        except SchedulingError as exc:
            raise problem(str(exc)) from None
        self.start = f"{rule.start:%H:%M}"
        return self

    @property
    def minutes(self) -> int:
        span = parse_duration(self.duration)
        return int(span.total_seconds()) // 60


class Blackout(Part):
    """Whole days, inclusive, on which the customer is not updated."""

    WHAT: ClassVar[str] = "blackout"
    start: Day
    end: Day
    reason: Reason = ""
    timezone: Zone | None = Field(default=None, description="The customer's zone when left out")

    @field_validator("end")
    @classmethod
    def _not_before_start(cls, end: date, info: ValidationInfo) -> date:
        start = info.data.get("start")
        if start is not None and end < start:
            raise problem(f"{end} is before start {start}")
        return end


class VendorBlackout(Blackout):
    """Whole days, inclusive, on which no customer is updated (e.g. a year-end freeze)."""

    WHAT: ClassVar[str] = "vendor blackout"
    timezone: Zone  # required: there is no customer to default to


class Notice(Part):
    """How long before an update the customer must be told; the vendor default when left out."""

    WHAT: ClassVar[str] = "notice"
    product_update: Annotated[str, checked(_notice_span)] | None = None
    cloud_release: Annotated[str, checked(_notice_span)] | None = None

    @staticmethod
    def hours(value: str | None) -> int | None:
        """'72h' or '7d' -> whole hours."""
        return None if value is None else int(parse_duration(value).total_seconds()) // 3600


class Holidays(Part):
    """The region whose public holidays are the customer's blackout days."""

    WHAT: ClassVar[str] = "holidays"
    country: str
    subdivision: str | None = None

    @field_validator("country")
    @classmethod
    def _known_country(cls, country: str) -> str:
        try:
            return check_region(country)[0]
        except SchedulingError as exc:
            raise PydanticCustomError("region", "{problem}", {"problem": str(exc)}) from None

    @field_validator("subdivision")
    @classmethod
    def _known_subdivision(cls, subdivision: str | None, info: ValidationInfo) -> str | None:
        country = info.data.get("country")
        if country is None or subdivision is None:
            return subdivision
        try:
            return check_region(country, subdivision)[1]
        except SchedulingError as exc:
            raise PydanticCustomError("region", "{problem}", {"problem": str(exc)}) from None


class PortalUser(Part):
    """A person who may sign in to the customer portal for this customer."""

    WHAT: ClassVar[str] = "portal user"
    email: Email
    name: Text128 = ""


def _some(what: str) -> Check:
    return lambda items: None if items else f"{what}"


class Tunnel(Part):
    """The customer's reverse SSH tunnel: their nodes open it to this tunnel server; Upkeep reaches each
    node through its forwarded port there, checking the server's key and the node's own."""

    WHAT: ClassVar[str] = "access"
    type: Literal["tunnel"]
    host: Annotated[str, checked(_rule(is_hostname, "a hostname or an IPv4 address"))]
    port: Port = 22
    user: SshUser = "upkeep"
    host_key: Annotated[HostKey, Field(description="The tunnel server's SSH host key, 'TYPE BASE64'")]
    allow_cloud: Annotated[
        bool,
        Field(description="Tunnels are for software (on-premises) clusters; true lets a cloud one use one"),
    ] = False


class Cluster(Part):
    """One installation of the product: its nodes, how to reach them, and when it may be updated."""

    WHAT: ClassVar[str] = "cluster"
    name: Name
    kind: Literal["cloud", "software"]
    version: VersionText
    profile: Annotated[
        str,
        checked(_regex(r"[a-z0-9][a-z0-9_-]{0,63}", "a valid profile (^[a-z0-9][a-z0-9_-]{0,63}$)")),
        Field(json_schema_extra={"pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}),
    ] = "standard"
    ring: Literal["canary", "early", "broad"] = "broad"
    access: Annotated[Direct | Jump | Tunnel, Field(discriminator="type")]
    nodes: Annotated[
        list[Node],
        checked(_some("a cluster needs at least one node")),
        Field(json_schema_extra={"minItems": 1}),
    ]
    windows: list[Window] = []


class Customer(Part):
    """A customer: its contacts, clusters and contract terms."""

    WHAT: ClassVar[str] = "customer"
    name: Name
    timezone: Zone
    contacts: list[Contact] = []
    clusters: list[Cluster]
    notice: Notice | None = None
    requires_approval: bool = False
    blackouts: list[Blackout] = []
    portal_users: list[PortalUser] = Field(
        default=[], description=f"Who may use the customer portal: at most {MAX_PORTAL_USERS} people"
    )
    holidays: Holidays | None = None

    def blackout_zone(self, blackout: Blackout) -> str:
        return blackout.timezone or self.timezone


class Release(Part):
    """A product release: the package on the file server and the versions it upgrades."""

    WHAT: ClassVar[str] = "release"
    version: VersionText
    package: Annotated[str, checked(_rule(_is_package, "a relative path of [A-Za-z0-9._/-] without '..'"))]
    sha256: Annotated[
        str,
        checked(_regex(r"[0-9a-f]{64}", "64 lowercase hex digits")),
        Field(json_schema_extra={"pattern": "^[0-9a-f]{64}$"}),
    ]
    from_: list[VersionText] = Field(alias="from", description="The versions this release installs over")
    deadline: Annotated[
        datetime | None,
        BeforeValidator(_instant),
        PlainSerializer(lambda v: v.isoformat() if v else None, when_used="json"),
        Field(json_schema_extra={"type": ["string", "null"], "format": "date-time"}),
    ] = None

    @field_validator("from_")
    @classmethod
    def _older_and_once(cls, sources: list[str], info: ValidationInfo) -> list[str]:
        version = info.data.get("version")
        seen: set[str] = set()
        found = []
        for source in sources:
            if source in seen:
                found.append(f"{source} is listed twice")
            elif version and Version.parse(source) >= Version.parse(version):
                found.append(f"{source} is not older than {version}")
            seen.add(source)
        if found:
            raise problem("; ".join(found))
        return sources


class Person(Part):
    """A person of the on-call rotation."""

    WHAT: ClassVar[str] = "person"
    name: Annotated[str, checked(_text(128, empty=False))]
    email: Email
    notify: (
        Annotated[
            str,
            checked(_regex(r"[a-z][a-z0-9+.-]*://\S+", "an Apprise URL (scheme://...)")),
            Field(description="An Apprise URL reaching this person (pager, chat)"),
        ]
        | None
    ) = None
    role: Reason | None = None


_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


class OnCall(Part):
    """The on-call rotation (replaced whole by each import that has this key)."""

    WHAT: ClassVar[str] = "oncall"
    timezone: Zone
    handover: Annotated[str, checked(_rule(_HHMM.fullmatch, "a local time HH:MM (e.g. '09:00')"))]
    rotation: Literal["daily", "weekly"]
    starts: Annotated[Day, Field(description="The first hand-over; weekly: the hand-over weekday")]
    engineers: Annotated[list[Person], checked(_some("the rotation needs at least one engineer"))]
    team_lead: Person
    escalation: Annotated[list[Person], Field(description="Support manager, then senior director")]
    informed: Annotated[list[Person], Field(description="Kept informed of P0s")] = []

    def spec(self) -> dict[str, Any]:
        """As stored (inventory/oncall.py) and read by scheduling/oncall.py."""
        return self.model_dump(mode="json", exclude_none=True)


class Inventory(Part):
    """The inventory file: `upkeep inventory import FILE` makes the database say what it says."""

    model_config = ConfigDict(title="Upkeep inventory")
    customers: list[Customer]
    releases: list[Release] = []
    vendor_blackouts: list[VendorBlackout] | None = Field(
        default=None, description="Left out: the vendor blackouts in the database stay as they are"
    )
    oncall: OnCall | None = None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file, for editors (`upkeep inventory schema`)."""
    schema = Inventory.model_json_schema(by_alias=True, mode="validation")
    for model in [schema, *schema.get("$defs", {}).values()]:
        _null_means_default(model)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _admits_null(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return (
        kind == "null"
        or (isinstance(kind, list) and "null" in kind)
        or any(_admits_null(member) for member in schema.get("anyOf", []) + schema.get("oneOf", []))
    )


def _null_means_default(model: dict[str, Any]) -> None:
    """An optional key may be null (`key:` left empty) in the schema too, as `Part` reads it."""
    required = set(model.get("required", []))
    for key, value in model.get("properties", {}).items():
        if key in required or _admits_null(value):
            continue
        outer = {k: value.pop(k) for k in ("title", "description", "default", "examples") if k in value}
        model["properties"][key] = {**outer, "anyOf": [value, {"type": "null"}]}


# --- where in the models a location is -----------------------------------------------------------------

# Lists of entities, and their items, may not be YAML aliases: they could only be duplicates, and
# following them would let a small file expand into an enormous one.
ENTITY_LISTS = frozenset(
    {"customers", "clusters", "nodes", "releases", "portal_users", "engineers", "escalation", "informed"}
)


def refused_alias(path: tuple[Any, ...]) -> str | None:
    """The name to blame when an alias at `path` is refused, or None where aliases are fine."""
    if path and isinstance(path[-1], str) and path[-1] in ENTITY_LISTS:
        return str(path[-1])
    if len(path) > 1 and isinstance(path[-1], int) and path[-2] in ENTITY_LISTS:
        return str(path[-2])
    return None


def _unwrap(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, UnionType):
            members = [t for t in get_args(tp) if t is not type(None)]
            if len(members) != 1:
                return tuple(_unwrap(t) for t in members)
            tp = members[0]
        else:
            return tp


def _field(model: type[Part], key: Any) -> Any:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def keys_of(model: type[Part]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


class Place:
    """Where a location (pydantic's `loc`) is: the innermost mapping's model, the key in it (None when
    the location is the mapping itself), the type expected there, and the path in the file's data."""

    def __init__(self, loc: tuple[Any, ...], root: type[Part] | None = None) -> None:
        self.model: type[Part] = root or Inventory
        self.key: Any = None
        self.expected: Any = self.model
        self.path: tuple[Any, ...] = ()
        self.holder: Any = None  # the key whose value (or item) the current mapping is
        for item in loc:
            here = self.expected
            if isinstance(here, tuple):  # a discriminated union: pydantic names the tag, or a key
                tagged = [
                    m for m in here if _field(m, "type") and item in get_args(_field(m, "type").annotation)
                ]
                if tagged:
                    self.expected = self.model = tagged[0]
                    self.key = None
                    continue
                here = self.expected = self.model = here[-1]
            self.path = (*self.path, item)
            if isinstance(here, type) and issubclass(here, Part):
                self.model, self.key = here, item
                info = _field(here, item)
                self.expected = _unwrap(info.annotation) if info is not None else None
                if self._is_part(self.expected) or isinstance(self.expected, tuple):
                    self.holder = item
            elif get_origin(here) is list:
                self.expected = _unwrap(get_args(here)[0])
                if self._is_part(self.expected):
                    self.model, self.key, self.holder = self.expected, None, self.key
            else:
                self.expected = None

    @staticmethod
    def _is_part(tp: Any) -> bool:
        return isinstance(tp, type) and issubclass(tp, Part)

    @property
    def what(self) -> str:
        return f"oncall: {self.holder}" if self.model is Person else self.model.WHAT

    @property
    def label(self) -> str:
        """'cluster: version', 'release: from', 'customer' ..."""
        return f"{self.what}: {self.key}" if self.key is not None else self.what


# --- checks across entries ----------------------------------------------------------------------------


Finding = tuple[tuple[Any, ...], str, tuple[Any, ...] | None]  # (where, message, where first seen)


def _items(data: Any, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    items = data.get(key) if isinstance(data, dict) else None
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict):
            yield i, item


def _role_word(local: str) -> str:
    """A local part without the separators people put between words: no.reply, no_reply, no-reply and
    noreply are one role name."""
    return re.sub(r"[._-]", "", local.lower())


def cross_checks(
    data: Any, ok: Callable[[tuple[Any, ...]], bool], role_addresses: frozenset[str] = frozenset()
) -> list[Finding]:
    """What no single entry shows: names and endpoints used twice, portal mailboxes shared, and portal
    users whose local part is a role or distribution name in `role_addresses` (the setting
    portal_role_addresses). Works on the file's data as read, looking only at values that passed their
    own checks (`ok(path)`)."""
    found: list[Finding] = []
    firsts: dict[Any, tuple[Any, ...]] = {}
    roles = {_role_word(name) for name in role_addresses}

    def once(key: Any, where: tuple[Any, ...], message: str) -> bool:
        """Record `key`'s first place; at a later one, the problem. True: it was a repeat."""
        if key in firsts:
            found.append((where, message, firsts[key]))
            return True
        firsts[key] = where
        return False

    owners: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for c, customer in _items(data, "customers"):
        at = ("customers", c)
        if ok((*at, "name")):
            once(
                ("customer", customer["name"]),
                (*at, "name"),
                f"customer: duplicate name {show(customer['name'])}",
            )
        for k, contact in _items(customer, "contacts"):
            where = (*at, "contacts", k)
            if ok((*where, "email")) and ok((*where, "role")):
                role = contact.get("role") or "primary"
                message = f"contact: {show(contact['email'])} is listed twice as {role}"
                once(("contact", c, contact["email"].lower(), role), (*where, "email"), message)
        for k, cluster in _items(customer, "clusters"):
            where = (*at, "clusters", k)
            if ok((*where, "name")):
                message = f"cluster: duplicate name {show(cluster['name'])} in the file"
                once(("cluster", cluster["name"]), (*where, "name"), message)
            tunnel = _tunnel_of(cluster, where, ok, found)
            for n, node in _items(cluster, "nodes"):
                spot = (*where, "nodes", n)
                if not ok((*spot, "hostname")):
                    continue
                _tunnel_node(node, spot, tunnel, ok, once, found, server_key=_server_key(cluster, tunnel))
                hostname = node["hostname"]
                message = f"node: duplicate hostname {show(hostname)} in this cluster"
                once(("hostname", c, k, hostname.lower()), (*spot, "hostname"), message)
                if ok((*spot, "address")) and ok((*spot, "port")):
                    address, port = node.get("address") or hostname, node.get("port") or 22
                    message = f"node: address {show(address)} port {port} is already used by another node"
                    once(("endpoint", address_key(address), port), spot, message)
        _portal_users(customer, at, ok, owners, found)
        for u, user in _items(customer, "portal_users") if role_addresses else ():
            email_at = (*at, "portal_users", u, "email")
            local = mailbox_key(user["email"]).rpartition("@")[0] if ok(email_at) else ""
            if local and _role_word(local) in roles:
                message = (
                    f"portal user {show(user['email'])} is a role or distribution address ({local}@); "
                    "portal users are people (the setting portal_role_addresses lists these names)"
                )
                found.append((email_at, message, None))
    for r, release in _items(data, "releases"):
        if ok(("releases", r, "version")):
            version = release["version"]
            message = f"release: duplicate version {show(version)}"
            once(("release", version), ("releases", r, "version"), message)
    return found


def _tunnel_of(
    cluster: dict[str, Any],
    where: tuple[Any, ...],
    ok: Callable[[tuple[Any, ...]], bool],
    found: list[Finding],
) -> tuple[str, int] | None:
    """The cluster's tunnel server (address key, port) when its access is a valid tunnel, else None;
    a cloud cluster may use one only when its access says `allow_cloud: true`."""
    access = cluster.get("access")
    if not isinstance(access, dict) or access.get("type") != "tunnel" or not ok((*where, "access")):
        return None
    if cluster.get("kind") == "cloud" and ok((*where, "kind")) and access.get("allow_cloud") is not True:
        message = (
            f"cluster {show(cluster.get('name'))}: access tunnel is for software (on-premises) clusters; "
            "a cloud cluster needs allow_cloud: true in its access to use one"
        )
        found.append(((*where, "access", "type"), message, None))
    return address_key(access["host"]), access.get("port") or 22


def _server_key(cluster: dict[str, Any], tunnel: tuple[str, int] | None) -> str | None:
    key = cluster["access"].get("host_key") if tunnel is not None else None
    return key.split()[1] if isinstance(key, str) and len(key.split()) > 1 else None


def _tunnel_node(
    node: dict[str, Any],
    spot: tuple[Any, ...],
    tunnel: tuple[str, int] | None,
    ok: Callable[[tuple[Any, ...]], bool],
    once: Callable[[Any, tuple[Any, ...], str], bool],
    found: list[Finding],
    server_key: str | None = None,
) -> None:
    hostname = show(node["hostname"])
    if tunnel is None:
        for key in ("tunnel_port", "host_key"):
            if node.get(key) is not None:
                message = f"node {hostname}: {key} is only for clusters whose access type is tunnel"
                found.append(((*spot, key), message, None))
        return
    for key, what in (("tunnel_port", "its port on the tunnel server"), ("host_key", "its own host key")):
        if node.get(key) is None:
            found.append((spot, f"node {hostname}: access tunnel needs {key} ({what})", None))
    if node.get("tunnel_port") is not None and ok((*spot, "tunnel_port")):
        port = node["tunnel_port"]
        message = (
            f"node {hostname}: tunnel_port {port} on tunnel server {tunnel[0]}:{tunnel[1]} is already "
            "assigned to another node"
        )
        if not once(("tunnel_port", *tunnel, port), (*spot, "tunnel_port"), message) and server_key:
            # One machine's listening ports, whatever name or address the file reaches it by: its host
            # key says which server it is ('tunnel.vendor.example' and '127.0.0.1' can be one).
            same = f"{message} (the same tunnel server by its host key)"
            once(("tunnel_port_of_server_key", server_key, port), (*spot, "tunnel_port"), same)
        if port == tunnel[1]:
            # The server's own sshd listens there: Upkeep would open its channel to the tunnel server itself.
            message = (
                f"node {hostname}: tunnel_port {port} is the port of tunnel server {tunnel[0]}:{tunnel[1]} "
                "itself; a node's tunnel needs a port of its own"
            )
            found.append(((*spot, "tunnel_port"), message, None))
    if node.get("host_key") is not None and ok((*spot, "host_key")):
        # Through a tunnel the node's key is all that tells one node from another: a key listed for two
        # nodes (a copy-paste) would let either answer for the other.
        message = f"node {hostname}: host_key is already listed for another node; every node has its own"
        once(("tunnel_host_key", node["host_key"].split()[1]), (*spot, "host_key"), message)
        if node["host_key"].split()[1] == server_key:
            message = f"node {hostname}: host_key is the tunnel server's key; the node's own key belongs here"
            found.append(((*spot, "host_key"), message, None))


def _portal_users(
    customer: dict[str, Any],
    at: tuple[Any, ...],
    ok: Callable[[tuple[Any, ...]], bool],
    owners: dict[str, tuple[str, tuple[Any, ...]]],
    found: list[Finding],
) -> None:
    """At most MAX_PORTAL_USERS distinct people a customer; one mailbox, one customer."""
    name = str(customer["name"]) if isinstance(customer.get("name"), str) else ""
    seen: dict[str, tuple[str, tuple[Any, ...]]] = {}
    for u, user in _items(customer, "portal_users"):
        where = (*at, "portal_users", u, "email")
        if not ok(where):
            continue
        email = user["email"]
        key = mailbox_key(email)
        if key in seen:
            first, first_at = seen[key]
            same = "listed twice" if first.lower() == email.lower() else f"the same mailbox as {show(first)}"
            found.append((where, f"portal user {show(email)} is {same}", first_at))
        elif key in owners and owners[key][0] != name:
            other, other_at = owners[key]
            message = f"portal user {show(email)} is already a portal user of customer {show(other)}"
            found.append((where, message + " ({first}); a person signs in for one customer", other_at))
        elif len(seen) == MAX_PORTAL_USERS:
            found.append(
                (
                    where,
                    f"portal user {show(email)}: customer {show(name)} may have at most "
                    f"{MAX_PORTAL_USERS} portal users (distinct people); this is the sixth",
                    None,
                )
            )
        else:
            seen[key] = (email, where)
            owners[key] = (name, where)
