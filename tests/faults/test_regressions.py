"""One regression test per bug the fault suite found (each fixed in its own commit; the commit says why).
Example-based and quick; the property or scenario that found the bug stays in its own module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.cli import CliHome, cli_home, invoke

pytestmark = [pytest.mark.faults]


@pytest.fixture
def empty_home(tmp_path: Path) -> Iterator[CliHome]:
    with cli_home(tmp_path / "home", None) as home:
        yield home


@pytest.mark.parametrize(
    "args",
    [("show", "x"), ("runs", "--limit", "abc"), ("update",), ("update", "c1", "--bogus"), ("resume", "1.5")],
)
def test_usage_errors_are_a_usage_message_and_exit_2_not_a_traceback(
    args: tuple[str, ...], empty_home: CliHome
) -> None:
    """Typer >= 0.2x raises its own copy of Click's exceptions; `upkeep.cli.main` caught only Click's."""
    result = invoke(*args)
    assert result.code == 2, result.text
    assert "Usage: upkeep" in result.stderr and "Traceback" not in result.text


def test_error_lines_print_text_literally_never_as_emoji(empty_home: CliHome, tmp_path: Path) -> None:
    """Rich replaced ':100:' in 'FILE:100: problem' (and ':smile:' in a name) with an emoji."""
    bad = tmp_path / "fleet.yaml"
    bad.write_text("# padding\n" * 99 + "customers: 5\n")
    result = invoke("inventory", "import", str(bad))
    assert result.code == 1 and f"{bad}:100:" in result.stderr, result.stderr
    result = invoke("update", ":smile:", "--to", "9.10.0", "--dry-run")
    assert result.code == 1 and "':smile:'" in result.stderr, result.stderr


@pytest.mark.parametrize("look_alike", ["9.1\u0660.0", "\uff19.10.0", "9.10.\u09e6", "\u0669.8.0"])
def test_versions_are_ascii_digits_only(look_alike: str, empty_home: CliHome, tmp_path: Path) -> None:
    """\\d matched any script's digits: a look-alike version passed as 9.10.0 and was stored as typed."""
    from scheduling.versions import Version, VersionError, is_version

    assert not is_version(look_alike)
    with pytest.raises(VersionError):
        Version.parse(look_alike)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "customers:\n- name: acme\n  timezone: UTC\n  clusters:\n  - name: c1\n    kind: software\n"
        f"    version: '{look_alike}'\n    access: {{type: direct}}\n    nodes: [{{hostname: n1}}]\n"
    )
    result = invoke("inventory", "import", str(fleet))
    assert result.code == 1 and f"{fleet}:7:" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("cancel-update", "\u00b2"),
        ("defer", "update-\u00b2", "--to", "2030-01-01"),
        ("cancel-update", "update-\u0664\u0662"),
        ("cancel-update", "99999999999999999999999"),
        ("show", "99999999999999999999999"),
        ("resume", "99999999999999999999999"),
        ("runs", "--limit", "99999999999999999999999"),
        ("notices", "send", "--limit", "99999999999999999999999"),
        ("show", "0"),
    ],
)
def test_run_ids_are_ascii_digits_within_the_database_range(
    args: tuple[str, ...], empty_home: CliHome
) -> None:
    """'²' passed str.isdigit() and int() then raised; '٤٢' was read as 42; a 23-digit id reached
    SQLite and raised OverflowError - each a traceback."""
    result = invoke(*args)
    assert result.code in (1, 2) and "Traceback" not in result.text, result.text
    assert ("error:" in result.stderr) if result.code == 1 else ("Usage:" in result.stderr), result.stderr


@pytest.mark.lab
@pytest.mark.parametrize(
    "case", ["$(touch /tmp/x)", "CASE-1\nBcc: x@evil.example", "../../etc", "CASE-" + "1" * 40]
)
def test_update_refuses_a_malformed_case_id_before_writing_anything(
    case: str, faults_lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`upkeep update --case` stored any text as the run's case (request and schedule check it); a
    failed run then could not attach its diagnostics to it."""
    cluster = faults_lab.status()["nodes"][0]["cluster"]

    def started(*_args: Any, **_kwargs: Any) -> None:
        pytest.fail("the update started")

    monkeypatch.setattr("upkeep.updates.run_product_update", started)
    with cli_home(tmp_path / "home", faults_lab.inventory_path) as home:
        home.checkpoint()
        before = home.digest()
        result = invoke("update", cluster, "--to", "9.10.0", f"--case={case}")
        assert result.code == 1 and "error: case id" in result.stderr, result.text
        assert home.digest() == before


def test_the_flow_refuses_a_malformed_case_parameter() -> None:
    """Deployments pass `case` straight to the flow: checked there too, before the run is claimed."""
    from flows.product_update import _claim
    from inventory.cases import CaseError

    with pytest.raises(CaseError):
        _claim(
            None,  # type: ignore[arg-type]  # refused before the runtime is used
            cluster="c1",
            to_version="9.10.0",
            source="cli",
            requested_by="",
            run_id=None,
            case="$(id)",
            require_approval=False,
            lease_owner=None,
        )


def test_a_release_index_nested_too_deeply_is_refused_in_one_line() -> None:
    """json.loads raises RecursionError (not ValueError) past ~1,000 levels: `release sync` crashed."""
    from inventory.releases import ReleaseError
    from upkeep.cli_release import parse_index

    with pytest.raises(ReleaseError, match=r"index\.json: not a release index \(nested too deeply\)"):
        parse_index("[" * 100_000 + "]" * 100_000, "releases/index.json")


def test_an_unreachable_file_server_is_one_line_from_release_sync(
    empty_home: CliHome, tmp_path: Path
) -> None:
    """size, fetch_text and upload let httpx's ConnectError out (only download wrapped it):
    `upkeep release sync` with the file server down was a traceback."""
    import socket

    from tasks.fileserver import FileServerError, HttpFileServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here: connection refused
    client = HttpFileServer(url=f"https://127.0.0.1:{port}", user="u", password="p", timeout=2)
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(b"x")
    for call in (
        lambda: client.size("releases/p.tar.gz"),
        lambda: client.fetch_text("releases/index.json"),
        lambda: client.upload(bundle, "support/acme/CASE-1/b.tar.gz"),
    ):
        with pytest.raises(FileServerError, match=f"connection to https://127.0.0.1:{port} failed"):
            call()
    with cli_home(tmp_path / "home2", None, fileserver_url=f"https://127.0.0.1:{port}"):
        result = invoke("release", "sync")
    assert result.code == 1 and "error: read of releases/index.json: connection to" in result.stderr, (
        result.text
    )


def test_a_port_that_never_answers_ssh_is_named_as_such(tmp_path: Path) -> None:
    """A blackholed port made Paramiko say "No existing session" after its banner timeout: nothing
    told the SRE that the node never answered."""
    from tasks.ssh import FabricRunner, RemoteError, SshSettings, SshTarget
    from tests.faults.netfaults import Blackhole

    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with Blackhole() as hole:
        runner = FabricRunner(
            SshTarget("n1", "127.0.0.1", hole.port, "root"),
            SshSettings(known_hosts, tmp_path / "no-key", connect_timeout=0.5),
        )
        with pytest.raises(RemoteError, match=r"^n1: cannot connect: no SSH answer within 0\.5 s"):
            runner.open()


@pytest.mark.lab
def test_a_connection_reset_under_a_command_is_a_cut_not_the_commands_failure(
    faults_lab: Any, tmp_path: Path
) -> None:
    """A reset mid-command came back as exit status -1, i.e. 'upgrade failed (exit -1)': read as the
    node refusing the upgrade, when nobody knows whether it finished."""
    import threading
    import time

    from tasks.ssh import FabricRunner, RemoteError, SshSettings, SshTarget
    from tests.faults.helpers import host_key, known_hosts_with, node_port
    from tests.faults.netfaults import CuttableProxy

    node = faults_lab.status()["nodes"][-1]
    with CuttableProxy(node_port(faults_lab, node["hostname"])) as proxy:
        known = known_hosts_with(
            faults_lab, tmp_path / "kh", {proxy.port: host_key(faults_lab, node["hostname"])}
        )
        target = SshTarget(node["hostname"], "127.0.0.1", proxy.port, node["user"])
        with FabricRunner(target, SshSettings(known, faults_lab.ssh_key, connect_timeout=5)) as runner:
            runner.open()
            threading.Timer(0.5, proxy.cut).start()
            started = time.monotonic()
            with pytest.raises(RemoteError, match=r"was cut off: .* outcome on the node is unknown"):
                runner.run(["sleep", "5"], timeout=20)
            assert time.monotonic() - started < 3


@pytest.mark.parametrize(
    ("start", "duration"), [("0\u0662:00", "4h"), ("02:00", "\u0664h"), ("2:0\u0660", "90m")]
)
def test_window_times_are_ascii_digits_only(
    start: str, duration: str, empty_home: CliHome, tmp_path: Path
) -> None:
    """\\d matched other scripts' digits: a look-alike window start or length was accepted and stored."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "customers:\n- name: acme\n  timezone: UTC\n  clusters:\n  - name: c1\n    kind: software\n"
        "    version: 9.8.0\n    access: {type: direct}\n    nodes: [{hostname: n1}]\n"
        f"    windows:\n    - {{days: mon-sun, start: '{start}', duration: '{duration}'}}\n"
    )
    result = invoke("inventory", "import", str(fleet))
    assert result.code == 1 and f"{fleet}:11:" in result.stderr, result.text


@pytest.mark.parametrize(
    "args",
    [
        ("calendar", "--now", "9999-12-30T00:00:00Z"),
        ("diagnostics", "collect", "--cluster", "x", "--case", "CASE-1", "--until", "0001-01-01T00:00:00Z"),
        (
            "diagnostics",
            "collect",
            "--cluster",
            "x",
            "--case",
            "CASE-1",
            "--since",
            "0001-01-01T00:00:00+14:00",
        ),
        (
            "release",
            "add",
            "9.11.0",
            "--package=releases/p.tar.gz",
            f"--sha256={'a' * 64}",
            "--from=9.10.0",
            "--deadline=9999-12-31T23:59:59-12:00",
        ),
    ],
)
def test_dates_at_the_ends_of_the_calendar_are_refused_in_one_line(
    args: tuple[str, ...], empty_home: CliHome
) -> None:
    """Valid ISO times near year 1 or 9999 overflowed later (a week added, a zone shifted to UTC, a
    release deadline stored): OverflowError tracebacks, or 'internal error, please report' at import."""
    assert invoke("runs").code == 0  # creates and migrates the database first
    empty_home.checkpoint()
    before = empty_home.digest()
    result = invoke(*args)
    assert result.code == 1 and "out of range (years 1971 to 9998, UTC)" in result.stderr, result.text
    assert empty_home.digest() == before


@pytest.mark.parametrize("address", ["0@[", "ops@[10.0.0.1", "sre@[example"])
def test_a_malformed_address_is_refused_as_not_an_address(address: str) -> None:
    """The stdlib parser raised AttributeError on an unclosed domain literal, which check_address let
    through: a notice to such an address (e.g. UPKEEP_SRE_EMAIL) crashed instead of being refused."""
    from tasks.mail import build_message, check_address, message_id_for
    from templates import RenderedNotice

    with pytest.raises(ValueError, match="is not an email address"):
        check_address("To", address)
    with pytest.raises(ValueError, match="is not an email address"):
        build_message(
            RenderedNotice("s", "t", "<p>h</p>"),
            None,
            sender="Upkeep <upkeep@vendor.example>",
            recipients=[address],
            message_id=message_id_for("update-1:failed:1"),
            idempotency_key="update-1:failed:1",
        )
