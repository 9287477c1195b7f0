"""The portal's security, on SQLite and PostgreSQL: customers are walled off from each other whatever
id is put in a URL or form, links are single use, expiring and tamper-proof, every form needs its CSRF
token and this site's Origin, sessions end at sign-out and at the user's removal, sign-in answers the
same for any address and is rate limited, and every response carries the security headers."""

from __future__ import annotations

import copy
import re
from datetime import timedelta

from sqlalchemy import func
from sqlmodel import SQLModel, select
from starlette.testclient import TestClient

from inventory.cases import Case
from inventory.db import session_scope
from inventory.models import AuditEvent, UpgradeRun
from inventory.outbox import Notice
from tests.portal.conftest import INVENTORY, Portal, csrf_of, sign_in


def counts(portal: Portal) -> tuple[int, ...]:
    """Rows that an action could write, and the updates' schedule."""
    with session_scope(portal.engine) as session:
        rows: list[int] = [
            session.exec(select(func.count()).select_from(table)).one()
            for table in (AuditEvent, Notice, Case)  # type: ignore[arg-type]
        ]
        runs = session.exec(select(UpgradeRun.slot_start, UpgradeRun.deferrals)).all()
        return (*rows, hash(tuple(runs)))


def test_another_customers_update_and_cluster_are_not_found(portal: Portal) -> None:
    csrf = sign_in(portal, "ann@acme.example")
    theirs = portal.updates["umb-c1"]
    before = counts(portal)
    for ref in (f"update-{theirs}", str(theirs), "update-999999", "update-x", "..%2f..%2fetc"):
        assert portal.client.get(f"/maintenance/{ref}").status_code == 404
        for action, data in (("defer", {"start": "2026-11-25T03:00:00+00:00"}), ("confirm", {})):
            response = portal.client.post(f"/maintenance/{ref}/{action}", data={"csrf": csrf, **data})
            assert response.status_code == 404, (ref, action, response.text)
    response = portal.client.post(
        "/cases",
        data={"csrf": csrf, "category": "issue", "priority": "P0", "cluster": "umb-c1", "subject": "theirs"},
    )
    assert response.status_code == 404
    assert counts(portal) == before
    assert "umb-c1" not in portal.client.get("/cases").text


def test_link_expired_reused_tampered_or_foreign_is_refused_with_a_clear_page(portal: Portal) -> None:
    client = portal.client
    page = client.get("/signin")
    client.post("/signin", data={"csrf": csrf_of(page.text), "email": "ann@acme.example"})
    link = portal.link_for("ann@acme.example").removeprefix("http://testserver")
    token = link.split("t=", 1)[1]

    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    response = client.get(f"/signin/link?t={tampered}")
    assert response.status_code == 400 and "This sign-in link is not valid" in response.text
    response = client.post("/signin/link", data={"csrf": csrf_of(page.text), "t": tampered})
    assert response.status_code == 400 and "not valid" in response.text

    # Signed with another installation's key: as good as tampered.
    from upkeep.portal.signin import LinkSigner

    with session_scope(portal.engine) as session:
        from inventory.portal_access import find_user

        user = find_user("ann@acme.example", session=session)
        assert user is not None
        forged = LinkSigner(b"x" * 48, portal.clock, timedelta(minutes=15)).issue(user, session=session)
    assert "not valid" in client.get(f"/signin/link?t={forged}").text

    page = client.get(link)
    assert page.status_code == 200 and "ann@acme.example" in page.text
    form = {"csrf": csrf_of(page.text), "t": token}
    assert client.post("/signin/link", data=form).url.path == "/maintenance"
    second = TestClient(client.app, base_url="http://testserver")
    page = second.get(link)  # the confirmation page still opens; using the link again does not sign in
    response = second.post("/signin/link", data={"csrf": csrf_of(page.text), "t": token})
    assert response.status_code == 400 and "This sign-in link was used already" in response.text

    second.post("/signin", data={"csrf": csrf_of(second.get("/signin").text), "email": "bob@acme.example"})
    late = portal.link_for("bob@acme.example").removeprefix("http://testserver")
    portal.clock.now += timedelta(minutes=15, seconds=1)
    response = second.get(late)
    assert response.status_code == 400 and "This sign-in link has expired" in response.text


def test_a_removed_users_link_no_longer_works(portal: Portal) -> None:
    page = portal.client.get("/signin")
    portal.client.post("/signin", data={"csrf": csrf_of(page.text), "email": "bob@acme.example"})
    link = portal.link_for("bob@acme.example").removeprefix("http://testserver")
    changed = copy.deepcopy(INVENTORY)
    changed["customers"][0]["portal_users"] = [{"email": "ann@acme.example"}]
    portal.reimport(changed)
    response = portal.client.get(link)
    assert response.status_code == 400 and "no longer has access" in response.text


def test_forms_without_the_csrf_token_or_from_another_site_are_refused(portal: Portal) -> None:
    csrf = sign_in(portal, "ann@acme.example")
    run = portal.updates["acme-c1"]
    before = counts(portal)
    start = "2026-12-01T07:00:00+00:00"
    for data in ({}, {"csrf": ""}, {"csrf": csrf[:-1]}, {"csrf": "x" * 43}):
        for path in (
            f"/maintenance/update-{run}/defer",
            f"/maintenance/update-{run}/confirm",
            "/cases",
            "/signout",
        ):
            response = portal.client.post(
                path, data={**data, "start": start, "subject": "s", "priority": "P1"}
            )
            assert response.status_code == 403, (path, data)
    response = portal.client.post(
        f"/maintenance/update-{run}/confirm", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403 and "another site" in response.text
    response = portal.client.post(f"/maintenance/update-{run}/confirm", content=f"csrf={csrf}".encode(),
                                  headers={"Content-Type": "text/plain"})  # fmt: skip
    assert response.status_code == 400
    response = portal.client.post(f"/maintenance/update-{run}/confirm", data={"csrf": [csrf, csrf]})
    assert response.status_code == 400
    # The sign-in forms, before any session, need the cookie's token too.
    fresh = TestClient(portal.client.app, base_url="http://testserver")
    assert fresh.post("/signin", data={"email": "ann@acme.example"}).status_code == 403
    assert fresh.post("/signin/link", data={"t": "x" * 30}).status_code == 403
    assert counts(portal) == before
    assert portal.client.get("/maintenance").url.path == "/maintenance"  # still signed in


def test_sign_out_ends_the_session_for_good(portal: Portal) -> None:
    csrf = sign_in(portal, "ann@acme.example")
    cookie = portal.client.cookies.get("upkeep_session")
    response = portal.client.post("/signout", data={"csrf": csrf})
    assert response.status_code == 200 and "You have signed out" in response.text
    assert portal.client.get("/maintenance").url.path == "/signin"
    replay = TestClient(portal.client.app, base_url="http://testserver", cookies={"upkeep_session": cookie})
    assert replay.get("/maintenance").url.path == "/signin"
    before = counts(portal)
    response = replay.post(f"/maintenance/update-{portal.updates['acme-c1']}/confirm", data={"csrf": csrf})
    assert response.status_code == 403
    assert counts(portal) == before


def test_removing_the_user_from_the_inventory_ends_the_session_at_once(portal: Portal) -> None:
    csrf = sign_in(portal, "bob@acme.example")
    assert portal.client.get("/maintenance").url.path == "/maintenance"
    changed = copy.deepcopy(INVENTORY)
    changed["customers"][0]["portal_users"] = [{"email": "ann@acme.example"}]
    portal.reimport(changed)
    assert portal.client.get("/maintenance").url.path == "/signin"
    before = counts(portal)
    response = portal.client.post(
        f"/maintenance/update-{portal.updates['acme-c1']}/confirm", data={"csrf": csrf}
    )
    assert response.status_code == 403
    assert counts(portal) == before


def test_sign_in_answers_the_same_for_any_address_and_is_rate_limited(portal: Portal) -> None:
    client = portal.client
    csrf = csrf_of(client.get("/signin").text)

    def ask(email: str) -> str:
        response = client.post("/signin", data={"csrf": csrf, "email": email})
        assert response.status_code == 200
        return response.text

    assert ask("ann@acme.example") == ask("nobody@acme.example") == ask("not an address")
    for _ in range(4):
        ask("bob@acme.example")
    assert len(portal.mails("bob@acme.example")) == 3  # per address: 3 links per 15 minutes
    assert len(portal.mails("ann@acme.example")) == 1
    for _ in range(3):  # 10 requests from this client so far
        ask("nobody@acme.example")
    response = client.post("/signin", data={"csrf": csrf, "email": "eve@umbrella.example"})
    assert response.status_code == 429
    assert portal.mails("eve@umbrella.example") == []
    portal.clock.now += timedelta(minutes=15)
    ask("eve@umbrella.example")
    assert len(portal.mails("eve@umbrella.example")) == 1


def test_security_headers_and_cookie_attributes(portal: Portal) -> None:
    for response in (portal.client.get("/signin"), portal.client.get("/nothing-here")):
        headers = response.headers
        assert "script-src" not in headers["content-security-policy"]
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
    assert "<script" not in portal.client.get("/signin").text
    page = portal.client.get("/signin")
    portal.client.post("/signin", data={"csrf": csrf_of(page.text), "email": "ann@acme.example"})
    page = portal.client.get(portal.link_for("ann@acme.example").removeprefix("http://testserver"))
    token = re.search(r'name="t" value="([^"]+)"', page.text)
    assert token
    response = portal.client.post(
        "/signin/link", data={"csrf": csrf_of(page.text), "t": token.group(1)}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/maintenance"
    [cookie] = [c for c in response.headers.get_list("set-cookie") if c.startswith("upkeep_session=")]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "max-age", "path"} <= attributes and "secure" not in attributes
    assert "samesite=lax" in cookie.lower()
    assert SQLModel  # the tables are registered


def test_the_access_log_never_shows_a_links_token() -> None:
    import logging

    from upkeep.portal.server import HideQueries

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/signin/link?t=SECRET.TOKEN", "1.1", 200), None,
    )  # fmt: skip
    assert HideQueries().filter(record)
    assert "SECRET" not in record.getMessage() and "/signin/link?…" in record.getMessage()
