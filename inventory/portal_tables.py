"""Customer portal tables: the designated users of each customer (from the inventory file), the sign-in
links issued to them and their sessions.

A user's links and sessions go with the user (ON DELETE CASCADE, and `inventory.portal_users` deletes
them explicitly too): removing a user from the inventory ends their access at once. Only hashes of the
secrets are stored (a link's nonce, a session's cookie value), so reading the database signs nobody in.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from inventory.types import created_field, time_field

MAX_PORTAL_USERS = 5


class PortalUser(SQLModel, table=True):
    __tablename__ = "portal_user"
    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True, ondelete="CASCADE")
    email: str = Field(max_length=254, description="as written in the inventory; mail goes here")
    # The person's mailbox: lower case, `+tag` dropped. One mailbox is one person, for one customer.
    mailbox: str = Field(max_length=254, unique=True, index=True)
    name: str = Field(default="", max_length=128)
    created_at: datetime = created_field()


class PortalLink(SQLModel, table=True):
    """A sign-in link sent by email: single use (`used_at`), expiring (`expires_at`)."""

    __tablename__ = "portal_link"
    nonce_hash: str = Field(primary_key=True, max_length=64, description="sha256 of the link's nonce")
    user_id: int = Field(foreign_key="portal_user.id", index=True, ondelete="CASCADE")
    issued_at: datetime = time_field(nullable=False)
    expires_at: datetime = time_field(nullable=False)
    used_at: datetime | None = time_field()


class PortalSession(SQLModel, table=True):
    """A signed-in browser: the cookie holds a random value, this row its sha256."""

    __tablename__ = "portal_session"
    id_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(foreign_key="portal_user.id", index=True, ondelete="CASCADE")
    csrf: str = Field(max_length=64, description="the token every form of this session must carry")
    created_at: datetime = time_field(nullable=False)
    expires_at: datetime = time_field(nullable=False)


class PortalFeed(SQLModel, table=True):
    """A customer's calendar feed: its secret URL's token, hashed. A new token replaces the old one (the
    old URL stops working); deleting the row revokes the feed."""

    __tablename__ = "portal_feed"
    customer_id: int = Field(foreign_key="customer.id", primary_key=True, ondelete="CASCADE")
    token_hash: str = Field(max_length=64, unique=True, index=True)
    created_by: str = Field(default="", max_length=254)
    created_at: datetime = time_field(nullable=False)
