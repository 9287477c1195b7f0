"""Secrets never leave their settings. The file-server password and the SMTP password are unique
markers planted for this test (the lab's nginx is made to accept the marker), and the SSH private key
is the lab's own file: after a scenario that uses all three - a successful update, a failed one (with
its diagnostics bundle, support case and SRE alert), notices delivered over authenticated SMTP,
`--json` outputs and a settings error - no marker appears in the captured logs, the Prefect run logs,
flow/task runs and artifacts (read through the API), the emails, the exceptions, any file under the
home directory (the database included, uncompressed) or the bundle on the file server."""

from __future__ import annotations

import gzip
import secrets
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult
from sqlmodel import select

from flows.product_update import product_update
from inventory.db import make_engine, migrate, session_scope
from inventory.outbox import Notice, NoticeState
from tests.faults.cli import cli_home, invoke
from tests.faults.helpers import TARGET, hosts
from tests.integration.test_notices import SmtpServer

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect, pytest.mark.smtp]


@pytest.fixture
def planted_fileserver_password(faults_lab: Any) -> Iterator[str]:
    """nginx reads its htpasswd on every request: swap in the marker, put the lab's back afterwards."""
    from upkeep.lab.fileserver import USER, ssha

    htpasswd = faults_lab.fileserver.state_dir / "htpasswd"
    original = htpasswd.read_text()
    marker = f"FSPW-{secrets.token_hex(12)}"
    htpasswd.write_text(f"{USER}:{ssha(marker)}\n")
    try:
        yield marker
    finally:
        htpasswd.write_text(original)


@pytest.fixture
def smtp_with_login() -> Iterator[tuple[SmtpServer, list[bytes]]]:
    logins: list[bytes] = []

    def accept(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        logins.append(bytes(getattr(auth_data, "password", b"") or b""))
        return AuthResult(success=True)

    server = SmtpServer(authenticator=accept, auth_require_tls=False)
    server.start()
    try:
        yield server, logins
    finally:
        server.stop()


def _key_markers(key: Path) -> list[str]:
    """The private key's base64 body, line by line (each is unique to this key)."""
    lines = key.read_text().splitlines()
    return [line for line in lines if line and not line.startswith("-----") and len(line) >= 20]


def _texts_under(root: Path) -> Iterator[tuple[str, bytes]]:
    """Every file's bytes, and every member of every .tar.gz/.gz, uncompressed."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield str(path), data
        try:
            if path.name.endswith(".tar.gz"):
                with tarfile.open(path, "r:gz") as tar:
                    for member in tar:
                        handle = tar.extractfile(member) if member.isfile() else None
                        if handle is not None:
                            yield f"{path}!{member.name}", handle.read()
            elif path.suffix == ".gz":
                yield f"{path}!", gzip.decompress(data)
        except (tarfile.TarError, OSError, EOFError):
            pass  # named .gz but not one (another test's upload): its raw bytes were searched above


def _prefect_records(flow_run_ids: set[Any]) -> list[tuple[str, str]]:
    """Logs, flow runs (with parameters), task runs and artifacts of these flow runs and their subflows,
    as the API serves them. Filtered by id, not "the latest 200": the worker's server holds every
    earlier test's runs, in uuid4 order, and this test's own could fall outside any such page."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    def every(read: Any, **kwargs: Any) -> list[Any]:
        page: list[Any] = []
        while batch := read(**kwargs, limit=200, offset=len(page)):
            page += batch
        return page

    found: list[tuple[str, str]] = []
    with get_client(sync_client=True) as client:
        runs = {
            run.id: run
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids)))
            )
        }
        parents = set(runs)
        while parents:  # the subflows, level by level
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=list(parents))
                )
            )
            parents = {run.id for run in children} - set(runs)
            runs.update((run.id, run) for run in children)
        assert set(runs) >= flow_run_ids, f"flow runs {flow_run_ids - set(runs)} not found"
        ids = list(runs)
        these = FlowRunFilter(id=FlowRunFilterId(any_=ids))
        found += [
            (f"log {log.flow_run_id}", log.message)
            for log in every(client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        ]
        found += [(f"flow run {run.name}", run.model_dump_json()) for run in runs.values()]
        found += [
            (f"task run {task_run.name}", task_run.model_dump_json())
            for task_run in every(client.read_task_runs, flow_run_filter=these)
        ]
        found += [
            (f"artifact {artifact.key}", artifact.model_dump_json())
            for artifact in every(client.read_artifacts, flow_run_filter=these)
        ]
    assert any(where.startswith("task run ") for where, _ in found), "no task run read back"
    assert any(where.startswith("artifact ") for where, _ in found), "no artifact read back"
    return found


def test_no_secret_appears_anywhere_after_an_update_a_failure_and_notices(
    faults_lab: Any,
    faults_cluster: str,
    second_faults_cluster: str,
    prefect_harness: None,
    planted_fileserver_password: str,
    smtp_with_login: tuple[SmtpServer, list[bytes]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record: Any,
) -> None:
    from flows import runtime as flow_runtime
    from inventory.importer import import_inventory
    from upkeep.bootstrap import build_runtime
    from upkeep.settings import load_settings

    started = time.time()
    smtp, logins = smtp_with_login
    smtp_password = f"SMTPPW-{secrets.token_hex(12)}"
    overrides = {**faults_lab.settings_overrides(), "fileserver_password": planted_fileserver_password}
    mail = {
        "smtp_host": "127.0.0.1",
        "smtp_port": str(smtp.port),
        "smtp_user": "upkeep",
        "smtp_password": smtp_password,
    }
    home = tmp_path / "home"
    settings = load_settings(home=home, mail_from="Upkeep <upkeep@vendor.example>", **overrides, **mail)
    engine = make_engine(settings.resolved_database_url())
    migrate(engine)
    import_inventory(faults_lab.inventory_path, engine=engine, actor="test")
    runtime = build_runtime(settings, engine=engine)
    runtime.health_timeout, runtime.command_timeout = 5.0, 10.0
    failing = second_faults_cluster
    bad_host = hosts(faults_lab, failing)[1]
    flow_runtime.configure(runtime)
    states = []
    try:
        states.append(product_update(cluster=faults_cluster, to_version=TARGET, return_state=True))
        faults_lab.fault(bad_host, "fail-upgrade")
        try:
            states.append(product_update(cluster=failing, to_version=TARGET, return_state=True))
        finally:
            faults_lab.fault(bad_host, "clear")
    finally:
        flow_runtime.configure(None)
    assert states[0].is_completed(), states[0].message
    assert states[1].is_failed()
    # A failed update returns Failed(message=<its one-line cause>) (the run header shows it), with no
    # exception as its result; what the operator and the Prefect UI see is that message: search it.
    failure = states[1].result(raise_on_failure=False)
    assert states[1].message, states[1]
    exceptions = [failure] if isinstance(failure, BaseException) else []

    outputs: list[tuple[str, str]] = []
    env = {"mail_from": "Upkeep <upkeep@vendor.example>", **{k: str(v) for k, v in overrides.items()}, **mail}
    with cli_home(home, None, **env):
        for args in (
            ("notices", "send", "--json"),
            ("runs", "--json"),
            ("show", "1", "--json"),
            ("show", "2", "--json"),
            ("inventory", "show", "--json"),
            ("settings", "--json"),
            ("settings",),
            ("case", "list", "--all", "--json"),
            ("calendar", "--json"),
        ):
            result = invoke(*args)
            assert result.code == 0, f"{args}: {result.text[-2000:]}"
            outputs.append((" ".join(args), result.text))
    with cli_home(home, None, **{**env, "smtp_port": "not-a-port"}):
        result = invoke("settings")
        assert result.code == 1 and "UPKEEP_SMTP_PORT" in result.stderr, result.text
        outputs.append(("settings with a bad port", result.text))

    with session_scope(engine) as session:
        notices = session.exec(select(Notice)).all()
    assert notices and {n.state for n in notices} == {NoticeState.sent}
    assert smtp.handler.messages, "no email went out"
    assert logins and all(smtp_password.encode() == login for login in logins)  # the password was used
    bundles = [
        b for b in (faults_lab.fileserver_root / "support").rglob("*.tar.gz") if b.stat().st_mtime >= started
    ]
    assert bundles, "the failure produced no diagnostics bundle"

    flow_run_ids = {s.state_details.flow_run_id for s in states}
    haystack: list[tuple[str, bytes]] = [
        *((f"caplog {r.name}", r.getMessage().encode()) for r in caplog.records),
        *((where, text.encode()) for where, text in _prefect_records(flow_run_ids)),
        *((f"email {m['Message-ID']}", m.as_bytes()) for m in smtp.handler.messages),
        *((f"exception {type(e).__name__}", f"{e} {e!r} {e.args!r}".encode()) for e in exceptions),
        *((f"cli {where}", text.encode()) for where, text in outputs),
        *((f"state {s.name}", str(s.message).encode()) for s in states),
        *_texts_under(home),
        *(
            (f"bundle {b.name}", data)
            for b in bundles
            for _, data in _texts_under(b.parent)
            if b.parent.is_dir()
        ),
    ]
    with session_scope(engine) as session:
        dump = "\n".join(session.connection().connection.driver_connection.iterdump())  # type: ignore[union-attr]
    haystack.append(("database dump", dump.encode()))
    markers = {
        "file-server password": planted_fileserver_password,
        "SMTP password": smtp_password,
        **{f"SSH key line {i}": line for i, line in enumerate(_key_markers(Path(overrides["ssh_key"])))},
    }

    def leaks_in(places: list[tuple[str, bytes]]) -> list[str]:
        return [
            f"{what} in {where}"
            for where, data in places
            for what, m in markers.items()
            if m.encode() in data
        ]

    # The search finds what is there (the key file holds every key line) ...
    key_file = [("key file", Path(overrides["ssh_key"]).read_bytes())]
    assert len(leaks_in(key_file)) == len(markers) - 2
    # ... and every kind of place was searched, non-empty.
    kinds = {where.split(" ")[0] for where, data in haystack if data}
    assert kinds >= {
        "caplog",
        "log",
        "flow",
        "task",
        "artifact",
        "email",
        "state",
        "cli",
        "database",
        "bundle",
    }, kinds
    leaks = leaks_in(haystack)
    assert not leaks, "\n".join(leaks[:30])
    record(
        "secrets",
        "file-server password, SMTP password, SSH key: absent from logs, API, artifacts, mail, DB, --json",
        len(markers),
        detail=f"{len(haystack)} places searched",
    )
