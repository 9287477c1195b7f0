"""The inventory file parser: a good file loads; a bad one reports every problem at its line; no input
whatsoever gets anything but InventoryError out of it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory.importer import InventoryDoc, InventoryError, load_inventory
from inventory.importer_model import Node, show

SHA = "0123456789abcdef" * 4

GOOD = f"""\
# Inventory for the lab; owned by the SRE team.
customers:
  - name: acme
    timezone: America/New_York
    contacts:
      - {{email: ops@acme.example, name: Acme Ops, role: primary}}
      - email: oncall+upkeep@acme.example
        role: escalation
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {{type: direct}}
        nodes:
          - {{hostname: acme-c1-n1, address: 127.0.0.1, port: 40001, user: root}}
          - {{hostname: acme-c1-n2, address: 127.0.0.1, port: 40002, user: root}}
          - {{hostname: acme-c1-n3.dc1.acme.example}}
      - name: acme-c2
        kind: cloud
        version: 9.9.0
        profile: large_v2
        ring: canary
        access: &jump {{type: jump, host: jump.acme.example, port: 2222, user: upkeep}}
        nodes:
          - {{hostname: acme-c2-n1, address: "fd00::12", port: 22}}
  - name: umbrella
    timezone: Australia/Lord_Howe
    clusters:
      - name: umbrella-c1
        kind: cloud
        version: 9.9.0
        access: *jump
        nodes:
          - {{hostname: umbrella-c1-n1, address: 10.0.0.7}}
releases:
  - version: 9.9.0
    package: releases/upkeep-product-9.9.0.tar.gz
    sha256: {SHA}
    from: [9.8.0]
  - {{version: 9.10.0, package: releases/upkeep-product-9.10.0.tar.gz, sha256: {SHA},
     from: [9.8.0, 9.9.0], deadline: 2026-12-31T00:00:00Z}}
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert str(info.value) == "\n".join(str(p) for p in info.value.errors)
    return [str(p) for p in info.value.errors]


def test_good_file_loads(tmp_path: Path) -> None:
    doc = load_inventory(write(tmp_path, GOOD))
    assert isinstance(doc, InventoryDoc)
    acme, umbrella = doc.customers
    assert [c.email for c in acme.contacts] == ["ops@acme.example", "oncall+upkeep@acme.example"]
    assert acme.contacts[1].name == "" and acme.contacts[1].role == "escalation"
    c1, c2 = acme.clusters
    assert (c1.profile, c1.ring, c1.access.model_dump()) == ("standard", "broad", {"type": "direct"})
    assert c1.nodes[2] == Node(hostname="acme-c1-n3.dc1.acme.example")
    assert (c1.nodes[2].endpoint, c1.nodes[2].port, c1.nodes[2].user) == (c1.nodes[2].hostname, 22, "upkeep")
    assert (c2.profile, c2.ring) == ("large_v2", "canary")
    jump = {"type": "jump", "host": "jump.acme.example", "port": 2222, "user": "upkeep"}
    # an alias of a shared access block is fine
    assert c2.access.model_dump() == umbrella.clusters[0].access.model_dump() == jump
    assert [r.from_ for r in doc.releases] == [["9.8.0"], ["9.8.0", "9.9.0"]]
    assert doc.releases[0].deadline is None
    assert doc.releases[1].deadline == datetime(2026, 12, 31, tzinfo=UTC)
    assert len(doc.sha256) == 64


BAD = f"""\
customers:
  - name: acme
    timezone: Mars/Olympus                      # <tz>
    colour: red                                 # <unknown-key>
    contacts:
      - {{email: "ops@@acme", role: primary}}   # <email>
    clusters:
      - name: acme-c1
        kind: metal                             # <kind>
        version: 9.8.0
        access: {{type: direct}}
        nodes:
          - hostname: "n1;rm -rf /"             # <hostname>
            port: 70000                         # <port>
            user: Root                          # <user>
          - {{hostname: n2, address: 127.0.0.1, port: 2200}}
          - {{hostname: n3, address: 127.0.0.1, port: 2200}}    # <endpoint>
          - {{hostname: N2}}                                    # <dup-host>
      - name: acme-c1                           # <dup-cluster>
        kind: cloud
        version: 9.8                            # <version>
        access: {{type: jump, host: bastion, port: 22, user: upkeep}}
        nodes: [{{hostname: "acme-c1-\\u0430"}}]  # <lookalike>
  - name: acme                                  # <dup-customer>
    timezone: UTC
    clusters:
      - kind: cloud                             # <missing-name>
        version: 9.8.0
        access: {{type: direct}}
        nodes: [{{hostname: "x\\0y"}}]          # <nul>
  - {{name: "Bad Name", timezone: UTC, clusters: []}}        # <name>
releases:
  - version: 9.10.0
    package: ../../etc/passwd                   # <package>
    sha256: {SHA.upper()}                       # <sha>
    from: [9.8.0, 9.11.0]                       # <from>
    deadline: 2026-12-31T00:00:00               # <deadline>
"""

EXPECTED = {
    "tz": "timezone: 'Mars/Olympus' is not an IANA time zone",
    "unknown-key": "unknown key 'colour' (allowed: name, timezone, contacts, clusters, notice, ",
    "email": "email: 'ops@@acme' is not a valid email address",
    "kind": "kind: 'metal' is not one of cloud, software",
    "hostname": "hostname: 'n1;rm -rf /' is not an RFC 1123 hostname",
    "port": "port: 70000 is not a port number",
    "user": "user: 'Root' is not a valid ssh user",
    "endpoint": "address '127.0.0.1' port 2200 is already used by another node",
    "dup-host": "duplicate hostname 'N2' in this cluster",
    "dup-cluster": "duplicate name 'acme-c1'",
    "version": "version: expected a string, got a number '9.8'",
    "lookalike": "hostname: 'acme-c1-\u0430' is not an RFC 1123 hostname",
    "dup-customer": "customer: duplicate name 'acme'",
    "missing-name": "cluster: missing required key 'name'",
    "nul": r"hostname: 'x\x00y' is not an RFC 1123 hostname",
    "name": "name: 'Bad Name' is not a valid name",
    "package": "package: '../../etc/passwd' is not a relative path",
    "sha": f"sha256: '{SHA.upper()}' is not 64 lowercase hex digits",
    "from": "from: 9.11.0 is not older than 9.10.0",
    "deadline": "deadline: '2026-12-31 00:00:00' must be a date and time with a zone",
}


def line_of(text: str, marker: str) -> int:
    [line] = [n for n, content in enumerate(text.splitlines(), 1) if f"# <{marker}>" in content]
    return line


def test_bad_file_reports_every_problem_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    found = problems(path)
    for marker, message in EXPECTED.items():
        prefix = f"{path}:{line_of(BAD, marker)}: "
        assert any(p.startswith(prefix) and message in p for p in found), (marker, found)
    assert len(found) == len(EXPECTED), "\n".join(found)
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == sorted(lines)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", 1, "the file is empty"),
        ("# only a comment\n", 1, "the file is empty"),
        ("- a\n- b\n", 1, "top level: expected a mapping, got a list"),
        ("customers: []\nreleases: [\n", 3, "YAML syntax"),
        ("customers:\n  - name: a\n   bad indent: 1\n", 3, "YAML syntax"),
        ("customers: []\n---\ncustomers: []\n", 2, "YAML syntax: expected a single document"),
        ("customers: []\nx: *nowhere\n", 2, "YAML syntax"),
        ("customers: []\n\nname: 'a\x00b'\n", 3, "character #x0000 is not allowed"),
        ("customers: []\ncustomers: []\n", 2, "duplicate key 'customers' (first at line 1)"),
        ("customers: []\n<<: {releases: []}\n", 2, "merge keys ('<<') are not supported"),
        ("customers: []\n1: x\n", 2, "keys must be strings, got an integer '1'"),
        ("customers: !!python/object:os.system {}\n", 1, "customers: expected a list"),
        ("customers: x\n", 1, "customers: expected a list, got a string 'x'"),
        ("customers:\n- name: " + "a" * 200 + "\n", 2, "... (200 characters) is not a valid name"),
        ("[" * 3000, 1, "nested too deeply"),
    ],
)
def test_file_level_problems(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    found = problems(path)
    assert any(p.startswith(f"{path}:{line}: ") and message in p for p in found), found


def test_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    assert problems(tmp_path / "missing.yaml") == [
        f"{tmp_path / 'missing.yaml'}: cannot read the file: No such file or directory"
    ]
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"customers: []\n# caf\xe9\n")
    assert problems(path) == [f"{path}:2: not UTF-8 text (byte 0xe9 at column 6)"]


def test_a_file_whose_name_is_not_utf8_is_refused_naming_it_with_the_byte_escaped(tmp_path: Path) -> None:
    """A name of raw bytes (Python holds them as lone surrogates): the audit event that records which
    file was imported cannot hold it, and a message naming it must not fail to print."""
    import os

    path = tmp_path / os.fsdecode(b"inv\xff.yaml")
    path.write_text(GOOD, encoding="utf-8")
    assert problems(path) == [
        f"{tmp_path}/inv\\xff.yaml: the file's name is not UTF-8 (byte 0xff); rename the file to import it"
    ]
    str(problems(path)[0]).encode("utf-8")  # prints anywhere


def test_a_name_in_utf8_read_under_an_ascii_locale_is_its_utf8_name(tmp_path: Path) -> None:
    """LC_ALL=C without UTF-8 mode: Python holds caf\u00e9's UTF-8 bytes as surrogates, which are the
    UTF-8 name all the same; the audit records it as such."""
    import os

    from inventory.importer import recorded_name

    assert recorded_name(Path(os.fsdecode("caf\u00e9.yaml".encode()))) == "caf\u00e9.yaml"
    assert recorded_name(Path("/srv/caf\udcc3\udca9.yaml")) == "/srv/caf\u00e9.yaml"


def one_cluster(nodes: list[dict[str, Any]]) -> str:
    cluster = {"name": "a", "kind": "cloud", "version": "1.0.0", "access": {"type": "direct"}, "nodes": nodes}
    return yaml.safe_dump({"customers": [{"name": "a", "timezone": "UTC", "clusters": [cluster]}]})


@pytest.mark.parametrize(
    "hostname",
    [
        "a;b",
        "a b",
        "$(reboot)",
        "`id`",
        "-lead",
        "trail-",
        "a..b",
        ".a",
        "a.",
        "ünïcode",
        "\u0430cme",
        "a\x00b",
        "a\nb",
        "a_b",
        "x" * 64,
        ".".join(["a" * 63] * 3 + ["a" * 62]),
        "1.2.3.999",
        "",
        "::1",
        "a%b",
    ],
)
def test_hostnames_that_are_refused(tmp_path: Path, hostname: str) -> None:
    path = write(tmp_path, one_cluster([{"hostname": hostname, "port": 1}]))
    assert problems(path) == [f"{path}:8: node: hostname: {show(hostname)} is not an RFC 1123 hostname"]


def test_addresses_and_hostnames_that_are_accepted(tmp_path: Path) -> None:
    nodes = [
        {"hostname": "n1", "address": "fd00::1"},
        {"hostname": "n2.example.com", "address": "10.1.2.3"},
        {"hostname": "N3", "address": "n3.internal"},
        {"hostname": ".".join(["a" * 63] * 3 + ["a" * 61])},  # 253 characters
        {"hostname": "10.0.0.4"},
    ]
    doc = load_inventory(write(tmp_path, one_cluster(nodes)))
    addresses = [node.endpoint for node in doc.customers[0].clusters[0].nodes]
    assert addresses == [
        "fd00::1",
        "10.1.2.3",
        "n3.internal",
        ".".join(["a" * 63] * 3 + ["a" * 61]),
        "10.0.0.4",
    ]


def test_aliased_entities_are_refused_at_the_alias(tmp_path: Path) -> None:
    text = "customers:\n- &c {name: a, timezone: UTC, clusters: []}\n- *c\n"
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:3: customers: YAML aliases (*name) cannot be used here; write each one out"
    ]


def test_alias_bomb_is_cheap(tmp_path: Path) -> None:
    """Nine levels of ten aliases each would be 10**9 contacts if followed naively."""
    lines = ["x0: &a0 [{email: a@b.c}, {email: a@b.c}]"]
    lines += [f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "\n".join(lines) + "\ncustomers: [{name: a, timezone: UTC, clusters: [], contacts: *a8}]\n"
    found = problems(write(tmp_path, text))
    assert 1 < len(found) < 30


# --- no input gets anything but InventoryError out --------------------------------------------------

KEYS = [
    "customers",
    "releases",
    "name",
    "timezone",
    "contacts",
    "clusters",
    "email",
    "role",
    "kind",
    "version",
    "profile",
    "ring",
    "access",
    "type",
    "host",
    "port",
    "user",
    "nodes",
    "hostname",
    "address",
    "package",
    "sha256",
    "from",
    "deadline",
    "<<",
    "windows",
    "days",
    "start",
    "duration",
    "blackouts",
    "end",
    "reason",
    "notice",
    "product_update",
    "cloud_release",
    "requires_approval",
    "vendor_blackouts",
]
INTERESTING = [
    "acme",
    "9.8.0",
    "9.10.0",
    "UTC",
    "America/New_York",
    "direct",
    "jump",
    "cloud",
    "software",
    "primary",
    "127.0.0.1",
    "::1",
    "a@b.c",
    SHA,
    "releases/x.tar.gz",
    "2026-12-31T00:00:00Z",
    "a\x00b",
    "a\nb",
    "$(id)",
    "é",
    "-x",
    "..",
    "/abs",
    "mon-fri",
    "02:00",
    "4h",
    "0m",
    "2026-12-20",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(INTERESTING),
    st.datetimes(),
    st.dates(),
    st.binary(max_size=8),
)
structures = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.sampled_from(KEYS), scalars), inner, max_size=5)
    ),
    max_leaves=40,
)
documents = (
    st.fixed_dictionaries({}, optional={"customers": structures, "releases": structures, "extra": structures})
    | structures
)


def check_only_inventory_errors(path: Path) -> None:
    try:
        load_inventory(path)
    except InventoryError as exc:
        assert exc.errors
        for problem in exc.errors:
            assert re.match(rf"{re.escape(str(path))}:\d+: \S", str(problem)), str(problem)
            assert "internal error" not in problem.message


HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(text=st.text())
def test_arbitrary_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / "text.yaml"
    path.write_text(text, errors="surrogatepass")
    check_only_inventory_errors(path)


@HYPOTHESIS
@given(data=st.binary())
def test_arbitrary_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "bytes.yaml"
    path.write_bytes(data)
    check_only_inventory_errors(path)


@HYPOTHESIS
@given(document=documents, flow=st.booleans())
def test_arbitrary_yaml_structures(
    tmp_path_factory: pytest.TempPathFactory, document: Any, flow: bool
) -> None:
    path = tmp_path_factory.getbasetemp() / "structure.yaml"
    path.write_text(yaml.dump(document, default_flow_style=flow, allow_unicode=True))
    check_only_inventory_errors(path)


def _mutations() -> st.SearchStrategy[Any]:
    """The good document with one value somewhere replaced: exercises every field's validation."""
    good = yaml.safe_load(GOOD)

    def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        )
        return [prefix] + [p for key, child in children for p in paths(child, (*prefix, key))]

    def replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
        if not path:
            return value
        copy = dict(node) if isinstance(node, dict) else list(node)
        copy[path[0]] = replace(node[path[0]], path[1:], value)
        return copy

    return st.builds(replace, st.just(good), st.sampled_from(paths(good)), structures)


@HYPOTHESIS
@given(document=_mutations())
def test_mutated_good_file(tmp_path_factory: pytest.TempPathFactory, document: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "mutated.yaml"
    path.write_text(yaml.dump(document, allow_unicode=True))
    check_only_inventory_errors(path)


# --- scheduling keys: windows, blackouts, notice terms, vendor blackouts --------------------------------

GOOD_SCHEDULE = """\
vendor_blackouts:
  - {start: 2026-12-24, end: 2026-12-26, timezone: UTC, reason: Year-end freeze}
customers:
  - name: acme
    timezone: America/New_York
    notice: {product_update: 48h, cloud_release: 14d}
    requires_approval: true
    blackouts:
      - {start: 2026-11-26, end: "2026-11-27", reason: Thanksgiving}
      - {start: 2027-01-01, end: 2027-01-01, timezone: Europe/Berlin}
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {type: direct}
        nodes: [{hostname: n1}]
        windows:
          - {days: "tue,thu", start: "02:00", duration: 4h}
          - {days: [sat, sunday], start: "22:30", duration: 90m, timezone: Europe/Berlin}
          - {days: fri-mon, start: "1:05", duration: 2h30m}
      - name: acme-c2
        kind: cloud
        version: 9.8.0
        access: {type: direct}
        nodes: [{hostname: n2}]
  - name: umbrella
    timezone: UTC
    clusters: []
"""


def test_schedule_keys_load(tmp_path: Path) -> None:
    from datetime import date

    from inventory.importer_model import Blackout, Notice

    doc = load_inventory(write(tmp_path, GOOD_SCHEDULE))
    acme, umbrella = doc.customers
    assert acme.notice is not None and umbrella.notice is None
    hours = Notice.hours(acme.notice.product_update), Notice.hours(acme.notice.cloud_release)
    assert (*hours, acme.requires_approval) == (48, 336, True)
    assert (umbrella.requires_approval, umbrella.blackouts) == (False, [])

    def blackout(b: Blackout, zone: str) -> tuple[Any, ...]:
        return (b.start, b.end, b.timezone or zone, b.reason)

    # a customer's blackout is read in the customer's zone unless it names one
    assert [blackout(b, acme.timezone) for b in acme.blackouts] == [
        (date(2026, 11, 26), date(2026, 11, 27), "America/New_York", "Thanksgiving"),
        (date(2027, 1, 1), date(2027, 1, 1), "Europe/Berlin", ""),
    ]
    assert [(w.days, w.start, w.minutes, w.timezone) for w in acme.clusters[0].windows] == [
        (["tue", "thu"], "02:00", 240, None),  # None = the customer's zone
        (["sat", "sun"], "22:30", 90, "Europe/Berlin"),
        (["mon", "fri", "sat", "sun"], "01:05", 150, None),
    ]
    assert acme.clusters[1].windows == []
    assert doc.vendor_blackouts is not None
    assert [blackout(b, "") for b in doc.vendor_blackouts] == [
        (date(2026, 12, 24), date(2026, 12, 26), "UTC", "Year-end freeze")
    ]
    assert load_inventory(write(tmp_path, GOOD, "plain.yaml")).vendor_blackouts is None  # key absent


BAD_SCHEDULE = """\
vendor_blackouts:
  - {start: 2026-12-24, end: 2026-12-26}                       # <vendor-zone>
customers:
  - name: acme
    timezone: America/New_York
    notice: {product_update: 90m, cloud_release: 61d}          # <notice>
    requires_approval: "yes"                                   # <approval>
    blackouts:
      - {start: 2026-11-27, end: 2026-11-26}                   # <end-before-start>
      - {start: 2026-11-27T10:00:00Z, end: 2026-11-28}         # <not-a-date>
      - {start: 2026-12-01, end: 2026-12-02, timezone: Mars/Base}   # <blackout-zone>
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {type: direct}
        nodes: [{hostname: n1}]
        windows:
          - {days: "tue,thurs", start: "02:00", duration: 4h}  # <day>
          - {days: mon, start: "25:00", duration: 4h}          # <start>
          - {days: mon, start: "02:00", duration: 0m}          # <zero>
          - {days: mon, start: "02:00", duration: 8d}          # <long>
          - {days: mon, start: "02:00", duration: 4h, timezone: Nowhere/Zone}   # <window-zone>
          - {days: mon, start: "02:00"}                        # <missing>
"""

SCHEDULE_EXPECTED = {
    "vendor-zone": "vendor blackout: missing required key 'timezone'",
    "notice": "notice: product_update: '90m' is not a whole number of hours or days",
    "approval": "customer: requires_approval: expected true or false, got a string 'yes'",
    "end-before-start": "blackout: end: 2026-11-26 is before start 2026-11-27",
    "not-a-date": "blackout: start: '2026-11-27 10:00:00+00:00' is not a date",
    "blackout-zone": "blackout: timezone: 'Mars/Base' is not an IANA time zone",
    "day": "window: days: day 'thurs': expected a weekday name",
    "start": "window: start: '25:00' is not a local time HH:MM",
    "zero": "window: duration: '0m' is not between 1 minute and 7 days",
    "long": "window: duration: '8d' is not between 1 minute and 7 days",
    "window-zone": "window: timezone: 'Nowhere/Zone' is not an IANA time zone",
    "missing": "window: missing required key 'duration'",
}


def test_bad_schedule_keys_are_reported_at_their_lines(tmp_path: Path) -> None:
    path = write(tmp_path, BAD_SCHEDULE)
    found = problems(path)
    for marker, message in SCHEDULE_EXPECTED.items():
        prefix = f"{path}:{line_of(BAD_SCHEDULE, marker)}: "
        assert any(p.startswith(prefix) and message in p for p in found), (marker, found)
    # the notice line has two problems (90m, and 61 days being over the 60-day maximum)
    assert f"{path}:6: notice: cloud_release: '61d' is more than 60 days" in found
    assert len(found) == len(SCHEDULE_EXPECTED) + 1, "\n".join(found)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"days": "", "start": "02:00", "duration": "1h"}, "days: day '': expected a weekday name"),
        ({"days": [], "start": "02:00", "duration": "1h"}, "days: days []: expected at least one day"),
        ({"days": [1], "start": "02:00", "duration": "1h"}, "days: expected a string or a list of strings"),
        ({"days": "mon", "start": "2am", "duration": "1h"}, "start: '2am' is not a local time HH:MM"),
        ({"days": "mon", "start": "02:00", "duration": "4 hours"}, "'4 hours' is not a duration"),
        ({"days": "mon", "start": "02:00", "duration": 4}, "duration: expected a string, got an integer"),
    ],
)
def test_window_values_that_are_refused(tmp_path: Path, window: dict[str, Any], message: str) -> None:
    data = yaml.safe_load(one_cluster([{"hostname": "n1"}]))
    data["customers"][0]["clusters"][0]["windows"] = [window]
    path = write(tmp_path, yaml.safe_dump(data))
    [problem] = problems(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: window: ", problem) and message in problem, problem


def _schedule_mutations() -> st.SearchStrategy[Any]:
    good = yaml.safe_load(GOOD_SCHEDULE)

    def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        children = (
            node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        )
        return [prefix] + [p for key, child in children for p in paths(child, (*prefix, key))]

    def replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
        if not path:
            return value
        copy = dict(node) if isinstance(node, dict) else list(node)
        copy[path[0]] = replace(node[path[0]], path[1:], value)
        return copy

    return st.builds(replace, st.just(good), st.sampled_from(paths(good)), structures)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_schedule_mutations())
def test_mutated_schedule_file(tmp_path_factory: pytest.TempPathFactory, document: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "mutated-schedule.yaml"
    path.write_text(yaml.dump(document, allow_unicode=True))
    check_only_inventory_errors(path)


def test_customer_holidays_region_is_read_and_checked_with_its_line(tmp_path: Path) -> None:
    good = GOOD.replace(
        "    timezone: Australia/Lord_Howe\n",
        "    timezone: Australia/Lord_Howe\n    holidays: {country: au, subdivision: nsw}\n",
    )
    doc = load_inventory(write(tmp_path, good))
    assert [c.holidays and (c.holidays.country, c.holidays.subdivision) for c in doc.customers] == [
        None,
        ("AU", "NSW"),
    ]
    bad = GOOD.replace(
        "    timezone: America/New_York\n",
        "    timezone: America/New_York\n    holidays:\n      country: US\n      subdivision: ZZ\n",
    )
    path = write(tmp_path, bad, "bad.yaml")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:7: holidays subdivision 'ZZ' is not one of US's (")
    unknown = GOOD.replace(
        "    timezone: America/New_York\n", "    timezone: America/New_York\n    holidays: {country: XX}\n"
    )
    [problem] = problems(write(tmp_path, unknown, "unknown.yaml"))
    assert problem.endswith(":5: holidays country 'XX' is not a country the holidays package knows")


ACCESS_FILE = """\
customers:
  - name: a
    timezone: UTC
    clusters:
      - name: c
        kind: cloud
        version: 1.0.0
        access: %s
        nodes: [{hostname: n}]
"""


@pytest.mark.parametrize(
    ("access", "messages"),
    [
        ("{type: vpn}", ["access: type: 'vpn' is not one of direct, jump, tunnel"]),
        (
            "{type: tunnel}",
            ["access: missing required key 'host'", "access: missing required key 'host_key'"],
        ),
        ("{host: j}", ["access: missing required key 'type'"]),
        ("{type: jump}", ["access: missing required key 'host'"]),
        ("{type: direct, host: j}", ["access: unknown key 'host' (allowed: type)"]),
        ("x", ["cluster: access: expected a mapping, got a string 'x'"]),
        (
            "{type: jump, host: 'a b', port: true}",
            [
                "access: host: 'a b' is not a hostname or an IPv4 address",
                "access: port: expected an integer, got a boolean 'true'",
            ],
        ),
    ],
)
def test_access_problems_name_the_key_and_line(tmp_path: Path, access: str, messages: list[str]) -> None:
    """`access` is a choice of shapes (by `type`): problems still name the key and its line."""
    path = write(tmp_path, ACCESS_FILE % access)
    assert problems(path) == [f"{path}:8: {message}" for message in messages]


def test_oncall_problems_name_the_person_list(tmp_path: Path) -> None:
    text = GOOD + (
        "oncall:\n  timezone: UTC\n  handover: '9am'\n  rotation: weekly\n  starts: 2026-12-07\n"
        "  engineers: []\n  team_lead: {name: T, email: t@x.example, colour: red}\n"
        "  escalation: [{name: S, email: x}]\n"
    )
    path = write(tmp_path, text)
    first = len(GOOD.splitlines()) + 1
    assert problems(path) == [
        f"{path}:{first + 2}: oncall: handover: '9am' is not a local time HH:MM (e.g. '09:00')",
        f"{path}:{first + 5}: oncall: engineers: the rotation needs at least one engineer",
        f"{path}:{first + 6}: oncall: team_lead: unknown key 'colour' (allowed: name, email, notify, role)",
        f"{path}:{first + 7}: oncall: escalation: email: 'x' is not a valid email address",
    ]


@pytest.mark.parametrize(
    ("key", "value", "got"),
    [
        ("user", "!vault secret", "expected a string, got !vault 'secret'; quote it"),
        ("user", "!!binary aGVsbG8=", "expected a string, got binary 'aGVsbG8='; quote it"),
        ("port", "!foo 2222", "expected an integer, got !foo '2222'"),
        ("user", "!!python/name:os.system ''", "expected a string, got python/name:os.system ''; quote it"),
    ],
)
def test_a_tagged_value_is_refused_not_read_as_its_text(
    tmp_path: Path, key: str, value: str, got: str
) -> None:
    # adv20i: the pydantic importer took any scalar with a tag it does not know (an Ansible `!vault`
    # ciphertext, `!!binary`, a custom tag) as a plain string, so the text after the tag was imported as
    # the value; the importer before it refused them, naming the tag.
    node = {"hostname": "a-n1", "port": "22", "user": "root", key: value}
    text = one_cluster([{"hostname": "h"}]).replace(
        "- hostname: h", "- {" + ", ".join(f"{k}: {v}" for k, v in node.items()) + "}"
    )
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:8: node: {key}: {got}"]


def test_an_endless_or_huge_file_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # adv20i: `upkeep inventory import /dev/zero` (or a mistyped multi-GB dump) read the whole file into
    # memory first; it grew past a gigabyte in seconds on the shared machine.
    import inventory.importer_yaml as importer_yaml

    monkeypatch.setattr(importer_yaml, "MAX_FILE_BYTES", 1000)
    path = write(tmp_path, "customers: []\n" + "#" * 2000 + "\n")
    assert problems(path) == [f"{path}: the file is larger than 1000 bytes; an inventory is far smaller"]
    assert problems(Path("/dev/zero")) == [
        "/dev/zero: the file is larger than 1000 bytes; an inventory is far smaller"
    ]


def test_null_where_one_of_a_few_words_is_required_says_null(tmp_path: Path) -> None:
    # adv20i: `kind: null` read "None is not one of cloud, software" and `access: {type: null}` "'None' is
    # not one of direct, jump, tunnel": Python's word for YAML's null, quoted as if it were written.
    text = one_cluster([{"hostname": "h"}]).replace("kind: cloud", "kind: null")
    path = write(tmp_path, text.replace("type: direct", "type: null"))
    found = problems(path)
    assert any(
        p.endswith("cluster: kind: expected one of cloud, software, got nothing (null)") for p in found
    )
    assert any(
        p.endswith("access: type: expected one of direct, jump, tunnel, got nothing (null)") for p in found
    )
    assert not any("None" in p for p in found), found


def test_a_day_written_as_a_string_that_is_no_date_is_refused_with_its_value(tmp_path: Path) -> None:
    """The string branch of a whole day (JSON has no dates): 200 Hypothesis examples did not reliably
    reach it, the 1,000 they replaced did."""
    bad = GOOD_SCHEDULE.replace('end: "2026-11-27"', 'end: "2026-11-31"')
    assert bad != GOOD_SCHEDULE
    found = problems(write(tmp_path, bad))
    assert any(
        "blackout: end: '2026-11-31' is not a date (whole days, e.g. 2026-12-20)" in p for p in found
    ), found
