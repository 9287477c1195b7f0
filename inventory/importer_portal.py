"""A customer's `portal_users:` in the inventory file: the designated people who may use the customer
portal (at most five, distinct people). Parsed (PortalParts), checked across the file and against the
database (`refuse_foreign_mailboxes`), and written (`sync_portal_users`).

One person is one mailbox: addresses are compared lower-cased and without a `+tag` in the local part,
so `Ann@x.example`, `ann@x.example` and `ann+portal@x.example` are the same user, counted once and
refused when listed twice. A mailbox belongs to one customer only (a sign-in names exactly one).
"""

from __future__ import annotations

from typing import Any, Protocol

import yaml
from sqlmodel import Session, col, delete, select

from inventory.importer_rules import CONTACT, Field, show
from inventory.importer_specs import InventoryError, Problem
from inventory.models import Customer
from inventory.portal_tables import MAX_PORTAL_USERS, PortalFeed, PortalLink, PortalSession, PortalUser

PORTAL_USER: dict[str, Field] = {"email": CONTACT["email"], "name": CONTACT["name"]}


class _Walker(Protocol):
    def err(self, node: yaml.Node, message: str) -> None: ...

    def mapping(
        self, node: yaml.Node, what: str, fields: dict[str, Field]
    ) -> tuple[dict[str, Any], dict[str, yaml.Node]]: ...


def mailbox_key(email: str) -> str:
    """The person behind an address: 'Ann+Portal@X.example' -> 'ann@x.example'."""
    local, _, domain = email.strip().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}".lower()


class PortalParts:
    """Parser for `portal_users`; `owners` remembers which customer listed each mailbox in this file."""

    def __init__(self, walker: _Walker) -> None:
        self.p = walker
        self.owners: dict[str, tuple[str, int]] = {}  # mailbox -> (customer, line)

    def users(self, node: yaml.Node, customer: str) -> list[tuple[str, str, int]]:
        """(email, name, line) of each valid entry; every problem reported with its line."""
        found: list[tuple[str, str, int]] = []
        seen: dict[str, tuple[str, int]] = {}
        for item in node.value:
            v, at = self.p.mapping(item, "portal user", PORTAL_USER)
            if "email" not in v:
                continue
            email, line = v["email"], at["email"].start_mark.line + 1
            key = mailbox_key(email)
            if key in seen:
                first, first_line = seen[key]
                same = (
                    "listed twice" if first.lower() == email.lower() else f"the same mailbox as {show(first)}"
                )
                self.p.err(at["email"], f"portal user {show(email)} is {same} (first at line {first_line})")
                continue
            if key in self.owners and self.owners[key][0] != customer:
                other, other_line = self.owners[key]
                self.p.err(
                    at["email"],
                    f"portal user {show(email)} is already a portal user of customer {show(other)} "
                    f"(line {other_line}); a person signs in for one customer",
                )
                continue
            if len(seen) == MAX_PORTAL_USERS:
                self.p.err(
                    at["email"],
                    f"portal user {show(email)}: customer {show(customer)} may have at most "
                    f"{MAX_PORTAL_USERS} portal users (distinct people); this is the sixth",
                )
                continue
            seen[key] = (email, line)
            self.owners[key] = (customer, line)
            found.append((email, v.get("name", ""), line))
        return found


def refuse_foreign_mailboxes(
    path: str, wanted: dict[str, list[tuple[str, str, int]]], session: Session
) -> None:
    """A mailbox in the file that the database has as another customer's portal user, where that
    customer is not in the file (so keeps its users), is refused before anything is written."""
    owners = {
        mailbox: name
        for mailbox, name in session.exec(
            select(PortalUser.mailbox, Customer.name).join(
                Customer, col(Customer.id) == PortalUser.customer_id
            )
        )
    }
    problems = [
        Problem(
            path,
            line,
            f"portal user {show(email)} is already a portal user of customer {show(owners[key])}, "
            "which this file does not list; remove it there first",
        )
        for customer, users in wanted.items()
        for email, _, line in users
        if (key := mailbox_key(email)) in owners and owners[key] != customer and owners[key] not in wanted
    ]
    if problems:
        raise InventoryError(problems)


def sync_portal_users(
    session: Session, wanted: list[tuple[Customer, list[tuple[str, str, int]]]], notes: list[str]
) -> None:
    """Make each listed customer's portal users exactly the file's. A removed user's sessions and
    sign-in links are deleted with them, and the calendar feed they made is revoked: their access ends
    with this transaction. A user moved to another customer is removed and added again (their old
    sessions name the old customer)."""
    ids = [customer.id for customer, _ in wanted]
    rows = list(session.exec(select(PortalUser).where(col(PortalUser.customer_id).in_(ids))))
    want = {
        mailbox_key(email): (customer, email, name) for customer, users in wanted for email, name, _ in users
    }
    names = {customer.id: customer.name for customer, _ in wanted}
    gone = [row for row in rows if row.mailbox not in want or want[row.mailbox][0].id != row.customer_id]
    gone_keys = {id(row) for row in gone}
    if gone:
        gone_ids = [row.id for row in gone]
        session.exec(delete(PortalSession).where(col(PortalSession.user_id).in_(gone_ids)))
        session.exec(delete(PortalLink).where(col(PortalLink.user_id).in_(gone_ids)))
        # The calendar feed URL a removed user made was shown to them: it stops working too.
        feeds = session.exec(select(PortalFeed).where(col(PortalFeed.customer_id).in_(ids))).all()
        gone_by = {(row.customer_id, row.mailbox) for row in gone}
        for feed in feeds:
            if (feed.customer_id, mailbox_key(feed.created_by)) in gone_by:
                session.delete(feed)
                notes.append(
                    f"customer {names[feed.customer_id]!r}: calendar feed made by {feed.created_by!r} revoked"
                )
        for row in gone:
            session.delete(row)
            notes.append(
                f"customer {names[row.customer_id]!r}: portal user {row.email!r} removed (signed out)"
            )
        session.flush()
    kept = {row.mailbox: row for row in rows if id(row) not in gone_keys}
    for key, (customer, email, name) in want.items():
        found = kept.get(key)
        if found is None:
            assert customer.id is not None
            session.add(PortalUser(customer_id=customer.id, email=email, mailbox=key, name=name))
            notes.append(f"customer {customer.name!r}: portal user {email!r} added")
        elif (found.email, found.name) != (email, name):
            found.email, found.name = email, name
            session.add(found)
    session.flush()
