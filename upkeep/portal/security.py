"""The portal's defences that do not depend on who is signed in: security headers on every response,
strict form parsing, CSRF token checks, and the per-client rate limit of sign-in requests."""

from __future__ import annotations

import hmac
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_FORM_BYTES = 16 * 1024
MAX_FIELDS = 16

HEADERS = {
    # No script at all; styles and images only from the portal itself; forms post only to it.
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    # A sign-in link in the address bar never travels to another site; same-origin (not no-referrer)
    # so that browsers still send a real Origin with our own forms (no-referrer makes it "null").
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """ASGI middleware: HEADERS on every HTTP response, errors and 404s included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class BadForm(ValueError):
    """A POST body the portal does not accept (400, nothing done)."""


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST: one value per field, at most MAX_FIELDS fields and
    MAX_FORM_BYTES bytes of UTF-8. Anything else is BadForm."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadForm("expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadForm("the form is too large")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise BadForm("the form could not be read") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise BadForm(f"the field {key[:40]!r} is given twice")
        if "\x00" in value or "\x00" in key:
            raise BadForm("the form holds a NUL character")
        form[key] = value
    return form


def same_token(given: Any, expected: str | None) -> bool:
    """Constant-time comparison of a form's CSRF token with the expected one; False if either is missing."""
    return bool(isinstance(given, str) and given and expected) and hmac.compare_digest(
        given.encode(), str(expected).encode()
    )


def foreign_origin(request: Request, base_url: str) -> bool:
    """A POST whose Origin header names another site than the portal (browsers send it on POST)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    own = {f"{request.url.scheme}://{request.url.netloc}", "/".join(base_url.split("/")[:3])}
    return origin not in own


class ClientLimiter:
    """At most `limit` events per client in any `window` (sliding), in this process's memory."""

    def __init__(self, limit: int, window: timedelta, now: Callable[[], datetime]) -> None:
        self.limit, self.window, self.now = limit, window, now
        self.events: dict[str, deque[datetime]] = defaultdict(deque)
        self.lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = self.now()
        with self.lock:
            events = self.events[client]
            while events and events[0] <= now - self.window:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            if len(self.events) > 100_000:  # forget idle clients rather than grow without bound
                for key in [k for k, v in self.events.items() if not v]:
                    del self.events[key]
            return True
