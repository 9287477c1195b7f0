"""Product updates against the real lab: real sshd nodes, real nginx, real Prefect harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from flows.product_update import product_update
from inventory.db import session_scope
from inventory.models import Cluster, NodeStep, Release, RunState, UpgradeRun
from tests.integration.conftest import nodes_of
from tests.support import forkserver

pytestmark = [pytest.mark.lab, pytest.mark.prefect]
TARGET = "9.10.0"


def _versions(lab: Any, cluster: str) -> list[str]:
    return [node["version"] for node in nodes_of(lab, cluster)]


def _upgrades(lab: Any, cluster: str) -> list[int]:
    return [len(lab.upgrade_log(node["hostname"])) for node in nodes_of(lab, cluster)]


def _run_of(engine: Any, cluster: str) -> UpgradeRun:
    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        return session.exec(select(UpgradeRun).where(UpgradeRun.cluster_id == row.id)).one()


def test_three_node_update_upgrades_every_node_exactly_once(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any
):
    state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)

    assert state.is_completed(), state.message
    assert _versions(lab, fresh_cluster) == [TARGET] * 3
    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    run = _run_of(lab_runtime_any_db.engine, fresh_cluster)
    assert run.state == RunState.succeeded and run.active_cluster_id is None
    with session_scope(lab_runtime_any_db.engine) as session:
        assert session.exec(select(Cluster).where(Cluster.name == fresh_cluster)).one().version == TARGET
        steps = session.exec(select(NodeStep).where(NodeStep.run_id == run.id)).all()
    for step in ("pre-flight", "distribute", "check", "upgrade", "health", "verify"):
        assert sum(1 for s in steps if s.step == step and s.state == "succeeded") == 3, step
    # One upgrade log line per node, and the nodes went strictly one after another.
    started = [lab.upgrade_log(node["hostname"])[0]["at"] for node in nodes_of(lab, fresh_cluster)]
    assert started == sorted(started)


def test_failing_node_halts_the_run_and_later_nodes_are_untouched(
    lab: Any, fresh_cluster: str, lab_runtime: Any
):
    first, second, third = (node["hostname"] for node in nodes_of(lab, fresh_cluster))
    lab.fault(second, "fail-upgrade")
    try:
        state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)
    finally:
        lab.fault(second, "clear")

    assert state.is_failed()
    run = _run_of(lab_runtime.engine, fresh_cluster)
    assert run.state == RunState.failed
    assert second in run.reason and "simulated fault" in run.reason
    assert _versions(lab, fresh_cluster) == [TARGET, "9.8.0", "9.8.0"]
    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]
    with session_scope(lab_runtime.engine) as session:
        touched = {
            s.step
            for s in session.exec(select(NodeStep).where(NodeStep.run_id == run.id)).all()
            if s.node_id is not None and s.step in ("check", "upgrade", "health", "verify")
        }
        third_steps = [
            s
            for s in session.exec(select(NodeStep).where(NodeStep.run_id == run.id)).all()
            if s.step in ("check", "upgrade") and _hostname(session, s.node_id) == third
        ]
    assert "upgrade" in touched and third_steps == []
    assert first != second


def _hostname(session: Any, node_id: int | None) -> str | None:
    from inventory.models import Node

    node = session.get(Node, node_id) if node_id else None
    return node.hostname if node else None


def test_package_with_wrong_checksum_touches_no_node(lab: Any, fresh_cluster: str, lab_runtime: Any):
    with session_scope(lab_runtime.engine) as session:
        release = session.exec(select(Release).where(Release.version == TARGET)).one()
        release.sha256 = "0" * 64  # the served file no longer matches the catalog's sum
        session.add(release)

    state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)

    assert state.is_failed()
    run = _run_of(lab_runtime.engine, fresh_cluster)
    assert "SHA-256" in run.reason
    assert _versions(lab, fresh_cluster) == ["9.8.0"] * 3
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
    for node in nodes_of(lab, fresh_cluster):
        assert not any((lab.node_dir(node["hostname"]) / "incoming").iterdir()), "package reached a node"


def test_unknown_host_key_is_refused(lab: Any, fresh_cluster: str, lab_runtime: Any, tmp_path: Any):
    ports = {f"[127.0.0.1]:{node['port']}" for node in nodes_of(lab, fresh_cluster)}
    known_hosts = tmp_path / "known_hosts_without_cluster"
    lines = Path(lab.status()["known_hosts"]).read_text().splitlines()
    known_hosts.write_text("\n".join(line for line in lines if line.split()[0] not in ports) + "\n")
    lab_runtime.ssh.known_hosts = known_hosts

    state = product_update(cluster=fresh_cluster, to_version=TARGET, return_state=True)

    assert state.is_failed()
    run = _run_of(lab_runtime.engine, fresh_cluster)
    assert "unknown host key refused" in run.reason
    assert _versions(lab, fresh_cluster) == ["9.8.0"] * 3
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]
    assert known_hosts.read_text().count("[127.0.0.1]") == len(lines) - 3  # nothing was learned


def test_dry_run_prints_the_plan_and_writes_nothing(
    lab: Any, fresh_cluster: str, lab_settings: Any, tmp_path: Any
):
    env = _cli_env(lab_settings)
    forkserver.run(["inventory", "import", str(lab.inventory_path)], env=env, check=True)
    db = lab_settings.home / "upkeep.db"
    before = db.read_bytes()
    out = forkserver.run(["update", fresh_cluster, "--to", TARGET, "--dry-run"], env=env, check=True).stdout
    assert "dry run" in out and f"9.8.0→{TARGET}" in out
    for node in nodes_of(lab, fresh_cluster):
        assert node["hostname"] in out
    plan = json.loads(
        forkserver.run(
            ["update", fresh_cluster, "--to", TARGET, "--dry-run", "--json"], env=env, check=True
        ).stdout
    )
    assert (plan["dry_run"], plan["cluster"], plan["from_version"], plan["to_version"]) == (
        True,
        fresh_cluster,
        "9.8.0",
        TARGET,
    )
    assert [n["hostname"] for n in plan["nodes"]] == [n["hostname"] for n in nodes_of(lab, fresh_cluster)]
    assert db.read_bytes() == before
    assert _upgrades(lab, fresh_cluster) == [0, 0, 0]


def test_update_refuses_a_bad_version_before_connecting(lab: Any, fresh_cluster: str, lab_settings: Any):
    env = _cli_env(lab_settings)
    forkserver.run(["inventory", "import", str(lab.inventory_path)], env=env, check=True)
    result = forkserver.run(["update", fresh_cluster, "--to", "1.0; touch /tmp/pwned"], env=env)
    assert result.returncode == 1
    assert "'1.0; touch /tmp/pwned' is not a version" in result.stderr
    assert "Traceback" not in result.stderr


def _cli_env(settings: Any) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("UPKEEP_")}
    env.update(
        {
            "UPKEEP_HOME": str(settings.home),
            "UPKEEP_FILESERVER_URL": settings.fileserver_url,
            "UPKEEP_FILESERVER_PASSWORD": settings.fileserver_password.get_secret_value(),
            "UPKEEP_FILESERVER_CA": str(settings.fileserver_ca),
            "UPKEEP_KNOWN_HOSTS": str(settings.known_hosts),
            "UPKEEP_SSH_KEY": str(settings.ssh_key),
        }
    )
    return env
