"""The Prefect server's state as Upkeep reads it: whether PREFECT_API_URL answers as Prefect's API, the
work pool, Upkeep's deployments (by prefect.yaml's names and Upkeep's entrypoints), and the variable
`upkeep_schedules_active` as `prefect deploy` would read it.

Read over plain HTTP (`prefect_api_client`), not Prefect's client: each question is bounded
(REQUEST_TIMEOUT per read, ANSWER_DEADLINE for /health), and an answer that is not Prefect's (a
proxy's page, an error status, JSON of another shape) is an exception of `answer_errors()`, which
`answer_problem` says in one line. `upkeep doctor` (upkeep/doctor.py) reports what it reads;
`upkeep deploy` and `upkeep live on|off` (upkeep/deploy.py) act on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows import prefect_api
from flows.prefect_api import shown
from upkeep.settings import printable

POOL = "upkeep-process"  # prefect.yaml's work pool
PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"  # the checkout's: Upkeep's deployments
REQUEST_TIMEOUT = 5.0  # seconds per read of the API (httpx's timeout)
ANSWER_DEADLINE = 2 * REQUEST_TIMEOUT  # seconds for a whole answer: REQUEST_TIMEOUT is per read


def prefect_api_client(api: str) -> Any:
    """An HTTP client on the Prefect API at `api`, with the credentials Prefect's own client would send."""
    import httpx
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    headers = {}
    if PREFECT_API_KEY.value():
        headers["Authorization"] = f"Bearer {PREFECT_API_KEY.value()}"
    elif PREFECT_API_AUTH_STRING.value():
        import base64

        token = base64.b64encode(PREFECT_API_AUTH_STRING.value().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    return httpx.Client(base_url=api.rstrip("/") + "/", headers=headers, timeout=REQUEST_TIMEOUT)


def without_credentials(text: str, api: str = "") -> str:
    """`text` with the credentials Upkeep's and Prefect's clients send masked as ***: PREFECT_API_KEY,
    PREFECT_API_AUTH_STRING (its password, its Basic token), and of the API's URL `api` the values of its
    query and its userinfo's password as a server receives them: percent-decoded, and in the Basic token
    httpx makes of the userinfo (adv61: a proxy refusing a request quoted the credential it was sent, and
    Prefect put its answer in its error; flows/prefect_api `scrubbed` masks the URL's own spelling).
    Pieces under 3 characters are left (they would mask ordinary text)."""
    import base64
    from urllib.parse import parse_qsl, unquote

    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    pieces: list[str] = []
    key = PREFECT_API_KEY.value()
    if key:
        pieces.append(str(key))
    auth = PREFECT_API_AUTH_STRING.value()
    if auth:
        auth = str(auth)
        pieces += [auth, base64.b64encode(auth.encode()).decode(), auth.partition(":")[2]]
    after = api.partition("//")[2]
    userinfo = after.rpartition("@")[0]
    if userinfo:
        user, _, password = userinfo.partition(":")
        decoded = f"{unquote(user)}:{unquote(password)}"
        pieces += [unquote(password), base64.b64encode(decoded.encode()).decode()]
    query = after.rpartition("@")[2].partition("?")[2].partition("#")[0]
    pieces += [value for _, value in parse_qsl(query, keep_blank_values=True)]
    pieces += [q.partition("=")[2] for q in query.split("&")]  # as spelled
    for piece in sorted({p for p in pieces if len(p) >= 3}, key=len, reverse=True):
        text = text.replace(piece, "***")
    return text


def prefect_api_problem(http: Any) -> str | None:
    """Why the Prefect API behind `http` cannot be used (one line), or None: it answers /health."""
    import httpx

    try:
        health = prefect_api.within(ANSWER_DEADLINE, lambda: http.get("health"))
    except httpx.HTTPError as exc:
        return one_line(str(exc) or type(exc).__name__)
    except prefect_api.Deadline:
        return f"no answer within {ANSWER_DEADLINE:g} s on /health"
    if health.status_code != 200:
        return f"HTTP {health.status_code} on /health"
    if json_answer(health) is None:  # the UI's address (no /api) answers every path with its page
        kind = content_kind(health)
        return f"/health answers {kind}, not the Prefect API's JSON (is that the API's address, .../api?)"
    return None


def json_answer(response: Any) -> tuple[Any] | None:
    """The response's JSON value (in a 1-tuple: it may be null), or None when the body is not JSON."""
    try:
        return (response.json(),)
    except ValueError:
        return None


def content_kind(response: Any) -> str:
    return one_line(response.headers.get("content-type", "").split(";")[0] or "a body of no type", 60)


def server_version(http: Any) -> tuple[str, str | None]:
    """The server's Prefect version, or why it was not read (one line)."""
    import httpx

    try:
        version = http.get("admin/version")
    except httpx.HTTPError as exc:
        return "", one_line(str(exc) or type(exc).__name__)
    if version.status_code != 200:
        return "", f"HTTP {version.status_code} on /admin/version"
    answer = json_answer(version)
    if answer is None:
        return "", f"/admin/version answers {content_kind(version)}, not the Prefect API's JSON"
    return str(answer[0]), None


def unreachable_prefect_api() -> str | None:
    """With PREFECT_API_URL set: why that server cannot be used, naming it (one line), or None. Unset:
    None (Prefect starts a temporary server)."""
    import os

    import httpx

    given = os.environ.get("PREFECT_API_URL", "")
    try:  # before Prefect is imported: its settings refuse such a URL with a page of pydantic's
        _port = urlsplit(given).port  # the port too: "http://host:99999"
        if given:
            httpx.URL(given)  # a control character: InvalidURL, which is no HTTPError
    except (ValueError, httpx.InvalidURL) as exc:
        bare = shown(given)  # no userinfo, no query
        return f"PREFECT_API_URL {one_line(printable(bare), 200)}: not a URL ({one_line(str(exc))})"
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return None
    with prefect_api_client(api) as http:
        problem = prefect_api_problem(http)
    return f"PREFECT_API_URL {shown(api)}: {problem}" if problem else None


def answer_problem(exc: Exception) -> str:
    """What went wrong with a read of the Prefect API, on one line: 'answered /api/x with HTTP 500
    Internal Server Error', 'did not answer /api/x (ConnectError: ...)' or NotPrefects' own words. For the
    exceptions of `answer_errors()` (upkeep/doctor.py `_answered` fails a check with it, upkeep/deploy.py
    refuses with it)."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f"answered {exc.request.url.path} with {http_status(exc.response)}"
    if isinstance(exc, httpx.HTTPError):
        what = one_line(printable(str(exc) or type(exc).__name__), 200)
        try:
            path = exc.request.url.path
        except RuntimeError:  # an error raised before a request was made
            return f"did not answer ({what})"
        return f"did not answer {path} ({what})"
    return str(exc)


def http_status(reply: Any) -> str:
    """'HTTP 500 Internal Server Error': an error answer of the Prefect API (or a proxy), on one line."""
    return f"HTTP {reply.status_code} {one_line(printable(reply.reason_phrase), 60)}".rstrip()


class NotPrefects(ValueError):
    """An answer of the Prefect API that is not what Prefect answers there."""


def answer_errors() -> tuple[type[Exception], ...]:
    import httpx

    return (httpx.HTTPError, NotPrefects)


def prefect_json(reply: Any, kind: type, what: str, *keys: str) -> Any:
    """`reply`'s JSON if it is a `kind` (a list: of objects) with `keys`, else NotPrefects naming its path."""
    reply.raise_for_status()
    answer = json_answer(reply)
    found = answer[0] if answer is not None else None
    items = found if isinstance(found, list) else [found]
    if not isinstance(found, kind) or not all(isinstance(i, dict) and set(keys) <= set(i) for i in items):
        seen = "no JSON" if answer is None else f"JSON that is no {what}"
        raise NotPrefects(f"answered {reply.request.url.path} with {seen} ({content_kind(reply)})")
    return found


def upkeep_deployments(http: Any) -> dict[str, dict[str, Any]]:
    """Upkeep's deployments on the server, by name: those prefect.yaml names (`expected_deployments`)
    whose entrypoint is Upkeep's (`upkeeps`), as the API gives them (id, schedules, updated, ...)."""
    names = expected_deployments()
    found = deployments_filtered(http, {"deployments": {"name": {"any_": names}}}, "id", "schedules")
    return {d["name"]: d for d in found if d["name"] in names and upkeeps(d)}


PAGE = 200  # deployments per read: the Prefect API's largest page (PREFECT_API_DEFAULT_LIMIT)


def deployments_filtered(http: Any, query: dict[str, Any], *keys: str) -> list[dict[str, Any]]:
    """Every deployment `deployments/filter` matches with `query`, page by page (adv61: a shared server
    where 200 other flows have a deployment named like one of Upkeep's answered them alone on the first
    page), each with `name` and `keys`. An API that answers a full page again whatever the offset (a
    proxy's cache) is NotPrefects, not read for ever."""
    found: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        reply = http.post("deployments/filter", json={**query, "limit": PAGE, "offset": len(found)})
        page: list[dict[str, Any]] = prefect_json(reply, list, "list of deployments", "name", *keys)
        ids = {str(d.get("id") or d["name"]) for d in page}
        if len(page) == PAGE and ids <= seen:
            raise NotPrefects(
                f"answered {reply.request.url.path} with the same {PAGE} deployments at offset {len(found)}: "
                "its paging is not Prefect's (a cache in front of the API?)"
            )
        seen |= ids
        found += page
        if len(page) < PAGE:
            return found


def work_pool(http: Any) -> dict[str, Any] | None:
    """Upkeep's work pool (POOL) as the API answers it; None when Prefect says there is none. A 404 that
    is not Prefect's (flows/prefect_api.py `prefects_not_found`) is NotPrefects: read as "no pool",
    `upkeep deploy` created one behind the proxy and the doctor told the operator to."""
    reply = http.get(f"work_pools/{POOL}")
    if reply.status_code == 404:
        if prefect_api.prefects_not_found(reply):
            return None
        seen = "no JSON" if json_answer(reply) is None else "JSON without `detail`"
        raise NotPrefects(
            f"answered {reply.request.url.path} with HTTP 404 and {seen} ({content_kind(reply)}), not "
            'Prefect\'s {"detail": ...}: a proxy in front of the API?'
        )
    found: dict[str, Any] = prefect_json(reply, dict, "work pool", "name", "type")
    return found


ENTRYPOINTS = "upkeep/entrypoints.py:"  # prefect.yaml's entrypoints: a deployment of Upkeep's flows


def upkeeps(deployment: dict[str, Any]) -> bool:
    """Whether a deployment (as the API gives it) may be Upkeep's: not one whose entrypoint is another
    code's (names are unique per flow, not per server: another team may have a `dispatch`; adv54). One
    without an entrypoint (made through the API) is judged by its name alone."""
    entrypoint = str(deployment.get("entrypoint") or "")
    return not entrypoint or entrypoint.startswith(ENTRYPOINTS)


def dispatch_live(dispatch: dict[str, Any]) -> bool:
    """Whether the dispatch deployment (as the API gives it) runs by itself: a schedule active and the
    deployment not paused (the UI's toggle)."""
    return any(s.get("active") for s in dispatch.get("schedules", [])) and not dispatch.get("paused")


# prefect.yaml's schedules read `active` from this Prefect variable when `prefect deploy` runs: the
# server, not the deploying shell, remembers whether Upkeep is live, so a redeploy keeps it as it is.
SCHEDULES_VARIABLE = "upkeep_schedules_active"


@dataclass(frozen=True)
class ScheduleIntent:
    """What `prefect deploy` makes of `upkeep_schedules_active` (measured on Prefect 3.8.8, adv47)."""

    active: bool | None  # the schedules' `active`; None: JSON null, which Prefect leaves out (see below)
    deploys: bool  # False: the deploy refuses the scheduled deployments (unset, or not a boolean)
    shown: str  # the value as the doctor quotes it
    unread: str = ""  # why the variable could not be read (then nothing else is known)
    missing: bool = False  # no such variable on the server
    exact: bool | None = None  # the value when it is JSON true or false, nothing Prefect reads loosely


def schedules_intent(http: Any) -> ScheduleIntent:
    """The server's `upkeep_schedules_active` read as `prefect deploy` reads it: the placeholder is the
    whole `active:` value, so the variable's JSON value is handed to Prefect's `DeploymentScheduleCreate`,
    whose `active` is a pydantic bool in lax mode ("no", "off", "0", 0, "TRUE" are booleans to it; 2,
    "maybe", "" are refused), except JSON null, which makes `prefect deploy` leave `active` out: a new
    schedule is then created ACTIVE and an existing one (patched by slug) kept as it is. Unset: the
    placeholder becomes "" and the deploy refuses."""
    import httpx
    from pydantic import TypeAdapter, ValidationError

    try:
        reply = http.get(f"variables/name/{SCHEDULES_VARIABLE}")
        if reply.status_code == 404:
            return ScheduleIntent(active=None, deploys=False, shown="not set", missing=True)
        reply.raise_for_status()
        answer = reply.json()
        if not isinstance(answer, dict) or "value" not in answer:  # adv54: a proxy's 200 `[]`
            unread = f"HTTP {reply.status_code} with no variable in it"
            return ScheduleIntent(active=None, deploys=False, shown="?", unread=unread)
        value = answer["value"]
    except (httpx.HTTPError, ValueError) as exc:  # a proxy refusing /variables, a reply that is not JSON
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return ScheduleIntent(
            active=None, deploys=False, shown="?", unread=f"HTTP {status}" if status else type(exc).__name__
        )
    shown = one_line(printable(json.dumps(value)), 60)  # as `prefect variable get` prints it
    if value is None:
        return ScheduleIntent(active=None, deploys=True, shown="null")
    try:
        active = TypeAdapter(bool).validate_python(value)
    except ValidationError:
        return ScheduleIntent(active=None, deploys=False, shown=shown)
    exact = value if isinstance(value, bool) else None
    return ScheduleIntent(active=active, deploys=True, shown=shown, exact=exact)


def expected_deployments() -> list[str]:
    """The deployment names of this checkout's prefect.yaml (none when run from an installed copy)."""
    import yaml

    path = PREFECT_YAML
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    return [d["name"] for d in data.get("deployments", []) if isinstance(d, dict) and "name" in d]


def one_line(text: str, limit: int = 300) -> str:
    """An answer of the Prefect API, or a message of `prefect`, squeezed onto one line of at most `limit`
    characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
