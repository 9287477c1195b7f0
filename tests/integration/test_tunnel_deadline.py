"""A partial carry-over (a support tunnel closed mid-update, some nodes done) whose next window is past
the release deadline is held with the SRE's 'held' alert, like a full one (fdd18df), not moved past the
deadline. Real parts: the tunnel lab, the real dispatcher; the moment is chosen with the lab's
`hold-upgrade` fault (see test_tunnel_midrun), not timed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from tests.faults.helpers import wait_for
from tests.support.tunnels import (
    SLOT,
    TARGET,
    alerts_of,
    all_cases,
    in_background,
    notices_of,
    plan_in_windows,
    run_row,
    set_tunnel,
    tunnel_hosts,
    upgrade_held,
)
from upkeep.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.prefect]


def test_a_partial_tunnel_carry_over_past_the_release_deadline_is_held_with_an_sre_alert_not_moved(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.dispatch import dispatch
    from inventory.db import session_scope
    from inventory.models import Release, RunState

    first, second, third = hosts = tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    run_id = plan_in_windows(tunnel_runtime.engine, fresh_tunnel_cluster)
    deadline = SLOT + timedelta(hours=12)  # before Friday's window
    with session_scope(tunnel_runtime.engine) as session:
        release = session.exec(select(Release).where(Release.version == TARGET)).one()
        release.deadline = deadline
        session.add(release)
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(0), 0.2  # no wait: carried over
    tunnel_runtime.clock = lambda: SLOT
    tunnel_lab.fault(second, "hold-upgrade")

    def customer() -> None:  # closes node 2's tunnel while its upgrade is held on the node
        wait_for(lambda: upgrade_held(tunnel_lab, second), f"the upgrade of {second} to be running", 120)
        set_tunnel(tunnel_lab, second, "stop")

    thread, errors = in_background(customer)
    try:
        assert dispatch(max_running=2)["started"] == [run_id]
    finally:
        thread.join(180)
        tunnel_lab.fault(second, "clear")
    if errors:
        raise errors[0]

    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.planned and run.held_reason, run.reason  # held: it will not start
    assert "1 of 3 nodes done: the cluster runs mixed versions" in run.held_reason, run.held_reason
    assert "past the release deadline" in run.held_reason
    assert len(tunnel_lab.upgrade_log(first)) == 1 and len(tunnel_lab.upgrade_log(third)) == 0
    kinds = [n.kind for n in notices_of(tunnel_runtime.engine, run_id)]
    assert kinds == ["started"], kinds  # never told 'rescheduled' to a slot the rules forbid
    alerts = alerts_of(tunnel_runtime.engine, run_id)
    assert [a.kind for a in alerts] == ["held"], [a.kind for a in alerts]
    assert "deadline" in alerts[0].body_text and "1 of 3 nodes done" in alerts[0].body_text
    assert all_cases(tunnel_runtime.engine) == []
    # The dispatcher never starts a held run, whatever the clock.
    tunnel_runtime.clock = lambda: SLOT + timedelta(days=1)
    assert dispatch(max_running=2)["started"] == []
