"""A designated user added by an inventory import gets a welcome email through the notice outbox, once,
with a link to the portal's sign-in page for their address; removed, they lose access at once: their
session, their sign-in and welcome links, and a welcome still waiting in the outbox. SQLite and
PostgreSQL, the real import path (`upkeep inventory import`'s) and the real outbox delivery."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml
from sqlmodel import col, select

from flows.integrity import import_and_recheck
from flows.notify import deliver_pending
from inventory.db import session_scope
from inventory.outbox import Notice, NoticeState
from tasks.mail import OutboxDirTransport
from tests.portal.conftest import INVENTORY, NOW, VENDOR, Portal, csrf_of

SENDER = "Upkeep <upkeep@vendor.example>"


def welcomes(portal: Portal) -> list[Notice]:
    with session_scope(portal.engine) as session:
        query = select(Notice).where(Notice.kind == "welcome").order_by(col(Notice.id))
        return list(session.exec(query))


def import_with(portal: Portal, *users: dict[str, str]) -> Any:
    data = copy.deepcopy(INVENTORY)
    data["customers"][0]["portal_users"] = [*INVENTORY["customers"][0]["portal_users"], *users]
    portal.inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    summary, _ = import_and_recheck(
        portal.inventory, engine=portal.engine, actor="sre", now=NOW, vendor=VENDOR
    )
    return summary


def deliver(portal: Portal) -> None:
    deliver_pending(portal.engine, OutboxDirTransport(portal.outbox), now=portal.clock(), sender=SENDER)


def welcome_link(portal: Portal, to: str) -> str:
    [mail] = [m for m in portal.mails(to) if "Welcome" in str(m["Subject"])]
    text = mail.get_body(preferencelist=("plain",)).get_content()
    html = mail.get_body(preferencelist=("html",)).get_content()
    [link] = re.findall(r"http://testserver/signin/welcome\?t=[\w.-]+", text)
    assert f'href="{link}"' in html
    return link.removeprefix("http://testserver")


def test_an_added_user_is_welcomed_once_and_signs_in_from_the_welcome(portal: Portal) -> None:
    summary = import_with(portal, {"email": "Cat@acme.example", "name": "Cat"})
    assert "customer 'acme': welcome email to portal user 'Cat@acme.example' queued" in summary.notes
    [welcome] = welcomes(portal)  # nobody else: ann and bob were there before this import
    assert welcome.recipients == ["Cat@acme.example"] and welcome.ics == ""
    assert welcome.subject == "Welcome to the maintenance portal for acme"
    assert "t=" not in welcome.body_text.split("signin/welcome", 1)[0]  # no sign-in token is stored
    deliver(portal)
    path = welcome_link(portal, "Cat@acme.example")

    page = portal.client.get(path)
    assert page.status_code == 200 and "Welcome to the maintenance portal" in page.text
    assert 'value="Cat@acme.example"' in page.text
    response = portal.client.post("/signin", data={"csrf": csrf_of(page.text), "email": "Cat@acme.example"})
    assert response.status_code == 200
    page = portal.client.get(portal.link_for("Cat@acme.example").removeprefix("http://testserver"))
    token = re.search(r'name="t" value="([^"]+)"', page.text)
    assert token is not None
    response = portal.client.post("/signin/link", data={"csrf": csrf_of(page.text), "t": token.group(1)})
    assert response.url.path == "/maintenance" and "acme-c1" in response.text

    # Imported again (unchanged, or with another change): no second welcome.
    import_with(portal, {"email": "cat@acme.example", "name": "Cat"})
    assert len(welcomes(portal)) == 1

    # A changed or made-up welcome link is refused with a clear page.
    page = portal.client.get(path[:-3] + "xyz")
    assert page.status_code == 400 and "This sign-in link is not valid" in page.text


def test_a_removed_user_loses_access_at_once_and_their_waiting_welcome_is_withdrawn(portal: Portal) -> None:
    import_with(portal, {"email": "cat@acme.example"}, {"email": "dan@acme.example"})
    deliver(portal)
    cat_link = welcome_link(portal, "cat@acme.example")
    # cat signs in; dan is added and removed again before the outbox ran
    page = portal.client.get(cat_link)
    portal.client.post("/signin", data={"csrf": csrf_of(page.text), "email": "cat@acme.example"})
    page = portal.client.get(portal.link_for("cat@acme.example").removeprefix("http://testserver"))
    unused = re.search(r'name="t" value="([^"]+)"', page.text)
    assert unused is not None
    portal.client.post("/signin/link", data={"csrf": csrf_of(page.text), "t": unused.group(1)})
    assert portal.client.get("/maintenance").url.path == "/maintenance"
    import_with(portal, {"email": "eli@acme.example"})  # cat and dan are gone; eli is new
    assert {w.recipients[0]: w.state for w in welcomes(portal)} == {
        "cat@acme.example": NoticeState.sent,
        "dan@acme.example": NoticeState.sent,
        "eli@acme.example": NoticeState.pending,
    }
    page = portal.client.get(cat_link)  # on SQLite eli may now have cat's old id: the link stays cat's
    assert page.status_code == 400 and "no longer works" in page.text and "eli@" not in page.text
    import_with(portal)  # eli removed before the welcome went out: it is withdrawn, never sent
    assert {w.recipients[0]: w.state for w in welcomes(portal)}["eli@acme.example"] is NoticeState.superseded
    deliver(portal)
    assert not [m for m in portal.mails("eli@acme.example") if "Welcome" in str(m["Subject"])]

    # cat's session ended with the import; the welcome link now says so, and asking for a link sends none.
    assert portal.client.get("/maintenance").url.path == "/signin"
    page = portal.client.get(cat_link)
    assert page.status_code == 400 and "no longer works" in page.text and "cat@acme.example" not in page.text
    sent = len(portal.mails("cat@acme.example"))
    portal.client.post(
        "/signin", data={"csrf": csrf_of(portal.client.get("/signin").text), "email": "cat@acme.example"}
    )
    assert len(portal.mails("cat@acme.example")) == sent

    # Added again later, cat is a new designated user and is welcomed again.
    import_with(portal, {"email": "cat@acme.example"})
    assert [w.recipients[0] for w in welcomes(portal)].count("cat@acme.example") == 2
