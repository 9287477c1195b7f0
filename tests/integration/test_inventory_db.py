"""Importing inventory files into SQLite and PostgreSQL: what lands, what re-imports do, and that a
refused import leaves every table exactly as it was."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel
from sqlmodel import select as select_rows

import inventory.importer as importer
from inventory.db import session_scope
from inventory.importer import InventoryError, import_inventory
from inventory.importer_db import inventory_snapshot
from inventory.models import AuditEvent, Node, NodeStep, RunState, UpgradeRun
from inventory.repo import (
    NotFound,
    cluster_nodes,
    customer_of,
    get_cluster,
    get_release,
    list_clusters,
    releases_map,
)

SHA = "ab" * 32
INVENTORY: dict[str, Any] = {
    "customers": [
        {
            "name": "acme",
            "timezone": "America/New_York",
            "contacts": [
                {"email": "ops@acme.example", "name": "Acme Ops", "role": "primary"},
                {"email": "cfo@acme.example", "name": "Acme Finance", "role": "billing"},
            ],
            "clusters": [
                {
                    "name": "acme-c1",
                    "kind": "software",
                    "version": "9.8.0",
                    "profile": "standard",
                    "ring": "broad",
                    "access": {"type": "direct"},
                    "nodes": [
                        {
                            "hostname": f"acme-c1-n{i}",
                            "address": "127.0.0.1",
                            "port": 40000 + i,
                            "user": "root",
                        }
                        for i in (1, 2, 3)
                    ],
                },
            ],
        },
        {
            "name": "umbrella",
            "timezone": "Australia/Lord_Howe",
            "contacts": [],
            "clusters": [
                {
                    "name": "umbrella-c2",
                    "kind": "cloud",
                    "version": "9.9.0",
                    "profile": "large",
                    "ring": "canary",
                    "access": {
                        "type": "jump",
                        "host": "jump.umbrella.example",
                        "port": 2222,
                        "user": "upkeep",
                    },
                    "nodes": [{"hostname": "u2-n1", "address": "fd00::1", "port": 22, "user": "upkeep"}],
                },
            ],
        },
    ],
    "releases": [
        {
            "version": "9.9.0",
            "package": "releases/p-9.9.0.tar.gz",
            "sha256": SHA,
            "from": ["9.8.0"],
            "deadline": None,
        },
        {
            "version": "9.10.0",
            "package": "releases/p-9.10.0.tar.gz",
            "sha256": SHA,
            "from": ["9.8.0", "9.9.0"],
            "deadline": "2026-12-31T00:00:00+00:00",
        },
    ],
}


def write(tmp_path: Path, data: dict[str, Any], name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def dump(engine: Engine) -> str:
    """Every row of every table, in primary-key order."""
    with engine.connect() as conn:
        return repr(
            {
                table.name: conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                for table in SQLModel.metadata.sorted_tables
            }
        )


def counts(summary: importer.ImportSummary) -> dict[str, tuple[int, int, int, int]]:
    return {table: (c.created, c.updated, c.unchanged, c.deleted) for table, c in summary.counts.items()}


def test_import_then_show(engine: Engine, tmp_path: Path) -> None:
    summary = import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    assert counts(summary) == {
        "customer": (2, 0, 0, 0),
        "contact": (2, 0, 0, 0),
        "cluster": (2, 0, 0, 0),
        "node": (4, 0, 0, 0),
        "release": (2, 0, 0, 0),
    }
    with session_scope(engine) as session:
        # The snapshot has the file's shape: what was imported comes back out, to the letter.
        assert inventory_snapshot(session=session) == INVENTORY
        cluster = get_cluster("acme/acme-c1", session=session)
        assert get_cluster("acme-c1", session=session).id == cluster.id
        assert [n.hostname for n in cluster_nodes(cluster, session=session)] == [
            "acme-c1-n1",
            "acme-c1-n2",
            "acme-c1-n3",
        ]
        assert customer_of(cluster, session=session).timezone == "America/New_York"
        assert [c.name for c in list_clusters(session=session)] == ["acme-c1", "umbrella-c2"]
        assert releases_map(session=session) == {"9.9.0": ["9.8.0"], "9.10.0": ["9.8.0", "9.9.0"]}
        assert str(get_release("9.10.0", session=session).deadline) == "2026-12-31 00:00:00+00:00"
        with pytest.raises(NotFound, match=r"no cluster 'acme-c2'; did you mean acme-c1\?"):
            get_cluster("acme-c2", session=session)
        with pytest.raises(NotFound, match=r"'acme-c1' belongs to customer 'acme'"):
            get_cluster("umbrella/acme-c1", session=session)
        with pytest.raises(NotFound, match=r"no release '9.11.0'; did you mean"):
            get_release("9.11.0", session=session)
        [event] = session.exec(select_rows(AuditEvent)).all()
    assert (event.actor, event.action, event.subject) == (
        "alice",
        "inventory.import",
        str(tmp_path / "inventory.yaml"),
    )
    assert event.detail["counts"]["node"]["created"] == 4 and len(event.detail["sha256"]) == 64


def test_reimport_is_idempotent(engine: Engine, tmp_path: Path) -> None:
    path = write(tmp_path, INVENTORY)
    import_inventory(path, engine=engine, actor="alice")
    before = _rows_without_audit(engine)
    again = import_inventory(path, engine=engine, actor="bob")
    assert not again.changed
    assert counts(again) == {
        "customer": (0, 0, 2, 0),
        "contact": (0, 0, 2, 0),
        "cluster": (0, 0, 2, 0),
        "node": (0, 0, 4, 0),
        "release": (0, 0, 2, 0),
    }
    assert _rows_without_audit(engine) == before  # same rows, same ids: nothing duplicated or rewritten
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 2


def _rows_without_audit(engine: Engine) -> str:
    with engine.connect() as conn:
        return repr(
            [
                conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                for table in SQLModel.metadata.sorted_tables
                if table.name != "auditevent"
            ]
        )


def test_changes_are_applied_and_counted(engine: Engine, tmp_path: Path) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    changed = copy.deepcopy(INVENTORY)
    acme = changed["customers"][0]
    acme["timezone"] = "America/Chicago"
    acme["contacts"] = [{"email": "ops@acme.example", "name": "Acme Operations", "role": "primary"}]
    cluster = acme["clusters"][0]
    cluster["version"] = "9.9.0"
    n1, n2, n3 = cluster["nodes"]
    cluster["nodes"] = [n3, n1, {**n2, "port": 40022}]  # reorder: positions are unique per cluster
    changed["releases"][0]["from"] = ["9.8.0", "9.8.1"]
    summary = import_inventory(write(tmp_path, changed), engine=engine, actor="alice")
    assert counts(summary) == {
        "customer": (0, 1, 1, 0),
        "contact": (0, 1, 0, 1),
        "cluster": (0, 1, 1, 0),
        "node": (0, 3, 1, 0),
        "release": (0, 1, 1, 0),
    }
    with session_scope(engine) as session:
        assert inventory_snapshot(session=session) == changed


def test_removing_a_node_from_the_file_removes_it(engine: Engine, tmp_path: Path) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    with session_scope(engine) as session:  # n2 has upgrade history, which must survive it
        cluster = get_cluster("acme-c1", session=session)
        run = UpgradeRun(
            cluster_id=cluster.id or 0, from_version="9.8.0", to_version="9.9.0", state=RunState.succeeded
        )
        session.add(run)
        session.flush()
        n2 = cluster_nodes(cluster, session=session)[1]
        session.add(NodeStep(run_id=run.id or 0, node_id=n2.id, step="upgrade", detail="ok"))
    smaller = copy.deepcopy(INVENTORY)
    nodes = smaller["customers"][0]["clusters"][0]["nodes"]
    del nodes[1]
    summary = import_inventory(write(tmp_path, smaller), engine=engine, actor="alice")
    assert (summary.counts["node"].deleted, summary.counts["node"].updated) == (1, 1)  # n3 moved up
    assert summary.notes == ["cluster 'acme-c1': node 'acme-c1-n2' removed"]
    with session_scope(engine) as session:
        kept = cluster_nodes(get_cluster("acme-c1", session=session), session=session)
        assert [(n.hostname, n.position) for n in kept] == [("acme-c1-n1", 1), ("acme-c1-n3", 2)]
        assert session.scalar(select(func.count()).select_from(Node)) == 3
        [step] = session.exec(select_rows(NodeStep)).all()
        assert (step.node_id, step.detail) == (None, "ok")


def test_bad_file_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    before = dump(engine)
    bad = copy.deepcopy(INVENTORY)
    bad["customers"][0]["clusters"][0]["nodes"].append({"hostname": "new-node", "port": 22})  # valid
    bad["customers"][1]["timezone"] = "Mars/Olympus"  # ...but this is not
    path = write(tmp_path, bad)
    with pytest.raises(InventoryError, match=rf"^{path}:\d+: customer: timezone: 'Mars/Olympus'"):
        import_inventory(path, engine=engine, actor="alice")
    assert dump(engine) == before


def test_failure_while_writing_rolls_everything_back(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    before = dump(engine)
    changed = copy.deepcopy(INVENTORY)
    changed["customers"][0]["clusters"][0]["nodes"].pop()
    changed["customers"].append({"name": "initech", "timezone": "Asia/Kolkata", "clusters": []})

    def broken_audit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(importer, "record_audit", broken_audit)
    with pytest.raises(RuntimeError, match="disk full"):
        import_inventory(write(tmp_path, changed), engine=engine, actor="alice")
    assert dump(engine) == before


def test_cluster_under_an_active_run_is_not_changed(engine: Engine, tmp_path: Path) -> None:
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    with session_scope(engine) as session:
        cluster = get_cluster("acme-c1", session=session)
        session.add(
            UpgradeRun(
                cluster_id=cluster.id or 0,
                active_cluster_id=cluster.id,
                from_version="9.8.0",
                to_version="9.9.0",
                state=RunState.running,
            )
        )
    before = dump(engine)
    changed = copy.deepcopy(INVENTORY)
    changed["customers"][0]["clusters"][0]["nodes"].pop()
    path = write(tmp_path, changed)
    with pytest.raises(InventoryError, match=r"cluster 'acme-c1': upgrade run \d+ is running"):
        import_inventory(path, engine=engine, actor="alice")
    assert dump(engine) == before
    # An unchanged cluster under a run does not block importing everything else.
    changed = copy.deepcopy(INVENTORY)
    changed["customers"][1]["clusters"][0]["ring"] = "early"
    summary = import_inventory(write(tmp_path, changed), engine=engine, actor="alice")
    assert summary.counts["cluster"].updated == 1


def test_a_node_of_a_cluster_the_file_does_not_list_keeps_its_address(engine: Engine, tmp_path: Path) -> None:
    # adv20i: the "address and port already used by another node" check only looked inside the file, so a
    # file listing one customer could point its node at another customer's machine, and renaming a
    # cluster made a second cluster on the same machines (the old one stays): two updates could then run
    # on one machine at once, each for a different customer.
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    before = dump(engine)
    umbrella_only = {"customers": [copy.deepcopy(INVENTORY["customers"][1])]}
    umbrella_only["customers"][0]["clusters"][0]["nodes"][0].update(address="127.0.0.1", port=40002)
    path = write(tmp_path, umbrella_only)
    line = path.read_text().splitlines().index("    - hostname: u2-n1") + 1
    with pytest.raises(InventoryError) as info:
        import_inventory(path, engine=engine, actor="alice")
    assert str(info.value) == (
        f"{path}:{line}: node: address '127.0.0.1' port 40002 is already used by node 'acme-c1-n2' of "
        "cluster 'acme-c1' (customer 'acme'), which this file does not list; two clusters cannot share a "
        "machine"
    )
    renamed = copy.deepcopy(INVENTORY)
    renamed["customers"][0]["clusters"][0]["name"] = "acme-c9"
    with pytest.raises(InventoryError, match=r"already used by node 'acme-c1-n1' of cluster 'acme-c1'"):
        import_inventory(write(tmp_path, renamed), engine=engine, actor="alice")
    assert dump(engine) == before
    # The file's own clusters are replaced by what it says: moving a node between them is fine.
    moved = copy.deepcopy(INVENTORY)
    moved["customers"][1]["clusters"][0]["nodes"][0].update(address="127.0.0.1", port=40003)
    moved["customers"][0]["clusters"][0]["nodes"].pop()
    import_inventory(write(tmp_path, moved), engine=engine, actor="alice")


def test_a_cluster_does_not_move_to_another_customer(engine: Engine, tmp_path: Path) -> None:
    # adv20i: a file listing acme's cluster name under umbrella (a copy-paste, or a guess) moved the
    # cluster, with its update history and reports, to umbrella without a word ("cluster: 1 updated"):
    # umbrella's portal then showed acme's reports and acme's notices went to umbrella.
    import_inventory(write(tmp_path, INVENTORY), engine=engine, actor="alice")
    before = dump(engine)
    umbrella = copy.deepcopy(INVENTORY["customers"][1])
    acme_cluster = copy.deepcopy(INVENTORY["customers"][0]["clusters"][0])
    acme_cluster["nodes"] = [{"hostname": "n1", "address": "127.0.0.9"}]
    umbrella["clusters"].append(acme_cluster)
    path = write(tmp_path, {"customers": [umbrella]})
    line = path.read_text().splitlines().index("  - name: acme-c1") + 1
    with pytest.raises(InventoryError) as info:
        import_inventory(path, engine=engine, actor="alice")
    assert str(info.value) == (
        f"{path}:{line}: cluster 'acme-c1' is customer 'acme''s; an import does not move a cluster to "
        "another customer (its update history and reports would go with it)"
    )
    assert dump(engine) == before


def _tunnel_key(seed: int) -> str:
    import base64

    return (
        "ssh-ed25519 "
        + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes([seed]) * 32).decode()
    )


def _tunnel_customer(name: str, ports: dict[str, int], seed: int) -> dict[str, Any]:
    server = {"type": "tunnel", "host": "tunnel.vendor.example", "port": 2222, "host_key": _tunnel_key(1)}
    nodes = [
        {"hostname": host, "tunnel_port": port, "host_key": _tunnel_key(seed + i)}
        for i, (host, port) in enumerate(ports.items())
    ]
    cluster = {"name": f"{name}-t1", "kind": "software", "version": "9.8.0", "access": server, "nodes": nodes}
    return {"name": name, "timezone": "UTC", "contacts": [], "clusters": [cluster]}


def test_a_tunnel_port_of_a_cluster_the_file_does_not_list_is_kept(engine: Engine, tmp_path: Path) -> None:
    # adv18: "tunnel_port already assigned" only looked inside the file, so a file listing one customer
    # could give its node another customer's port on the same tunnel server: both customers' nodes then
    # race for one listening port, and whichever holds it is where Upkeep sends the other's update (only
    # the node host key check would stop it, on the day of the update).
    import_inventory(
        write(tmp_path, {"customers": [_tunnel_customer("acme", {"a-n1": 41001}, 10)]}),
        engine=engine,
        actor="alice",
    )
    before = dump(engine)
    other = {"customers": [_tunnel_customer("umbrella", {"u-n1": 41001}, 20)]}
    path = write(tmp_path, other)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "tunnel_port: 41001" in text)
    with pytest.raises(InventoryError) as info:
        import_inventory(path, engine=engine, actor="alice")
    assert str(info.value) == (
        f"{path}:{line}: node 'u-n1': tunnel_port 41001 on tunnel server tunnel.vendor.example:2222 is "
        "already assigned to node 'a-n1' of cluster 'acme-t1' (customer 'acme'), which this file does not "
        "list"
    )
    assert dump(engine) == before
    # Another port on that server, or the same port on another server, is fine.
    other["customers"][0]["clusters"][0]["nodes"][0]["tunnel_port"] = 41002
    # ... but not the other customer's node key: through a tunnel it is the node's only identity.
    other["customers"][0]["clusters"][0]["nodes"][0]["host_key"] = _tunnel_key(10)
    path = write(tmp_path, other)
    lines = path.read_text().splitlines()
    line = max(i for i, text in enumerate(lines, 1) if "host_key: ssh-ed25519" in text)  # the node's
    with pytest.raises(InventoryError) as info:
        import_inventory(path, engine=engine, actor="alice")
    assert str(info.value) == (
        f"{path}:{line}: node 'u-n1': host_key is already listed for node 'a-n1' of cluster 'acme-t1' "
        "(customer 'acme'), which this file does not list"
    )
    assert dump(engine) == before
    other["customers"][0]["clusters"][0]["nodes"][0]["host_key"] = _tunnel_key(20)
    import_inventory(write(tmp_path, other), engine=engine, actor="alice")


def test_a_tunnel_port_held_on_the_same_server_under_another_name_is_kept(
    engine: Engine, tmp_path: Path
) -> None:
    # adv18 (second pass): the check keyed the tunnel server by the name in the file, so umbrella's file
    # naming acme's tunnel server (same host key) '127.0.0.1' gave its node acme's port 41001: two nodes
    # then race for one listening socket on that machine.
    import_inventory(
        write(tmp_path, {"customers": [_tunnel_customer("acme", {"a-n1": 41001}, 10)]}),
        engine=engine,
        actor="alice",
    )
    before = dump(engine)
    other = {"customers": [_tunnel_customer("umbrella", {"u-n1": 41001}, 20)]}
    other["customers"][0]["clusters"][0]["access"]["host"] = "127.0.0.1"
    path = write(tmp_path, other)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "tunnel_port: 41001" in text)
    with pytest.raises(InventoryError) as info:
        import_inventory(path, engine=engine, actor="alice")
    assert str(info.value) == (
        f"{path}:{line}: node 'u-n1': tunnel_port 41001 on tunnel server 127.0.0.1:2222 is already assigned "
        "to node 'a-n1' of cluster 'acme-t1' (customer 'acme'), which this file does not list"
    )
    assert dump(engine) == before
