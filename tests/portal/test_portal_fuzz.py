"""Hypothesis-fuzzed form inputs on every POST route of the portal, signed in and not, with and without
the right CSRF token: never a 500, and a refused request writes nothing."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.portal.conftest import Portal, sign_in
from tests.portal.test_portal_security import counts

FIELDS = (
    "csrf",
    "email",
    "t",
    "start",
    "category",
    "priority",
    "cluster",
    "subject",
    "description",
    "text",
    "reason",
)
VALUES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["issue", "feature_request", "P0", "P3", "sev1", "acme-c1", "umb-c1", "", "\x00"]),
    st.sampled_from(["2026-12-01T07:00:00+00:00", "2026-12-01T07:00:00", "9999-99-99", "update-1"]),
)
FORMS = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=len(FIELDS))


def _paths(portal: Portal) -> list[str]:
    mine, theirs = portal.updates["acme-c1"], portal.updates["umb-c1"]
    return [
        "/signin",
        "/signin/link",
        "/signout",
        "/cases",
        "/cases/CASE-1/comment",
        "/cases/CASE-1/escalate",
        "/cases/../escalate",
        "/maintenance-feed",
        "/maintenance-feed/revoke",
        *(
            f"/maintenance/{ref}/{action}"
            for ref in (f"update-{mine}", f"update-{theirs}", "x")
            for action in ("defer", "confirm")
        ),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_posts_never_fail_and_refusals_write_nothing(portal: Portal, data: Any) -> None:
    if "upkeep_session" not in portal.client.cookies:
        portal.csrf = sign_in(portal, "ann@acme.example")  # type: ignore[attr-defined]
    csrf: str = portal.csrf  # type: ignore[attr-defined]
    path = data.draw(st.sampled_from(_paths(portal)), label="path")
    form = data.draw(FORMS, label="form")
    if data.draw(st.booleans(), label="right csrf") and path != "/signout":
        form["csrf"] = csrf
    before = counts(portal)
    response = portal.client.post(path, data=form, follow_redirects=False)
    assert response.status_code < 500, response.text
    if response.status_code not in (200, 303) or path in ("/signin/link",):
        assert counts(portal) == before, (path, form, response.status_code)
    if response.status_code == 303 and path.startswith("/maintenance"):
        assert "?done=" in response.headers["location"]
