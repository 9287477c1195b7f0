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
