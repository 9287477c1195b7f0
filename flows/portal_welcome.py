"""The welcome email a designated user gets when an inventory import adds them (issue #17, item 1).

`upkeep inventory import` (flows.integrity.import_and_recheck) notes the portal users before the import
and, in the same transaction after it, queues one welcome per user that is new, through the notice
outbox (`notices send` and the dispatcher deliver it; retried like any notice). Once per user: its
key is `portal-user-<id>-<created>:welcome:0`, and a user the file keeps is not new on the next
import. A user removed again before the welcome went out has it withdrawn (superseded), like their
sessions and links.

The email's link (flows/portal_links.py) is the sign-in page for the address on file, not a sign-in
token: a welcome may wait in the outbox for hours, and a live credential must not sit in the database.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlmodel import Session, col, select

from flows.run_notices import VendorTerms
from inventory.models import Customer
from inventory.outbox import Notice, NoticeState, mark_superseded, queue_notice
from inventory.portal_tables import PortalUser

TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "portal"
KIND = "welcome"


def welcome_ref(user: PortalUser) -> str:
    """The outbox's update_ref of `user`'s welcome: the row's id and creation time (SQLite may give a
    removed user's id to the next one added; the time tells the two apart)."""
    return f"portal-user-{user.id}-{user.created_at:%Y%m%d%H%M%S%f}"


def portal_users(session: Session) -> dict[str, PortalUser]:
    """The portal users now, by their welcome ref."""
    return {welcome_ref(user): user for user in session.exec(select(PortalUser))}


def welcome_new_users(
    before: dict[str, PortalUser], *, session: Session, now: datetime, vendor: VendorTerms, notes: list[str]
) -> list[str]:
    """Queue a welcome for every portal user not in `before` (from `portal_users` before the import),
    withdraw the pending welcome of every one in `before` that is gone; the addresses welcomed."""
    after = portal_users(session)
    gone = [ref for ref in before if ref not in after]
    if gone:
        pending = session.exec(
            select(Notice).where(
                col(Notice.update_ref).in_(gone), Notice.kind == KIND, Notice.state == NoticeState.pending
            )
        )
        for notice in pending:
            mark_superseded(notice, None, session=session)
    new = sorted((user for ref, user in after.items() if ref not in before), key=lambda u: u.id or 0)
    if not new or not vendor.portal_url:
        return []
    env = _environment()
    links = vendor.portal_links()
    welcomed = []
    for user in new:
        customer = session.get(Customer, user.customer_id)
        assert user.id is not None and customer is not None
        if links is not None:
            link = links.welcome_link(user.id, user.customer_id, user.mailbox)
        else:
            link = f"{vendor.portal_url}/signin"
        variables = {
            "name": user.name or user.email,
            "email": user.email,
            "customer": customer.name,
            "link": link,
            "support": vendor.support_contact,
        }
        queue_notice(
            update_ref=welcome_ref(user),
            kind=KIND,
            sequence=0,
            customer_id=user.customer_id,
            recipients=[user.email],
            subject=f"Welcome to the maintenance portal for {customer.name}",
            body_text=env.get_template("welcome_email.txt.j2").render(variables),
            body_html=env.get_template("welcome_email.html.j2").render(variables),
            session=session,
            now=now,
        )
        notes.append(f"customer {customer.name!r}: welcome email to portal user {user.email!r} queued")
        welcomed.append(user.email)
    return welcomed


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
