"""Small helpers the fault tests share: reading a run back, pointing a node elsewhere, known_hosts."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from inventory.db import migrate, session_scope
from inventory.importer import import_inventory
from inventory.installation import installation_id
from inventory.models import Cluster, Node, NodeStep, StepState, UpgradeRun
from inventory.outbox import Notice, NoticeState
from tasks.mail import message_id_for
from tests.integration.conftest import nodes_of
from tests.support.runs import due_now

TARGET = "9.10.0"
FROM = "9.8.0"


def hosts(lab: Any, cluster: str) -> list[str]:
    return [node["hostname"] for node in nodes_of(lab, cluster)]


def upgrades(lab: Any, cluster: str) -> list[int]:
    """How many upgrades each node of `cluster` has carried out, by its own log."""
    return [len(lab.upgrade_log(host)) for host in hosts(lab, cluster)]


def runs_of(engine: Any, cluster: str) -> list[UpgradeRun]:
    with session_scope(engine) as session:
        cluster_id = session.exec(select(Cluster.id).where(Cluster.name == cluster)).one()
        return list(
            session.exec(
                select(UpgradeRun).where(UpgradeRun.cluster_id == cluster_id).order_by(col(UpgradeRun.id))
            ).all()
        )


def steps_of(engine: Any, run_id: int) -> list[tuple[str, str, str, str]]:
    """(hostname or '', step, state, output) of every step of a run, in order."""
    with session_scope(engine) as session:
        rows = session.exec(
            select(NodeStep, Node)
            .join(Node, col(Node.id) == col(NodeStep.node_id), isouter=True)
            .where(NodeStep.run_id == run_id)
            .order_by(col(NodeStep.id))
        ).all()
        return [(node.hostname if node else "", s.step, str(s.state), s.output_tail) for s, node in rows]


def point_node_at(engine: Any, hostname: str, port: int) -> None:
    """The inventory now says `hostname` listens on `port` (a proxy, a blackhole)."""
    with session_scope(engine) as session:
        node = session.exec(select(Node).where(Node.hostname == hostname)).one()
        node.port = port
        session.add(node)


def node_port(lab: Any, hostname: str) -> int:
    return next(int(n["port"]) for n in lab.status()["nodes"] if n["hostname"] == hostname)


def host_key(lab: Any, hostname: str) -> str:
    """'ssh-ed25519 AAAA...' of a lab node, as its known_hosts line has it."""
    port = node_port(lab, hostname)
    for line in Path(lab.known_hosts).read_text().splitlines():
        if line.startswith(f"[127.0.0.1]:{port} "):
            return line.split(" ", 1)[1]
    raise LookupError(f"{hostname} (port {port}) is not in {lab.known_hosts}")


def known_hosts_with(lab: Any, dest: Path, entries: dict[int, str]) -> Path:
    """A copy of the lab's known_hosts where the line for each port in `entries` says that key
    (added when the port has no line yet)."""
    lines = Path(lab.known_hosts).read_text().splitlines()
    kept = [line for line in lines if not any(line.startswith(f"[127.0.0.1]:{p} ") for p in entries)]
    kept += [f"[127.0.0.1]:{port} {key}" for port, key in entries.items()]
    dest.write_text("\n".join(kept) + "\n")
    return dest


def new_ssh_key(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "not-authorized", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def rollout_due_now(engine: Any, inventory_path: Path) -> None:
    """A fresh database holding the lab's inventory and, per cluster, a run to TARGET whose announced
    slot has just begun: what the dispatcher sees at the start of a rollout."""
    migrate(engine)
    import_inventory(inventory_path, engine=engine, actor="test")
    with session_scope(engine) as session:
        for cluster in session.exec(select(Cluster).order_by(col(Cluster.name))).all():
            due_now(session, cluster)


def sent_message_ids(session: Any, keys: list[str], domain: str = "vendor.example") -> Counter[str]:
    """The Message-IDs the notices with these idempotency keys go out under, once each: the ids carry
    this database's installation id, so they are computed with it (as flows/notify.py does)."""
    installation = installation_id(session)
    return Counter({message_id_for(key, domain, installation): 1 for key in keys})


def assert_rolled_out_exactly_once(
    lab: Any, hosts: list[str], engine: Any, received: Counter[str], where: str, *, open_steps_allowed: bool
) -> list[UpgradeRun]:
    """The exactly-once check after a rollout that was interrupted (kill -9, a database restart) and
    carried on: every node upgraded once to TARGET by its own log, every run succeeded and released
    its cluster, three verified nodes per run, no failed step (nor, unless `open_steps_allowed`, one
    left open or interrupted), and every notice - one 'started' and one 'completed' per run - sent
    and received once (`received`: the SMTP server's Message-ID counts). Returns the runs."""
    logs = {host: lab.upgrade_log(host) for host in hosts}
    assert {h: len(entries) for h, entries in logs.items()} == dict.fromkeys(hosts, 1), where
    assert {entries[0]["to"] for entries in logs.values()} == {TARGET}
    with session_scope(engine) as session:
        runs = list(session.exec(select(UpgradeRun)).all())
        assert {str(r.state) for r in runs} == {"succeeded"}, where
        assert all(r.active_cluster_id is None and r.finished_at for r in runs), where
        assert set(session.exec(select(Cluster.version)).all()) == {TARGET}
        # Failed steps never; open or interrupted ones (a kill -9 leaves them) only if allowed.
        wrong = (
            NodeStep.state == StepState.failed
            if open_steps_allowed
            else NodeStep.state != StepState.succeeded
        )
        bad = [
            (s.run_id, s.node_id, s.step, str(s.state), s.output_tail[-300:])
            for s in session.exec(select(NodeStep).where(wrong)).all()
        ]
        assert not bad, f"{bad}; {where}"
        for run in runs:
            verified = Counter(
                session.exec(
                    select(NodeStep.node_id).where(
                        NodeStep.run_id == run.id,
                        NodeStep.step == "verify",
                        NodeStep.state == StepState.succeeded,
                    )
                ).all()
            )
            assert sorted(verified.values()) == [1, 1, 1], f"run {run.id}: {verified}; {where}"
        notices = session.exec(select(Notice)).all()
        kinds = Counter((n.update_ref, n.kind) for n in notices)
        expected = {(f"update-{r.id}", kind): 1 for r in runs for kind in ("started", "completed")}
        assert dict(kinds) == expected, where
        assert {n.state for n in notices} == {NoticeState.sent}, where
        expected_ids = sent_message_ids(session, [n.idempotency_key for n in notices])
    assert received == expected_ids, where
    return runs
