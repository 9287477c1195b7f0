"""The customer's reverse SSH tunnel on real parts: the lab's OpenSSH tunnel server, every node's sshd and
the node agent's `tunnel start` running a real `ssh -N -R`. Upkeep reaches a node only through it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tasks.ssh import FabricRunner, HostKeyError, RemoteError, SshSettings, SshTarget, TunnelClosed
from tests.support import forkserver
from tests.support.labs import nodes_of
from upkeep.lab import Lab

pytestmark = pytest.mark.lab


def _hosts(lab: Lab, cluster: str) -> list[str]:
    return [node["hostname"] for node in nodes_of(lab, cluster)]


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


def test_upkeep_reaches_a_node_only_while_its_tunnel_is_open(
    tunnel_lab: Lab, fresh_tunnel_cluster: str
) -> None:
    node = _hosts(tunnel_lab, fresh_tunnel_cluster)[0]
    assert tunnel_lab.tunnel(node, "status") == (3, "tunnel stopped")
    with pytest.raises(TunnelClosed, match=f"the customer must run `upkeep-agent tunnel start` on {node}"):
        FabricRunner(_target(tunnel_lab, node), _settings(tunnel_lab)).open()
    _started(tunnel_lab, node)
    code, out = tunnel_lab.tunnel(node, "status")
    assert code == 0 and out.startswith("tunnel up since "), out
    with FabricRunner(_target(tunnel_lab, node), _settings(tunnel_lab)) as runner:
        result = runner.run(["upkeep-agent", "version"], timeout=10)
        assert result.ok and result.stdout.strip() == "9.8.0"
        # It is the node itself at the far end, not the tunnel server: its own agent answers.
        assert runner.run(["printenv", "UPKEEP_NODE_DIR"], timeout=10).stdout.strip() == str(
            tunnel_lab.node_dir(node)
        )
    assert tunnel_lab.tunnel(node, "stop") == (0, "tunnel stopped")
    with pytest.raises(TunnelClosed):
        FabricRunner(_target(tunnel_lab, node), _settings(tunnel_lab)).open()
    log = (tunnel_lab.node_dir(node) / "logs" / "tunnel.log").read_text()
    assert "start asked by the customer" in log and "stop asked by the customer" in log


def test_a_forwarded_port_answering_with_another_key_is_refused(
    tunnel_lab: Lab, fresh_tunnel_cluster: str
) -> None:
    first, second, _ = _hosts(tunnel_lab, fresh_tunnel_cluster)
    _started(tunnel_lab, first)
    _started(tunnel_lab, second)
    other_key = _inventory_node(tunnel_lab, second)[1]["host_key"]
    # The tunnel is up and the port answers as SSH, but not with the key the inventory holds for it.
    with pytest.raises(HostKeyError, match=f"host key CHANGED for {first}"):
        FabricRunner(_target(tunnel_lab, first, host_key=other_key), _settings(tunnel_lab)).open()
    # Same with the tunnel server's key: a server answering with another key is refused before any node.
    access, _ = _inventory_node(tunnel_lab, first)
    target = _target(tunnel_lab, first)
    assert target.jump is not None
    fake = SshTarget(target.name, target.address, target.port, target.user,
                     SshTarget(target.jump.name, target.jump.address, target.jump.port, target.jump.user,
                               host_key=other_key),
                     host_key=target.host_key, via_tunnel=True)  # fmt: skip
    with pytest.raises(HostKeyError, match=r"host key CHANGED for 127\.0\.0\.1 "):
        FabricRunner(fake, _settings(tunnel_lab)).open()
    assert access["host_key"] != other_key


def test_an_unreachable_tunnel_server_is_named_as_such(tunnel_lab: Lab, fresh_tunnel_cluster: str) -> None:
    # adv18: with the tunnel server down, every node read "cannot connect: [Errno None] Unable to connect to
    # port P" - P being the server's port, not the node's - as if the nodes were down.
    import socket

    node = _hosts(tunnel_lab, fresh_tunnel_cluster)[0]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    target = _target(tunnel_lab, node)
    assert target.jump is not None
    down = SshTarget(target.name, target.address, target.port, target.user,
                     SshTarget(target.jump.name, target.jump.address, port, target.jump.user,
                               host_key=target.jump.host_key),
                     host_key=target.host_key, via_tunnel=True)  # fmt: skip
    with pytest.raises(RemoteError) as info:
        FabricRunner(down, _settings(tunnel_lab)).open()
    assert f"tunnel server 127.0.0.1:{port} unreachable (" in str(info.value), str(info.value)
    assert "Errno" not in str(info.value)


def test_a_tunnel_identity_cannot_listen_on_another_nodes_port(
    tunnel_lab: Lab, fresh_tunnel_cluster: str
) -> None:
    mine, theirs, _ = nodes_of(tunnel_lab, fresh_tunnel_cluster)
    assert (
        tunnel_lab.tunnel(theirs["hostname"], "status")[0] == 3
    )  # their port is free: only the key stops us
    sshd_port = mine["port"]
    denied = _ssh(
        tunnel_lab, _identity(tunnel_lab, mine["hostname"]), "-N",
        "-R", f"127.0.0.1:{theirs['tunnel_port']}:127.0.0.1:{sshd_port}", f"{mine['user']}@127.0.0.1",
    )  # fmt: skip
    assert denied.returncode == 255
    assert f"remote port forwarding failed for listen port {theirs['tunnel_port']}" in denied.stderr
    # ... and neither can Upkeep's own identity take a node's port (it may only open to them).
    hijack = _ssh(
        tunnel_lab, tunnel_lab.ssh_key, "-N",
        "-R", f"127.0.0.1:{theirs['tunnel_port']}:127.0.0.1:{sshd_port}", f"{mine['user']}@127.0.0.1",
    )  # fmt: skip
    assert hijack.returncode == 255 and "remote port forwarding failed" in hijack.stderr
    log = tunnel_lab.status()["tunnel"]["log"]
    assert f"remote forward to host 127.0.0.1 port {theirs['tunnel_port']}, but the request was denied" in (
        Path(log).read_text()
    )


def test_a_tunnel_identity_gets_no_shell_and_an_unknown_key_nothing(
    tunnel_lab: Lab, fresh_tunnel_cluster: str, tmp_path: Path
) -> None:
    node = nodes_of(tunnel_lab, fresh_tunnel_cluster)[1]
    shell = _ssh(tunnel_lab, _identity(tunnel_lab, node["hostname"]), f"{node['user']}@127.0.0.1", "id")
    assert shell.returncode == 1 and "no shell" in shell.stderr and "uid=" not in shell.stdout
    tty = _ssh(tunnel_lab, _identity(tunnel_lab, node["hostname"]), "-tt", f"{node['user']}@127.0.0.1")
    assert tty.returncode != 0 and "uid=" not in tty.stdout
    # Upkeep's own key gets no shell either: whatever it asks, the tunnel server runs its read-only reporter.
    asked = _ssh(tunnel_lab, tunnel_lab.ssh_key, f"{node['user']}@127.0.0.1", "id")
    assert asked.returncode == 0 and "uid=" not in asked.stdout, asked
    assert isinstance(json.loads(asked.stdout)["tunnels"], list)
    stranger = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    refused = _ssh(
        tunnel_lab, stranger, "-N", "-R", f"127.0.0.1:{node['tunnel_port']}:127.0.0.1:{node['port']}",
        f"{node['user']}@127.0.0.1",
    )  # fmt: skip
    assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr


def test_the_lab_writes_a_tunnel_inventory(tunnel_lab: Lab, fresh_tunnel_cluster: str) -> None:
    first = nodes_of(tunnel_lab, fresh_tunnel_cluster)[0]
    access, node = _inventory_node(tunnel_lab, first["hostname"])
    assert access["type"] == "tunnel" and access["host_key"].startswith("ssh-ed25519 ")
    assert node["tunnel_port"] == first["tunnel_port"] and node["host_key"]
    config = json.loads((tunnel_lab.node_dir(node["hostname"]) / "agent.json").read_text())["tunnel"]
    assert config["listen_port"] == node["tunnel_port"] and config["sshd_port"] == node["port"]
    with pytest.raises(RemoteError):  # nothing else on the tunnel server is Upkeep's to open
        target = _target(tunnel_lab, node["hostname"])
        server_port = tunnel_lab.status()["tunnel"]["port"]
        FabricRunner(
            SshTarget(target.name, "127.0.0.1", server_port, target.user, target.jump,
                      host_key=target.host_key, via_tunnel=True),
            _settings(tunnel_lab),
        ).open()  # fmt: skip


# -- updates through the tunnel (the inventory says access: tunnel) -----------------------------------


def _cases(engine: Any) -> list[Any]:
    from sqlmodel import select

    from inventory.case_tables import Case
    from inventory.db import session_scope

    with session_scope(engine) as session:
        return list(session.exec(select(Case)).all())


@pytest.mark.prefect
def test_an_update_through_the_tunnel_upgrades_every_node_exactly_once(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.product_update import product_update

    cluster = fresh_tunnel_cluster
    hosts = _hosts(tunnel_lab, cluster)
    for host in hosts:
        _started(tunnel_lab, host)
    state = product_update(cluster=cluster, to_version="9.10.0", return_state=True)
    assert state.is_completed(), state.message
    assert [n["version"] for n in nodes_of(tunnel_lab, cluster)] == ["9.10.0"] * 3
    assert [len(tunnel_lab.upgrade_log(h)) for h in hosts] == [1, 1, 1]
    # Every session came in through the tunnel: the node's sshd saw it from its own tunnel's ssh.
    for host in hosts:
        assert "upkeep-agent[" in (tunnel_lab.node_dir(host) / "logs" / "product.log").read_text()
        assert (
            ": upgrade 9.10.0 -> 0 upgraded 9.8.0 -> 9.10.0"
            in (tunnel_lab.node_dir(host) / "logs" / "product.log").read_text()
        )
        assert "forwarded-tcpip" in (tunnel_lab.node_dir(host) / "logs" / "tunnel.log").read_text()


@pytest.mark.prefect
def test_a_closed_tunnel_fails_pre_flight_before_anything_is_touched(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from flows.product_update import product_update

    cluster = fresh_tunnel_cluster
    first, second, third = _hosts(tunnel_lab, cluster)
    _started(tunnel_lab, first)
    _started(tunnel_lab, third)
    assert tunnel_lab.tunnel(second, "status")[0] == 3
    state = product_update(cluster=cluster, to_version="9.10.0", return_state=True)
    assert state.is_failed()
    message = state.message or ""
    assert f"support tunnel is closed on {second}" in message and first not in message
    assert "run `upkeep-agent tunnel start` on that node" in message
    assert [len(tunnel_lab.upgrade_log(h)) for h in (first, second, third)] == [0, 0, 0]
    assert not any(
        p.name != ".keep" for p in (tunnel_lab.node_dir(first) / "incoming").iterdir()
    )  # nothing sent
    assert _cases(tunnel_runtime.engine) == []  # the customer's tunnel, not an incident: no case
    # The customer opens it; the update asked for again goes through.
    _started(tunnel_lab, second)
    again = product_update(cluster=cluster, to_version="9.10.0", return_state=True)
    assert again.is_completed(), again.message
    assert [len(tunnel_lab.upgrade_log(h)) for h in (first, second, third)] == [1, 1, 1]


def test_tunnel_status_says_which_nodes_are_open_and_what_the_customer_runs(
    tunnel_lab: Lab, fresh_tunnel_cluster: str, tmp_path: Path
) -> None:
    import os

    first, second, _ = _hosts(tunnel_lab, fresh_tunnel_cluster)
    customer = nodes_of(tunnel_lab, fresh_tunnel_cluster)[0]["customer"]
    tunnel_lab.tunnel(first, "stop")
    _started(tunnel_lab, second)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in tunnel_lab.settings_overrides().items()})
    env["UPKEEP_HOME"] = str(tmp_path / "home")

    def upkeep(*args: str) -> subprocess.CompletedProcess[str]:
        return forkserver.run(args, env=env, timeout=120)

    assert upkeep("inventory", "import", str(tunnel_lab.inventory_path)).returncode == 0
    shown = upkeep("tunnel", "status", "--customer", customer, "--json")
    assert shown.returncode == 0, shown.stderr
    [cluster] = [c for c in json.loads(shown.stdout)["clusters"] if c["cluster"] == fresh_tunnel_cluster]
    state = {n["node"]: n for n in cluster["nodes"]}
    assert state[second]["open"] and state[second]["state"].startswith("open (SSH-2.0-OpenSSH")
    assert not state[first]["open"] and state[first]["state"] == "closed"
    assert state[first]["customer_runs"] == "upkeep-agent tunnel start"
    text = upkeep("tunnel", "status", "--customer", customer)
    assert f"{first}" in text.stdout and "CLOSED" in text.stdout
    assert f"the customer runs `upkeep-agent tunnel start` on {first}" in text.stdout
    assert "Secsh" not in text.stderr and text.stderr == ""
    # adv18: with Prefect imported (its console handler on the root logger), Paramiko's own ERROR line for
    # the refused channel reached the SRE's stderr next to Upkeep's one-line explanation.
    check = upkeep("update", fresh_tunnel_cluster, "--to", "9.10.0", "--check")
    assert check.returncode == 1 and f"FAIL {first}: support tunnel closed" in check.stdout, check.stdout
    assert "Secsh" not in check.stderr and "paramiko" not in check.stderr, check.stderr
    unknown = upkeep("tunnel", "status", "--customer", "nobody")
    assert unknown.returncode == 1 and "nobody" in unknown.stderr and "Traceback" not in unknown.stderr


def test_tunnel_status_says_since_when_from_the_tunnel_server_and_exits_3_when_a_needed_one_is_closed(
    tunnel_lab: Lab, fresh_tunnel_cluster: str, tmp_path: Path
) -> None:
    """'Since when' is the tunnel server's answer (the start of the sshd session holding the node's port,
    read by Upkeep's forced command there), not Upkeep's memory: this CLI process never saw the tunnel
    open. A reopened tunnel reads its new start. Exit 0 while a closed tunnel is nobody's problem; 3 once
    an update of its cluster starts within the hour."""
    import os
    from datetime import UTC, datetime, timedelta

    from sqlmodel import select

    from inventory.db import session_scope
    from inventory.models import Cluster, RunState
    from inventory.runs import create_run
    from tests.support.cli import upkeep_in_process
    from tests.support.fixtures import cli_engine

    first, second, third = _hosts(tunnel_lab, fresh_tunnel_cluster)
    customer = nodes_of(tunnel_lab, fresh_tunnel_cluster)[0]["customer"]
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    _started(tunnel_lab, second)
    _started(tunnel_lab, third)
    after = datetime.now(UTC) + timedelta(seconds=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in tunnel_lab.settings_overrides().items()})
    env["UPKEEP_HOME"] = str(tmp_path / "home")

    def upkeep(*args: str) -> subprocess.CompletedProcess[str]:
        # In this process (tests/support/cli.py): only answers are read here, eight of them.
        return upkeep_in_process(*args, env=env)

    def status() -> tuple[int, dict[str, Any], list[str]]:
        shown = upkeep("tunnel", "status", "--customer", customer, "--json")
        document = json.loads(shown.stdout)
        [cluster] = [c for c in document["clusters"] if c["cluster"] == fresh_tunnel_cluster]
        return shown.returncode, {n["node"]: n for n in cluster["nodes"]}, document["attention"]

    assert upkeep("inventory", "import", str(tunnel_lab.inventory_path)).returncode == 0
    code, nodes, attention = status()
    assert code == 0 and attention == []  # closed tunnels, no update soon: nothing to act on
    assert nodes[first]["since"] is None and not nodes[first]["open"]
    opened = datetime.fromisoformat(nodes[second]["since"])
    third_since = nodes[third]["since"]
    assert opened.utcoffset() == timedelta(0) and before <= opened <= after, (before, opened, after)
    # The customer's side tells the same story: its agent logged the tunnel up within the same seconds.
    agent_says = tunnel_lab.tunnel(second, "status")[1].removeprefix("tunnel up since ").split(" ")[0]
    assert abs(datetime.fromisoformat(agent_says) - opened) <= timedelta(seconds=3), (agent_says, opened)

    # Closed and opened again: a new session on the tunnel server, a new "since".
    assert tunnel_lab.tunnel(second, "stop")[0] == 0
    reopened_after = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    _started(tunnel_lab, second)
    code, nodes, _ = status()
    assert datetime.fromisoformat(nodes[second]["since"]) >= reopened_after
    assert nodes[third]["since"] == third_since  # untouched: still its first session
    text = upkeep("tunnel", "status", "--customer", customer)
    assert text.returncode == 0
    line = next(row for row in text.stdout.splitlines() if second in row)
    assert "open" in line and f"since {nodes[second]['since']}" in line, line

    # An update of this cluster starts in 30 minutes and the first node's tunnel is closed: exit 3.
    engine = cli_engine(env)
    with session_scope(engine) as session:
        row = session.exec(select(Cluster).where(Cluster.name == fresh_tunnel_cluster)).one()
        run = create_run(row, to_version="9.10.0", source="support", requested_by="t", session=session,
                         state=RunState.planned)  # fmt: skip
        run.slot_start = datetime.now(UTC) + timedelta(minutes=30)
        run.slot_end = run.slot_start + timedelta(hours=1)
        session.add(run)
        session.flush()
        run_id = run.id
    engine.dispose()
    code, _, attention = status()
    assert code == 3 and len(attention) == 1, attention
    assert f"update {run_id} " in attention[0] and first in attention[0] and second not in attention[0]
    text = upkeep("tunnel", "status", "--customer", customer)
    assert text.returncode == 3 and f"ATTENTION: update {run_id} " in text.stdout
    # Not yet within the hour asked for: nothing to act on.
    assert upkeep("tunnel", "status", "--customer", customer, "--within", "0.25").returncode == 0
    _started(tunnel_lab, first)
    code, _, attention = status()
    assert code == 0 and attention == []

    # A tunnel server without the reporter as Upkeep's forced command: open/closed still shown, and why
    # there is no "since" (sshd reads authorized_keys at every login; restored at once).
    keys = tunnel_lab.root / "tunnel" / "authorized_keys"
    kept = keys.read_text()
    reporter = str(tunnel_lab.root / "bin" / "upkeep-tunnel-sessions")
    assert f'command="{reporter}"' in kept
    try:
        keys.write_text(kept.replace(f'command="{reporter}"', 'command="echo no shell here >&2; exit 1"'))
        shown = upkeep("tunnel", "status", "--customer", customer, "--json")
    finally:
        keys.write_text(kept)
    [cluster] = [c for c in json.loads(shown.stdout)["clusters"] if c["cluster"] == fresh_tunnel_cluster]
    assert shown.returncode == 0 and all(n["open"] and n["since"] is None for n in cluster["nodes"])
    assert (
        "does not report since when" in cluster["since_unknown"]
        and "no shell here" in cluster["since_unknown"]
    )


@pytest.mark.prefect
def test_diagnostics_go_through_the_tunnel_and_name_a_closed_one(
    tunnel_lab: Lab, tunnel_runtime: Any, fresh_tunnel_cluster: str
) -> None:
    from sqlmodel import select

    from flows.diagnostics import collect_diagnostics
    from inventory import cases
    from inventory.db import session_scope
    from inventory.models import Cluster, Customer
    from inventory.types import utcnow

    cluster = fresh_tunnel_cluster
    first, second, third = _hosts(tunnel_lab, cluster)
    tunnel_lab.tunnel(first, "stop")
    _started(tunnel_lab, second)
    _started(tunnel_lab, third)
    with session_scope(tunnel_runtime.engine) as session:
        found = session.exec(select(Cluster).where(Cluster.name == cluster)).one()
        owner = session.get(Customer, found.customer_id)
        assert owner is not None
        ref = cases.open_case(
            customer=owner, clusters=[found], subject="slow API", category="Issue", priority="P2",
            now=utcnow(), opened_by="test", session=session,
        ).ref  # fmt: skip
    result = collect_diagnostics(cluster=cluster, case=ref)
    assert result.partial and result.nodes == [first, second, third]
    assert list(result.missing) == [first]
    assert "support tunnel closed" in result.missing[first]
    assert "upkeep-agent tunnel start" in result.missing[first]


def test_doctor_checks_tunnel_nodes_through_the_tunnel(
    tunnel_lab: Lab, fresh_tunnel_cluster: str, tmp_path: Path
) -> None:
    """Keys of tunnel nodes come from the inventory: known_hosts need not hold them (here it holds only
    an unrelated line), and `--nodes` logs in through the tunnel, naming a closed one."""
    import os

    first, second, _ = _hosts(tunnel_lab, fresh_tunnel_cluster)
    tunnel_lab.tunnel(first, "stop")
    _started(tunnel_lab, second)
    known = tmp_path / "known_hosts"
    known.write_text(tunnel_lab.known_hosts.read_text().splitlines()[0] + "\n")  # the jump host's line only
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in tunnel_lab.settings_overrides().items()})
    env.update({"UPKEEP_HOME": str(tmp_path / "home"), "UPKEEP_KNOWN_HOSTS": str(known)})
    imported = forkserver.run(["inventory", "import", str(tunnel_lab.inventory_path)], env=env, timeout=120)
    assert imported.returncode == 0, imported.stderr
    done = forkserver.run(["doctor", "--nodes", "--json"], env=env, timeout=180)
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["known_hosts"]["status"] == "ok", checks["known_hosts"]
    assert checks[f"node {second}"]["status"] == "ok", checks[f"node {second}"]
    assert checks[f"node {first}"]["status"] == "fail"
    assert "support tunnel closed" in checks[f"node {first}"]["detail"]


def test_clusters_added_to_a_running_tunnel_lab_get_their_own_tunnels_and_open_ones_stay_up(
    tmp_path: Path,
) -> None:
    """The suite's tunnel lab grows module by module (`Lab.add_clusters`): the tunnel server rereads
    its keys and ports (SIGHUP) without dropping a tunnel already open, and an added node is reached
    through its own tunnel only, its identity held to its own port."""
    from tests.support.labs import running_lab

    with running_lab(
        tmp_path / "grown", clusters=1, nodes=1, access="tunnel", upgrade_seconds=0.1, health_delay=0.1
    ) as grown:
        first = grown.status()["nodes"][0]
        _started(grown, first["hostname"])
        up_before = grown.tunnel(first["hostname"], "status")
        grown.add_clusters(1)
        added = grown.status()["nodes"][1]
        assert added["hostname"] == "globex-c2-n1" and added["tunnel_port"] != first["tunnel_port"]
        assert grown.tunnel(first["hostname"], "status") == up_before  # the same ssh, never reconnected
        assert grown.tunnel(added["hostname"], "status") == (3, "tunnel stopped")
        with pytest.raises(TunnelClosed):
            FabricRunner(_target(grown, added["hostname"]), _settings(grown)).open()
        _started(grown, added["hostname"])
        for node in (first, added):
            with FabricRunner(_target(grown, node["hostname"]), _settings(grown)) as runner:
                shown = runner.run(["printenv", "UPKEEP_NODE_DIR"], timeout=10).stdout.strip()
                assert shown == str(grown.node_dir(node["hostname"]))
        grown.tunnel(first["hostname"], "stop")
        denied = _ssh(
            grown, _identity(grown, added["hostname"]), "-N",
            "-R", f"127.0.0.1:{first['tunnel_port']}:127.0.0.1:{added['port']}", f"{added['user']}@127.0.0.1",
        )  # fmt: skip
        assert denied.returncode == 255, denied
        assert f"remote port forwarding failed for listen port {first['tunnel_port']}" in denied.stderr
