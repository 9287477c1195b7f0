"""A support tunnel the customer closes in the middle of an update (#18 item 6), on real parts: the lab's
OpenSSH tunnel server, every node's sshd, the agent's real `ssh -N -R` stopped and started with the
agent's own `tunnel stop|start`, the real dispatcher running the flow.

The moment is chosen, not timed: node 2's upgrade (or staging of the package) is held on the node (lab
faults `hold-upgrade`/`hold-stage`: the agent's command says so in its log and waits until the fault
is cleared), the customer closes the tunnel while it is held, and the node finishes alone once cleared
- unreached, so Upkeep must ask it. Nothing waits on a clock in an assert."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.faults.helpers import steps_of, wait_for
from tests.support.tunnels import (
    NEXT,
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


def test_a_tunnel_closed_mid_upgrade_and_reopened_in_the_window_upgrades_every_node_once(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster = fresh_tunnel_cluster
    hosts = tunnel_hosts(tunnel_lab, cluster)
    first, second, third = hosts
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=5), 0.2
    tunnel_runtime.clock = lambda: SLOT
    tunnel_lab.fault(second, "hold-upgrade")
    waiting: list[str] = []

    def customer() -> None:
        wait_for(lambda: upgrade_held(tunnel_lab, second), f"the upgrade of {second} to be running", 120)
        set_tunnel(tunnel_lab, second, "stop")  # closed while the node upgrades
        reason = wait_for(
            lambda: (r := run_row(tunnel_runtime.engine, run_id).reason).startswith("waiting up to") and r,
            "the run to wait for the tunnel",
            120,
        )
        waiting.append(reason)
        tunnel_lab.fault(second, "clear")  # the node finishes its upgrade alone, unreached
        wait_for(lambda: len(tunnel_lab.upgrade_log(second)) == 1, f"{second} to finish its upgrade", 60)
        set_tunnel(tunnel_lab, second, "start")  # back within the window

    thread, errors = in_background(customer)
    try:
        result = dispatch(max_running=2)
    finally:
        thread.join(180)
        tunnel_lab.fault(second, "clear")
    if errors:
        raise errors[0]

    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert run.slot_start == SLOT  # in its own window: not carried over
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]  # every node exactly once
    # While it waited, `upkeep show` said so (the run's reason), naming the node in progress.
    assert waiting and f"support tunnel on {second}" in waiting[0], waiting
    assert f"closed during the upgrade of {second}" in waiting[0]
    # The step cut by the closed tunnel has an unknown outcome, not a failure; the node was asked
    # (its version) once the tunnel was back, found upgraded, and not upgraded again.
    steps = node_steps(tunnel_runtime.engine, run_id, second)
    (cut,) = [(s, out) for s, state, out in steps if state == "interrupted"]
    assert cut[0] == "upgrade" and "support tunnel closed" in cut[1], steps
    after = steps[[s for s, _, _ in steps].index("upgrade") + 1 :]
    assert [(s, state) for s, state, _ in after][:1] == [("check", "succeeded")], steps
    assert after[0][2] == TARGET  # asked, and it had finished alone
    assert "upgrade" not in [s for s, _, _ in after] and ("verify", "succeeded", TARGET) in after
    assert not [s for s in steps_of(tunnel_runtime.engine, run_id) if s[2] == "failed"]
    for host in (first, third):
        upgraded = [
            state for s, state, _ in node_steps(tunnel_runtime.engine, run_id, host) if s == "upgrade"
        ]
        assert upgraded == ["succeeded"]
    # No failure anywhere: no 'failed' notice, no alert, no case.
    assert [n.kind for n in notices_of(tunnel_runtime.engine, run_id)] == ["started", "completed"]
    assert [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)] == []
    assert all_cases(tunnel_runtime.engine) == []


def test_a_tunnel_closed_mid_upgrade_and_not_reopened_by_the_window_end_carries_over(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster = fresh_tunnel_cluster
    hosts = tunnel_hosts(tunnel_lab, cluster)
    first, second, third = hosts
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    # Waiting is allowed for long, but the window (Thu 03:00-07:00) ends first: once node 2 is under
    # way the clock stands one second before the last moment a node still fits.
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=5), 0.2
    now = [SLOT]
    tunnel_runtime.clock = lambda: now[0]
    late = SLOT + timedelta(hours=4) - tunnel_runtime.per_node_estimate - timedelta(seconds=1)
    tunnel_lab.fault(second, "hold-upgrade")

    def customer() -> None:
        wait_for(lambda: upgrade_held(tunnel_lab, second), f"the upgrade of {second} to be running", 120)
        now[0] = late
        set_tunnel(tunnel_lab, second, "stop")  # closed, and not opened again in this window

    thread, errors = in_background(customer)
    try:
        result = dispatch(max_running=2)
    finally:
        thread.join(180)
    if errors:
        raise errors[0]

    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    # Not failed: planned again for the next window, still holding the cluster.
    assert run.state == RunState.planned, run.reason
    assert run.slot_start == NEXT and run.active_cluster_id is not None
    assert f"support tunnel was closed on {second} during the upgrade of {second}" in run.reason
    assert "1 of 3 nodes done" in run.reason
    assert len(tunnel_lab.upgrade_log(first)) == 1 and len(tunnel_lab.upgrade_log(third)) == 0
    steps = node_steps(tunnel_runtime.engine, run_id, second)
    assert [(s, state) for s, state, _ in steps if s == "upgrade"] == [("upgrade", "interrupted")]
    kinds = [n.kind for n in notices_of(tunnel_runtime.engine, run_id)]
    assert kinds == ["started", "rescheduled"], kinds  # no 'failed', no 'partial'
    moved = notices_of(tunnel_runtime.engine, run_id)[-1]
    for body in (moved.body_text, moved.body_html):
        assert "we could not reach your cluster: the support tunnel was closed" in body
        assert "after 1 of 3 nodes were upgraded" in body
        assert f"on {second}: upkeep-agent tunnel start" in body
    assert [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)] == ["carried-over"]
    assert all_cases(tunnel_runtime.engine) == []

    # Meanwhile the node finishes alone; the customer opens the tunnel; the next window's run asks
    # the node what happened, finds it upgraded, and goes on with the last node. Every node once.
    tunnel_lab.fault(second, "clear")
    wait_for(lambda: len(tunnel_lab.upgrade_log(second)) == 1, f"{second} to finish its upgrade", 60)
    set_tunnel(tunnel_lab, second, "start")
    now[0] = NEXT
    assert dispatch(max_running=2)["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    steps = node_steps(tunnel_runtime.engine, run_id, second)
    resumed = steps[[s for s, _, _ in steps].index("upgrade") + 1 :]
    checks = [out for s, state, out in resumed if s == "check"]
    assert checks == [TARGET] and "upgrade" not in [s for s, _, _ in resumed], steps
    kinds = [n.kind for n in notices_of(tunnel_runtime.engine, run_id) if n.kind != "reminder"]
    assert "failed" not in kinds and kinds[-1] == "completed", kinds
    assert "run-failed" not in [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)]
    assert all_cases(tunnel_runtime.engine) == []


def test_a_tunnel_closed_while_the_package_is_copied_waits_and_copies_again(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    """Closed before any node was touched (the package's copy): nothing changed, so the copy is taken
    again once the tunnel is back, in the same window; no failure, no SRE alert."""
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
    tunnel_lab.fault(second, "hold-stage")
    waiting: list[str] = []

    def customer() -> None:
        wait_for(lambda: upgrade_held(tunnel_lab, second, "stage"), f"the package staged on {second}", 120)
        set_tunnel(tunnel_lab, second, "stop")
        reason = wait_for(
            lambda: (r := run_row(tunnel_runtime.engine, run_id).reason).startswith("waiting up to") and r,
            "the run to wait for the tunnel",
            120,
        )
        waiting.append(reason)
        tunnel_lab.fault(second, "clear")
        set_tunnel(tunnel_lab, second, "start")

    thread, errors = in_background(customer)
    try:
        result = dispatch(max_running=2)
    finally:
        thread.join(180)
        tunnel_lab.fault(second, "clear")
    if errors:
        raise errors[0]

    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert waiting and "closed during the copy of the package to the nodes" in waiting[0], waiting
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    copies = [state for s, state, _ in node_steps(tunnel_runtime.engine, run_id, second) if s == "distribute"]
    assert copies == ["failed", "succeeded"]  # cut, then copied again
    assert [n.kind for n in notices_of(tunnel_runtime.engine, run_id)] == ["started", "completed"]
    assert [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)] == []
    assert all_cases(tunnel_runtime.engine) == []


def test_a_pause_while_the_run_waits_for_a_tunnel_closed_mid_upgrade_is_honoured_and_resume_asks_the_node(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.dispatch import dispatch
    from inventory.models import RunState
    from upkeep.updates import request_stop, resume_run

    cluster = fresh_tunnel_cluster
    hosts = tunnel_hosts(tunnel_lab, cluster)
    second = hosts[1]
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=5), 0.2
    tunnel_runtime.clock = lambda: SLOT
    tunnel_lab.fault(second, "hold-upgrade")

    def customer_then_sre() -> None:
        wait_for(lambda: upgrade_held(tunnel_lab, second), f"the upgrade of {second} to be running", 120)
        set_tunnel(tunnel_lab, second, "stop")
        wait_for(
            lambda: run_row(tunnel_runtime.engine, run_id).reason.startswith("waiting up to"), "the wait", 120
        )
        request_stop(run_id, "pause", engine=tunnel_runtime.engine, actor="sre")

    thread, errors = in_background(customer_then_sre)
    try:
        result = dispatch(max_running=2)
    finally:
        thread.join(180)
    if errors:
        raise errors[0]

    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    # Honoured at the next look, not after the 5 min wait; nothing failed.
    assert run.state == RunState.paused, run.reason
    assert "paused by request after 1 of 3 nodes" in run.reason
    steps = node_steps(tunnel_runtime.engine, run_id, second)
    assert [(s, state) for s, state, _ in steps if s == "upgrade"] == [("upgrade", "interrupted")]
    assert [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)] == []

    # The node finishes alone; the tunnel is opened; the SRE resumes: the node is asked, not upgraded.
    tunnel_lab.fault(second, "clear")
    wait_for(lambda: len(tunnel_lab.upgrade_log(second)) == 1, f"{second} to finish its upgrade", 60)
    set_tunnel(tunnel_lab, second, "start")
    resume_run(run_id, engine=tunnel_runtime.engine, as_json=True)  # `upkeep resume RUN`
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    resumed = node_steps(tunnel_runtime.engine, run_id, second)[len(steps) :]
    assert [out for s, _, out in resumed if s == "check"] == [TARGET]
    assert "upgrade" not in [s for s, _, _ in resumed]
    assert "failed" not in [n.kind for n in notices_of(tunnel_runtime.engine, run_id)]
    assert all_cases(tunnel_runtime.engine) == []
