"""Remote faults the integration tests do not cover yet: a node that refuses our key, a node whose
host key changed, a connection cut in the middle of an upgrade, and a node that never answers.

Already covered elsewhere (not repeated): connection refused, disk full and unhealthy at pre-flight,
command timeout (hang), non-zero exit (fail-upgrade), unhealthy after the upgrade -
tests/integration/test_update_faults.py and test_product_update.py; unknown host key -
test_product_update.py and test_lab.py.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.product_update import product_update
from inventory.models import RunState
from tasks.ssh import SshSettings
from tests.faults.helpers import (
    FROM,
    TARGET,
    host_key,
    hosts,
    known_hosts_with,
    new_ssh_key,
    node_port,
    point_node_at,
    runs_of,
    steps_of,
    upgrades,
    wait_for,
)
from tests.faults.netfaults import Blackhole, CuttableProxy

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.prefect]


def _ssh(runtime: Any, **changes: Any) -> None:
    current = runtime.ssh
    runtime.ssh = SshSettings(
        known_hosts=changes.get("known_hosts", current.known_hosts),
        key_path=changes.get("key_path", current.key_path),
        connect_timeout=changes.get("connect_timeout", current.connect_timeout),
    )


def _failed_run(runtime: Any, cluster: str) -> Any:
    state = product_update(cluster=cluster, to_version=TARGET, return_state=True)
    assert state.is_failed(), state.message
    (run,) = runs_of(runtime.engine, cluster)
    assert run.state == RunState.failed and run.active_cluster_id is None
    return run


def _step_finished(engine: Any, run_id: int, hostname: str, step: str) -> float:
    """When the step's row was closed, as a POSIX timestamp."""
    from sqlmodel import col, select

    from inventory.db import session_scope
    from inventory.models import Node, NodeStep

    with session_scope(engine) as session:
        finished = session.exec(
            select(NodeStep.finished_at)
            .join(Node, col(Node.id) == col(NodeStep.node_id))
            .where(NodeStep.run_id == run_id, Node.hostname == hostname, NodeStep.step == step)
        ).one()
    assert finished is not None
    return finished.timestamp()


def test_wrong_key_is_an_authentication_failure_and_no_node_is_touched(
    faults_lab: Any, faults_cluster: str, faults_runtime: Any, tmp_path: Path, record: Any
) -> None:
    # Every host key is known and right; only the client key is one no node has authorized.
    _ssh(faults_runtime, key_path=new_ssh_key(tmp_path / "stranger" / "id_ed25519"))

    run = _failed_run(faults_runtime, faults_cluster)

    assert run.reason.startswith("pre-flight failed, no node touched")
    assert all(
        f"{host}: SSH failed: Authentication failed" in run.reason
        for host in hosts(faults_lab, faults_cluster)
    )
    assert upgrades(faults_lab, faults_cluster) == [0, 0, 0]
    assert "distribute" not in {step for _, step, _, _ in steps_of(faults_runtime.engine, run.id or 0)}
    record("remote (SSH)", "authentication failure: known host, key not authorized")


def test_changed_host_key_is_refused_as_a_possible_man_in_the_middle(
    faults_lab: Any, faults_cluster: str, faults_runtime: Any, tmp_path: Path, record: Any
) -> None:
    first, second, _ = hosts(faults_lab, faults_cluster)
    # known_hosts now holds the first node's key for the second node's address: exactly what the
    # client sees when someone else answers on that address.
    swapped = known_hosts_with(
        faults_lab, tmp_path / "known_hosts", {node_port(faults_lab, second): host_key(faults_lab, first)}
    )
    _ssh(faults_runtime, known_hosts=swapped)

    run = _failed_run(faults_runtime, faults_cluster)

    assert run.reason.startswith("pre-flight failed, no node touched")
    assert f"{second}: host key CHANGED" in run.reason and "possible man-in-the-middle" in run.reason
    assert first not in run.reason  # the nodes with their right keys passed pre-flight
    assert upgrades(faults_lab, faults_cluster) == [0, 0, 0]
    assert swapped.read_text().count(host_key(faults_lab, first)) == 2  # refused, never "learned"
    record("remote (SSH)", "changed host key: refused, 'possible man-in-the-middle'")


def test_connect_timeout_on_a_blackholed_port_fails_fast_and_touches_no_node(
    faults_lab: Any, faults_cluster: str, faults_runtime: Any, record: Any
) -> None:
    second = hosts(faults_lab, faults_cluster)[1]
    _ssh(faults_runtime, connect_timeout=1.0)
    with Blackhole() as hole:
        point_node_at(faults_runtime.engine, second, hole.port)
        started = time.time()
        run = _failed_run(faults_runtime, faults_cluster)

    assert run.reason.startswith("pre-flight failed, no node touched") and second in run.reason
    assert f"{second}: cannot connect: no SSH answer within 1 s" in run.reason, run.reason
    # Timed by our own record of the node's pre-flight, not around the whole flow: what follows the
    # failure (diagnostics, Prefect's bookkeeping) once took 60 s when the Prefect test server's SQLite
    # was locked, which says nothing about the connect timeout.
    took = _step_finished(faults_runtime.engine, run.id or 0, second, "pre-flight") - started
    assert took < 15, f"a 1 s connect timeout took {took:.1f} s to fail the node's pre-flight"
    assert upgrades(faults_lab, faults_cluster) == [0, 0, 0]
    record("remote (SSH)", "connect timeout: blackholed port (accepts, never answers)")


def test_connection_cut_mid_upgrade_fails_the_run_and_the_next_run_asks_the_node(
    faults_lab: Any, faults_cluster: str, faults_runtime: Any, tmp_path: Path, record: Any
) -> None:
    first, second, third = hosts(faults_lab, faults_cluster)
    # The second node's upgrade takes 1.5 s, so the cut lands inside it.
    agent_json = faults_lab.node_dir(second) / "agent.json"
    config = json.loads(agent_json.read_text())
    agent_json.write_text(json.dumps({**config, "upgrade_seconds": 1.5}))
    engine = faults_runtime.engine
    with CuttableProxy(node_port(faults_lab, second)) as proxy:
        point_node_at(engine, second, proxy.port)
        known = {proxy.port: host_key(faults_lab, second)}
        _ssh(faults_runtime, known_hosts=known_hosts_with(faults_lab, tmp_path / "known_hosts", known))

        def cut_when_the_upgrade_runs() -> None:
            def upgrading() -> bool:
                runs = runs_of(engine, faults_cluster)
                return bool(runs) and any(
                    host == second and step == "upgrade" and state == "started"
                    for host, step, state, _ in steps_of(engine, runs[0].id or 0)
                )

            wait_for(upgrading, f"the upgrade of {second}")
            time.sleep(0.4)
            cut_at.append(time.time())
            proxy.cut()

        cut_at: list[float] = []
        cutter = threading.Thread(target=cut_when_the_upgrade_runs, daemon=True)
        cutter.start()
        run = _failed_run(faults_runtime, faults_cluster)
        upgrade_failed_at = _step_finished(engine, run.id or 0, second, "upgrade")
        noticed_after = upgrade_failed_at - cut_at[0]  # not the whole flow: diagnostics follow the failure
        cutter.join(5)

        assert proxy.cuts == 1
        # Said as it is: the connection was lost and the node's outcome is unknown - not "the upgrade
        # failed", and not a command timeout after waiting out the whole command timeout.
        assert f"{second}: 'upkeep-agent upgrade {TARGET}' was cut off" in run.reason, run.reason
        assert "outcome on the node is unknown" in run.reason
        assert noticed_after < faults_runtime.command_timeout / 2, (
            f"noticed {noticed_after:.1f} s after the cut"
        )
        assert upgrades(faults_lab, faults_cluster)[2] == 0  # halted: the third node untouched
        assert upgrades(faults_lab, faults_cluster)[0] == 1
        # The node finishes (or not) on its own; nobody can know which without asking it.
        time.sleep(1.6)
        done_alone = upgrades(faults_lab, faults_cluster)[1]

        again = product_update(cluster=faults_cluster, to_version=TARGET, return_state=True)

    assert again.is_completed(), again.message
    assert upgrades(faults_lab, faults_cluster) == [1, 1, 1]  # exactly once each, whatever the cut did
    retry = runs_of(engine, faults_cluster)[-1]
    steps = steps_of(engine, retry.id or 0)
    checked = [out for host, step, state, out in steps if host == second and step == "check"]
    upgraded = [host for host, step, state, _ in steps if step == "upgrade" and state == "succeeded"]
    # The retry asked the second node its version and acted on the answer, not on the record.
    assert checked == [TARGET if done_alone else FROM]
    assert (second in upgraded) == (not done_alone) and first not in upgraded and third in upgraded
    agent_json.write_text(json.dumps(config))
    record("remote (SSH)", "connection cut mid-upgrade (TCP proxy): halt, node state asked on retry")
