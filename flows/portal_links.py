"""Links into the customer portal that Upkeep writes into emails and calendar entries.

* **Update links** (every notice about an upcoming update, the invite's URL and DESCRIPTION, the
  calendar feed): `<portal>/maintenance/update-42?k=TOKEN`, TOKEN signed with the portal key (HMAC,
  itsdangerous) over `{update, customer, expiry}`. They are *not* credentials: one notice goes to every
  contact and designated user at once (and may be forwarded), so the page still needs a session of the
  update's customer; without one the portal asks for a sign-in and returns to the update after it. The
  signature makes a changed or made-up link a clear "not valid" page instead of a wander through the
  portal, lets the portal trust the page it returns to after sign-in, and carries an expiry: a week
  after the slot the notice announced (`GRACE`), when there is nothing left to confirm or defer.
* **Welcome links** (the email a designated user gets when an inventory import adds them):
  `<portal>/signin/welcome?t=TOKEN` over `{user, customer}`. Also not a credential: the page offers to
  email a sign-in link to the address on file (never to whoever holds the link), and refuses once the
  user was removed. A live sign-in token must not wait in the outbox table or an .eml file.

Pure: no database, no settings; the key and `now` are passed in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer

UPDATE_SALT = "upkeep.portal.update-link"
WELCOME_SALT = "upkeep.portal.welcome"
GRACE = timedelta(days=7)  # an update link works until a week after the slot its notice announced
MAX_TOKEN = 400


class LinkProblem(Exception):
    """A portal link that is not honoured; `reason` is 'invalid' (changed, cut short, another key or
    another update) or 'expired'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def mailbox_tag(mailbox: str) -> int:
    """48 bits of the mailbox's SHA-256: which person a welcome link was made for."""
    return int.from_bytes(hashlib.sha256(mailbox.encode()).digest()[:6], "big")


def link_expiry(slot_end: datetime | None, now: datetime) -> datetime:
    """When an update link written now about a slot ending at `slot_end` stops working."""
    return max(slot_end or now, now) + GRACE


@dataclass(frozen=True)
class PortalLinks:
    base_url: str  # UPKEEP_PORTAL_URL, no trailing slash
    key: bytes = field(repr=False)

    def _serializer(self, salt: str) -> URLSafeSerializer:
        return URLSafeSerializer(self.key, salt=salt)

    def update_link(self, run_id: int, customer_id: int, *, expires: datetime) -> str:
        token = self._serializer(UPDATE_SALT).dumps(
            {"u": run_id, "c": customer_id, "e": int(expires.astimezone(UTC).timestamp())}
        )
        return f"{self.base_url}/maintenance/update-{run_id}?k={token}"

    def read_update(self, token: str, *, run_id: int, now: datetime) -> int:
        """The customer id an update link for `run_id` was made for; LinkProblem otherwise."""
        data = self._load(UPDATE_SALT, token, ("u", "c", "e"))
        if data["u"] != run_id:
            raise LinkProblem("invalid")
        if now.timestamp() >= data["e"]:
            raise LinkProblem("expired")
        return int(data["c"])

    def welcome_link(self, user_id: int, customer_id: int, mailbox: str) -> str:
        token = self._serializer(WELCOME_SALT).dumps(
            {"u": user_id, "c": customer_id, "m": mailbox_tag(mailbox)}
        )
        return f"{self.base_url}/signin/welcome?t={token}"

    def read_welcome(self, token: str) -> tuple[int, int, int]:
        """(user id, customer id, mailbox tag) of a welcome link; LinkProblem('invalid') otherwise. The
        tag ties the link to the person: a database may give a removed user's id to someone else."""
        data = self._load(WELCOME_SALT, token, ("u", "c", "m"))
        return int(data["u"]), int(data["c"]), int(data["m"])

    def _load(self, salt: str, token: str, keys: tuple[str, ...]) -> dict[str, int]:
        if not isinstance(token, str) or not 10 <= len(token) <= MAX_TOKEN:
            raise LinkProblem("invalid")
        try:
            data = self._serializer(salt).loads(token)
        except BadSignature:
            raise LinkProblem("invalid") from None
        if not isinstance(data, dict) or set(data) != set(keys):
            raise LinkProblem("invalid")
        if not all(isinstance(data[k], int) and not isinstance(data[k], bool) for k in keys):
            raise LinkProblem("invalid")
        return data
