"""Who may use the customer portal, and how they got in: repository functions over `portal_tables`.

Sign-in links are single use: redeeming one is one conditional UPDATE (unused and unexpired), so two
browsers racing with the same link cannot both get a session. Sessions are rows: signing out, or the
user's removal from the inventory, ends them for every request after it. The session is a keyword
argument and never committed here: callers own the transaction. `now` is always passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, update
from sqlmodel import Session, col, delete, select

from inventory.importer_model import mailbox_key
from inventory.models import Customer
from inventory.portal_tables import PortalLink, PortalSession, PortalUser


@dataclass(frozen=True)
class SignedIn:
    """A live session: who, for which customer, and the token its forms carry."""

    user_id: int
    email: str
    name: str
    customer_id: int
    customer: str
    timezone: str
    csrf: str


def find_user(email: str, *, session: Session) -> PortalUser | None:
    """The designated user behind `email` (case and `+tag` ignored), or None."""
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        return None
    return session.exec(select(PortalUser).where(PortalUser.mailbox == mailbox_key(email))).first()


def designated_emails(customer_id: int | None, *, session: Session) -> tuple[str, ...]:
    """The customer's portal users' addresses, in the file's order."""
    query = select(PortalUser.email).where(PortalUser.customer_id == customer_id).order_by(col(PortalUser.id))
    return tuple(session.exec(query))


def links_issued_since(user_id: int, since: datetime, *, session: Session) -> int:
    query = select(func.count()).where(PortalLink.user_id == user_id, col(PortalLink.issued_at) >= since)
    return int(session.exec(query).one())


def issue_link(user: PortalUser, nonce_hash: str, *, now: datetime, ttl: timedelta, session: Session) -> None:
    assert user.id is not None
    session.add(PortalLink(nonce_hash=nonce_hash, user_id=user.id, issued_at=now, expires_at=now + ttl))
    session.flush()


def redeem_link(nonce_hash: str, user_id: int, *, now: datetime, session: Session) -> str | None:
    """Mark the link used; None on success, else why not: 'unknown', 'used' or 'expired'."""
    result = session.connection().execute(
        update(PortalLink)
        .where(
            col(PortalLink.nonce_hash) == nonce_hash,
            col(PortalLink.user_id) == user_id,
            col(PortalLink.used_at).is_(None),
            col(PortalLink.expires_at) > now,
        )
        .values(used_at=now)
    )
    if result.rowcount == 1:
        return None
    link = session.get(PortalLink, nonce_hash)
    if link is None or link.user_id != user_id:
        return "unknown"
    session.refresh(link)
    return "used" if link.used_at is not None else "expired"


def start_session(
    user_id: int, id_hash: str, csrf: str, *, now: datetime, ttl: timedelta, session: Session
) -> None:
    session.add(
        PortalSession(id_hash=id_hash, user_id=user_id, csrf=csrf, created_at=now, expires_at=now + ttl)
    )
    session.flush()


def signed_in(id_hash: str, *, now: datetime, session: Session) -> SignedIn | None:
    """The live session with this hash and its user and customer, or None (unknown, expired, or the
    user was removed)."""
    row = session.exec(
        select(PortalSession, PortalUser, Customer)
        .join(PortalUser, col(PortalUser.id) == PortalSession.user_id)
        .join(Customer, col(Customer.id) == PortalUser.customer_id)
        .where(PortalSession.id_hash == id_hash, col(PortalSession.expires_at) > now)
    ).first()
    if row is None:
        return None
    portal_session, user, customer = row
    assert user.id is not None and customer.id is not None
    return SignedIn(
        user.id, user.email, user.name, customer.id, customer.name, customer.timezone, portal_session.csrf
    )


def end_session(id_hash: str, *, session: Session) -> None:
    session.exec(delete(PortalSession).where(col(PortalSession.id_hash) == id_hash))


def purge_expired(*, now: datetime, session: Session) -> None:
    """Forget expired sessions and links (nothing depends on them)."""
    session.exec(delete(PortalSession).where(col(PortalSession.expires_at) <= now))
    session.exec(delete(PortalLink).where(col(PortalLink.expires_at) <= now - timedelta(days=1)))
