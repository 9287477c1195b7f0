"""Questions to the Prefect API that give up after a deadline.

Prefect's own client waits 60 s per request (PREFECT_API_REQUEST_TIMEOUT) and retries a timeout five
times with a backoff: an API that accepts connections and never answers held one read of the cluster
limit for 424 s, the CLI saying nothing. The CLI's pre-checks (upkeep/updates.py `prefect_answers`,
`cluster_limit_grants`; `update --check`'s cluster-limit item) ask through `answered_within`, which gives
up after UPKEEP_PREFECT_ANSWER_SECONDS for the whole answer, however the client retries or the server
trickles it.

Only with PREFECT_API_URL set: without it the first client starts Prefect's temporary server, which
must be started from the main thread (upkeep/bootstrap.py `temporary_server_dies_with_us`) and has its
own start-up timeout.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class NoAnswer(Exception):
    """The Prefect API at `where` did not answer within `seconds`."""

    def __init__(self, where: str, seconds: float) -> None:
        self.where, self.seconds = where, seconds
        super().__init__(f"the Prefect API ({where}) did not answer within {seconds:g} s")


def api_url() -> str:
    """PREFECT_API_URL, "" when unset (the temporary server)."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value() or "")


# A URL inside a message (httpx quotes the request's: `for url 'http://u:p@host/api/x?token=...'`).
_URL = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^\s'\"<>]*")


def shown(url: str) -> str:
    """`url` fit for one line an operator reads: no userinfo, no query or fragment (a proxy's password or
    a token: upkeep/doctor.py `_bare` shows it so too), control characters escaped (adv43). Masked by the
    password of PREFECT_API_URL as the environment gives it, never by asking Prefect's settings: the
    doctor shows a URL Prefect's settings refuse before Prefect is imported (importing it printed "Failed
    to initialize plugins" and pydantic's error above the one line). Not by `url`'s own: `_bare` has
    dropped its userinfo, and what looks like a password in a URL without one is its port and path."""
    import os

    return scrubbed(_bare(url), os.environ.get("PREFECT_API_URL", ""))


def scrubbed(text: str, url: str | None = None) -> str:
    """`text` (an exception's message, which may quote the URL) with every URL's userinfo, query and
    fragment dropped (adv46: httpx's message names the request's full URL, a token in its query) and
    control characters escaped. The password of `url` (PREFECT_API_URL by default) is masked wherever
    it is quoted on its own: with an unencoded '/' httpx reads it as the port ("Invalid port: 'pw'")."""
    text = masked(_URL.sub(lambda found: _bare(found.group()), text), _configured() if url is None else url)
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def masked(text: str, url: str) -> str:
    """`text` with each piece of `url`'s password (see `_password_pieces`) as ***."""
    for piece in _password_pieces(url):
        text = text.replace(piece, "***")
    return text


def _configured() -> str:
    try:
        return api_url()
    except Exception:  # Prefect's settings unreadable: nothing to mask by
        return ""


def _password_pieces(url: str) -> list[str]:
    """The pieces of `url`'s password (between the first ':' of its userinfo and its last '@'), split
    where a parser may cut it, longest first; pieces under 3 characters are left (they would mask
    ordinary text)."""
    userinfo = url.partition("//")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]
    return sorted((p for p in re.split(r"[:/?#@]", password) if len(p) >= 3), key=len, reverse=True)


def _bare(url: str) -> str:
    """`url` without userinfo, query or fragment. A password may hold an unencoded '@', '/', '?' or '#'
    (adv46: `http://user:p/ss@host/api` read as host `user`, port `p`, and was shown whole): an
    authority whose port is no number is taken to end at the last '@'."""
    head, slashes, rest = url.partition("//")
    if not slashes:  # no authority: `host:4200/api`, `user:pw@host/api`
        head, rest = "", url.rpartition("@")[2] if "@" in url.split("/", 1)[0] else url
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in netloc:
        rest = rest[len(netloc.rpartition("@")[0]) + 1 :]
    elif "@" in rest and not _plain_authority(netloc):
        rest = rest.rpartition("@")[2]
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    # An '@' left in the path: a password's '/' after digits made `user:1` an authority (Prefect's API
    # path has none); failing closed shows the host after it.
    return head + slashes + rest.rpartition("@")[2]


def _plain_authority(netloc: str) -> bool:
    """`host`, `host:port` or `[v6]:port` with a numeric port."""
    if netloc.endswith(":"):
        return False
    try:
        return urlsplit("//" + netloc).port is not None or ":" not in netloc.rpartition("]")[2]
    except ValueError:
        return False


def not_a_limit(exc: Exception) -> str:
    """What made an answer to a limit's read no limit, in a few words: the first field Prefect's model
    refused and why ('name: Field required'), 'not JSON', or the exception's one line; pydantic's whole
    message (the input echoed, a link) squeezed onto the SRE's line read as a crash (adv48). Here, not in
    flows/product_update.py: the doctor says it too, and imports no flow."""
    from json import JSONDecodeError

    from pydantic import ValidationError

    def line(text: str, limit: int) -> str:
        text = " ".join(text.split())
        return text if len(text) <= limit else text[: limit - 1] + "…"

    if isinstance(exc, ValidationError) and exc.errors():
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]) or "the answer"
        return line(f"{where}: {problem['msg']}", 120)
    if isinstance(exc, JSONDecodeError):
        return "not JSON"
    return f"{type(exc).__name__}: {line(str(exc), 200)}"


ROUTE_MISS = "Not Found"  # Starlette's detail for a path no route of the API matches


def path_name(name: str) -> str:
    """`name` as one segment of an API path: percent-quoted whole ('#', '?', ' ' and '/' too), dots
    included. Prefect allows a limit or pool named '.' or '..' (it bans only / % & > <); left as they are,
    the client's URL resolves them as dot segments ('..' read GET /api/v2/, Prefect's route miss) (adv62).
    The server decodes %2E back to the name."""
    from urllib.parse import quote

    return quote(name, safe="").replace(".", "%2E")


def prefects_not_found(response: Any) -> bool:
    """Whether a 404 is Prefect's own "not found": its API answers a JSON object with `detail` ('Work pool
    "x" not found.', 'Concurrency Limit not found'). A reverse proxy's or a path router's 404 in front of
    the API (an HTML page, plain text, no body) is not: what was asked for may well exist behind it."""
    if getattr(response, "status_code", None) != 404:
        return False
    try:
        answer = response.json()
    except ValueError:
        return False
    # Prefect's route miss (no route for the path: a server without that endpoint, a rewritten path) is
    # Starlette's {"detail": "Not Found"}: JSON with detail too, but it says nothing of the object (adv62).
    detail = answer.get("detail") if isinstance(answer, dict) else None
    return isinstance(detail, str) and bool(detail.strip()) and detail != ROUTE_MISS


def answered_within(seconds: float | None, call: Callable[[], T]) -> T:
    """`call()`'s result or exception; NoAnswer when it has not returned after `seconds` (None, or no
    PREFECT_API_URL: waited for as before). The call is left to a daemon thread: its client gives up
    soon after on its own (`quick_client`), and a process that refuses exits without waiting for it."""
    where = api_url()
    if seconds is None or not where:
        return call()
    try:
        return within(seconds, call)
    except Deadline:
        raise NoAnswer(shown(where), seconds) from None


class Deadline(Exception):
    """`within`'s call had not returned when its time was up."""


def within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`'s result or exception, or Deadline after `seconds`: httpx's timeout is per read, so an
    answer that trickles in (a byte a second) is waited for to its end without this. The call is left
    to a daemon thread (the doctor's and the CLI's reads: each client's own timeout ends it soon after),
    run in the caller's context variables - Prefect's settings context among them: a thread starts
    with none, and asked the API of the process's root settings, not the one `temporary_settings` set."""
    outcome: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            outcome.append((True, context.run(call)))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    worker = threading.Thread(target=run, name="prefect-api-answer", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise Deadline
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


@contextmanager
def quick_client(seconds: float | None) -> Iterator[Any]:
    """Prefect's sync client; with `seconds`, each request waits a little longer than that and is not retried
    (in this thread only: the settings context is a context variable), so the thread `answered_within`
    leaves behind ends soon after it gave up."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    if seconds is None or not api_url():
        with get_client(sync_client=True) as client:
            yield client
        return
    # Longer than the deadline: `answered_within` decides when the API did not answer (one message,
    # not a race with httpx's ReadTimeout); this only ends the thread left behind.
    with (
        temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}),
        get_client(sync_client=True, httpx_settings={"timeout": seconds + 5}) as client,
    ):
        yield client
