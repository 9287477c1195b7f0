"""Hostile input below the CLI: release manifests, case ids, mail headers and diagnostics paths under
Hypothesis (1,000 examples per entry point; 5,000 with UPKEEP_SOAK=1), and an injection matrix for
the inventory import, node commands on a real sshd node, and node archives.

Example-based cases already elsewhere (not repeated): header injection in tests/unit/test_mail_pure.py,
template escaping in tests/unit/test_templates.py, unsafe case ids and customer names in
tests/unit/test_redaction.py and tests/integration/test_diagnostics.py; inventory YAML fuzzing in
tests/unit/test_importer.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Sequence
from email import message_from_bytes, policy
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.cli import cli_home, invoke
from tests.faults.conftest import SOAK
from tests.faults.test_hostile_cli import PAYLOADS

pytestmark = [pytest.mark.faults]

EXAMPLES = int(os.environ.get("UPKEEP_FUZZ_EXAMPLES") or (5000 if SOAK else 1000))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ASCII_SAFE = re.compile(r"[A-Za-z0-9._/-]*")
SHA = "ab" * 32

text = st.one_of(st.text(max_size=120), st.sampled_from(PAYLOADS))


# -- release manifests (releases/index.json → `upkeep release sync`) ------------------------------------
def _entry(**overrides: Any) -> dict[str, Any]:
    return {
        "version": "9.11.0",
        "package": "releases/p-9.11.0.tar.gz",
        "sha256": SHA,
        "from": ["9.10.0"],
    } | overrides


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)
entries = st.one_of(
    json_values,
    st.builds(
        _entry,
        version=st.one_of(text, st.sampled_from(["9.11.0", "9.1٠.0", "９.１１.０"])),
        package=st.one_of(text, st.just("releases/p.tar.gz")),
        sha256=st.one_of(text, st.just(SHA)),
    ),
    st.builds(
        lambda key, value: _entry(**{key: value}),
        st.sampled_from(["from", "size", "deadline", "x"]),
        json_values,
    ),
)
manifests = st.one_of(
    st.text(max_size=400),
    st.lists(entries, max_size=5).map(json.dumps),
    json_values.map(json.dumps),
)


def _accepted_entry_is_safe(entry: Any) -> None:
    from scheduling.versions import Version

    assert str(Version.parse(entry.version)) == entry.version  # plain ASCII MAJOR.MINOR.PATCH
    assert (
        ASCII_SAFE.fullmatch(entry.package)
        and ".." not in entry.package
        and not entry.package.startswith("/")
    )
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    for source in entry.upgradable_from:
        assert str(Version.parse(source)) == source


def test_release_manifests_are_accepted_whole_and_clean_or_refused_in_one_line(record: Any) -> None:
    from inventory.releases import ReleaseError
    from upkeep.cli_release import parse_index

    @FUZZ
    @given(manifest=manifests)
    def fuzz(manifest: str) -> None:
        try:
            found = parse_index(manifest, "releases/index.json")
        except ReleaseError as exc:
            assert "\n" not in str(exc).strip() or "nothing was written" in str(exc)
            return
        for entry in found:
            _accepted_entry_is_safe(entry)

    fuzz()
    record("hostile input", "release manifests (releases/index.json) → release sync validation", EXAMPLES)


@pytest.mark.parametrize("depth", [10_000, 200_000])
def test_a_deeply_nested_manifest_is_refused_not_a_crash(depth: int, record: Any) -> None:
    from inventory.releases import ReleaseError
    from upkeep.cli_release import parse_index

    for doc in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        with pytest.raises(ReleaseError, match=r"releases/index\.json"):
            parse_index(doc, "releases/index.json")
    record("hostile input", "release manifest nested too deep for the JSON parser", 2)


# -- case ids -------------------------------------------------------------------------------------------
def test_case_ids_accepted_are_plain_ascii_path_segments_and_header_safe(record: Any) -> None:
    from inventory.cases import CaseError, check_case_ref
    from tasks.diagnostics import safe_segment
    from tasks.mail import check_header

    @FUZZ
    @given(
        case=st.one_of(
            text, st.from_regex(r"\A[A-Z][A-Z0-9]{1,9}-[0-9]{1,10}\Z"), st.sampled_from(["CASE-1"])
        )
    )
    def fuzz(case: str) -> None:
        try:
            ref = check_case_ref(case)
        except CaseError:
            return
        assert re.fullmatch(r"[A-Z0-9]+-[0-9]+", ref, flags=re.ASCII)
        assert safe_segment(ref, "case id") == ref and check_header("case", ref) == ref

    fuzz()
    record("hostile input", "case ids (check_case_ref): accepted ⇒ ASCII path segment, header-safe", EXAMPLES)


# -- diagnostics upload paths --------------------------------------------------------------------------
def test_diagnostics_upload_paths_never_leave_the_customer_case_directory(record: Any) -> None:
    from tasks.diagnostics import DiagnosticsRefused, support_path
    from tasks.fileserver import FileServerError

    @FUZZ
    @given(customer=text, case=text, bundle=text)
    def fuzz(customer: str, case: str, bundle: str) -> None:
        try:
            path = support_path(customer, case, bundle)
        except (DiagnosticsRefused, FileServerError):
            return
        parts = PurePosixPath(path).parts
        assert parts == ("support", customer, case, f"{bundle}.tar.gz")
        assert ASCII_SAFE.fullmatch(path) and not any(p in ("..", ".") for p in parts)

    fuzz()
    record("hostile input", "diagnostics upload paths (customer, case, bundle names)", EXAMPLES)


def test_node_archive_member_names_never_choose_where_we_write(tmp_path: Path, record: Any) -> None:
    from tasks.diagnostics import Redactor, redact_archive

    archive = tmp_path / "node.tar.gz"
    names = ["../../escaped.log", "/tmp/absolute.log", "a/../../b.log", "ok.log", "..", "-rf", "x\ny.log"]
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            data = f"content of {name!r}\n".encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.log")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    out = tmp_path / "out" / "node-1"
    files = redact_archive(archive, out, "node-1", Redactor())

    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(["node.tar.gz", *(f"out/node-1/{PurePosixPath(f.path).name}" for f in files)])
    assert all(p.parent == out for p in out.iterdir()) and not (out / "link.log").exists()
    record("hostile input", "node archive member names (../, absolute, symlink)", len(names) + 1)


# -- mail headers --------------------------------------------------------------------------------------
def test_notice_headers_never_gain_a_header_whatever_the_subject_and_recipient(record: Any) -> None:
    from tasks.mail import build_message, message_id_for
    from templates import RenderedNotice

    key = "update-42:failed:1"

    @FUZZ
    @given(subject=text, recipient=st.one_of(text, st.just("ops@acme.example")))
    def fuzz(subject: str, recipient: str) -> None:
        try:
            message = build_message(
                RenderedNotice(subject, "body", "<p>body</p>"),
                None,
                sender="Upkeep <upkeep@vendor.example>",
                recipients=[recipient],
                message_id=message_id_for(key),
                idempotency_key=key,
            )
            raw = message.as_bytes()
        except ValueError:
            return
        parsed = message_from_bytes(raw, policy=policy.default)
        names = [name.lower() for name in parsed]
        assert sorted(names) == sorted(
            [
                "from",
                "to",
                "subject",
                "date",
                "message-id",
                "x-upkeep-idempotency-key",
                "auto-submitted",
                "mime-version",
                "content-type",
            ]
        ), names
        assert not {"bcc", "cc", "reply-to"} & set(names)

    fuzz()
    record("hostile input", "mail headers (subject, recipient): no header injection", EXAMPLES)


# -- the inventory import: every field that reaches a shell, a path, a header or a template ------------
FIELDS = {
    "node hostname": ("customers", 0, "clusters", 0, "nodes", 0, "hostname"),
    "node address": ("customers", 0, "clusters", 0, "nodes", 0, "address"),
    "ssh user": ("customers", 0, "clusters", 0, "nodes", 0, "user"),
    "cluster name": ("customers", 0, "clusters", 0, "name"),
    "customer name": ("customers", 0, "name"),
    "contact email": ("customers", 0, "contacts", 0, "email"),
    "contact name": ("customers", 0, "contacts", 0, "name"),
    "cluster version": ("customers", 0, "clusters", 0, "version"),
    "release package": ("releases", 0, "package"),
}
# What an accepted value may look like, per field (anything else must be refused).
ACCEPTABLE = {
    "node hostname": re.compile(r"[A-Za-z0-9.-]{1,253}"),
    "node address": re.compile(r"[A-Za-z0-9.:-]{1,253}"),
    "ssh user": re.compile(r"[a-z_][a-z0-9_-]{0,31}"),
    "cluster name": re.compile(r"[a-z0-9][a-z0-9-]{0,62}"),
    "customer name": re.compile(r"[a-z0-9][a-z0-9-]{0,62}"),
    "contact email": re.compile(r"[A-Za-z0-9_%+.-]+@[A-Za-z0-9.-]+"),
    "contact name": re.compile(r"[^\x00-\x1f\x7f\u2028\u2029]{0,128}"),  # printable: never a header break
    "cluster version": re.compile(r"[0-9]+\.[0-9]+\.[0-9]+"),
    "release package": re.compile(r"[A-Za-z0-9._/-]{1,255}"),
}


def _set(doc: Any, path: tuple[Any, ...], value: str) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


@pytest.mark.lab
def test_import_refuses_injection_in_every_field_with_its_line_and_writes_nothing(
    faults_lab: Any, tmp_path: Path, record: Any
) -> None:
    full = yaml.safe_load(Path(faults_lab.inventory_path).read_text())
    customer = {**full["customers"][0], "clusters": full["customers"][0]["clusters"][:1]}
    base = {"customers": [customer], "releases": full["releases"]}  # small: one import is a few ms
    payloads = [*PAYLOADS, "n1.\u0430cme.example", "ＡＣＭＥ", "acme\u200b", "a" * 300]
    tried = 0
    with cli_home(tmp_path / "home", faults_lab.inventory_path) as home:
        home.checkpoint()
        for field, path in FIELDS.items():
            for payload in payloads:
                doc = json.loads(json.dumps(base))
                _set(doc, path, payload)
                file = tmp_path / "hostile.yaml"
                file.write_text(yaml.safe_dump(doc, allow_unicode=True))
                before = home.digest()
                result = invoke("inventory", "import", str(file))
                tried += 1
                assert "Traceback" not in result.text, result.text[-2000:]
                if result.code == 0:
                    assert ACCEPTABLE[field].fullmatch(payload), f"{field} accepted {payload!r}"
                    assert invoke("inventory", "import", str(faults_lab.inventory_path)).code == 0
                    home.checkpoint()
                    continue
                assert result.code == 1, result.text[-2000:]
                assert re.search(rf"{re.escape(str(file))}:\d+", result.stderr), result.stderr[-2000:]
                assert home.digest() == before, f"a refused import of {field}={payload!r} wrote"
    record(
        "hostile input",
        "inventory import: injection in hostnames, users, names, emails, versions, paths",
        tried,
    )


# -- node commands on a real node ----------------------------------------------------------------------
@pytest.mark.lab
def test_hostile_arguments_reach_a_real_node_as_data_never_as_shell(
    faults_lab: Any, tmp_path: Path, record: Any
) -> None:
    from tasks.ssh import FabricRunner, SshSettings, SshTarget

    marker = tmp_path / "pwned"
    shellish = [p.replace("/tmp/upkeep-pwned", str(marker)) for p in PAYLOADS if "\x00" not in p]
    shellish += [
        f"$(touch {marker})",
        f"`touch {marker}`",
        f";touch {marker}",
        f"|touch {marker}",
        f"\ntouch {marker}",
    ]
    node = faults_lab.status()["nodes"][-1]
    overrides = faults_lab.settings_overrides()
    target = SshTarget(node["hostname"], node["address"], node["port"], node["user"])
    with FabricRunner(
        target, SshSettings(Path(overrides["known_hosts"]), Path(overrides["ssh_key"]))
    ) as runner:
        echoed = runner.run(["printf", "%s\\0", *shellish], timeout=30)
        assert echoed.ok, echoed.stderr
        assert echoed.stdout.split("\0")[:-1] == shellish  # every byte arrived as one argument
        agent = runner.run(["upkeep-agent", "version", *shellish[:5]], timeout=30)
        assert agent.exit_code == 64  # the agent saw extra arguments: usage error, nothing run
    assert not marker.exists()
    record("hostile input", "shell metacharacters in node command arguments (real sshd)", len(shellish))


def test_a_hostile_version_or_package_is_refused_before_any_remote_command(record: Any) -> None:
    from tasks.node import NodeAgent
    from tasks.ssh import RemoteResult

    class Recording:
        host = "n1"

        def __init__(self) -> None:
            self.calls: list[list[str]] = []

        def run(self, argv: Sequence[str], *, timeout: float) -> RemoteResult:
            self.calls.append(list(argv))
            return RemoteResult("n1", " ".join(argv), 0, "ok", "", 0.0)

        def put(self, local: Path, remote: str) -> None: ...
        def get(self, remote: str, local: Path) -> None: ...
        def close(self) -> None: ...

    runner = Recording()
    agent = NodeAgent(runner)
    bad_versions = [p for p in PAYLOADS] + ["9.10.0;id", "9.10.0 && id", "9.10.0\nid", "9.1٠.0", "９.１０.０"]
    for version in bad_versions:
        with pytest.raises(ValueError):
            agent.upgrade(version)
    for package in ["../x.tar.gz", "/etc/passwd", "-rf", "a b", "$(id).tar.gz", "x\n.tar.gz"]:
        with pytest.raises(ValueError):
            agent.stage(package, SHA)
    with pytest.raises(ValueError):
        agent.stage("p.tar.gz", "$(id)")
    assert runner.calls == []
    record(
        "hostile input", "versions and package names refused before any remote command", len(bad_versions) + 7
    )
