"""access: tunnel in the inventory file (issue 18): what it needs, and what the import refuses, each
problem as one FILE:LINE line."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from inventory.importer import InventoryError, load_inventory


def _key(seed: int) -> str:
    raw = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes([seed]) * 32
    return "ssh-ed25519 " + base64.b64encode(raw).decode()


SERVER = _key(1)


def _file(kind: str = "software", extra: str = "", ports: tuple[int, int] = (41001, 41002)) -> str:
    return f"""\
customers:
  - name: acme
    timezone: America/New_York
    clusters:
      - name: acme-c1
        kind: {kind}
        version: 9.8.0
        access: {{type: tunnel, host: tunnel.vendor.example, port: 2222, host_key: "{SERVER}"{extra}}}
        nodes:
          - {{hostname: acme-c1-n1, tunnel_port: {ports[0]}, host_key: "{_key(2)}"}}
          - {{hostname: acme-c1-n2, tunnel_port: {ports[1]}, host_key: "{_key(3)}"}}
releases: []
"""


def _problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    return [str(p) for p in info.value.errors]


def test_a_tunnel_cluster_loads(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(_file())
    cluster = load_inventory(path).customers[0].clusters[0]
    assert cluster.access.type == "tunnel" and cluster.access.host_key == SERVER
    assert [n.tunnel_port for n in cluster.nodes] == [41001, 41002] and cluster.nodes[0].host_key == _key(2)


def test_the_tunnel_port_range_ends_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(_file(ports=(1024, 65535)))
    assert [n.tunnel_port for n in load_inventory(path).customers[0].clusters[0].nodes] == [1024, 65535]


def test_the_same_tunnel_port_twice_is_refused_at_its_line(tmp_path: Path) -> None:
    found = _problems(tmp_path, _file(ports=(41001, 41001)))
    path = tmp_path / "inventory.yaml"
    assert found == [
        f"{path}:11: node 'acme-c1-n2': tunnel_port 41001 on tunnel server tunnel.vendor.example:2222 is "
        "already assigned to another node (first at line 10)"
    ]


def test_one_host_key_for_two_nodes_is_refused_at_its_line(tmp_path: Path) -> None:
    # adv18: through a tunnel the node's key is its only identity; one key listed for two nodes let either
    # answer for the other (a copy-paste, or a node's port forwarded to its neighbour).
    found = _problems(tmp_path, _file().replace(_key(3), _key(2)))
    path = tmp_path / "inventory.yaml"
    assert found == [
        f"{path}:11: node 'acme-c1-n2': host_key is already listed for another node; every node has its own "
        "(first at line 10)"
    ]


def test_a_cloud_cluster_needs_allow_cloud(tmp_path: Path) -> None:
    [found] = _problems(tmp_path, _file(kind="cloud"))
    assert found.startswith(f"{tmp_path / 'inventory.yaml'}:8: ") and "allow_cloud: true" in found
    path = tmp_path / "ok.yaml"
    path.write_text(_file(kind="cloud", extra=", allow_cloud: true"))
    load_inventory(path)


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        (f', host_key: "{_key(3)}"', "", 11, "node 'acme-c1-n2': access tunnel needs host_key"),
        (", tunnel_port: 41002", "", 11, "node 'acme-c1-n2': access tunnel needs tunnel_port"),
        (_key(2), "ssh-ed25519 AAAA", 10, "is not an SSH host key"),
        (_key(2), _key(2).replace("ssh-ed25519", "ssh-rsa"), 10, "is not an SSH host key"),
        ("tunnel_port: 41002", "tunnel_port: 70000", 11, "tunnel_port: 70000 is not a tunnel port"),
        ("tunnel_port: 41002", "tunnel_port: 0", 11, "tunnel_port: 0 is not a tunnel port (1024-65535"),
        # A privileged port: the tunnel identity (not root) may not listen there; refused by sshd at the
        # customer's first `tunnel start` unless the import says so.
        ("tunnel_port: 41002", "tunnel_port: 80", 11, "tunnel_port: 80 is not a tunnel port (1024-65535"),
        ("tunnel_port: 41002", "tunnel_port: 1023", 11, "only root may listen on the tunnel server"),
        # adv18: the tunnel server's own port, or its key, given as a node's: Upkeep would open its
        # channel to the tunnel server's sshd and take it for the node.
        ("tunnel_port: 41002", "tunnel_port: 2222", 11, "tunnel_port 2222 is the port of tunnel server"),
        (_key(3), SERVER, 11, "node 'acme-c1-n2': host_key is the tunnel server's key"),
        ("type: tunnel", "type: direct", 10, "tunnel_port is only for clusters whose access type is tunnel"),
    ],
)
def test_tunnel_problems(tmp_path: Path, old: str, new: str, line: int, message: str) -> None:
    text = _file()
    assert old in text
    found = _problems(tmp_path, text.replace(old, new, 1))
    assert any(p.startswith(f"{tmp_path / 'inventory.yaml'}:{line}: ") and message in p for p in found), found


def test_one_tunnel_server_under_two_names_cannot_give_one_port_twice(tmp_path: Path) -> None:
    # adv18 (second pass): the duplicate check keyed the tunnel server by the name written in the file, so
    # the same server (its host key) named 'tunnel.vendor.example' for one cluster and '127.0.0.1' for
    # another took port 41001 twice: two nodes then race for one listening socket on that machine.
    second = (
        _file()
        .replace("acme-c1", "acme-c2")
        .replace("tunnel.vendor.example", "127.0.0.1")
        .replace(_key(2), _key(4))
        .replace(_key(3), _key(5))
        .split("    clusters:\n", 1)[1]
        .split("releases:", 1)[0]
    )
    text = _file().replace("releases: []", second + "releases: []")
    found = _problems(tmp_path, text)
    path = tmp_path / "inventory.yaml"
    assert found == [
        f"{path}:{line}: node 'acme-c2-n{n}': tunnel_port {port} on tunnel server 127.0.0.1:2222 is already "
        f"assigned to another node (the same tunnel server by its host key) (first at line {line - 7})"
        for n, port, line in ((1, 41001, 17), (2, 41002, 18))
    ], found
