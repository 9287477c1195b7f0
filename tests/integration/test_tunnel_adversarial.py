"""Adversarial pass on #18 (second pass: the tunnel closing mid-run, item 6, and `tunnel status`), on real
parts: the lab's OpenSSH tunnel server with its session reporter, every node's sshd, the agent's real
`ssh -N -R` stopped and started with `tunnel stop|start` as the customer, the real dispatcher.

Moments are ordered, not timed: node 2's upgrade is held on the node (lab fault `hold-upgrade`) while the
customer acts, and where the order between the customer and Upkeep matters the test holds Upkeep's
check until the customer is done (an Event, not a sleep). The decision-level siblings (flapping, window
taken back, the wait's edge, cancel while waiting) are fake-based:
tests/unit/test_tunnel_adversarial_flow.py."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

from tests.faults.helpers import wait_for
from tests.support.tunnels import (
    SLOT,
    TARGET,
    alerts_of,
    all_cases,
    in_background,
    node_steps,
    notices_of,
    plan_in_windows,
    run_row,
    set_tunnel,
    tunnel_hosts,
    upgrade_held,
)
from upkeep.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.prefect]


def test_a_tunnel_the_customer_restarts_under_a_node_upgrade_is_not_a_failure(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer runs `tunnel stop` then `tunnel start` while node 2 upgrades: Upkeep's connection is
    cut, and by the time it asks whether a tunnel closed, every tunnel answers again. The tunnel server
    says the node's tunnel is newer than Upkeep's connection: the tunnel closed under it. Not a failure
    (before: the run failed, the customer was told 'failed', an SRE alert and a case). Found by the
    adversarial pass on #18."""
    import flows.product_update as product_update
    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster = fresh_tunnel_cluster
    hosts = tunnel_hosts(tunnel_lab, cluster)
    second = hosts[1]
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=5), 0.2
    tunnel_runtime.clock = lambda: SLOT
    tunnel_lab.fault(second, "hold-upgrade")
    restarted = threading.Event()
    real = product_update.closed_under

    def checked_after_the_restart(*args: Any, **kwargs: Any) -> Any:
        restarted.wait(120)  # Upkeep's look comes after the customer's `tunnel start`
        return real(*args, **kwargs)

    monkeypatch.setattr(product_update, "closed_under", checked_after_the_restart)

    def customer() -> None:
        try:
            wait_for(lambda: upgrade_held(tunnel_lab, second), f"the upgrade of {second} to be running", 120)
            set_tunnel(tunnel_lab, second, "stop")
            set_tunnel(tunnel_lab, second, "start")
        finally:
            restarted.set()
        tunnel_lab.fault(second, "clear")  # the node finishes its upgrade alone

    thread, errors = in_background(customer)
    try:
        result = dispatch(max_running=2)
    finally:
        restarted.set()
        thread.join(180)
        tunnel_lab.fault(second, "clear")
    if errors:
        raise errors[0]

    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]  # every node exactly once
    steps = node_steps(tunnel_runtime.engine, run_id, second)
    assert [s for s, state, _ in steps if state == "interrupted"] == ["upgrade"], steps
    assert [state for _, state, _ in steps if state == "failed"] == [], steps
    assert [n.kind for n in notices_of(tunnel_runtime.engine, run_id)] == ["started", "completed"]
    assert [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)] == []
    assert all_cases(tunnel_runtime.engine) == []


def test_tunnel_status_calls_for_attention_while_a_run_waits_mid_run_for_a_closed_tunnel(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    """While a running update waits for node 2's tunnel (closed under its upgrade), `upkeep tunnel
    status` must say so and exit 3: the update needs the tunnel now. Before: only planned updates were
    looked at, so the status was all quiet (exit 0) exactly while a run waited on the customer. Found by
    the adversarial pass on #18."""
    from flows.dispatch import dispatch
    from flows.tunnels import tunnel_status
    from inventory.db import session_scope
    from inventory.models import RunState
    from inventory.repo import customer_of, get_cluster

    cluster = fresh_tunnel_cluster
    hosts = tunnel_hosts(tunnel_lab, cluster)
    second = hosts[1]
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    with session_scope(tunnel_runtime.engine) as session:
        customer_name = customer_of(get_cluster(cluster, session=session), session=session).name
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=5), 0.2
    tunnel_runtime.clock = lambda: SLOT
    tunnel_lab.fault(second, "hold-upgrade")
    seen: list[dict[str, Any]] = []

    def customer() -> None:
        wait_for(lambda: upgrade_held(tunnel_lab, second), f"the upgrade of {second} to be running", 120)
        set_tunnel(tunnel_lab, second, "stop")
        wait_for(
            lambda: run_row(tunnel_runtime.engine, run_id).reason.startswith("waiting up to"),
            "the run to wait for the tunnel",
            120,
        )
        # An hour after the slot started: no planned update is near, the running one waits.
        later = SLOT + timedelta(hours=1)
        seen.extend(tunnel_status(tunnel_runtime, customer=customer_name, now=later))
        tunnel_lab.fault(second, "clear")
        set_tunnel(tunnel_lab, second, "start")

    thread, errors = in_background(customer)
    try:
        dispatch(max_running=2)
    finally:
        thread.join(180)
        tunnel_lab.fault(second, "clear")
    if errors:
        raise errors[0]

    (entry,) = [e for e in seen if e["cluster"] == cluster]
    assert [n["open"] for n in entry["nodes"]] == [True, False, True], entry["nodes"]
    (line,) = entry["attention"]
    assert f"update {run_id}" in line and second in line and "closed" in line, entry["attention"]
    assert [u["update"] for u in entry["updates_soon"]] == [run_id]
    assert entry["updates_soon"][0]["needs_tunnel_now"] is True
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert run.to_version == TARGET
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
