"""`upkeep doctor`'s cluster-limit check against a Prefect API that answers /health but not the limit's read
as Prefect does (adv48): a 5xx, a 401, a redirect, JSON that is no limit, no JSON at all, a connection
dropped. The commands refuse such an API ("erred": upkeep/updates.py `cluster_limit_grants`); the doctor
said "the Prefect limit allows None clusters at once" for a 200 that is no limit, and for a 5xx raised out
of the check, reported as "prefect api: could not check: HTTPStatusError: ..." with the full URL. And a
disabled limit at 0 (which Prefect enforces on nothing, and the commands let through) was failed as "no
update starts".

Real HTTP listener on 127.0.0.1, the doctor's own client (`prefect_api_client`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from upkeep.doctor import Check, _cluster_limit
from upkeep.prefect_server import prefect_api_client

NAME = "clusters"


def _limit(**fields: object) -> bytes:
    """A limit as Prefect 3 answers it, with `fields` changed (an Ellipsis drops the field)."""
    found = {
        "id": "00000000-0000-0000-0000-000000000001",
        "name": NAME,
        "limit": 2,
        "active": True,
        "active_slots": 0,
        "slot_decay_per_second": 0.0,
    } | fields
    return json.dumps({key: value for key, value in found.items() if value is not ...}).encode()


Answer = tuple[int, bytes, dict[str, str]]
ANSWERS: dict[str, Answer] = {
    "500": (500, b'{"exception_message": "Internal Server Error"}', {}),
    "503-html": (503, b"<html>upstream down</html>", {"Content-Type": "text/html"}),
    "401": (401, b'{"detail": "Unauthorized"}', {}),
    "429": (429, b'{"detail": "slow down"}', {"Retry-After": "1"}),
    "302": (302, b"", {"Location": "http://127.0.0.1:9/elsewhere"}),
    "detail-200": (200, b'{"detail": "Not Found"}', {}),
    "html-200": (200, b"<html>a login page</html>", {"Content-Type": "text/html"}),
    "list-200": (200, b"[]", {}),
    "null-200": (200, b"null", {}),
    "limit-string": (200, _limit(limit="two"), {}),
    "limit-float": (200, _limit(limit=2.5), {}),
    "limit-missing": (200, _limit(limit=...), {}),
}


class _Api(BaseHTTPRequestHandler):
    answer: Callable[[], Answer] = staticmethod(lambda: (200, _limit(), {}))

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        import prefect

        path = self.path.split("?")[0]
        prefects = {"/api/health": b"true", "/api/admin/version": json.dumps(prefect.__version__).encode()}
        status, body, headers = (200, prefects[path], {}) if path in prefects else type(self).answer()
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # the doctor's filters (workers, deployments)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()


@pytest.fixture
def api() -> Iterator[tuple[type[_Api], str]]:
    handler = type("Api", (_Api,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def _check(url: str) -> Check:
    with prefect_api_client(url) as http:
        return _cluster_limit(http, NAME, within=5)


@pytest.mark.parametrize("kind", sorted(ANSWERS))
def test_a_limit_read_the_api_answers_with_no_limit_fails_the_check_in_one_line(
    api: tuple[type[_Api], str], kind: str
) -> None:
    handler, url = api
    status, body, headers = ANSWERS[kind]
    handler.answer = staticmethod(lambda: (status, body, dict(headers)))

    check = _check(url)  # raised before: the 5xx, 401, 429, 302 and non-JSON answers

    assert check.status == "fail", check
    assert check.name == "cluster limit", check
    assert check.detail.startswith(f"UPKEEP_CLUSTER_LIMIT '{NAME}': the Prefect API ({url}) answered"), check
    assert "None" not in check.detail and "clusters at once" not in check.detail, check.detail
    if status != 200:
        assert f"HTTP {status}" in check.detail, check.detail
    else:
        assert "is not a limit" in check.detail, check.detail
    assert "`upkeep update|resume` refuse" in check.detail, check.detail
    assert "\n" not in check.detail and check.detail.isprintable(), check.detail


def test_a_disabled_limit_at_zero_is_no_brake_as_the_commands_read_it(api: tuple[type[_Api], str]) -> None:
    """flows/product_update.py `limit_state`: a disabled limit is enforced on nothing, at 0 too: the
    commands and the dispatcher start updates; the doctor said 'no update starts'."""
    handler, url = api
    handler.answer = staticmethod(lambda: (200, _limit(limit=0, active=False), {}))

    check = _check(url)

    assert check.status == "warn", check
    assert "is disabled: Prefect grants every ask" in check.detail, check.detail


def test_the_doctor_reads_a_limit_as_prefects_client_does(api: tuple[type[_Api], str]) -> None:
    """`"limit": "3"` (a proxy's rewrite) reads as 3 in Prefect's model, which the commands use: the
    doctor agrees with them rather than failing what they let through."""
    handler, url = api
    handler.answer = staticmethod(lambda: (200, _limit(limit="3", active_slots=1), {}))

    check = _check(url)

    assert check.status == "ok", check
    assert check.detail == f"UPKEEP_CLUSTER_LIMIT '{NAME}': 3 clusters at once (1 in use now)", check


def test_a_limit_without_active_is_an_active_one(api: tuple[type[_Api], str]) -> None:
    """Prefect's model defaults `active` to true: as the commands read it."""
    handler, url = api
    handler.answer = staticmethod(lambda: (200, _limit(active=...), {}))

    check = _check(url)

    assert check.status == "ok", check
    assert check.detail == f"UPKEEP_CLUSTER_LIMIT '{NAME}': 2 clusters at once (0 in use now)", check


def test_an_api_that_drops_the_limit_read_fails_the_check_naming_the_api() -> None:
    """/health answered, then the server gone: a connection refused on the limit's read."""
    import socket

    with socket.socket() as spare:  # a port nothing listens on
        spare.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{spare.getsockname()[1]}/api"
    check = _check(url)

    assert check.status == "fail" and check.name == "cluster limit", check
    said = f"UPKEEP_CLUSTER_LIMIT '{NAME}': the Prefect API ({url}) did not answer the limit's read"
    assert check.detail.startswith(said), check


@pytest.mark.parametrize("kind", ["500", "detail-200", "html-200"])
def test_an_api_that_answers_health_and_errs_on_the_rest_fails_each_read_and_still_checks_the_limit(
    api: tuple[type[_Api], str], tmp_path: Path, kind: str
) -> None:
    """`upkeep doctor` against it: the first read that erred (the work pool's) raised out of the whole
    Prefect group as "prefect api: could not check: HTTPStatusError: ... for url ..." (after "prefect api:
    ok"), and the cluster limit was never looked at; a 200 that is no work pool was "ok (None, status
    None)"."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from upkeep.doctor import Findings, check_prefect
    from upkeep.settings import load_settings

    handler, url = api
    status, body, headers = ANSWERS[kind]
    handler.answer = staticmethod(lambda: (status, body, dict(headers)))
    found = Findings(settings=load_settings(home=tmp_path, cluster_limit=NAME))
    with temporary_settings({PREFECT_API_URL: url}):
        checks = {check.name: check for check in check_prefect(found)}

    assert checks["prefect api"].status == "ok", checks
    for name in ("work pool", "deployments", "cluster limit"):
        assert checks[name].status == "fail", checks[name]
        assert url in checks[name].detail and "None" not in checks[name].detail, checks[name]
        assert "\n" not in checks[name].detail and checks[name].detail.isprintable(), checks[name]


def test_a_proxys_404_is_not_called_a_missing_limit(api: tuple[type[_Api], str]) -> None:
    handler, url = api
    handler.answer = staticmethod(lambda: (404, b"<html>404 Not Found</html>", {"Content-Type": "text/html"}))

    check = _check(url)

    assert "no Prefect global concurrency limit has that name" not in check.detail, check.detail
    assert check.status == "fail" and "404" in check.detail, check
    state, line = _limit_state_at(url)  # the commands and the dispatcher read it alike
    # a brake all the same: no run gets a slot through that route (the tick holds, adv62)
    assert state == "brake" and "no Prefect global concurrency limit has that name" not in line, line
    assert "404" in line and "proxy" in line, line


def test_prefects_own_404_is_a_missing_limit(api: tuple[type[_Api], str]) -> None:
    """The other side of the rule (decided on adv48's question, as h-prefread did for the work pool): a
    404 with Prefect's JSON `detail` is the limit missing, for the doctor and the commands alike."""
    handler, url = api
    body = b'{"detail": "Concurrency Limit not found"}'
    handler.answer = staticmethod(lambda: (404, body, {"Content-Type": "application/json"}))

    assert "no Prefect global concurrency limit has that name" in _check(url).detail
    state, line = _limit_state_at(url)
    assert state == "brake" and "no Prefect global concurrency limit has that name" in line, line


def _limit_state_at(url: str) -> tuple[str, str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.product_update import limit_state

    with temporary_settings({PREFECT_API_URL: url}):
        return limit_state(NAME, within=10)


@pytest.mark.parametrize("name", ["..", "."])
def test_a_limit_named_by_dots_is_read_as_the_limit_it_is(prefect_harness: None, name: str) -> None:
    """adv62: Prefect allows a limit named '..' or '.' (it bans only / % & > <). Quoted with `safe=''` the
    name stayed a dot segment, which the client's URL resolves away: '..' read GET /api/v2/, Prefect's own
    route miss ({"detail": "Not Found"}), taken as the limit missing, so the dispatcher held the whole
    fleet on a working limit and the doctor said `prefect gcl create ..` (a 409: it exists); '.' read a
    405 and every command refused."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.settings import PREFECT_API_URL

    url = str(PREFECT_API_URL.value())
    with get_client(sync_client=True) as client:
        made = client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    try:
        from prefect.settings import temporary_settings

        from flows.product_update import limit_state

        with temporary_settings({PREFECT_API_URL: url}):
            state, line = limit_state(name, within=30)
        assert (state, line) == ("grants", ""), line
        with prefect_api_client(url) as http:
            check = _cluster_limit(http, name, within=30)
        assert check.status == "ok", check
        assert check.detail == f"UPKEEP_CLUSTER_LIMIT '{name}': 2 clusters at once (0 in use now)", check
    finally:
        with get_client(sync_client=True) as client:
            client._client.delete(f"/v2/concurrency_limits/{made}")


def test_prefects_route_miss_is_no_missing_limit(api: tuple[type[_Api], str]) -> None:
    """adv62: Prefect's own API answers a path it has no route for (a server without the v2 limits, a
    path router's rewrite) with {"detail": "Not Found"}: JSON with `detail`, read as the limit missing
    ("create it"). Its missing limit says "Concurrency Limit not found"; a route miss says nothing of
    the limit."""
    handler, url = api
    handler.answer = staticmethod(
        lambda: (404, b'{"detail": "Not Found"}', {"Content-Type": "application/json"})
    )

    assert "no Prefect global concurrency limit has that name" not in _check(url).detail
    state, line = _limit_state_at(url)
    # a brake all the same: no run gets a slot through that route (the tick holds, adv62)
    assert state == "brake" and "no Prefect global concurrency limit has that name" not in line, line


@pytest.mark.parametrize(
    "body",
    [b'{"detail": null}', b'{"detail": ""}', b'{"detail": 404}', b'["detail"]', b'"detail"', b""],
    ids=["detail-null", "detail-empty", "detail-number", "list", "string", "empty-json"],
)
def test_a_404_whose_json_is_no_detail_of_prefects_is_no_missing_limit(
    api: tuple[type[_Api], str], body: bytes
) -> None:
    """adv62: 404s with a JSON content type that are not Prefect's `{"detail": "..."}` (a null or empty
    detail was taken for Prefect's 'not found' before: `"detail" in answer`): the commands and the doctor
    refuse them as an API that erred, never 'create it'."""
    handler, url = api
    handler.answer = staticmethod(lambda: (404, body, {"Content-Type": "application/json"}))

    check = _check(url)
    assert check.status == "fail" and "no Prefect global concurrency limit has that name" not in check.detail
    state, line = _limit_state_at(url)
    # a brake all the same: no run gets a slot through that route (the tick holds, adv62)
    assert state == "brake" and "no Prefect global concurrency limit has that name" not in line, line
