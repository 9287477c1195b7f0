"""The customer's reverse SSH tunnel on real parts: the lab's OpenSSH tunnel server, every node's sshd and
the node agent's `tunnel start` running a real `ssh -N -R`. Upkeep reaches a node only through it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.ssh import FabricRunner, HostKeyError, RemoteError, SshSettings, SshTarget, TunnelClosed
from tests.support.labs import running_lab
from upkeep.lab import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(
        tmp_path_factory.mktemp("tunnellab"),
        clusters=3,
        nodes=2,
        access="tunnel",
        upgrade_seconds=0.1,
        health_delay=0.1,
    ) as lab:
        yield lab


def _nodes(lab: Lab) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = lab.status()["nodes"]
    return nodes


def _inventory_node(lab: Lab, hostname: str) -> tuple[dict[str, Any], dict[str, Any]]:
    import yaml

    data = yaml.safe_load(lab.inventory_path.read_text())
    for customer in data["customers"]:
        for cluster in customer["clusters"]:
            for node in cluster["nodes"]:
                if node["hostname"] == hostname:
                    return cluster["access"], node
    raise AssertionError(hostname)


def _target(lab: Lab, hostname: str, host_key: str | None = None) -> SshTarget:
    access, node = _inventory_node(lab, hostname)
    server = SshTarget(
        f"tunnel:{access['host']}",
        access["host"],
        access["port"],
        access["user"],
        host_key=access["host_key"],
    )
    return SshTarget(
        hostname,
        "127.0.0.1",
        node["tunnel_port"],
        node["user"],
        server,
        host_key=host_key or node["host_key"],
        via_tunnel=True,
    )


def _settings(lab: Lab) -> SshSettings:
    return SshSettings(known_hosts=lab.known_hosts, key_path=lab.ssh_key, connect_timeout=5.0)


def _started(lab: Lab, hostname: str) -> None:
    code, out = lab.tunnel(hostname, "start")
    assert code == 0 and out.startswith(("tunnel up", "tunnel already running")), out


def _ssh(lab: Lab, key: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    port = lab.status()["tunnel"]["port"]
    argv = [
        "ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "ExitOnForwardFailure=yes",
        "-o", "ConnectTimeout=5", *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _identity(lab: Lab, hostname: str) -> Path:
    return lab.node_dir(hostname) / "tunnel" / "id_ed25519"


def test_upkeep_reaches_a_node_only_while_its_tunnel_is_open(tlab: Lab) -> None:
    node = _nodes(tlab)[0]["hostname"]
    assert tlab.tunnel(node, "status") == (3, "tunnel stopped")
    with pytest.raises(TunnelClosed, match=f"the customer must run `upkeep-agent tunnel start` on {node}"):
        FabricRunner(_target(tlab, node), _settings(tlab)).open()
    _started(tlab, node)
    code, out = tlab.tunnel(node, "status")
    assert code == 0 and out.startswith("tunnel up since "), out
    with FabricRunner(_target(tlab, node), _settings(tlab)) as runner:
        result = runner.run(["upkeep-agent", "version"], timeout=10)
        assert result.ok and result.stdout.strip() == "9.8.0"
        # It is the node itself at the far end, not the tunnel server: its own agent answers.
        assert runner.run(["printenv", "UPKEEP_NODE_DIR"], timeout=10).stdout.strip() == str(
            tlab.node_dir(node)
        )
    assert tlab.tunnel(node, "stop") == (0, "tunnel stopped")
    with pytest.raises(TunnelClosed):
        FabricRunner(_target(tlab, node), _settings(tlab)).open()
    log = (tlab.node_dir(node) / "logs" / "tunnel.log").read_text()
    assert "start asked by the customer" in log and "stop asked by the customer" in log


def test_a_forwarded_port_answering_with_another_key_is_refused(tlab: Lab) -> None:
    first, second = (n["hostname"] for n in _nodes(tlab)[:2])
    _started(tlab, first)
    _started(tlab, second)
    other_key = _inventory_node(tlab, second)[1]["host_key"]
    # The tunnel is up and the port answers as SSH, but not with the key the inventory holds for it.
    with pytest.raises(HostKeyError, match=f"host key CHANGED for {first}"):
        FabricRunner(_target(tlab, first, host_key=other_key), _settings(tlab)).open()
    # Same with the tunnel server's key: a server answering with another key is refused before any node.
    access, _ = _inventory_node(tlab, first)
    target = _target(tlab, first)
    assert target.jump is not None
    fake = SshTarget(target.name, target.address, target.port, target.user,
                     SshTarget(target.jump.name, target.jump.address, target.jump.port, target.jump.user,
                               host_key=other_key),
                     host_key=target.host_key, via_tunnel=True)  # fmt: skip
    with pytest.raises(HostKeyError, match=r"host key CHANGED for 127\.0\.0\.1 "):
        FabricRunner(fake, _settings(tlab)).open()
    assert access["host_key"] != other_key


def test_an_unreachable_tunnel_server_is_named_as_such(tlab: Lab) -> None:
    # adv18: with the tunnel server down, every node read "cannot connect: [Errno None] Unable to connect to
    # port P" - P being the server's port, not the node's - as if the nodes were down.
    import socket

    node = _nodes(tlab)[0]["hostname"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    target = _target(tlab, node)
    assert target.jump is not None
    down = SshTarget(target.name, target.address, target.port, target.user,
                     SshTarget(target.jump.name, target.jump.address, port, target.jump.user,
                               host_key=target.jump.host_key),
                     host_key=target.host_key, via_tunnel=True)  # fmt: skip
    with pytest.raises(RemoteError) as info:
        FabricRunner(down, _settings(tlab)).open()
    assert f"tunnel server 127.0.0.1:{port} unreachable (" in str(info.value), str(info.value)
    assert "Errno" not in str(info.value)


def test_a_tunnel_identity_cannot_listen_on_another_nodes_port(tlab: Lab) -> None:
    nodes = _nodes(tlab)
    mine, theirs = nodes[2], nodes[3]
    assert tlab.tunnel(theirs["hostname"], "status")[0] == 3  # their port is free: only the key stops us
    sshd_port = mine["port"]
    denied = _ssh(
        tlab, _identity(tlab, mine["hostname"]), "-N",
        "-R", f"127.0.0.1:{theirs['tunnel_port']}:127.0.0.1:{sshd_port}", f"{mine['user']}@127.0.0.1",
    )  # fmt: skip
    assert denied.returncode == 255
    assert f"remote port forwarding failed for listen port {theirs['tunnel_port']}" in denied.stderr
    # ... and neither can Upkeep's own identity take a node's port (it may only open to them).
    hijack = _ssh(
        tlab, tlab.ssh_key, "-N",
        "-R", f"127.0.0.1:{theirs['tunnel_port']}:127.0.0.1:{sshd_port}", f"{mine['user']}@127.0.0.1",
    )  # fmt: skip
    assert hijack.returncode == 255 and "remote port forwarding failed" in hijack.stderr
    log = tlab.status()["tunnel"]["log"]
    assert f"remote forward to host 127.0.0.1 port {theirs['tunnel_port']}, but the request was denied" in (
        Path(log).read_text()
    )


def test_a_tunnel_identity_gets_no_shell_and_an_unknown_key_nothing(tlab: Lab, tmp_path: Path) -> None:
    node = _nodes(tlab)[1]
    shell = _ssh(tlab, _identity(tlab, node["hostname"]), f"{node['user']}@127.0.0.1", "id")
    assert shell.returncode == 1 and "no shell" in shell.stderr and "uid=" not in shell.stdout
    tty = _ssh(tlab, _identity(tlab, node["hostname"]), "-tt", f"{node['user']}@127.0.0.1")
    assert tty.returncode != 0 and "uid=" not in tty.stdout
    stranger = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    refused = _ssh(
        tlab, stranger, "-N", "-R", f"127.0.0.1:{node['tunnel_port']}:127.0.0.1:{node['port']}",
        f"{node['user']}@127.0.0.1",
    )  # fmt: skip
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr


def test_the_lab_writes_a_tunnel_inventory(tlab: Lab) -> None:
    access, node = _inventory_node(tlab, _nodes(tlab)[0]["hostname"])
    assert access["type"] == "tunnel" and access["host_key"].startswith("ssh-ed25519 ")
    assert node["tunnel_port"] == _nodes(tlab)[0]["tunnel_port"] and node["host_key"]
    config = json.loads((tlab.node_dir(node["hostname"]) / "agent.json").read_text())["tunnel"]
    assert config["listen_port"] == node["tunnel_port"] and config["sshd_port"] == node["port"]
    with pytest.raises(RemoteError):  # nothing else on the tunnel server is Upkeep's to open
        target = _target(tlab, node["hostname"])
        FabricRunner(
            SshTarget(target.name, "127.0.0.1", tlab.status()["tunnel"]["port"], target.user, target.jump,
                      host_key=target.host_key, via_tunnel=True),
            _settings(tlab),
        ).open()  # fmt: skip


# -- updates through the tunnel (the inventory says access: tunnel) -----------------------------------


@pytest.fixture
def tunnel_runtime(tlab: Lab, sqlite_engine: Any, prefect_harness: None, tmp_path: Path) -> Iterator[Any]:
    from tests.integration.conftest import _runtime
    from upkeep.settings import load_settings

    settings = load_settings(home=tmp_path / "home", **tlab.settings_overrides())
    yield from _runtime(tlab, settings, sqlite_engine)


def _cluster_nodes(lab: Lab, cluster: str) -> list[str]:
    return [n["hostname"] for n in _nodes(lab) if n["cluster"] == cluster]


def _cases(engine: Any) -> list[Any]:
    from sqlmodel import select

    from inventory.case_tables import Case
    from inventory.db import session_scope

    with session_scope(engine) as session:
        return list(session.exec(select(Case)).all())


@pytest.mark.prefect
def test_an_update_through_the_tunnel_upgrades_both_nodes_exactly_once(
    tlab: Lab, tunnel_runtime: Any
) -> None:
    from flows.product_update import product_update

    cluster = _nodes(tlab)[2]["cluster"]
    hosts = _cluster_nodes(tlab, cluster)
    for host in hosts:
        _started(tlab, host)
    state = product_update(cluster=cluster, to_version="9.10.0", return_state=True)
    assert state.is_completed(), state.message
    assert [n["version"] for n in _nodes(tlab) if n["cluster"] == cluster] == ["9.10.0", "9.10.0"]
    assert [len(tlab.upgrade_log(h)) for h in hosts] == [1, 1]
    # Every session came in through the tunnel: the node's sshd saw it from its own tunnel's ssh.
    for host in hosts:
        assert "upkeep-agent[" in (tlab.node_dir(host) / "logs" / "product.log").read_text()
        assert (
            ": upgrade 9.10.0 -> 0 upgraded 9.8.0 -> 9.10.0"
            in (tlab.node_dir(host) / "logs" / "product.log").read_text()
        )
        assert "forwarded-tcpip" in (tlab.node_dir(host) / "logs" / "tunnel.log").read_text()


@pytest.mark.prefect
def test_a_closed_tunnel_fails_pre_flight_before_anything_is_touched(tlab: Lab, tunnel_runtime: Any) -> None:
    from flows.product_update import product_update

    cluster = _nodes(tlab)[4]["cluster"]
    first, second = _cluster_nodes(tlab, cluster)
    _started(tlab, first)
    assert tlab.tunnel(second, "status")[0] == 3
    state = product_update(cluster=cluster, to_version="9.10.0", return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert f"support tunnel is closed on {second}" in message and first not in message
    assert "run `upkeep-agent tunnel start` on that node" in message
    assert [len(tlab.upgrade_log(h)) for h in (first, second)] == [0, 0]
    assert not any(p.name != ".keep" for p in (tlab.node_dir(first) / "incoming").iterdir())  # nothing sent
    assert _cases(tunnel_runtime.engine) == []  # the customer's tunnel, not an incident: no case
    # The customer opens it; the update asked for again goes through.
    _started(tlab, second)
    again = product_update(cluster=cluster, to_version="9.10.0", return_state=True)
    assert again.is_completed(), again.message
    assert [len(tlab.upgrade_log(h)) for h in (first, second)] == [1, 1]


def test_tunnel_status_says_which_nodes_are_open_and_what_the_customer_runs(
    tlab: Lab, tmp_path: Path
) -> None:
    import os
    import sys

    first, second = _cluster_nodes(tlab, _nodes(tlab)[0]["cluster"])
    tlab.tunnel(first, "stop")
    _started(tlab, second)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in tlab.settings_overrides().items()})
    env["UPKEEP_HOME"] = str(tmp_path / "home")

    def upkeep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "upkeep", *args], env=env, capture_output=True, text=True, timeout=120
        )

    assert upkeep("inventory", "import", str(tlab.inventory_path)).returncode == 0
    shown = upkeep("tunnel", "status", "--customer", "acme", "--json")
    assert shown.returncode == 0, shown.stderr
    [cluster] = json.loads(shown.stdout)["clusters"]
    state = {n["node"]: n for n in cluster["nodes"]}
    assert state[second]["open"] and state[second]["state"].startswith("open (SSH-2.0-OpenSSH")
    assert not state[first]["open"] and state[first]["state"] == "closed"
    assert state[first]["customer_runs"] == "upkeep-agent tunnel start"
    text = upkeep("tunnel", "status", "--customer", "acme")
    assert f"{first}" in text.stdout and "CLOSED" in text.stdout
    assert f"the customer runs `upkeep-agent tunnel start` on {first}" in text.stdout
    assert "Secsh" not in text.stderr and text.stderr == ""
    # adv18: with Prefect imported (its console handler on the root logger), Paramiko's own ERROR line for
    # the refused channel reached the SRE's stderr next to Upkeep's one-line explanation.
    check = upkeep("update", _nodes(tlab)[0]["cluster"], "--to", "9.10.0", "--check")
    assert check.returncode == 1 and f"FAIL {first}: support tunnel closed" in check.stdout, check.stdout
    assert "Secsh" not in check.stderr and "paramiko" not in check.stderr, check.stderr
    unknown = upkeep("tunnel", "status", "--customer", "nobody")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.prefect
def test_diagnostics_go_through_the_tunnel_and_name_a_closed_one(tlab: Lab, tunnel_runtime: Any) -> None:
    from sqlmodel import select

    from flows.diagnostics import collect_diagnostics
    from inventory import cases
    from inventory.db import session_scope
    from inventory.models import Cluster, Customer
    from inventory.types import utcnow

    cluster = _nodes(tlab)[0]["cluster"]
    first, second = _cluster_nodes(tlab, cluster)
    tlab.tunnel(first, "stop")
    _started(tlab, second)
    with session_scope(tunnel_runtime.engine) as session:
        found = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        owner = session.get(Customer, found.customer_id)
        assert owner is not None
        ref = cases.open_case(
            customer=owner, clusters=[found], subject="slow API", category="Issue", priority="P2",
            now=utcnow(), opened_by="test", session=session,
        ).ref  # fmt: skip
    result = collect_diagnostics(cluster=cluster, case=ref)
    assert result.partial and result.nodes == [first, second]
    assert list(result.missing) == [first]
    assert "support tunnel closed" in result.missing[first]
    assert "upkeep-agent tunnel start" in result.missing[first]


def test_doctor_checks_tunnel_nodes_through_the_tunnel(tlab: Lab, tmp_path: Path) -> None:
    """Keys of tunnel nodes come from the inventory: known_hosts need not hold them (here it holds only
    an unrelated line), and `--nodes` logs in through the tunnel, naming a closed one."""
    import os
    import sys

    first, second = _cluster_nodes(tlab, _nodes(tlab)[0]["cluster"])
    tlab.tunnel(first, "stop")
    _started(tlab, second)
    known = tmp_path / "known_hosts"
    known.write_text(tlab.known_hosts.read_text().splitlines()[0] + "\n")  # the jump host's line only
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in tlab.settings_overrides().items()})
    env.update({"UPKEEP_HOME": str(tmp_path / "home"), "UPKEEP_KNOWN_HOSTS": str(known)})
    run = [sys.executable, "-m", "upkeep"]
    imported = subprocess.run([*run, "inventory", "import", str(tlab.inventory_path)], env=env, timeout=120)
    assert imported.returncode == 0
    done = subprocess.run(
        [*run, "doctor", "--nodes", "--json"], env=env, capture_output=True, text=True, timeout=180
    )
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["known_hosts"]["status"] == "ok", checks["known_hosts"]
    assert checks[f"node {second}"]["status"] == "ok", checks[f"node {second}"]
    assert checks[f"node {first}"]["status"] == "fail"
    assert "support tunnel closed" in checks[f"node {first}"]["detail"]
