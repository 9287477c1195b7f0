"""Adversarial review of the portal's "update as it is now" pages (adv53): another customer's update in
every state, by every method, reads as one that does not exist; the customer's own ended update never
shows what the SRE or the nodes said."""

from __future__ import annotations

import re

import pytest
from sqlmodel import select

from inventory.db import session_scope
from inventory.models import Cluster, Node, NodeStep, RunState, StepState, UpgradeRun
from inventory.runs import finish_run
from tests.portal.conftest import Portal, sign_in

INTERNAL = ("10.0.0.7", "sre-box", "bob", "sudo", "<b>", "lease", "systemctl")


def _put(portal: Portal, cluster: str, state: str) -> int:
    """The update of `cluster` as left in `state`, with the SRE's and the nodes' words in it."""
    run_id = portal.updates[cluster]
    with session_scope(portal.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        node = session.exec(select(Node).where(Node.hostname == f"{cluster}-n1")).one()
        session.add(
            NodeStep(
                run_id=run_id,
                node_id=node.id,
                step="upgrade",
                state=StepState.failed,
                output_tail="ssh root@10.0.0.7 sudo systemctl restart app: <b>exit 3</b> on sre-box",
            )
        )
        run.lease_owner = "sre-box.internal:4242/lease"
        run.started_at = run.slot_start
        if state == "unannounced":
            run.slot_start = run.slot_end = None
        elif state == "running":
            run.state = RunState.running
        elif state == "paused":
            run.state, run.reason = RunState.paused, "paused by bob: 10.0.0.7 `sudo du` <b>now</b>"
        elif state == "stalled":
            run.state, run.reason = RunState.paused, "stalled: no node upgraded in 3 windows in a row"
        elif state != "planned":
            finish_run(run, RunState(state), reason="cancelled by bob on sre-box: 10.0.0.7", session=session)
        session.add(run)
    return run_id


STATES = ("planned", "unannounced", "running", "paused", "stalled", "succeeded", "failed", "cancelled")


@pytest.mark.parametrize("state", STATES)
def test_another_customers_update_in_any_state_reads_as_a_missing_one_by_any_method(
    portal: Portal, state: str
) -> None:
    theirs = _put(portal, "umb-c1", state)
    missing = int("9" * len(str(theirs)))  # as many digits: the same length of page
    assert missing not in portal.updates.values()
    sign_in(portal, "ann@acme.example")
    csrf = re.search(r'name="csrf" value="([^"]+)"', portal.client.get("/maintenance").text)
    assert csrf

    def seen(run_id: int) -> list[tuple[int, str]]:
        path = f"/maintenance/update-{run_id}"
        answers = [
            portal.client.get(path),
            portal.client.head(path),
            portal.client.post(f"{path}/confirm", data={"csrf": csrf.group(1)}),
            portal.client.post(
                f"{path}/defer", data={"csrf": csrf.group(1), "start": "2026-12-01T07:00:00+00:00"}
            ),
        ]
        return [
            (
                r.status_code,
                r.text.replace(f"update-{run_id}", "update-N") + r.headers.get("content-length", ""),
            )
            for r in answers
        ]

    mine = seen(missing)
    assert [status for status, _ in mine] == [404, 404, 404, 404], mine
    assert seen(theirs) == mine
    for path in ("/maintenance", "/history"):
        assert "umb-c1" not in portal.client.get(path).text, path


@pytest.mark.parametrize("state", ("running", "paused", "failed", "cancelled"))
def test_the_customers_own_update_page_never_shows_what_the_sre_or_the_nodes_said(
    portal: Portal, state: str
) -> None:
    ours = _put(portal, "acme-c1", state)
    sign_in(portal, "ann@acme.example")
    for path in (f"/maintenance/update-{ours}", "/maintenance", "/history"):
        page = portal.client.get(path)
        assert page.status_code == 200, path
        for internal in INTERNAL:
            assert internal not in page.text, (path, internal)
    assert "acme-c1" in portal.client.get(f"/maintenance/update-{ours}").text


def test_a_cluster_moved_to_another_customer_takes_its_update_with_it(portal: Portal) -> None:
    """Inventory re-import moved acme-c1 to umbrella while its update runs: acme's old link is the 404 of
    a missing id; what umbrella sees is a product question (it is their cluster now)."""
    ours = _put(portal, "acme-c1", "running")
    sign_in(portal, "ann@acme.example")
    assert portal.client.get(f"/maintenance/update-{ours}").status_code == 200
    with session_scope(portal.engine) as session:
        cluster = session.exec(select(Cluster).where(Cluster.name == "acme-c1")).one()
        other = session.exec(select(Cluster).where(Cluster.name == "umb-c1")).one()
        cluster.customer_id = other.customer_id
        session.add(cluster)
    assert portal.client.get(f"/maintenance/update-{ours}").status_code == 404
    assert "acme-c1" not in portal.client.get("/maintenance").text


def test_a_run_starting_while_the_overview_is_read_is_listed_once(portal: Portal) -> None:
    """PostgreSQL (read committed): the overview reads the upcoming list, then the in-progress one; the
    dispatcher starts the run in between. The second query's WHERE sees it running, and SQLAlchemy hands
    back the object the first read loaded (still `planned`): the update was listed twice, once with
    Confirm/Defer under "upcoming" and once "in progress" with the first read's node rows."""
    from sqlmodel import Session

    from flows import portal_actions as actions
    from inventory.models import Customer

    if portal.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises the two transactions; the race needs PostgreSQL")
    run_id = portal.updates["acme-c1"]

    def acme(session: Session) -> Customer:
        return session.exec(select(Customer).where(Customer.name == "acme")).one()

    with session_scope(portal.engine) as page:
        upcoming = actions.upcoming_updates(acme(page), session=page)  # the overview's first read
        assert [u.id for u in upcoming] == [run_id]
        with session_scope(portal.engine) as flow:  # the dispatcher starts it meanwhile
            run = flow.get(UpgradeRun, run_id)
            assert run is not None
            run.state, run.started_at = RunState.running, run.slot_start
            flow.add(run)
        stopped = actions.stopped_updates(acme(page), session=page)
        going = actions.in_progress_updates(acme(page), session=page, stopped=stopped, upcoming=upcoming)
        assert [p.id for p in going] == []  # shown once, as it was when the overview began


def test_a_user_removed_while_signed_in_sees_the_update_no_more(portal: Portal) -> None:
    """Ann is removed from acme's designated users (inventory re-import) while her session is open, the
    in-progress page in her browser: a reload, the overview and a download send her to sign in."""
    import copy

    import yaml

    from inventory.importer import import_inventory
    from tests.portal.conftest import INVENTORY

    ours = _put(portal, "acme-c1", "running")
    sign_in(portal, "ann@acme.example")
    assert portal.client.get(f"/maintenance/update-{ours}").status_code == 200
    removed = copy.deepcopy(INVENTORY)
    removed["customers"][0]["portal_users"] = [{"email": "bob@acme.example"}]
    portal.inventory.write_text(yaml.safe_dump(removed, sort_keys=False))
    import_inventory(portal.inventory, engine=portal.engine, actor="test")
    for path in (f"/maintenance/update-{ours}", "/maintenance", "/history", "/downloads/9.9.0"):
        response = portal.client.get(path, follow_redirects=False)
        assert response.status_code in (302, 303) and response.headers["location"].endswith("/signin"), path


@pytest.mark.parametrize("state", ("running", "paused", "succeeded"))
def test_node_names_and_versions_a_node_reports_are_only_text(portal: Portal, state: str) -> None:
    """A node's name (a row written by other means than the import) and the version its agent reports
    (the verify step's output) are printed on the in-progress and ended pages, never markup."""
    ours = _put(portal, "acme-c1", state)
    evil = '<img src=x onerror="alert(1)">'
    with session_scope(portal.engine) as session:
        node = session.exec(select(Node).where(Node.hostname == "acme-c1-n2")).one()
        node.hostname = f"n2{evil}"
        session.add(node)
        for step, tail in (("check", f"9.8.0{evil}"), ("upgrade", ""), ("verify", f"9.9.0{evil}")):
            session.add(
                NodeStep(run_id=ours, node_id=node.id, step=step, state=StepState.succeeded, output_tail=tail)
            )
    sign_in(portal, "ann@acme.example")
    for path in (f"/maintenance/update-{ours}", "/maintenance", "/history"):
        page = portal.client.get(path).text
        assert "<img" not in page, path
    assert "&lt;img" in portal.client.get(f"/maintenance/update-{ours}").text


def test_odd_update_numbers_are_a_plain_404_by_any_method(portal: Portal) -> None:
    """Negative, huge (past PostgreSQL's integer), non-ASCII digits and non-numeric N on the update page
    and its actions: a 404, never a 500 or the database's error."""
    sign_in(portal, "ann@acme.example")
    csrf = re.search(r'name="csrf" value="([^"]+)"', portal.client.get("/maintenance").text)
    assert csrf
    for ref in (
        "update--1",
        "update-2147483648",
        "update-99999999999999999999",
        "update-²",
        "update-1e3",
        "-5",
    ):
        path = f"/maintenance/{ref}"
        assert portal.client.get(path).status_code == 404, ref
        assert portal.client.head(path).status_code == 404, ref
        for action in ("confirm", "defer"):
            answer = portal.client.post(f"{path}/{action}", data={"csrf": csrf.group(1)})
            assert answer.status_code == 404, (ref, action, answer.status_code)
