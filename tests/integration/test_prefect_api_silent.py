"""A Prefect API that accepts connections and never answers (a hung server, a proxy holding the line):
Prefect's client waits 60 s per request and retries, and one read of the fleet's cluster limit took
424 s, the CLI saying nothing. The CLI's pre-checks (upkeep/updates.py `prefect_answers`,
`cluster_limit_grants`; `update --check`'s cluster-limit item) give up after
UPKEEP_PREFECT_ANSWER_SECONDS: one line naming the API and the wait, nothing started or changed.

Real child processes (`python -m upkeep`, forked) against a real TCP listener on 127.0.0.1; the child's
timeout is only a guard against a hang (no assert reads a clock)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.test_cli_inventory import GOOD
from tests.support import forkserver
from tests.support.cli import database, home_env, no_traceback, upkeep_here

WAIT = "2"  # UPKEEP_PREFECT_ANSWER_SECONDS in these tests (10 s by default)
GUARD = 90  # seconds: Prefect's own client took 424 s; no assert depends on this


@contextmanager
def _prefect_api(
    answers_health: bool, *, others: bytes | None = None, silent_on: bytes = b"\0"
) -> Iterator[str]:
    """A listener that accepts every connection and answers nothing; with `answers_health`, it answers
    /api/health and /api/admin/version as Prefect's API does (so `prefect_answers` passes) and nothing
    else; with `others` too, every other path that status line and {"detail": "Not Found"}, but for the
    paths starting `silent_on`, never answered (adv43).
    Yields its /api URL."""
    import prefect

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while not stop.is_set():
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                while b"\r\n\r\n" in data:
                    head, _, data = data.partition(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                    body = (
                        {
                            b"/api/health": b"true",
                            b"/api/admin/version": json.dumps(prefect.__version__).encode(),
                        }.get(path.split(b"?")[0])
                        if answers_health
                        else None
                    )
                    status = b"200 OK"
                    if body is None and others is not None and not path.startswith(silent_on):
                        status, body = others, b'{"detail": "Not Found"}'
                    if body is None:
                        stop.wait()  # holds the connection open, never answering
                        return
                    conn.sendall(
                        b"HTTP/1.1 "
                        + status
                        + b"\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    finally:
        stop.set()
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture
def silent_api() -> Iterator[str]:
    with _prefect_api(answers_health=False) as url:
        yield url


@pytest.fixture
def silent_on_the_limit() -> Iterator[str]:
    with _prefect_api(answers_health=True) as url:
        yield url


@pytest.fixture
def home(tmp_path: Path) -> Path:
    inventory = tmp_path / "good.yaml"
    inventory.write_text(GOOD)
    home = tmp_path / "home"
    done = upkeep_here(home, "inventory", "import", str(inventory))
    assert done.returncode == 0, done.stderr
    return home


def _upkeep(home: Path, api: str, *args: str, **extra: str) -> tuple[int, str, str]:
    env = home_env(home, PREFECT_API_URL=api, UPKEEP_PREFECT_ANSWER_SECONDS=WAIT, **extra)
    done = forkserver.run(args, env=env, cwd=home.parent, timeout=GUARD)
    no_traceback(done)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["update", "acme-c1", "--to", "9.9.0"],
        [
            "request",
            "acme-c1",
            "--to",
            "9.9.0",
            "--source",
            "customer",
            "--now",
            "--override-window",
            "--reason",
            "now",
        ],
    ],
    ids=["update", "request-now"],
)
@pytest.mark.parametrize("limit", ["", "clusters"], ids=["no-limit", "limit"])
def test_a_prefect_api_that_never_answers_is_refused_in_one_line(
    silent_api: str, home: Path, args: list[str], limit: str
) -> None:
    before = database(home)
    code, out, err = _upkeep(home, silent_api, *args, UPKEEP_CLUSTER_LIMIT=limit)

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert f"the Prefect API ({silent_api}) did not answer within {WAIT} s" in err, err
    assert "nothing was started or changed" in err and "waits" not in err, err
    assert database(home) == before  # no run written


def test_a_cluster_limit_read_that_never_answers_is_refused_in_one_line(
    silent_on_the_limit: str, home: Path
) -> None:
    """/health and /admin/version answer (`prefect_answers` passes); the limit's read never does."""
    before = database(home)
    code, out, err = _upkeep(
        home, silent_on_the_limit, "update", "acme-c1", "--to", "9.9.0", UPKEEP_CLUSTER_LIMIT="clusters"
    )

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert "UPKEEP_CLUSTER_LIMIT 'clusters'" in err, err
    assert f"the Prefect API ({silent_on_the_limit}) did not answer within {WAIT} s" in err, err
    assert "nothing was started or changed" in err, err
    assert database(home) == before


def test_update_check_fails_the_cluster_limit_item_when_the_api_never_answers(
    silent_api: str, home: Path
) -> None:
    before = database(home)
    code, out, err = _upkeep(
        home, silent_api, "update", "acme-c1", "--to", "9.9.0", "--check", "--json", UPKEEP_CLUSTER_LIMIT="c"
    )

    assert code == 1, out + err
    checks = {item["what"]: item for item in json.loads(out)["checks"]}
    limit = checks["cluster-limit"]
    assert not limit["ok"], limit
    assert f"the Prefect API ({silent_api}) did not answer within {WAIT} s" in limit["detail"], limit
    assert database(home) == before


def test_the_doctors_cluster_limit_check_fails_in_bounded_time_when_its_read_never_answers(
    silent_on_the_limit: str,
) -> None:
    """`upkeep doctor`'s cluster-limit look (upkeep/doctor.py `_cluster_limit`) on an API that answered
    /health and then never answers the limit's read: a failed check naming the setting and the API, not
    an httpx ReadTimeout (which the doctor showed as "could not check: ReadTimeout")."""
    from upkeep.doctor import _cluster_limit
    from upkeep.prefect_server import prefect_api_client

    with prefect_api_client(silent_on_the_limit) as http:
        check = _cluster_limit(http, "clusters")

    assert check.status == "fail", check
    assert check.detail.startswith("UPKEEP_CLUSTER_LIMIT 'clusters': "), check.detail
    assert f"the Prefect API ({silent_on_the_limit}) did not answer within" in check.detail, check.detail


def test_a_resume_with_a_prefect_api_that_never_answers_is_refused_and_changes_nothing(
    silent_api: str, tmp_path: Path
) -> None:
    """A planned run resumed by hand (`--override-window`): refused in one line as `update` is, the run as
    it was (no override recorded or audited, no claim left), the database byte for byte unchanged."""
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0
    planned = upkeep_here(home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer")
    assert planned.returncode == 0, planned.stderr
    before = database(home)

    code, out, err = _upkeep(home, silent_api, "resume", "1", "--override-window", "--reason", "now")

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert f"the Prefect API ({silent_api}) did not answer within {WAIT} s" in err, err
    assert database(home) == before


@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
def test_ctrl_c_while_a_scheduled_request_reads_the_brake_still_says_the_update_is_scheduled(
    tmp_path: Path, as_json: bool
) -> None:
    """adv43: `upkeep request` (no --now) writes and commits the run and its customer's notice first, then
    reads the cluster limit, waiting up to UPKEEP_PREFECT_ANSWER_SECONDS (300 at most) with nothing on
    the screen. An SRE's Ctrl-C in that wait answered "error: aborted", exit 130: the update was planned
    and its notice queued all the same, and the next `upkeep request` said "already has an active
    update". The interrupt ends only the read: the answer says what was done, the brake not checked."""
    import signal

    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0
    listener = socket.create_server(("127.0.0.1", 0))
    asked = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            conn, _ = listener.accept()  # the brake's read: never answered
        except OSError:
            return
        held.append(conn)
        asked.set()

    threading.Thread(target=accept, daemon=True).start()
    api = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    env = home_env(
        home, PREFECT_API_URL=api, UPKEEP_PREFECT_ANSWER_SECONDS="300", UPKEEP_CLUSTER_LIMIT="clusters"
    )
    args = ["request", "acme-c1", "--to", "9.9.0", "--source", "customer", *(["--json"] if as_json else [])]
    child = forkserver.popen(args, env=env, cwd=tmp_path)
    try:
        assert asked.wait(GUARD), "the request never read the cluster limit"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=GUARD)
    finally:
        if child.poll() is None:
            child.kill()
        listener.close()
        for conn in held:
            conn.close()

    assert "Traceback" not in err, err
    with_run = upkeep_here(home, "runs", "--json")
    assert [run["state"] for run in json.loads(with_run.stdout)] == ["planned"], with_run.stdout
    assert child.returncode == 0, (child.returncode, out, err)
    if as_json:
        answer = json.loads(out)
        assert answer["state"] == "planned" and answer["cluster_limit"]["held"] is None, answer
    else:
        assert out.startswith("update-1 scheduled "), out
    assert err.startswith("warning: whether the fleet is held could not be checked"), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture
def nothing_deployed() -> Iterator[str]:
    with _prefect_api(answers_health=True, others=b"404 Not Found") as url:
        yield url


def test_an_update_on_a_worker_with_an_api_that_hangs_on_the_deployment_read_is_refused_in_one_line(
    silent_on_the_limit: str, home: Path
) -> None:
    """adv43: `--on-worker` asks the API for the deployment and its pool's workers (upkeep/on_worker.py
    `workers_ready`) after `prefect_answers`: that read was not bounded, and an API that answered
    /health and then never answered it held `upkeep update --on-worker` for Prefect's 60 s per try and
    its retries (minutes), the CLI saying nothing: the hang UPKEEP_PREFECT_ANSWER_SECONDS was to end."""
    before = database(home)
    code, out, err = _upkeep(home, silent_on_the_limit, "update", "acme-c1", "--to", "9.9.0", "--on-worker")

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert f"the Prefect API ({silent_on_the_limit}) did not answer within {WAIT} s" in err, err
    assert "nothing was started or changed" in err, err
    assert database(home) == before


def test_a_resume_on_a_worker_with_no_deployment_changes_nothing_before_it_refuses(
    nothing_deployed: str, tmp_path: Path
) -> None:
    """adv43: `resume --override-window --on-worker` wrote the override and its audit event, then asked
    whether a worker could take the run (`workers_ready`), which refused "no deployment ...; nothing
    was started or changed": the database had changed. Every question is asked before any write."""
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0
    planned = upkeep_here(home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer")
    assert planned.returncode == 0, planned.stderr
    before = database(home)

    code, out, err = _upkeep(
        home, nothing_deployed, "resume", "1", "--override-window", "--reason", "now", "--on-worker"
    )

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert "--on-worker: no deployment" in err and "nothing was started or changed" in err, err
    assert database(home) == before


def test_the_doctors_cluster_limit_read_waits_as_long_as_the_setting_says_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adv43: the doctor's cluster-limit read gave up after its own fixed 10 s (and httpx's 5 s per read),
    whatever UPKEEP_PREFECT_ANSWER_SECONDS said, in a line not naming the setting: set to 60 for a far
    API that answers in 20 s, `upkeep update` worked while the doctor failed the limit, saying
    `upkeep update|resume` refuse; set to 2, the doctor waited 10. It waits what the commands wait."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import upkeep.doctor
    from upkeep.doctor import Findings, check_prefect
    from upkeep.settings import load_settings

    for other in ("_pool_and_workers", "_deployments"):  # their own checks: only the limit's here
        monkeypatch.setattr(upkeep.doctor, other, lambda http: iter(()))

    settings = load_settings(home=tmp_path, cluster_limit="clusters", prefect_answer_seconds=float(WAIT))
    limit_only = _prefect_api(True, others=b"404 Not Found", silent_on=b"/api/v2/concurrency_limits/")
    with limit_only as api, temporary_settings({PREFECT_API_URL: api}):
        checks = list(check_prefect(Findings(settings=settings)))
    [check] = [check for check in checks if check.name == "cluster limit"]

    assert check.status == "fail", check
    assert f"the Prefect API ({api}) did not answer within {WAIT} s" in check.detail, check
    assert "UPKEEP_PREFECT_ANSWER_SECONDS" in check.detail, check.detail


def test_a_scheduled_request_without_a_prefect_api_url_starts_no_temporary_server_for_the_brake(
    tmp_path: Path,
) -> None:
    """adv43: with UPKEEP_CLUSTER_LIMIT set and no PREFECT_API_URL, the scheduled request's brake read
    started Prefect's temporary server (10-40 s, unbounded: the deadline only holds with a URL), printed
    its "Starting/Stopping temporary server" log lines around the one-line answer, and called the fleet
    held by a limit missing from that throwaway server's database. As the doctor does (its limit check
    is skipped without PREFECT_API_URL), the brake is not read then: the update is scheduled, and one
    warning says the brake was not checked."""
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0
    env = home_env(home, UPKEEP_CLUSTER_LIMIT="clusters")
    env.pop("PREFECT_API_URL", None)

    done = forkserver.run(
        ["request", "acme-c1", "--to", "9.9.0", "--source", "customer"], env=env, cwd=tmp_path, timeout=GUARD
    )

    no_traceback(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("update-1 scheduled ") and "the fleet is held" not in done.stdout, (
        done.stdout
    )
    assert "temporary server" not in done.stderr, done.stderr
    assert done.stderr.startswith("warning: whether the fleet is held could not be checked"), done.stderr
    assert "PREFECT_API_URL" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_prefect_api_that_trickles_its_answer_is_given_up_on_for_the_whole_answer(home: Path) -> None:
    """adv43 (held): httpx's timeout is per read, so an answer that trickles in (a byte every fraction of a
    second, never ending) resets it at every byte; the deadline is for the whole answer, and the update
    is refused in one line as for an API that says nothing."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99999\r\n\r\n"
                    )
                    while not stop.wait(0.2):  # the server's pace, not the test's clock
                        conn.sendall(b" ")
                except OSError:
                    continue

    threading.Thread(target=serve, daemon=True).start()
    api = f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    before = database(home)
    try:
        code, out, err = _upkeep(home, api, "update", "acme-c1", "--to", "9.9.0")
    finally:
        stop.set()
        listener.close()

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert f"the Prefect API ({api}) did not answer within {WAIT} s" in err, err
    assert database(home) == before


def test_a_request_now_for_a_cluster_that_does_not_exist_says_so_before_asking_the_api(
    silent_api: str, home: Path
) -> None:
    """adv43: `request --now` came to ask the Prefect API before it looked at what it was asked: a typo
    in the cluster's name waited UPKEEP_PREFECT_ANSWER_SECONDS (up to 300 s; 10-40 s to start the
    temporary server without PREFECT_API_URL) and was then refused for the API, the typo unmentioned.
    As `upkeep update` does, a request that cannot be planned is refused first, with nothing asked."""
    code, out, err = _upkeep(
        home,
        silent_api,
        *("request", "acme-c9", "--to", "9.9.0", "--source", "customer", "--now"),
        *("--override-window", "--reason", "now"),
    )

    assert code == 1, out + err
    assert "acme-c9" in err and "did not answer" not in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("api_is", ["silent", "refusing"])
def test_the_api_refusal_does_not_show_the_urls_credentials(silent_api: str, home: Path, api_is: str) -> None:
    """adv43: the new refusal ("did not answer within N s"), like its sibling ("does not answer"), quoted
    PREFECT_API_URL as it is: a proxy's basic auth in its userinfo, a token in its query, went onto the
    SRE's screen and into whatever records the CLI's output. The doctor shows the URL bare (`_bare`);
    so do these refusals."""
    port = silent_api.split(":")[2].split("/")[0] if api_is == "silent" else "1"
    api = f"http://bob:hunter2@127.0.0.1:{port}/api?token=s3cret"
    code, out, err = _upkeep(home, api, "update", "acme-c1", "--to", "9.9.0")

    assert code == 1, out + err
    assert "hunter2" not in err and "s3cret" not in err, err
    assert f"the Prefect API (http://127.0.0.1:{port}/api) " in err, err
