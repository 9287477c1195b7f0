"""Tunnel clusters in their maintenance windows, on real parts (the lab's OpenSSH tunnel server, every
node's sshd, the agent's real `ssh -N -R`) driven by the real dispatcher: the reminders ask the customer
to open the tunnel, a tunnel closed when the window starts moves the run to the next window with a plain
notice (no failure, no case), and a 3-node tunnel cluster is updated end to end."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select

from tests.support.tunnels import (
    NEXT,
    SLOT,
    TARGET,
    alerts_of,
    all_cases,
    announce,
    notices_of,
    plan_in_windows,
    run_row,
    set_tunnel,
    step_rows,
    tunnel_hosts,
)
from upkeep.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.prefect]


def test_a_3_node_tunnel_cluster_is_reminded_to_open_and_updated_end_to_end(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster, hosts = fresh_tunnel_cluster, tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    assert len(hosts) == 3
    for host in hosts:
        set_tunnel(tunnel_lab, host, "stop")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)

    # 48 h before: the 72 h reminder. The tunnels are closed (the customer opens them for the window):
    # the pre-flight says so in the reminder, with the command per node, and is no failure.
    tunnel_runtime.clock = lambda: SLOT - timedelta(hours=48)
    dispatch(max_running=2)
    (reminder,) = [n for n in notices_of(tunnel_runtime.engine, run_id) if n.kind == "reminder"]
    assert reminder.idempotency_key.endswith(":72h") and reminder.state == "sent"
    for body in (reminder.body_text, reminder.body_html):
        assert "open the support tunnel" in body
        for host in hosts:
            assert host in body
        assert "upkeep-agent tunnel start" in body
    assert "FAILED" not in reminder.body_text
    assert f"support tunnel closed on {', '.join(sorted(hosts))}: not checked" in reminder.body_text
    assert [a.kind for a in alerts_of(tunnel_runtime.engine, run_id)] == []  # theirs to open: no SRE alert
    assert run_row(tunnel_runtime.engine, run_id).state == RunState.planned

    # The 24 h reminder asks it again.
    tunnel_runtime.clock = lambda: SLOT - timedelta(hours=20)
    dispatch(max_running=2)
    (day_before,) = [
        n for n in notices_of(tunnel_runtime.engine, run_id) if n.idempotency_key.endswith(":24h")
    ]
    assert "upkeep-agent tunnel start" in day_before.body_text and hosts[2] in day_before.body_text

    # The customer opens the tunnels; the window starts; the dispatcher runs the update through them.
    for host in hosts:
        set_tunnel(tunnel_lab, host, "start")
    tunnel_runtime.clock = lambda: SLOT
    result = dispatch(max_running=2)
    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]  # every node exactly once
    assert [n["version"] for n in tunnel_lab.status()["nodes"] if n["cluster"] == cluster] == [TARGET] * 3
    for host in hosts:  # through the tunnel: the node's sshd saw the session come in over it
        assert "forwarded-tcpip" in (tunnel_lab.node_dir(host) / "logs" / "tunnel.log").read_text()
    kinds = [n.kind for n in notices_of(tunnel_runtime.engine, run_id)]
    assert kinds[-2:] == ["started", "completed"] and "failed" not in kinds
    assert all_cases(tunnel_runtime.engine) == []


def test_a_tunnel_closed_at_the_window_start_carries_over_with_a_notice_and_no_case(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster, hosts = fresh_tunnel_cluster, tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    first, second, third = hosts
    set_tunnel(tunnel_lab, first, "start")
    set_tunnel(tunnel_lab, second, "start")
    set_tunnel(tunnel_lab, third, "stop")
    run_id = announce(tunnel_runtime.engine, plan_in_windows(tunnel_runtime.engine, cluster))
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(seconds=1), 0.2  # waited for, in vain

    tunnel_runtime.clock = lambda: SLOT
    result = dispatch(max_running=2)

    assert result["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    # Not failed: planned again, in the next window, still holding the cluster.
    assert run.state == RunState.planned, run.reason
    assert run.slot_start == NEXT and run.active_cluster_id is not None
    assert f"support tunnel was closed on {third}" in run.reason
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [0, 0, 0]
    for host in hosts:  # nothing was sent to any node
        assert not any(p.name != ".keep" for p in (tunnel_lab.node_dir(host) / "incoming").iterdir())
    notices = notices_of(tunnel_runtime.engine, run_id)
    assert [n.kind for n in notices] == ["scheduled", "rescheduled"]  # no 'started', 'failed', 'partial'
    (_, moved) = notices
    assert moved.state == "sent"  # delivered by the same tick
    for body in (moved.body_text, moved.body_html):
        assert "we could not reach your cluster: the support tunnel was closed" in body
        assert f"on {third}: upkeep-agent tunnel start" in body
    assert all_cases(tunnel_runtime.engine) == []  # the customer's tunnel, not an incident: no case
    alerts = alerts_of(tunnel_runtime.engine, run_id)
    assert [a.kind for a in alerts] == ["carried-over"] and third in alerts[0].body_text
    # The wait (1 s, a look every 0.2 s) is one step, not a pre-flight per node per look.
    steps = step_rows(tunnel_runtime.engine, run_id)
    assert [s.step for s in steps].count("pre-flight") == 3, [(s.step, s.node_id) for s in steps]
    (wait,) = [s for s in steps if s.step == "tunnel-wait"]
    assert wait.node_id is None and wait.state == "succeeded" and "waiting up to" in wait.detail
    assert wait.output_tail.startswith(f"still closed on {third} after ") and "look(s)" in wait.output_tail

    # A tick before the next window starts nothing. The new slot is a day on: both its reminders' moments
    # passed before the 'rescheduled' notice (which asks for the tunnel, with the command): none goes.
    tunnel_runtime.clock = lambda: NEXT - timedelta(hours=1)
    assert dispatch(max_running=2)["started"] == []
    assert [n for n in notices_of(tunnel_runtime.engine, run_id) if n.kind == "reminder"] == []

    # The customer opens the tunnel; at the next window the run goes through, every node once.
    set_tunnel(tunnel_lab, third, "start")
    tunnel_runtime.clock = lambda: NEXT
    assert dispatch(max_running=2)["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    kinds = [n.kind for n in notices_of(tunnel_runtime.engine, run_id) if n.kind != "reminder"]
    assert kinds == ["scheduled", "rescheduled", "started", "completed"]
    assert all_cases(tunnel_runtime.engine) == []


def test_a_tunnel_opened_while_the_run_waits_at_the_window_start_is_used_in_that_window(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    import threading
    import time

    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster, hosts = fresh_tunnel_cluster, tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    for host in hosts[:2]:
        set_tunnel(tunnel_lab, host, "start")
    set_tunnel(tunnel_lab, hosts[2], "stop")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=5), 0.3
    tunnel_runtime.clock = lambda: SLOT
    seen: list[str] = []

    def customer() -> None:  # opens the tunnel once the run says it waits for it
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            reason = run_row(tunnel_runtime.engine, run_id).reason
            if reason.startswith("waiting up to"):
                seen.append(reason)
                set_tunnel(tunnel_lab, hosts[2], "start")
                return
            time.sleep(0.1)

    opener = threading.Thread(target=customer)
    opener.start()
    try:
        result = dispatch(max_running=2)
    finally:
        opener.join()

    assert result["started"] == [run_id]
    assert seen and hosts[2] in seen[0] and "5 min" in seen[0]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.succeeded, run.reason
    assert run.slot_start == SLOT  # in the same window, not carried over
    steps = step_rows(tunnel_runtime.engine, run_id)
    # Pre-flight at the start (3 nodes) and once more when every node answered: none per look.
    assert [s.step for s in steps].count("pre-flight") == 6, [(s.step, s.node_id) for s in steps]
    (wait,) = [s for s in steps if s.step == "tunnel-wait"]
    assert wait.output_tail.startswith("every node answered after "), wait.output_tail
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    kinds = [n.kind for n in notices_of(tunnel_runtime.engine, run_id)]
    assert kinds == ["started", "completed"]  # no 'rescheduled', no 'failed'
    assert all_cases(tunnel_runtime.engine) == []


def test_a_cancel_while_the_run_waits_for_the_tunnel_is_honoured_then_and_never_told_rescheduled(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    """`upkeep cancel` of a run waiting for a closed tunnel: honoured at the next look (not after the
    whole wait), the customer is told it was cancelled with the SRE's reason, never 'rescheduled'."""
    import threading
    import time

    from flows.dispatch import dispatch
    from inventory.models import RunState
    from upkeep.updates import request_stop

    cluster, hosts = fresh_tunnel_cluster, tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    for host in hosts[:2]:
        set_tunnel(tunnel_lab, host, "start")
    set_tunnel(tunnel_lab, hosts[2], "stop")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    tunnel_runtime.tunnel_wait, tunnel_runtime.tunnel_poll = timedelta(minutes=1), 0.2
    tunnel_runtime.clock = lambda: SLOT - timedelta(hours=48)  # announced: the 72 h reminder
    dispatch(max_running=2)
    tunnel_runtime.clock = lambda: SLOT
    asked: list[str] = []

    def sre() -> None:  # cancels once the run says it waits for the tunnel
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if run_row(tunnel_runtime.engine, run_id).reason.startswith("waiting up to"):
                asked.append(
                    request_stop(
                        run_id, "cancel", engine=tunnel_runtime.engine, actor="sre", reason="withdrawn"
                    )
                )
                return
            time.sleep(0.1)

    canceller = threading.Thread(target=sre)
    canceller.start()
    try:
        result = dispatch(max_running=2)
    finally:
        canceller.join()

    assert result["started"] == [run_id] and asked
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.cancelled, run.reason
    assert "cancelled by sre: withdrawn" in run.reason
    assert run.slot_start == SLOT
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [0, 0, 0]
    notices = [n for n in notices_of(tunnel_runtime.engine, run_id) if n.kind != "reminder"]
    assert [n.kind for n in notices] == ["cancelled"]  # no 'rescheduled' after a cancel
    assert "withdrawn" in notices[0].body_text
    assert all_cases(tunnel_runtime.engine) == []


def test_a_tunnel_carry_over_past_the_release_deadline_is_held_with_an_sre_alert_not_moved(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    """The next window is past the release's deadline: schedule integrity holds the update and alerts
    the SRE; the customer is not told it moved to a slot the rules forbid."""
    from flows.dispatch import dispatch
    from inventory.db import session_scope
    from inventory.models import Release, RunState

    cluster, hosts = fresh_tunnel_cluster, tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    for host in hosts[:2]:
        set_tunnel(tunnel_lab, host, "start")
    set_tunnel(tunnel_lab, hosts[2], "stop")
    run_id = plan_in_windows(tunnel_runtime.engine, cluster)
    deadline = SLOT + timedelta(hours=12)  # before Friday's window
    with session_scope(tunnel_runtime.engine) as session:
        release = session.exec(select(Release).where(Release.version == TARGET)).one()
        kept, release.deadline = release.deadline, deadline
        session.add(release)
    tunnel_runtime.tunnel_wait = timedelta(0)
    tunnel_runtime.clock = lambda: SLOT
    try:
        assert dispatch(max_running=2)["started"] == [run_id]
    finally:
        with session_scope(tunnel_runtime.engine) as session:
            release = session.exec(select(Release).where(Release.version == TARGET)).one()
            release.deadline = kept
            session.add(release)

    run = run_row(tunnel_runtime.engine, run_id)
    moved_past = run.state == RunState.planned and not run.held_reason and run.slot_start > deadline
    assert not moved_past, run.reason
    assert "rescheduled" not in [n.kind for n in notices_of(tunnel_runtime.engine, run_id)]
    alerts = alerts_of(tunnel_runtime.engine, run_id)
    assert any("deadline" in a.body_text for a in alerts), [a.body_text for a in alerts]
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [0, 0, 0]


def test_the_reminders_of_a_carried_over_run_go_at_the_new_slots_own_times(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    """Carried over two days on (Thursday and Saturday windows): the new slot's 72 h moment passed
    before the 'rescheduled' notice, so that reminder never goes; its 24 h reminder goes at its own
    moment. Before, told_at (the first announcement, days earlier) made both moments look announced:
    the 72 h one went at the next tick, right after the notice."""
    from flows.dispatch import dispatch
    from inventory.models import RunState

    cluster, hosts = fresh_tunnel_cluster, tunnel_hosts(tunnel_lab, fresh_tunnel_cluster)
    for host in hosts[:2]:
        set_tunnel(tunnel_lab, host, "start")
    set_tunnel(tunnel_lab, hosts[2], "stop")
    run_id = announce(
        tunnel_runtime.engine, plan_in_windows(tunnel_runtime.engine, cluster, days=("thu", "sat"))
    )
    tunnel_runtime.tunnel_wait = timedelta(0)
    saturday = SLOT + timedelta(days=2)

    def reminders() -> list[str]:
        found = [n for n in notices_of(tunnel_runtime.engine, run_id) if n.kind == "reminder"]
        assert all(n.sequence == 2 and f"on {hosts[2]}:" in n.body_text for n in found)
        return [n.idempotency_key.rsplit(":", 1)[1] for n in found]

    tunnel_runtime.clock = lambda: SLOT
    assert dispatch(max_running=2)["started"] == [run_id]
    run = run_row(tunnel_runtime.engine, run_id)
    assert run.state == RunState.planned and run.slot_start == saturday, run.reason
    assert [n.kind for n in notices_of(tunnel_runtime.engine, run_id)] == ["scheduled", "rescheduled"]

    tunnel_runtime.clock = lambda: SLOT + timedelta(minutes=1)  # the next tick
    dispatch(max_running=2)
    assert reminders() == []
    tunnel_runtime.clock = lambda: saturday - timedelta(hours=24, minutes=1)
    dispatch(max_running=2)
    assert reminders() == []
    tunnel_runtime.clock = lambda: saturday - timedelta(hours=24) + timedelta(minutes=1)
    dispatch(max_running=2)
    assert reminders() == ["24h"]
