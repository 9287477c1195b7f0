"""Breaks found by the adversarial pass on the portal (issue 17), each kept as a test: what an attacker
sent, and that it is now refused with a clear page, no 500, and nothing written."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from sqlmodel import select
from starlette.testclient import TestClient

from inventory.cases import Case
from inventory.db import session_scope
from tests.portal.conftest import INVENTORY, Portal, sign_in
from tests.portal.test_portal_security import counts
from upkeep.settings import Settings, SettingsError


def test_a_defer_time_at_the_edge_of_the_calendar_is_refused_not_a_500(portal: Portal) -> None:
    # A crafted POST whose start is a valid ISO time that cannot be converted to UTC (year 9999 behind
    # UTC, year 1 ahead of it) raised OverflowError in the portal: a 500 and a dropped connection.
    csrf = sign_in(portal, "ann@acme.example")
    run = portal.updates["acme-c1"]
    before = counts(portal)
    strict = TestClient(portal.client.app, base_url="http://testserver", cookies=portal.client.cookies)
    for start in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-01:00"):
        response = strict.post(f"/maintenance/update-{run}/defer", data={"csrf": csrf, "start": start})
        assert response.status_code == 400, (start, response.status_code)
        assert "Choose one of the times offered" in response.text
    assert counts(portal) == before


def test_a_short_or_blank_portal_secret_is_refused_like_a_short_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # <home>/portal.key shorter than 32 characters was refused, but UPKEEP_PORTAL_SECRET=" " or "x" was
    # taken as the signing key: `upkeep portal serve` signed every link with one guessable byte.
    from tests.faults.cli import invoke

    monkeypatch.setenv("UPKEEP_HOME", str(tmp_path / "home"))
    for secret in (" ", "x", "short-secret", " " * 40):
        monkeypatch.setenv("UPKEEP_PORTAL_SECRET", secret)
        with pytest.raises(SettingsError, match=r"UPKEEP_PORTAL_SECRET.*at least 32"):
            Settings().resolved_portal_secret()
        outcome = invoke("portal", "link", "ann@acme.example")
        assert outcome.code == 1 and "UPKEEP_PORTAL_SECRET" in outcome.text, outcome.text
        assert "Traceback" not in outcome.text
    good = "k" * 32
    monkeypatch.setenv("UPKEEP_PORTAL_SECRET", good)
    assert Settings().resolved_portal_secret() == good.encode()
    monkeypatch.setenv("UPKEEP_PORTAL_SECRET", "")  # empty: the generated key file, as documented
    assert len(Settings().resolved_portal_secret()) >= 32


def test_no_redirect_is_built_from_the_host_header(portal: Portal) -> None:
    # Starlette's trailing-slash redirect answered GET /signin/ (and a POST to /cases/, form and CSRF
    # token included: a 307 keeps the body) with `Location: http://<Host header>/...`: a Host of
    # evil.example sent the browser off-site. Every redirect now names one of the portal's fixed paths.
    csrf = sign_in(portal, "ann@acme.example")
    before = counts(portal)
    tries = (("GET", "/signin/"), ("GET", "/maintenance/"), ("GET", "/cases/"), ("POST", "/cases/"))
    for method, path in tries:
        response = portal.client.request(
            method, path, data={"csrf": csrf, "subject": "x"} if method == "POST" else None,
            headers={"host": "evil.example"}, follow_redirects=False,
        )  # fmt: skip
        location = response.headers.get("location", "")
        assert "evil" not in location and not location.startswith(("http", "//")), (path, location)
        assert response.status_code < 500
    assert counts(portal) == before


def test_the_access_log_never_shows_a_calendar_feeds_token() -> None:
    # The feed's secret is in its path (/feed/<token>.ics), which the access log printed in full on
    # every calendar poll: anyone reading the log could subscribe to the customer's maintenance.
    import logging

    from upkeep.portal.server import HideQueries

    token = "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eHF1dXg"
    for path in (f"/feed/{token}.ics", f"/feed/{token}.ics?x=1", f"/portal/feed/{token}.ics"):
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
            ("127.0.0.1:5", "GET", path, "1.1", 200), None,
        )  # fmt: skip
        assert HideQueries().filter(record)
        assert token not in record.getMessage() and "/feed/….ics" in record.getMessage(), path


def test_a_removed_users_calendar_feed_stops_working(portal: Portal) -> None:
    # A designated user makes the customer's feed URL (shown to them once), then leaves and is removed
    # from the inventory: their session ended, but the feed URL they kept still served the customer's
    # maintenance schedule. The removal now revokes the feed they made (another user makes a new one).
    csrf = sign_in(portal, "bob@acme.example")
    page = portal.client.post("/maintenance-feed", data={"csrf": csrf})
    [url] = re.findall(r'<code id="feed-url">http://testserver(/feed/[^<]+\.ics)</code>', page.text)
    outsider = TestClient(portal.client.app, base_url="http://testserver")
    assert outsider.get(url).status_code == 200
    changed = copy.deepcopy(INVENTORY)
    changed["customers"][0]["portal_users"] = [{"email": "ann@acme.example"}]
    portal.reimport(changed)
    assert outsider.get(url).status_code == 404
    # A feed made by a user who stays keeps working across imports.
    ann = TestClient(portal.client.app, base_url="http://testserver")
    csrf = sign_in(portal, "ann@acme.example", ann)
    page = ann.post("/maintenance-feed", data={"csrf": csrf})
    [url] = re.findall(r'<code id="feed-url">http://testserver(/feed/[^<]+\.ics)</code>', page.text)
    portal.reimport(changed)
    assert outsider.get(url).status_code == 200


def test_an_escalated_case_is_not_escalated_again_from_the_portal(portal: Portal) -> None:
    # Each escalation request queued an SRE alert, and an escalated case could be escalated again and
    # again: one designated user (or a script with their session) paged the SRE side at will.
    from inventory.alerts import Alert

    csrf = sign_in(portal, "bob@acme.example")
    portal.client.post(
        "/cases", data={"csrf": csrf, "category": "issue", "priority": "P2", "subject": "Slow"}
    )
    with session_scope(portal.engine) as session:
        [case] = session.exec(select(Case)).all()
    response = portal.client.post(f"/cases/{case.ref}/escalate", data={"csrf": csrf, "reason": "No answer"})
    assert "a manager on our side has been alerted" in response.text
    before = counts(portal)
    for _ in range(3):
        response = portal.client.post(f"/cases/{case.ref}/escalate", data={"csrf": csrf, "reason": "again"})
        assert response.status_code == 409 and "already escalated" in response.text
    assert counts(portal) == before
    with session_scope(portal.engine) as session:
        assert len(session.exec(select(Alert)).all()) == 1
    # Comments still go through.
    response = portal.client.post(f"/cases/{case.ref}/comment", data={"csrf": csrf, "text": "Any news?"})
    assert "Your comment was added" in response.text
