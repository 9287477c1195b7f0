"""Updates under way in the portal: a run `running`, or `paused` by an SRE (not stopped for now), was
neither upcoming (planned) nor past (ended), so the customer who got the 'started' mail opened the portal
and their update was gone. The overview's "In progress" section and the update's own page (the 'started'
mail links to it) show where each node stands, in the customer's words; any of the customer's update
links opens the update as it is now (ended: its History entry); another customer's id, or an update not
announced yet, reads exactly as one that does not exist."""

from __future__ import annotations

import html
import re

from sqlmodel import col, select
from starlette.testclient import TestClient

from inventory.db import session_scope
from inventory.models import Cluster, Node, NodeStep, RunState, StepState, UpgradeRun
from inventory.outbox import Notice
from tests.portal.conftest import VENDOR, Portal, sign_in


def said(page: str) -> str:
    """The page's text as a reader sees it (tags dropped, entities read, spaces collapsed)."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _under_way(portal: Portal, cluster: str = "acme-c1", *, state: RunState = RunState.running) -> int:
    """The update of `cluster` started in its slot with node 1 upgraded and node 2 being upgraded now;
    `state` paused: as an SRE leaves it with `upkeep pause` (their reason: a host, their name)."""
    run_id = portal.updates[cluster]
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        first, second = (
            session.exec(select(Node).where(Node.hostname == f"{cluster}-n{i}")).one() for i in (1, 2)
        )
        for step, tail in (("check", "9.8.0"), ("upgrade", ""), ("verify", "9.9.0")):
            session.add(
                NodeStep(
                    run_id=run_id, node_id=first.id, step=step, state=StepState.succeeded, output_tail=tail
                )
            )
        session.add(
            NodeStep(
                run_id=run_id, node_id=second.id, step="check", state=StepState.succeeded, output_tail="9.8.0"
            )
        )
        run.state = state
        run.started_at = run.slot_start
        run.active_cluster_id = run.cluster_id
        run.lease_owner = "sre-box.internal:4242/abcdef"
        if state is RunState.paused:
            run.reason = "paused by bob: 10.0.0.7 disk at 95%, `sudo du -sh /var` <b>now</b>"
        session.add(run)
    return run_id


INTERNAL = ("10.0.0.7", "sre-box", "paused by bob", "sudo du", "<b>now")


def test_a_running_update_is_shown_in_progress_with_its_nodes(portal: Portal) -> None:
    run_id = _under_way(portal)
    _under_way(portal, "umb-c1")
    sign_in(portal, "ann@acme.example")

    page = portal.client.get("/maintenance").text
    text = said(page)
    assert "In progress" in text and "acme-c1: 9.8.0 → 9.9.0 in progress" in text, text
    assert (
        "started in your maintenance window of Thu 26 Nov 2026 02:00 EST (07:00 UTC) and is in progress"
        in text
    ), text
    assert "1 of 2 nodes run 9.9.0" in text
    assert "acme-c1-n1 9.9.0" in text and "acme-c1-n2 being upgraded now" in text, text
    assert "No maintenance is scheduled." in text  # it is not upcoming: nothing to confirm or defer
    assert "umb-c1" not in page and "Stopped for now" not in text

    linked = portal.client.get(f"/maintenance/update-{run_id}")
    assert linked.status_code == 200
    text = said(linked.text)
    assert "Upgrade of acme-c1 to 9.9.0: in progress" in text, text
    assert "acme-c1-n2 being upgraded now" in text and "1 of 2 nodes run 9.9.0" in text
    assert "Confirm" not in linked.text and "/defer" not in linked.text and 'name="start"' not in linked.text


def test_an_update_paused_by_an_sre_is_in_progress_in_customer_words(portal: Portal) -> None:
    run_id = _under_way(portal, state=RunState.paused)
    sign_in(portal, "ann@acme.example")
    for path in ("/maintenance", f"/maintenance/update-{run_id}"):
        page = portal.client.get(path)
        assert page.status_code == 200
        text = said(page.text)
        assert "in progress" in text and "acme-c1-n1 9.9.0" in text, text
        assert "stopped for now" not in text.lower()
        for internal in (*INTERNAL, "paused", "bob"):
            assert internal not in page.text, (path, internal)
    # no action on it: confirm and defer are refused as for an update that is not upcoming
    csrf = re.search(r'name="csrf" value="([^"]+)"', portal.client.get("/maintenance").text)
    assert csrf
    for how in ("confirm", "defer"):
        response = portal.client.post(
            f"/maintenance/update-{run_id}/{how}",
            data={"csrf": csrf.group(1), "start": "2026-12-01T07:00:00+00:00"},
        )
        assert response.status_code == 404, how


def test_a_paused_update_later_stalled_moves_from_in_progress_to_stopped_never_both(portal: Portal) -> None:
    """The two lists are one partition: a paused run the portal calls stopped is not in progress."""
    run_id = _under_way(portal, state=RunState.paused)
    sign_in(portal, "ann@acme.example")
    text = said(portal.client.get("/maintenance").text)
    assert "In progress" in text and "Stopped for now" not in text
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.reason = "stalled: no node upgraded in 3 windows in a row"
        session.add(run)
    text = said(portal.client.get("/maintenance").text)
    assert "Stopped for now" in text and "In progress" not in text, text
    assert text.count("acme-c1: 9.8.0 → 9.9.0") == 1
    linked = said(portal.client.get(f"/maintenance/update-{run_id}").text)
    assert "stopped for now" in linked and "in progress" not in linked


def test_another_customers_or_an_unannounced_update_reads_exactly_as_one_that_does_not_exist(
    portal: Portal,
) -> None:
    """A user of acme trying umbrella's running or SRE-paused update (by id, or umbrella's notice link
    forwarded to them), or one of acme's own updates that was never announced: the page a missing id gets,
    word for word."""
    from flows.portal_links import PortalLinks, link_expiry
    from inventory.runs import create_run

    running = _under_way(portal, "umb-c1")
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, portal.updates["acme-c1"])
        assert run is not None
        # acme's announced update ends; a new one of the same cluster is planned but not announced yet
        from inventory.runs import finish_run

        finish_run(run, RunState.succeeded, session=session)
        cluster = session.exec(select(Cluster).where(Cluster.name == "acme-c1")).one()
        unannounced = create_run(
            cluster, to_version="9.9.0", source="cli", requested_by="sre", session=session
        )
        assert unannounced.slot_start is None and unannounced.id is not None
        unannounced_id = unannounced.id
        umbrella = session.exec(select(Cluster).where(Cluster.name == "umb-c1")).one()
        umbrella_customer = umbrella.customer_id
    missing = max(running, unannounced_id) + 1000
    sign_in(portal, "ann@acme.example")

    def shown(run_id: int) -> tuple[int, str]:
        response = portal.client.get(f"/maintenance/update-{run_id}")
        return response.status_code, response.text.replace(f"update-{run_id}", "update-N")

    assert shown(missing)[0] == 404
    assert shown(running) == shown(missing)
    assert shown(unannounced_id) == shown(missing)
    links = PortalLinks("http://testserver", VENDOR.portal_key())  # type: ignore[misc]
    forwarded = links.update_link(running, umbrella_customer, expires=link_expiry(None, portal.clock.now))
    response = portal.client.get(forwarded.removeprefix("http://testserver"))
    assert (response.status_code, response.text.replace(f"update-{running}", "update-N")) == shown(missing)
    with session_scope(portal.engine) as session:  # umbrella's run, paused by an SRE: still nothing
        run = session.get(UpgradeRun, running)
        assert run is not None
        run.state, run.reason = RunState.paused, "paused by carol"
        session.add(run)
    assert shown(running) == shown(missing)
    assert "umb-c1" not in portal.client.get("/maintenance").text


def test_cluster_names_are_escaped_on_the_in_progress_pages(portal: Portal) -> None:
    """The import refuses such a name; a row written by other means is still only text on the page."""
    run_id = _under_way(portal)
    with session_scope(portal.engine) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == "acme-c1")).one()
        cluster.name = '<script>alert("x")</script>'
        session.add(cluster)
    sign_in(portal, "ann@acme.example")
    for path in ("/maintenance", f"/maintenance/update-{run_id}"):
        page = portal.client.get(path).text
        assert "<script>alert" not in page and "&lt;script&gt;alert" in page, path


def test_an_update_that_completes_while_its_page_is_open_shows_its_history_entry(portal: Portal) -> None:
    """Reloading the page (or following the 'started' mail's link later) after the run ended shows it as
    History does, not a 404: completed, node by node, never the SRE's reason."""
    from inventory.runs import finish_run

    run_id = _under_way(portal)
    sign_in(portal, "ann@acme.example")
    assert "in progress" in portal.client.get(f"/maintenance/update-{run_id}").text
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        node = session.exec(select(Node).where(Node.hostname == "acme-c1-n2")).one()
        for step, tail in (("upgrade", ""), ("verify", "9.9.0")):
            session.add(
                NodeStep(
                    run_id=run_id, node_id=node.id, step=step, state=StepState.succeeded, output_tail=tail
                )
            )
        finish_run(run, RunState.succeeded, reason="done on sre-box.internal", session=session)
    page = portal.client.get(f"/maintenance/update-{run_id}")
    assert page.status_code == 200
    text = said(page.text)
    assert "Upgrade of acme-c1 to 9.9.0: succeeded" in text, text
    assert "acme-c1-n2 9.8.0 9.9.0" in text and "in progress" not in text
    assert "sre-box" not in page.text
    assert "In progress" not in said(portal.client.get("/maintenance").text)


def test_the_started_notice_links_to_the_update_in_the_portal(portal: Portal) -> None:
    from flows.run_notices import queue_run_notice

    run_id = _under_way(portal)
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        assert queue_run_notice(run, "started", session=session, now=portal.clock.now, vendor=VENDOR)
    with session_scope(portal.engine) as session:
        [started] = session.exec(
            select(Notice).where(Notice.kind == "started").order_by(col(Notice.id))
        ).all()
    [link] = re.findall(rf"http://testserver/maintenance/update-{run_id}\?k=[\w.-]+", started.body_text)
    assert f'href="{html.escape(link)}"' in started.body_html
    assert "Confirm or defer" not in started.body_html  # nothing to confirm once it started
    sign_in(portal, "ann@acme.example")
    page = portal.client.get(link.removeprefix("http://testserver"))
    assert page.status_code == 200 and "Upgrade of acme-c1 to 9.9.0: in progress" in said(page.text)
    eve = TestClient(portal.client.app, base_url="http://testserver")
    sign_in(portal, "eve@umbrella.example", eve)
    other = eve.get(link.removeprefix("http://testserver"))
    missing = eve.get(f"/maintenance/update-{run_id + 1000}")
    assert other.status_code == 404
    assert other.text.replace(f"update-{run_id}", "N") == missing.text.replace(f"update-{run_id + 1000}", "N")


def test_an_update_started_at_once_without_a_slot_is_shown_once_its_started_mail_went_out(
    portal: Portal,
) -> None:
    """`upkeep update` starts a run at once: no slot, no 'scheduled' mail; the 'started' mail is its
    announcement, and its link opened a 404. Before that mail (pre-flight) it reads as missing."""
    from flows.run_notices import queue_run_notice
    from inventory.runs import create_run, finish_run

    with session_scope(portal.engine) as session:
        planned = session.get(UpgradeRun, portal.updates["acme-c1"])
        assert planned is not None
        finish_run(planned, RunState.cancelled, session=session)
        cluster = session.exec(select(Cluster).where(Cluster.name == "acme-c1")).one()
        run = create_run(cluster, to_version="9.9.0", source="cli", requested_by="sre", session=session)
        run.started_at = portal.clock.now
        session.add(run)
        session.flush()
        assert run.id is not None and run.slot_start is None
        run_id = run.id
    sign_in(portal, "ann@acme.example")

    def shown(run_id: int) -> tuple[int, str]:
        response = portal.client.get(f"/maintenance/update-{run_id}")
        return response.status_code, response.text.replace(f"update-{run_id}", "update-N")

    assert shown(run_id) == shown(run_id + 1000)  # pre-flight: nothing told yet
    assert "In progress" not in said(portal.client.get("/maintenance").text)
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        assert queue_run_notice(run, "started", session=session, now=portal.clock.now, vendor=VENDOR)
    text = said(portal.client.get(f"/maintenance/update-{run_id}").text)
    assert "Upgrade of acme-c1 to 9.9.0: in progress" in text, text
    assert "started Sun 22 Nov 2026 19:00 EST (Mon 23 Nov 00:00 UTC)" in text, text
    assert "acme-c1-n1 9.8.0 (not upgraded yet)" in text
    assert "acme-c1: 9.8.0 → 9.9.0 in progress" in said(portal.client.get("/maintenance").text)


def test_a_run_stalling_while_the_overview_is_read_is_listed_once(portal: Portal) -> None:
    """PostgreSQL (read committed): the overview reads the stopped list, then the in-progress one; a run
    running at the first read stalls before the second. Read twice, it was in neither list (or both, in
    the other order); the overview now hands its stopped list to the in-progress one."""
    import pytest
    from sqlmodel import Session

    from flows import portal_actions as actions
    from inventory.models import Customer

    if portal.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises the two transactions; the race needs PostgreSQL")
    run_id = _under_way(portal)

    def acme(session: Session) -> Customer:
        return session.exec(select(Customer).where(Customer.name == "acme")).one()

    with session_scope(portal.engine) as page:
        stopped = actions.stopped_updates(acme(page), session=page)  # the overview's first read
        assert stopped == []
        with session_scope(portal.engine) as flow:  # the run stalls meanwhile
            run = flow.get(UpgradeRun, run_id)
            assert run is not None
            run.state, run.reason = RunState.paused, "stalled: no node upgraded in 3 windows in a row"
            flow.add(run)
        going = actions.in_progress_updates(acme(page), session=page, stopped=stopped)
        assert [p.id for p in going] == [run_id]  # shown once, as it was when the overview began
