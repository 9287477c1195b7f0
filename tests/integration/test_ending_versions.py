"""Adversarial pass on #21: an ending's node versions never call a node whose upgrade was interrupted
(the process crashed or was taken over while its upgrade command ran) "not upgraded": nobody knows
what it runs now. SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from flows.endings import mid_way, versions_at_stop
from inventory.db import session_scope
from inventory.models import Cluster, Customer, Node, RunState, StepState, UpgradeRun
from inventory.run_report import node_rows
from inventory.runs import close_open_steps, create_run, end_step, finish_run, start_step


def test_an_interrupted_upgrade_is_not_reported_as_not_upgraded(engine: Any) -> None:
    with session_scope(engine) as session:
        customer = Customer(name="acme", timezone="UTC")
        session.add(customer)
        session.flush()
        cluster = Cluster(customer_id=customer.id or 0, name="acme-c1", version="9.8.0")
        session.add(cluster)
        session.flush()
        nodes = [
            Node(cluster_id=cluster.id or 0, hostname=f"n{i}", address=f"n{i}", position=i) for i in (1, 2, 3)
        ]
        session.add_all(nodes)
        session.flush()
        run = create_run(cluster, to_version="9.10.0", source="support", requested_by="t", session=session)
        assert run.id is not None
        for step, output in (("check", "9.8.0"), ("upgrade", ""), ("health", "ok"), ("verify", "9.10.0")):
            done = start_step(run.id, nodes[0].id, step, session=session)
            end_step(done, StepState.succeeded, output=output, session=session)
        checked = start_step(run.id, nodes[1].id, "check", session=session)
        end_step(checked, StepState.succeeded, output="9.8.0", session=session)
        start_step(run.id, nodes[1].id, "upgrade", session=session)  # the process died while it ran
        session.flush()
        close_open_steps(run.id, "interrupted: taken over", session=session)  # the take-over closes it
        finish_run(run, RunState.cancelled, reason="cancelled by sre: customer asked", session=session)
        session.flush()
        run_id = run.id
    with session_scope(engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        rows = {row["node"]: row["result"] for row in node_rows(run, session)}
        versions = versions_at_stop(run, session)
        assert mid_way(run, session)
    assert rows == {"n1": "upgraded", "n2": "interrupted", "n3": "not reached"}
    assert versions == (
        "n1: 9.10.0",
        "n2: upgrade did not complete; our support team is checking this node",
        "n3: 9.8.0 (not upgraded)",
    )


def test_only_an_interrupted_node_still_makes_the_ending_mid_way(engine: Any) -> None:
    """Node 1 interrupted, nothing verified: the cluster may be mixed, so the ending lists versions."""
    with session_scope(engine) as session:
        customer = Customer(name="acme", timezone="UTC")
        session.add(customer)
        session.flush()
        cluster = Cluster(customer_id=customer.id or 0, name="acme-c1", version="9.8.0")
        session.add(cluster)
        session.flush()
        node = Node(cluster_id=cluster.id or 0, hostname="n1", address="n1", position=1)
        session.add(node)
        session.flush()
        run = create_run(cluster, to_version="9.10.0", source="support", requested_by="t", session=session)
        assert run.id is not None
        start_step(run.id, node.id, "upgrade", session=session)
        session.flush()
        finish_run(run, RunState.cancelled, reason="cancelled by sre: customer asked", session=session)
        session.flush()
        assert mid_way(run, session)
        assert versions_at_stop(run, session) == (
            "n1: upgrade did not complete; our support team is checking this node",
        )
