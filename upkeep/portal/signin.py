"""Passwordless sign-in: a signed, single-use, expiring link by email, then a server-side session.

The link carries `{user, customer, nonce}` signed with itsdangerous (HMAC-SHA1 over the portal secret,
salted for this purpose, with the issue time); the database holds only the nonce's SHA-256 with its
expiry and use. A link is refused, each with its own page, when its signature does not verify (tampered
or made with another key), it expired, it was used already, its user was removed, or it names another
customer than the user now belongs to. A session is a random cookie value whose SHA-256 keys a row.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer
from sqlmodel import Session

from inventory import portal_access
from inventory.portal_tables import PortalUser

LINK_SALT = "upkeep.portal.signin"


class LinkRefused(Exception):
    """A sign-in link that does not sign anyone in; `reason` picks the page shown."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _signer(now: Callable[[], datetime]) -> type[TimestampSigner]:
    class ClockSigner(TimestampSigner):
        """Times links by the portal's clock (injected in tests) instead of time.time()."""

        def get_timestamp(self) -> int:
            return int(now().timestamp())

    return ClockSigner


@dataclass
class LinkSigner:
    secret: bytes
    now: Callable[[], datetime]
    ttl: timedelta

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self.secret, salt=LINK_SALT, signer=_signer(self.now))

    def issue(self, user: PortalUser, *, session: Session) -> str:
        """A new link token for `user`, recorded as unused."""
        assert user.id is not None
        nonce = secrets.token_urlsafe(24)
        portal_access.issue_link(user, digest(nonce), now=self.now(), ttl=self.ttl, session=session)
        token = self._serializer().dumps({"u": user.id, "c": user.customer_id, "n": nonce})
        return str(token)

    def read(self, token: str) -> dict[str, Any]:
        """The link's payload if its signature holds and it is not past its lifetime; LinkRefused."""
        if not isinstance(token, str) or not 20 <= len(token) <= 400:
            raise LinkRefused("invalid")
        try:
            data = self._serializer().loads(token, max_age=int(self.ttl.total_seconds()))
        except SignatureExpired:
            raise LinkRefused("expired") from None
        except BadSignature:
            raise LinkRefused("invalid") from None
        if not (
            isinstance(data, dict)
            and isinstance(data.get("u"), int)
            and isinstance(data.get("c"), int)
            and isinstance(data.get("n"), str)
        ):
            raise LinkRefused("invalid")
        return data

    def check(self, token: str, *, session: Session) -> PortalUser:
        """The user the link signs in, without using it up (the confirmation page); LinkRefused."""
        data = self.read(token)
        user = session.get(PortalUser, data["u"])
        if user is None:
            raise LinkRefused("removed")
        if user.customer_id != data["c"]:
            raise LinkRefused("other-customer")
        return user

    def redeem(self, token: str, *, session: Session) -> PortalUser:
        """Use the link up (once, ever) and return its user; LinkRefused."""
        user = self.check(token, session=session)
        assert user.id is not None
        problem = portal_access.redeem_link(
            digest(self.read(token)["n"]), user.id, now=self.now(), session=session
        )
        if problem is not None:
            raise LinkRefused(problem)
        return user


def new_session(user: PortalUser, *, now: datetime, ttl: timedelta, session: Session) -> str:
    """Start a session for `user`; the cookie value (only its digest is stored)."""
    assert user.id is not None
    token = secrets.token_urlsafe(32)
    portal_access.start_session(
        user.id, digest(token), secrets.token_urlsafe(32), now=now, ttl=ttl, session=session
    )
    return token


def sign_in_link(base_url: str, secret: bytes, ttl: timedelta, email: str, *, session: Session) -> str | None:
    """A sign-in link for the designated user `email` (as emailed ones: single use, expiring), or None
    if no customer designates that address. For `upkeep portal link` and the demo."""
    from datetime import UTC

    user = portal_access.find_user(email, session=session)
    if user is None:
        return None
    token = LinkSigner(secret, lambda: datetime.now(UTC), ttl).issue(user, session=session)
    return f"{base_url}/signin/link?t={token}"
