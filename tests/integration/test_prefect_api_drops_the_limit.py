"""A Prefect API that answers /health (and /admin/version) and drops the cluster limit's read: the connection
closed without an answer (a proxy or WAF that resets that path), or bytes that are no HTTP. httpx calls
both a TransportError, which `limit_state` reads as "the API is away"; `cluster_limit_grants` let an
away API through (adv48), so `upkeep update` and `request --now` wrote the run and went on into the
flow, which asks the same limit for its slot; a silent API (adv43) and an API that answers the read
with an error (h-signals) were refused. The API had just answered /health (`prefect_answers`): refused
as they are, in one line naming the API, nothing written.

Real child processes (`python -m upkeep`, forked) against a real listener on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_prefect_api_silent import _upkeep, home  # noqa: F401
from tests.support.cli import database

DROPS = {"closed": b"", "not-http": b"SSH-2.0-OpenSSH_9.2\r\n"}


@pytest.fixture(params=sorted(DROPS))
def drops_the_limit(request: pytest.FixtureRequest) -> Iterator[str]:
    """/api/health and /api/admin/version as Prefect answers them, one request per connection; any other
    path: DROPS[kind] written and the connection closed. Yields the /api URL."""
    import prefect

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            path = data.split(b" ", 2)[1].split(b"?")[0]
            body = {b"/api/health": b"true", b"/api/admin/version": json.dumps(prefect.__version__).encode()}
            if path in body:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body[path])}\r\n\r\n".encode()
                    + body[path]
                )
            else:
                conn.sendall(DROPS[request.param])

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    finally:
        stop.set()
        listener.close()


@pytest.mark.parametrize(
    "args",
    [
        ["update", "acme-c1", "--to", "9.9.0"],
        [
            *("request", "acme-c1", "--to", "9.9.0", "--source", "customer", "--now"),
            *("--override-window", "--reason", "now"),
        ],
    ],
    ids=["update", "request-now"],
)
def test_a_limit_read_the_api_drops_is_refused_in_one_line_naming_the_api(
    drops_the_limit: str,
    home: Path,  # noqa: F811
    args: list[str],
) -> None:
    url = drops_the_limit
    before = database(home)
    code, out, err = _upkeep(
        home, url.replace("http://", "http://bob:hunter2@"), *args, UPKEEP_CLUSTER_LIMIT="clusters"
    )

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert "UPKEEP_CLUSTER_LIMIT 'clusters'" in err, err
    assert f"the Prefect API ({url})" in err, err
    assert "nothing was started or changed" in err, err
    assert "hunter2" not in err, err
    assert database(home) == before  # no run written


def test_a_resume_the_api_drops_the_limit_read_of_is_refused_and_changes_nothing(
    drops_the_limit: str, tmp_path: Path
) -> None:
    """`resume` of a planned run by hand: the same pre-check (`_needs_a_slot`), the run as it was."""
    from tests.integration.test_calendar_cli import INVENTORY
    from tests.support.cli import upkeep_here

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    fleet_home = tmp_path / "home"
    assert upkeep_here(fleet_home, "inventory", "import", str(fleet)).returncode == 0
    planned = upkeep_here(fleet_home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer")
    assert planned.returncode == 0, planned.stderr
    before = database(fleet_home)

    code, out, err = _upkeep(
        fleet_home,
        drops_the_limit,
        *("resume", "1", "--override-window", "--reason", "now"),
        UPKEEP_CLUSTER_LIMIT="clusters",
    )

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert f"UPKEEP_CLUSTER_LIMIT 'clusters': the Prefect API ({drops_the_limit}) did not answer" in err, err
    assert database(fleet_home) == before
