"""What a designated user does in the portal, on SQLite and PostgreSQL: sign in with the emailed link,
see the customer's upcoming maintenance, defer it to one of the offered times (the same rules and code
path as `upkeep defer`), confirm it, and open a case; each audited with the user's address and told to
every designated user through the outbox."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta

from sqlmodel import col, select
from starlette.testclient import TestClient

from inventory.cases import Case
from inventory.db import session_scope
from inventory.models import AuditEvent, UpgradeRun
from inventory.outbox import Notice
from tests.portal.conftest import INVENTORY, Portal, csrf_of, sign_in


def audit(portal: Portal, action: str) -> list[AuditEvent]:
    with session_scope(portal.engine) as session:
        return list(
            session.exec(select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id)))
        )


def notices(portal: Portal, kind: str) -> list[Notice]:
    with session_scope(portal.engine) as session:
        return list(session.exec(select(Notice).where(Notice.kind == kind).order_by(col(Notice.id))))


def test_sign_in_see_defer_and_confirm(portal: Portal) -> None:
    run_id = portal.updates["acme-c1"]
    sign_in(portal, "Ann@ACME.example")  # case does not matter
    page = portal.client.get("/maintenance")
    assert "acme-c1" in page.text and "9.8.0 &rarr; 9.9.0" in page.text
    assert "umb-c1" not in page.text  # only the user's own customer
    assert "Thu 26 Nov 2026 02:00 EST (07:00 UTC)" in page.text
    assert "0 used, 2 left" in page.text

    page = portal.client.get(f"/maintenance/update-{run_id}")
    offered = re.findall(r'name="start" value="([^"]+)"', page.text)
    # Windows Tue/Thu 02:00 New York; a deferral moves the update by at most 7 days.
    assert offered == ["2026-12-01T07:00:00+00:00", "2026-12-03T07:00:00+00:00"]
    response = portal.client.post(
        f"/maintenance/update-{run_id}/defer", data={"csrf": csrf_of(page.text), "start": offered[1]}
    )
    assert response.status_code == 200 and "The update was deferred" in response.text
    assert "Thu 3 Dec 2026 02:00 EST (07:00 UTC)" in response.text
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.deferrals == 1
        assert run.slot_start == datetime.fromisoformat(offered[1])
    [event] = audit(portal, "update.deferred")
    assert event.actor == "ann@acme.example" and event.subject == f"run/{run_id}"
    [deferred] = notices(portal, "deferred")
    assert set(deferred.recipients) == {"ops@acme.example", "ann@acme.example", "bob@acme.example"}

    response = portal.client.post(
        f"/maintenance/update-{run_id}/confirm", data={"csrf": csrf_of(response.text)}
    )
    assert "Thank you: your confirmation was recorded" in response.text
    assert "Confirmed by</th><td>ann@acme.example" in response.text
    [event] = audit(portal, "update.confirmed")
    assert event.actor == "ann@acme.example" and event.detail["slot"] == offered[1].replace(
        "+00:00", "+00:00"
    )
    [confirmed] = notices(portal, "confirmed")
    assert set(confirmed.recipients) == {"ops@acme.example", "ann@acme.example", "bob@acme.example"}
    assert "ann@acme.example confirmed the upgrade of your cluster acme-c1" in confirmed.body_text


def test_confirm_sends_the_usual_notice_with_the_next_invite_sequence_once_per_user(portal: Portal) -> None:
    """The issue: Confirm is "sent to all designated users as the usual notice (new invite SEQUENCE)":
    same UID, SEQUENCE + 1, the slot unchanged; a second Confirm by the same user sends nothing, and a
    second user's Confirm keeps the first one's (both confirmed the same time)."""
    import icalendar

    run_id = portal.updates["acme-c1"]
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        before, slot = run.notice_sequence, run.slot_start
    [scheduled] = [n for n in notices(portal, "scheduled") if n.update_ref == f"update-{run_id}"]
    csrf = sign_in(portal, "ann@acme.example")
    response = portal.client.post(f"/maintenance/update-{run_id}/confirm", data={"csrf": csrf})
    assert "Thank you: your confirmation was recorded" in response.text
    [confirmed] = notices(portal, "confirmed")
    assert confirmed.sequence == before + 1 and confirmed.subject.startswith("Upgrade confirmed: acme-c1")
    assert "ann@acme.example confirmed the upgrade of your cluster acme-c1" in confirmed.body_text
    assert set(confirmed.recipients) == {"ops@acme.example", "ann@acme.example", "bob@acme.example"}
    old = icalendar.Calendar.from_ical(scheduled.ics).walk("VEVENT")[0]
    new = icalendar.Calendar.from_ical(confirmed.ics).walk("VEVENT")[0]
    assert str(new["uid"]) == str(old["uid"]) and int(new["sequence"]) == int(old["sequence"]) + 1
    assert new.decoded("dtstart") == old.decoded("dtstart") == slot
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.notice_sequence == before + 1 and run.slot_start == slot

    portal.client.post(f"/maintenance/update-{run_id}/confirm", data={"csrf": csrf})  # again: nothing new
    assert len(notices(portal, "confirmed")) == 1 and len(audit(portal, "update.confirmed")) == 1

    other = TestClient(portal.client.app, base_url="http://testserver")
    bob = sign_in(portal, "bob@acme.example", other)
    page = other.post(f"/maintenance/update-{run_id}/confirm", data={"csrf": bob})
    assert "Confirmed by</th><td>ann@acme.example, bob@acme.example" in page.text
    assert [n.sequence for n in notices(portal, "confirmed")] == [before + 1, before + 2]


def test_open_a_case_and_see_it_listed(portal: Portal) -> None:
    csrf = sign_in(portal, "bob@acme.example")
    response = portal.client.post(
        "/cases",
        data={
            "csrf": csrf,
            "category": "issue",
            "priority": "P2",
            "cluster": "acme-c1",
            "subject": "Node n2 is slow <after> the upgrade",
            "description": "Since Tuesday.",
        },
    )
    assert response.status_code == 200 and "The case was opened" in response.text
    assert "Node n2 is slow &lt;after&gt; the upgrade" in response.text
    with session_scope(portal.engine) as session:
        [case] = session.exec(select(Case)).all()
        assert (case.opened_by, str(case.priority), case.subject) == (
            "bob@acme.example",
            "P2",
            "Node n2 is slow <after> the upgrade",
        )
    [event] = audit(portal, "case.description")
    assert event.detail["description"] == "Since Tuesday."


def test_an_urgent_update_offers_no_deferral(portal: Portal) -> None:
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, portal.updates["acme-c1"])
        assert run is not None
        run.urgent = True
        session.add(run)
    sign_in(portal, "ann@acme.example")
    page = portal.client.get(f"/maintenance/update-{portal.updates['acme-c1']}")
    assert 'name="start"' not in page.text
    assert "No deferral possible: this is an urgent update" in page.text
    response = portal.client.post(
        f"/maintenance/update-{portal.updates['acme-c1']}/defer",
        data={"csrf": csrf_of(page.text), "start": "2026-12-01T07:00:00+00:00"},
    )
    assert response.status_code == 409 and "cannot be deferred" in response.text
    assert audit(portal, "update.deferred") == []


def test_notices_link_to_the_update_in_the_portal_and_offer_only_confirm_when_no_deferral_is_left(
    portal: Portal,
) -> None:
    run_id = portal.updates["acme-c1"]
    url = f"http://testserver/maintenance/update-{run_id}"
    [scheduled] = [n for n in notices(portal, "scheduled") if n.update_ref == f"update-{run_id}"]
    assert f"Confirm or defer it in the maintenance portal (sign in with your designated address): {url}" in (
        scheduled.body_text
    )
    assert "Reply to this email" not in scheduled.body_text
    # Followed while signed out, the link leads there once signed in.
    assert portal.client.get(f"/maintenance/update-{run_id}").url.path == "/signin"
    sign_in(portal, "ann@acme.example")
    assert portal.landed == f"/maintenance/update-{run_id}"
    for _ in range(2):
        page = portal.client.get(f"/maintenance/update-{run_id}")
        offered = re.findall(r'name="start" value="([^"]+)"', page.text)
        response = portal.client.post(
            f"/maintenance/update-{run_id}/defer", data={"csrf": csrf_of(page.text), "start": offered[0]}
        )
        assert "The update was deferred" in response.text
    assert 'name="start"' not in response.text and "0 left" in response.text
    last = notices(portal, "deferred")[-1]
    assert (
        f"Confirm it in the maintenance portal (sign in with your designated address): {url}"
        in last.body_text
    )
    assert "no deferral left" in last.body_text
    # A customer without designated users is told to ask the support contact.
    [theirs] = [
        n for n in notices(portal, "scheduled") if n.update_ref == f"update-{portal.updates['umb-c1']}"
    ]
    assert "maintenance portal" in theirs.body_text  # umbrella has a designated user too


def test_notice_links_are_signed_expire_and_never_open_another_customers_update(portal: Portal) -> None:
    """The notice's link to its update: the same signed link in the text, the HTML and the invite (its
    URL and DESCRIPTION); followed signed out it asks for a sign-in and returns to the update; changed,
    moved to another update, or past its expiry (a week after the slot) it is a clear page; a user of
    another customer gets the same 404 as for an update that does not exist."""
    import html

    import icalendar

    run_id = portal.updates["acme-c1"]
    [scheduled] = [n for n in notices(portal, "scheduled") if n.update_ref == f"update-{run_id}"]
    [link] = re.findall(rf"http://testserver/maintenance/update-{run_id}\?k=[\w.-]+", scheduled.body_text)
    assert f'<a href="{html.escape(link)}">Confirm or defer update-{run_id} in the maintenance portal' in (
        scheduled.body_html
    )
    event = icalendar.Calendar.from_ical(scheduled.ics).walk("VEVENT")[0]
    assert str(event["url"]) == link and link in str(event["description"])
    path = link.removeprefix("http://testserver")

    page = portal.client.get(path)  # signed out: sign in first, then back to the update
    assert page.url.path == "/signin" and "Sign in to open the update your email linked to" in page.text
    sign_in(portal, "ann@acme.example")
    assert portal.landed == f"/maintenance/update-{run_id}"
    page = portal.client.get(path)
    assert page.status_code == 200 and "acme-c1" in page.text

    token = path.split("?k=", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    page = portal.client.get(f"/maintenance/update-{run_id}?k={tampered}")
    assert page.status_code == 400 and "This link is not valid" in page.text and "acme-c1" not in page.text
    other = portal.updates["umb-c1"]
    page = portal.client.get(f"/maintenance/update-{other}?k={token}")  # acme's token on another update
    assert page.status_code == 400 and "This link is not valid" in page.text and "umb-c1" not in page.text

    # Eve (umbrella) follows acme's notice link: the same 404 as for an update that does not exist.
    eve = TestClient(portal.client.app, base_url="http://testserver")
    sign_in(portal, "eve@umbrella.example", eve)
    page = eve.get(path)
    assert page.status_code == 404 and "acme" not in page.text and "9.8.0" not in page.text

    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None and run.slot_end is not None
        slot_end = run.slot_end
    portal.clock.now = slot_end + timedelta(days=7)
    page = portal.client.get(path)
    assert page.status_code == 400 and "This link has expired" in page.text
    portal.clock.now = slot_end + timedelta(days=7) - timedelta(seconds=1)
    page = portal.client.get(path)  # still valid; the 8 h session has ended by then, so: sign in
    assert page.url.path == "/signin" and "Sign in to open the update your email linked to" in page.text


def test_the_deep_link_is_followed_after_sign_in(portal: Portal) -> None:
    run_id = portal.updates["acme-c1"]
    assert portal.client.get(f"/maintenance/update-{run_id}").url.path == "/signin"
    sign_in(portal, "bob@acme.example")
    assert portal.landed == f"/maintenance/update-{run_id}"
    sign_in(portal, "ann@acme.example")  # no deep link followed this time: the overview
    assert portal.landed == "/maintenance"


def test_history_shows_the_customers_finished_updates_only(portal: Portal) -> None:
    from flows.schedule import cancel_update
    from inventory.models import RunState
    from inventory.runs import finish_run

    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, portal.updates["acme-c1"])
        assert run is not None
        run.case_ref = "SUP-4711"
        finish_run(run, RunState.failed, reason="node acme-c1-n2 unhealthy after upgrade", session=session)
        cancel_update(portal.updates["umb-c1"], now=portal.clock.now, reason="not needed", session=session)
    sign_in(portal, "ann@acme.example")
    page = portal.client.get("/history").text
    assert "acme-c1: 9.8.0 &rarr; 9.9.0" in page and "failed" in page
    # the SRE's reason is not the customer's (adv49: see the test below); the case is
    assert "node acme-c1-n2 unhealthy after upgrade" not in page and "SUP-4711" in page
    assert "could not be completed; our support team was alerted" in page
    assert "acme-c1-n1" in page and "not reached" in page  # an ended run's untouched nodes
    assert "umb-c1" not in page


def test_history_tells_the_customer_fixed_words_never_the_sre_reason_or_a_commands_output(
    portal: Portal,
) -> None:
    """History showed a failed or cancelled run's `reason` as it is, and each node's result with the last
    line of its failed step's output: the SRE's words on a customer page. A failed run's reason is the
    exception's text (an SSH command line, a host and its address, a traceback's last line); a cancel's
    names the SRE and what they wrote for their colleagues; a stalled run cancelled adds "(while paused)"
    and the stall's "upkeep resume N" lives in the audit. The customer's notices never carried any of it
    ('failed' says CUSTOMER_FAILURE, each node "did not complete; our support team is checking"): the
    page now says what those say."""
    from inventory.models import Cluster, Node, RunState, StepState
    from inventory.runs import finish_run, start_step

    internal = (
        "ssh upkeep@10.20.0.7:22",
        "sudo /usr/local/bin/upkeep-agent install",
        "Traceback",
        "dpkg returned an error code",
        "cancelled by alice",
        "while paused",
        "umbrella",
    )
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, portal.updates["acme-c1"])
        assert run is not None and run.id is not None
        cluster = session.get(Cluster, run.cluster_id)
        node = session.exec(select(Node).where(Node.hostname == "acme-c1-n2")).one()
        step = start_step(run.id, node.id, "upgrade", session=session)
        step.state, step.finished_at = StepState.failed, portal.clock.now
        step.output_tail = (
            "Traceback (most recent call last):\nE: Sub-process /usr/bin/dpkg returned an error code (1)"
        )
        session.add(step)
        why = (
            "ssh upkeep@10.20.0.7:22 (acme-c1-n2): `sudo /usr/local/bin/upkeep-agent install "
            "/var/tmp/upkeep/upkeep-9.9.0.deb` exited 1: Traceback (most recent call last)"
        )
        finish_run(run, RunState.failed, reason=why, session=session)
        assert cluster is not None
    sign_in(portal, "ann@acme.example")
    page = portal.client.get("/history").text
    assert "acme-c1: 9.8.0 &rarr; 9.9.0" in page and "failed" in page
    for text in internal:
        assert text not in page and html.escape(text) not in page, text
    assert "could not be completed; our support team was alerted" in page
    assert "did not complete; our support team is checking this node" in page

    with session_scope(portal.engine) as session:  # the same cluster's next update, cancelled by an SRE
        from inventory.runs import create_run

        again = create_run(cluster, to_version="9.9.0", source="cli", requested_by="alice", session=session)
        finish_run(
            again,
            RunState.cancelled,
            reason="cancelled by alice: umbrella's rollout holds the cluster limit (while paused)",
            session=session,
        )
    page = portal.client.get("/history").text
    for text in internal:
        assert text not in page and html.escape(text) not in page, text
    assert "cancelled" in page


def test_comment_on_and_escalate_a_case_alerting_the_sre_side(portal: Portal) -> None:
    from inventory.alerts import Alert

    csrf = sign_in(portal, "bob@acme.example")
    portal.client.post(
        "/cases", data={"csrf": csrf, "category": "issue", "priority": "P2", "subject": "Slow"}
    )
    with session_scope(portal.engine) as session:
        [case] = session.exec(select(Case)).all()
    page = portal.client.get(f"/cases/{case.ref}")
    assert page.status_code == 200 and "Nothing written yet" in page.text
    response = portal.client.post(f"/cases/{case.ref}/comment", data={"csrf": csrf, "text": "Still <slow>."})
    assert "Your comment was added" in response.text and "Still &lt;slow&gt;." in response.text
    response = portal.client.post(f"/cases/{case.ref}/escalate", data={"csrf": csrf, "reason": "  "})
    assert response.status_code == 400 and "an escalation needs a reason" in response.text
    assert audit(portal, "case.escalated") == []
    response = portal.client.post(
        f"/cases/{case.ref}/escalate", data={"csrf": csrf, "reason": "No answer for two days"}
    )
    assert "a manager on our side has been alerted" in response.text
    assert "escalated" in response.text
    [event] = audit(portal, "case.escalated")
    assert event.actor == "bob@acme.example" and event.detail["by"] == "customer"
    with session_scope(portal.engine) as session:
        [alert] = session.exec(select(Alert)).all()
        assert case.ref in alert.subject and "No answer for two days" in alert.body_text
    # Another customer's user sees neither the case nor can act on it.
    other = portal.client.__class__(portal.client.app, base_url="http://testserver")
    their_csrf = sign_in(portal, "eve@umbrella.example", client=other)
    assert other.get(f"/cases/{case.ref}").status_code == 404
    response = other.post(f"/cases/{case.ref}/comment", data={"csrf": their_csrf, "text": "mine now"})
    assert response.status_code == 404
    assert len(audit(portal, "case.comment")) == 1


def test_calendar_feed_serves_the_customers_schedule_until_replaced_or_revoked(portal: Portal) -> None:
    from icalendar import Calendar

    csrf = sign_in(portal, "ann@acme.example")
    page = portal.client.post("/maintenance-feed", data={"csrf": csrf})
    [url] = re.findall(r'<code id="feed-url">http://testserver(/feed/[^<]+\.ics)</code>', page.text)
    response = portal.client.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/calendar")
    [event] = Calendar.from_ical(response.content).walk("VEVENT")
    assert "acme-c1" in str(event["SUMMARY"]) and event["UID"].startswith(
        f"update-{portal.updates['acme-c1']}."
    )
    assert b"umb-c1" not in response.content
    other = portal.client.__class__(portal.client.app, base_url="http://testserver")
    assert other.get(url).status_code == 200  # a calendar app has no session: the secret URL is the key
    page = portal.client.post("/maintenance-feed", data={"csrf": csrf})
    [second] = re.findall(r'<code id="feed-url">http://testserver(/feed/[^<]+\.ics)</code>', page.text)
    assert other.get(url).status_code == 404 and other.get(second).status_code == 200
    their_csrf = sign_in(portal, "eve@umbrella.example", client=other)
    other.post("/maintenance-feed/revoke", data={"csrf": their_csrf})  # umbrella's feed, not acme's
    assert other.get(second).status_code == 200
    response = portal.client.post("/maintenance-feed/revoke", data={"csrf": csrf})
    assert "The calendar feed was revoked" in response.text
    assert other.get(second).status_code == 404
    assert other.get("/feed/" + "x" * 43 + ".ics").status_code == 404


def test_a_user_whose_address_was_respelt_confirms_once(portal: Portal) -> None:
    """The import keeps a user whose address changes only in case or +tag (one mailbox, one person) and
    updates the address; her Confirm was matched by the address as written, so she could confirm the
    same time again and send everyone a second notice (adversarial review of #17)."""
    import copy

    run_id = portal.updates["acme-c1"]
    csrf = sign_in(portal, "ann@acme.example")
    portal.client.post(f"/maintenance/update-{run_id}/confirm", data={"csrf": csrf})
    data = copy.deepcopy(INVENTORY)
    data["customers"][0]["portal_users"][0]["email"] = "ann+portal@acme.example"
    portal.reimport(data)
    csrf = sign_in(portal, "ann+portal@acme.example")
    page = portal.client.post(f"/maintenance/update-{run_id}/confirm", data={"csrf": csrf})
    assert page.status_code == 200
    assert len(audit(portal, "update.confirmed")) == 1
    assert len(notices(portal, "confirmed")) == 1


def _stalled_with_node_1_upgraded(portal: Portal, cluster: str = "acme-c1", reason: str = "") -> int:
    """The run of `cluster` left as flows/outcomes.py `_stalled` leaves one after node 1 was upgraded in
    an earlier window: paused, its reason the SRE's (a lease owner, a host, the commands); `reason`: another
    (an SRE's pause)."""
    from inventory.models import Node, NodeStep, RunState, StepState

    run_id = portal.updates[cluster]
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        node = session.exec(select(Node).where(Node.hostname == f"{cluster}-n1")).one()
        for step, tail in (("check", "9.8.0"), ("upgrade", ""), ("verify", "9.9.0")):
            session.add(
                NodeStep(
                    run_id=run_id, node_id=node.id, step=step, state=StepState.succeeded, output_tail=tail
                )
            )
        run.state = RunState.paused
        run.started_at = run.slot_start
        run.lease_owner = "sre-box.internal:4242/abcdef"
        run.reason = (
            "stalled: no node upgraded in 3 windows in a row, the last as the customer's support tunnel was "
            f"closed on 10.0.0.7 at the window's start; not re-slotted: fix the cause, then `upkeep resume "
            f"{run_id}` <b>now</b>"
        )
        run.reason = reason or run.reason
        session.add(run)
    return run_id


def test_an_update_paused_past_its_window_is_shown_stopped_and_one_paused_inside_it_is_not(
    portal: Portal,
) -> None:
    """h-pause: an SRE's pause still on when the window ended told the customer 'stopped' (flows/outcomes.py
    `tell_paused_past_window`): the portal shows it stopped for now, as a stall, never the SRE's words. A
    pause inside the window, not yet told, is not shown stopped."""
    from inventory.runs import PAUSED_STOPPED_REASON

    paused = "paused by request after 1 of 2 nodes (sre-box.internal)"
    run_id = _stalled_with_node_1_upgraded(portal, reason=f"{PAUSED_STOPPED_REASON}{paused}")
    sign_in(portal, "ann@acme.example")
    page = portal.client.get("/maintenance").text
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert "acme-c1: 9.8.0 → 9.9.0 stopped for now" in said and "1 of 2 nodes run 9.9.0" in said, said
    assert "sre-box" not in page and "paused" not in said.lower(), said
    linked = portal.client.get(f"/maintenance/update-{run_id}")
    assert linked.status_code == 200 and "stopped for now" in linked.text

    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.reason = paused  # inside its window: the customer told nothing yet
        session.add(run)
    page = portal.client.get("/maintenance").text
    assert "stopped for now" not in page


def test_a_stalled_update_is_shown_stopped_with_its_nodes_not_vanished(portal: Portal) -> None:
    """A stalled run is neither upcoming (planned) nor past (ended): it vanished from the portal while
    its customer was told it stopped. The maintenance page and the notice's link to the update show it
    stopped for now - our engineers will contact you, nothing more without a new notice - with where
    each node stands; never the SRE's reason (its host, lease owner, commands); not another customer's."""
    run_id = _stalled_with_node_1_upgraded(portal)
    umbrella = _stalled_with_node_1_upgraded(portal, "umb-c1")
    sign_in(portal, "ann@acme.example")

    page = portal.client.get("/maintenance").text
    said = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    assert "acme-c1: 9.8.0 → 9.9.0 stopped for now" in said, said
    assert (
        "Our engineers will contact you; nothing more will be done to your cluster for it without a new"
        in said
    )
    assert (
        "1 of 2 nodes run 9.9.0" in said
        and "acme-c1-n1 9.9.0" in said
        and "acme-c1-n2 9.8.0 (not upgraded)" in said
    )
    assert "Thu 26 Nov 2026 02:00 EST (07:00 UTC)" in said, said
    assert "No maintenance is scheduled. Stopped for now" in said  # not offered to defer or confirm
    for internal in ("10.0.0.7", "sre-box", "upkeep resume", "stalled", "<b>now", "umb-c1"):
        assert internal not in page, internal

    linked = portal.client.get(f"/maintenance/update-{run_id}")
    assert linked.status_code == 200 and "stopped for now" in linked.text and "acme-c1-n2" in linked.text
    assert "10.0.0.7" not in linked.text and "Confirm" not in linked.text
    assert portal.client.get(f"/maintenance/update-{umbrella}").status_code == 404  # another customer's


def test_another_customers_stalled_update_reads_exactly_as_one_that_does_not_exist(portal: Portal) -> None:
    """adv49: a user of acme who tries umbrella's stalled update's id (by URL, or umbrella's notice link
    forwarded to them) gets the page a missing id gets, word for word: nothing tells them the id exists,
    is stalled, or is someone else's. The same for its defer and confirm."""
    umbrella = _stalled_with_node_1_upgraded(portal, "umb-c1")
    mine = _stalled_with_node_1_upgraded(portal)
    missing = umbrella + 1000
    csrf = sign_in(portal, "ann@acme.example")

    def shown(run_id: int, how: str = "get") -> tuple[int, str]:
        if how == "get":
            response = portal.client.get(f"/maintenance/update-{run_id}")
        else:
            response = portal.client.post(f"/maintenance/update-{run_id}/{how}", data={"csrf": csrf})
        return response.status_code, response.text.replace(f"update-{run_id}", "update-N")

    for how in ("get", "confirm", "defer"):
        assert shown(umbrella, how) == shown(missing, how), how
    assert shown(umbrella)[0] == shown(umbrella, "confirm")[0] == 404
    # their own stalled update cannot be deferred or confirmed either (it is not planned), said as missing
    assert shown(mine, "confirm")[0] in (404, 409), shown(mine, "confirm")


def test_the_stopped_notices_link_after_the_update_was_cancelled_shows_where_it_ended(portal: Portal) -> None:
    """adv49: a confused customer: the 'stopped' mail links to the update; an SRE cancels it meanwhile
    (the 'cancelled' mail not read yet); the link now says there is no such update."""
    from inventory.models import RunState
    from inventory.runs import finish_run

    run_id = _stalled_with_node_1_upgraded(portal)
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        finish_run(run, RunState.cancelled, reason="cancelled by alice: x (while paused)", session=session)
    sign_in(portal, "ann@acme.example")
    page = portal.client.get(f"/maintenance/update-{run_id}")
    assert page.status_code == 200 and "cancelled" in page.text, page.text
