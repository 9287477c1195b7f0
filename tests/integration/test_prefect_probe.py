"""The doctor's and the demo's question to PREFECT_API_URL (upkeep/doctor.py) against real HTTP servers
that are not the Prefect API: each is one failed check naming what answered, never an exception."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from upkeep.doctor import Findings, check_prefect


def _server(pages: dict[str, tuple[str, bytes]]) -> type[http.server.BaseHTTPRequestHandler]:
    class Pages(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            kind, body = pages.get(self.path.rpartition("/")[2], pages["*"])
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    return Pages


HTML = ("text/html", b"<!doctype html><title>Prefect</title>")
JSON_TRUE = ("application/json", b"true")


@pytest.fixture
def serving(request: pytest.FixtureRequest) -> Iterator[str]:
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _server(request.param)) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/api"
        finally:
            server.shutdown()


@pytest.mark.parametrize(
    ("serving", "said"),
    [
        ({"*": HTML}, "/health"),  # the UI's address: a page for every path
        ({"health": JSON_TRUE, "*": HTML}, "/admin/version"),  # was "could not check: JSONDecodeError"
    ],
    indirect=["serving"],
    ids=["ui-page-everywhere", "version-not-json"],
)
def test_a_server_that_answers_200_but_not_as_the_prefect_api_fails_the_check(
    serving: str, said: str
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: serving}):
        first = next(check_prefect(Findings()))

    assert (first.name, first.status) == ("prefect api", "fail"), first
    assert first.detail.startswith(f"{serving}: ") and said in first.detail, first.detail


def test_a_server_that_trickles_its_answer_fails_the_check_in_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpx's timeout is per read: a /health answer that comes a byte a second (a proxy half dead) was
    waited for to its end (10 minutes here) by `upkeep demo` before it said anything. The check that
    `demo` makes first, in this process with the whole-answer deadline at 1 s (10 s in use): no clock in
    the assert, the trickle would take 600 s."""
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from upkeep import prefect_server

    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 600\r\n\r\n")
            for _ in range(600):
                if stop.wait(1):
                    return
                conn.sendall(b" ")

    monkeypatch.setattr(prefect_server, "ANSWER_DEADLINE", 1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        threading.Thread(
            target=lambda: [
                threading.Thread(target=trickle, args=(server.accept()[0],), daemon=True).start()
            ],
            daemon=True,
        ).start()
        api = f"http://127.0.0.1:{server.getsockname()[1]}/api"
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                problem = prefect_server.unreachable_prefect_api()
        finally:
            stop.set()
    assert problem == f"PREFECT_API_URL {api}: no answer within 1 s on /health", problem
