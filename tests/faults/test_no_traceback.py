"""No traceback ever reaches a user: every command of `upkeep --help` under the faults an operator
meets (a database URL that cannot be used or reached, the file server and SMTP down, the Prefect API
unreachable, a run that fails), each answered with lines and a documented exit code (README: 0 ok,
1 refused or failed, 2 usage or lost race, 3 partial).

Commands are found by walking the CLI's own command tree, so a new command is covered without
editing this file; required arguments get plausible values by name. Left out: `demo` and `lab up`
(they start a lab of their own) and `portal serve` (it serves until interrupted; its start-up is the
portal's own tests'). In-process calls (tests/faults/cli.py) for the settings-only faults;
real processes where Prefect's own settings or console logging are involved.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.faults.cli import cli_home, invoke
from tests.integration.conftest import upkeep_cli

pytestmark = [pytest.mark.faults]

DOCUMENTED = {0, 1, 2, 3}
SKIPPED = {("demo",), ("lab", "up"), ("portal", "serve")}  # the last serves until interrupted
VALUES = {
    "cluster": "acme-c1",
    "to": "9.10.0",
    "source": "customer",
    "run": "1",
    "update": "1",
    "file": "/nonexistent/inventory.yaml",
    "subject": "disk full",
    "case": "CASE-1",
    "by": "sre",
    "reason": "because",
    "status": "open",
    "version": "9.10.0",
    "package": "releases/p.tar.gz",
    "sha256": "0" * 64,
    "from_": "9.8.0",
    "node": "n1",
    "kind": "clear",
}
BAD_DATABASE_URLS = {
    "port not a number": "postgresql://u:S3CRETMARKER@127.0.0.1:notaport/db",
    "no driver": "postgresql://postgres:S3CRETMARKER@127.0.0.1:5432/test",
    "no such role": "postgresql+psycopg://nosuchrole:S3CRETMARKER@127.0.0.1:5432/test",
    "not a URL": "S3CRETMARKER is not a url",
    "unreachable": "postgresql+psycopg://postgres:S3CRETMARKER@127.0.0.1:1/test",
    "an @ in the password": "postgresql+psycopg://postgres:p@S3CRETMARKER@127.0.0.1:5432/test",
}


def commands() -> Iterator[list[str]]:
    """Every leaf command with its required arguments and options filled in."""
    import typer.main

    from upkeep import cli

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[list[str]]:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                yield from walk(sub, (*path, name))
            return
        if path in SKIPPED:
            return
        args = list(path)
        for param in command.params:
            if not getattr(param, "required", False):
                continue
            value = VALUES.get(param.name, "x")
            args += [param.opts[0], value] if param.opts[0].startswith("-") else [value]
        yield args

    yield from walk(typer.main.get_command(cli.app), ())  # call outside cli_home (it swaps cli.app)


def _assert_clean(args: list[str], code: int, text: str) -> None:
    assert "Traceback" not in text, f"upkeep {' '.join(args)}:\n{text[-3000:]}"
    assert code in DOCUMENTED, f"upkeep {' '.join(args)}: exit {code}\n{text[-2000:]}"


def test_the_walk_finds_every_command() -> None:
    found = {" ".join(a[:2]) for a in commands()}
    assert {"update acme-c1", "resume 1", "release add", "case open", "notices send", "doctor"} <= found


@pytest.mark.parametrize("fault", list(BAD_DATABASE_URLS))
def test_every_command_with_a_database_url_that_cannot_be_used(
    fault: str, tmp_path: Path, record: Any
) -> None:
    ran, every = 0, list(commands())
    with cli_home(tmp_path / "home", None, database_url=BAD_DATABASE_URLS[fault]):
        for args in every:
            if args[0] == "doctor":
                continue  # asks the Prefect API too: run as a process below
            result = invoke(*args)
            _assert_clean(args, result.code, result.text)
            assert "S3CRETMARKER" not in result.text, f"upkeep {' '.join(args)}: {result.text[-1000:]}"
            ran += 1
    record("no traceback", f"every command, database URL: {fault}", ran)


def test_every_command_with_the_file_server_and_smtp_down(
    tmp_path: Path, faults_lab: Any, record: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A working database holding the lab's inventory; the file server and the SMTP server refuse
    connections. Commands that would start a flow are refused before it by the inputs given here
    (no run 1, acme-c1 is not in the lab) or run as processes below."""
    down = {"fileserver_url": "https://127.0.0.1:1", "smtp_host": "127.0.0.1", "smtp_port": "1"}
    ran, every = 0, list(commands())
    with cli_home(tmp_path / "home", faults_lab.inventory_path, **down):
        for args in every:
            if args[0] in ("doctor", "dispatch"):
                continue
            result = invoke(*args)
            _assert_clean(args, result.code, result.text)
            ran += 1
    record("no traceback", "every command, file server and SMTP down", ran)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({"UPKEEP_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"})
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra})
    return env


@pytest.mark.parametrize(
    "args", [["dispatch"], ["doctor"], ["resume", "1"], ["approve", "1", "--reason", "ok"], ["runs"]]
)
def test_prefect_api_unreachable(args: list[str], tmp_path: Path, record: Any) -> None:
    env = _env(tmp_path, PREFECT_API_URL="http://127.0.0.1:1/api", PREFECT_CLIENT_MAX_RETRIES="0")
    proc = upkeep_cli(env, *args, check=False, timeout=240)
    _assert_clean(args, proc.returncode, proc.stdout + proc.stderr)
    record("no traceback", f"`upkeep {' '.join(args)}` with the Prefect API unreachable")


@pytest.mark.lab
@pytest.mark.prefect
def test_a_failed_run_shows_no_traceback(
    faults_lab: Any, faults_cluster: str, prefect_harness: None, tmp_path: Path, record: Any
) -> None:
    """The file server is down: the run fails (before any node). One `error:` line and Prefect's
    log lines, no Python or Prefect task traceback (`--verbose` would show them)."""
    from prefect.settings import PREFECT_API_URL

    from inventory.db import make_engine, migrate
    from inventory.importer import import_inventory

    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'upkeep.db'}")
    migrate(engine)
    import_inventory(faults_lab.inventory_path, engine=engine, actor="test")
    engine.dispose()
    settings = {f"UPKEEP_{k.upper()}": str(v) for k, v in faults_lab.settings_overrides().items()}
    env = _env(tmp_path, PREFECT_API_URL=str(PREFECT_API_URL.value()), **settings)
    env["UPKEEP_FILESERVER_URL"] = "https://127.0.0.1:1"
    failed = upkeep_cli(env, "update", faults_cluster, "--to", "9.10.0", check=False, timeout=240)
    text = failed.stdout + failed.stderr
    assert failed.returncode == 1 and "failed" in failed.stderr, text[-3000:]
    assert "Traceback" not in text, text[-4000:]
    record("no traceback", "a run that fails (file server down), without --verbose")


@pytest.mark.lab
def test_a_temporary_prefect_server_too_slow_to_start_creates_no_run(
    faults_lab: Any, faults_cluster: str, tmp_path: Path, record: Any
) -> None:
    """PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=1, no PREFECT_API_URL: the temporary server
    cannot answer in time. It was a 175-line traceback and a run left `planned` that made the next
    `update` refuse; now one line, no run created, nothing touched."""
    from sqlmodel import select

    from inventory.db import make_engine, migrate, session_scope
    from inventory.importer import import_inventory
    from inventory.models import UpgradeRun

    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'upkeep.db'}")
    migrate(engine)
    import_inventory(faults_lab.inventory_path, engine=engine, actor="test")
    settings = {f"UPKEEP_{k.upper()}": str(v) for k, v in faults_lab.settings_overrides().items()}
    env = _env(
        tmp_path,
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
        **settings,
    )
    proc = upkeep_cli(env, "update", faults_cluster, "--to", "9.10.0", check=False, timeout=240)
    text = proc.stdout + proc.stderr
    _assert_clean(["update"], proc.returncode, text)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "does not answer" in lines[0], text[-3000:]
    with session_scope(engine) as session:
        assert session.exec(select(UpgradeRun)).all() == []
    engine.dispose()
    record("no traceback", "temporary Prefect server slow to start: one line, no run created")


@pytest.mark.lab
@pytest.mark.parametrize(
    "args",
    [["dispatch"], ["case", "auto-close"], ["release", "plan", "--version", "9.10.0"]],
    ids=lambda a: " ".join(a),
)
def test_every_flow_command_says_a_too_slow_temporary_server_does_not_answer(
    args: list[str], faults_lab: Any, tmp_path: Path
) -> None:
    """As `update` says it (above): one line naming the temporary server and the setting, exit 1, not
    "unexpected RuntimeError ... a bug in Upkeep" (dispatch, auto-close and release plan said that)."""
    from inventory.db import make_engine, migrate
    from inventory.importer import import_inventory

    engine = make_engine(f"sqlite:///{tmp_path / 'home' / 'upkeep.db'}")
    migrate(engine)
    import_inventory(faults_lab.inventory_path, engine=engine, actor="test")
    engine.dispose()
    settings = {f"UPKEEP_{k.upper()}": str(v) for k, v in faults_lab.settings_overrides().items()}
    env = _env(
        tmp_path,
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
        **settings,
    )
    proc = upkeep_cli(env, *args, check=False, timeout=240)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the temporary Prefect server) does not answer" in lines[0], lines
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in lines[0] and "bug" not in lines[0], lines


@contextmanager
def _http_api(answer: Callable[[str], tuple[int, str, bytes] | None]) -> Iterator[str]:
    """A local HTTP server answering every method with `answer(path)`: (status, content type, body),
    or None to close the connection without an answer. Yields its `/api` URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            answered = answer(self.path)
            if answered is None:
                self.close_connection = True
                return
            code, content_type, body = answered
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def not_prefect() -> Iterator[str]:
    """An HTTP server that is not Prefect's API and answers every request 200 with a web page (a
    proxy's or a web app's catch-all): its /api/health answers, nothing else is Prefect's."""
    with _http_api(lambda _path: (200, "text/html", b"<html><body>not Prefect</body></html>")) as url:
        yield url


@pytest.mark.parametrize("args", [["dispatch"], ["case", "auto-close"]], ids=lambda a: " ".join(a))
def test_a_prefect_api_url_that_is_not_prefect_is_one_json_error(
    args: list[str], not_prefect: str, tmp_path: Path
) -> None:
    """PREFECT_API_URL names a server whose /api/health answers 200 but that is not Prefect's API:
    one JSON error object naming the API, exit 1, not "unexpected RuntimeError: Failed to reach API
    ... a bug in Upkeep" (the health check passed; the flow's client then failed)."""
    import json

    env = _env(tmp_path, PREFECT_API_URL=not_prefect, PREFECT_CLIENT_MAX_RETRIES="0")
    proc = upkeep_cli(env, *args, "--json", check=False, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    answer = json.loads(proc.stdout)  # one JSON object, nothing else
    assert set(answer) == {"error", "exit"} and answer["exit"] == 1, answer
    assert f"the Prefect API ({not_prefect}) does not answer" in answer["error"], answer
    assert "bug" not in answer["error"] and proc.stderr == "", answer


@pytest.fixture(params=["503", "hang-up"])
def prefect_gone_after_the_check(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Prefect API that answers `prefect_answers` (/health, /admin/version) and then goes away: every
    other request 503 from the proxy in front of it (the API restarting, its database down), or the
    connection closed without an answer (the API's process gone)."""
    import json

    import prefect

    def answer(path: str) -> tuple[int, str, bytes] | None:
        if path.endswith("/api/health"):
            return 200, "application/json", b"true"
        if path.endswith("/api/admin/version"):
            return 200, "application/json", json.dumps(prefect.__version__).encode()
        if request.param == "hang-up":
            return None
        return 503, "application/json", b'{"detail": "backend gone"}'

    with _http_api(answer) as url:
        yield url


@pytest.mark.parametrize("args", [["dispatch"], ["case", "auto-close"]], ids=lambda a: " ".join(a))
def test_a_prefect_api_gone_between_the_check_and_the_flow_is_not_a_bug(
    args: list[str], prefect_gone_after_the_check: str, tmp_path: Path
) -> None:
    """The API answered `prefect_answers` and then went away (503s): one JSON error naming the Prefect
    API, exit 1, not "unexpected PrefectHTTPStatusError ... a bug in Upkeep"."""
    import json

    env = _env(tmp_path, PREFECT_API_URL=prefect_gone_after_the_check, PREFECT_CLIENT_MAX_RETRIES="0")
    proc = upkeep_cli(env, *args, "--json", check=False, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    answer = json.loads(proc.stdout)  # one JSON object, nothing else
    assert set(answer) == {"error", "exit"} and answer["exit"] == 1, answer
    assert "the Prefect API stopped answering" in answer["error"], answer
    assert "bug" not in answer["error"] and proc.stderr == "", answer


def test_dispatch_names_a_database_it_cannot_use_before_it_asks_prefect(tmp_path: Path) -> None:
    """`dispatch` checks its database before `prefect_answers`, as auto-close and release plan do:
    a database URL that cannot be used is its one line, without first starting a temporary Prefect
    server (~240 MB, seconds; its "Starting temporary server" line shows with UPKEEP_VERBOSE)."""
    import json

    url = BAD_DATABASE_URLS["unreachable"]
    env = _env(tmp_path, UPKEEP_DATABASE_URL=url, UPKEEP_VERBOSE="1", PREFECT_HOME=str(tmp_path / "p"))
    proc = upkeep_cli(env, "dispatch", "--json", check=False, timeout=240)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "the database is unavailable" in json.loads(proc.stdout)["error"], proc.stdout
    assert "temporary server" not in proc.stderr, proc.stderr[-3000:]
