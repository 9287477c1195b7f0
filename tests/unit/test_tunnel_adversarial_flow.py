"""Adversarial pass on #18 item 6 (a support tunnel that closes mid-run), on the product-update flow's
decisions with the fakes of tests/support/fakes.py: the tunnel flapping under a node's upgrade, the
window taken back by an import while the run waits, the window's last moment, a cancel while it waits.

A node's support tunnel is faked at the `NodeConnector` boundary: a closed one refuses every command
with `TunnelClosed` (what `_TunnelledConnection` raises when nothing listens on the node's forwarded
port); the cut under a command is the `RemoteError` a dropped connection gives. The moment of each event
is a hook (a node's agent command about to run, or the run's look at a closed tunnel), never a clock.
The real lab versions of these paths: tests/integration/test_tunnel_midrun.py."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from flows import runtime as flow_runtime
from inventory.db import session_scope
from inventory.importer import import_inventory
from inventory.models import NodeStep, RunState
from inventory.repo import get_cluster
from inventory.runs import create_run
from tasks.ssh import HostKeyError, RemoteError, SshTarget, TunnelClosed
from tests.support.fakes import FakeFleet, FakeNode, FakeRunner
from tests.support.flow_engine import prefect_in_process
from tests.support.update_world import CLUSTER, HOSTS, MONDAY, PACKAGE, TARGET, World

FIRST, SECOND, THIRD = HOSTS


def _key(seed: int) -> str:
    raw = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes([seed]) * 32
    return "ssh-ed25519 " + base64.b64encode(raw).decode()


class _TunnelRunner(FakeRunner):
    def _reachable(self) -> None:
        fleet = self._fleet
        assert isinstance(fleet, TunnelFleet)
        if fleet.server_down:
            raise RemoteError(
                self.host, "tunnel server 127.0.0.1:2222 unreachable (Connection refused); no node reached"
            )
        if self.host in fleet.closed:
            if fleet.on_closed is not None:
                fleet.on_closed(self.host)
            raise TunnelClosed(self.host, f"support tunnel closed: nothing listens for {self.host}")
        if self.host in fleet.foreign:  # the port forwards to another node's sshd: its key is not this one's
            raise HostKeyError(self.host, f"host key CHANGED for {self.host}: refusing to connect")
        super()._reachable()


@dataclass
class TunnelFleet(FakeFleet):
    """Nodes behind support tunnels: a host in `closed` has its tunnel closed; `on_closed(host)` is
    called each time Upkeep tries it then (the run's look while it waits)."""

    closed: set[str] = field(default_factory=set)
    foreign: set[str] = field(default_factory=set)  # tunnels opened to another node's sshd
    server_down: bool = False  # the vendor's tunnel server does not answer
    on_closed: Callable[[str], None] | None = None

    def connect(self, target: SshTarget) -> FakeRunner:
        assert target.via_tunnel, target  # the inventory's tunnel access is what the flow follows
        runner = super().connect(target)
        tunnelled = _TunnelRunner(runner.node, self)
        self.runners[-1] = tunnelled
        return tunnelled


def _inventory(world: World, tmp_path: Path, window: dict[str, str]) -> None:
    """The world's cluster, reached through a support tunnel, with `window`."""
    sha256 = world.files.add(PACKAGE, b"the 9.10.0 package")
    cluster = {
        "name": CLUSTER,
        "kind": "software",
        "version": "9.9.0",
        "access": {"type": "tunnel", "host": "127.0.0.1", "port": 2222, "host_key": _key(1)},
        "nodes": [
            {"hostname": host, "tunnel_port": 41001 + n, "host_key": _key(2 + n)}
            for n, host in enumerate(HOSTS)
        ],
        "windows": [window],
    }
    customer = {
        "name": "fakeco",
        "timezone": "UTC",
        "contacts": [{"email": "ops@fakeco.example", "name": "Fakeco Ops", "role": "primary"}],
        "clusters": [cluster],
    }
    release = {"version": TARGET, "package": PACKAGE, "sha256": sha256, "from": ["9.9.0"]}
    path = tmp_path / "tunnel-inventory.yaml"
    path.write_text(yaml.safe_dump({"customers": [customer], "releases": [release]}, sort_keys=False))
    import_inventory(path, engine=world.engine, actor="test")


FOUR_HOURS = {"days": "mon-sun", "start": "00:00", "duration": "4h"}


@pytest.fixture
def world(sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    made = World(sqlite_engine, tmp_path, window=FOUR_HOURS)
    _inventory(made, tmp_path, FOUR_HOURS)
    fleet = TunnelFleet(nodes=made.fleet.nodes)
    made.fleet = made.runtime.ssh = fleet
    made.runtime.tunnel_wait, made.runtime.tunnel_poll = timedelta(minutes=5), 0.0
    flow_runtime.configure(made.runtime)
    try:
        with prefect_in_process(monkeypatch):
            yield made
    finally:
        flow_runtime.configure(None)


def _fleet(world: World) -> TunnelFleet:
    assert isinstance(world.fleet, TunnelFleet)
    return world.fleet


def _planned(world: World) -> int:
    """A run the dispatcher started in its window (Monday 00:00-04:00)."""
    with session_scope(world.engine) as session:
        run = create_run(
            get_cluster(CLUSTER, session=session),
            to_version=TARGET,
            source="customer",
            requested_by="test",
            session=session,
            state=RunState.planned,
        )
        run.slot_start, run.slot_end = MONDAY, MONDAY + timedelta(minutes=30)
        session.add(run)
        session.flush()
        assert run.id is not None
        return run.id


def _close_under(world: World, host: str, times: int = 1, before: Callable[[], None] | None = None) -> None:
    """The customer closes `host`'s tunnel while its upgrade command runs, `times` times in a row (each
    retry of the upgrade is cut again until then); the command never reached the node."""
    cuts = [0]

    def cut(_node: FakeNode) -> None:
        if cuts[0] >= times:
            return
        cuts[0] += 1
        if before is not None:
            before()
        _fleet(world).closed.add(host)
        raise RemoteError(host, "'upkeep-agent upgrade 9.10.0' was cut off: the connection closed")

    world.nodes[HOSTS.index(host)].before["upgrade"] = cut


def _steps(world: World, run_id: int, step: str) -> list[str]:
    with session_scope(world.engine) as session:
        query = select(NodeStep.state).where(col(NodeStep.run_id) == run_id, col(NodeStep.step) == step)
        return [str(getattr(s, "value", s)) for s in session.exec(query.order_by(col(NodeStep.id)))]


def _reopen_at_look(world: World, then: Callable[[], None] | None = None) -> None:
    def look(host: str) -> None:
        if then is not None:
            then()
        _fleet(world).closed.discard(host)

    _fleet(world).on_closed = look


def test_a_tunnel_flapping_under_a_node_upgrades_every_node_once_and_fails_nothing(world: World) -> None:
    run_id = _planned(world)
    _close_under(world, SECOND, times=3)  # closed under the upgrade, and under each retry, twice more
    _reopen_at_look(world)  # ... and opened again each time, by the run's next look

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.succeeded, run.reason
    assert world.upgraded() == [1, 1, 1]
    assert _steps(world, run_id, "upgrade").count("interrupted") == 3
    assert "failed" not in _steps(world, run_id, "upgrade")
    assert _steps(world, run_id, "tunnel-wait") == ["succeeded"] * 3
    assert world.notices(run_id) == ["started", "completed"]


def test_a_window_taken_back_while_the_run_waits_for_the_tunnel_starts_no_node_after_it(
    world: World, tmp_path: Path
) -> None:
    """The customer's import drops Monday from the window while the run waits for node 2's tunnel; the
    tunnel then opens. The cutoff reads the window as the inventory says now (7d75b19): the node whose
    upgrade never reached it must not be upgraded on Monday. Found by the adversarial pass on #18."""
    run_id = _planned(world)
    _close_under(world, SECOND)
    taken = [False]

    def take_monday_back() -> None:
        if not taken[0]:
            taken[0] = True
            _inventory(world, tmp_path, {"days": "tue-sun", "start": "00:00", "duration": "4h"})

    _reopen_at_look(world, take_monday_back)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert taken[0]
    run = world.run()
    assert world.upgraded() == [1, 0, 0], run.reason  # node 2 not upgraded outside the window
    assert run.state == RunState.planned, run.reason  # carried over to Tuesday
    assert run.slot_start is not None and run.slot_start.weekday() == 1
    assert "failed" not in world.notices(run_id)


@pytest.mark.parametrize(("left", "waits"), [(timedelta(minutes=1), True), (timedelta(0), False)])
def test_the_wait_never_runs_past_the_last_moment_one_node_fits(
    world: World, left: timedelta, waits: bool
) -> None:
    """Node 2's tunnel closes under its upgrade when `left` is all that remains before the last moment a
    node still fits (04:00 - 10 min): a minute left, the run waits and the node fits; none, it carries
    over at once without a look."""
    run_id = _planned(world)
    edge = MONDAY + timedelta(hours=4) - world.runtime.per_node_estimate
    _close_under(world, SECOND, before=lambda: setattr(world.clock, "now", edge - left))
    _reopen_at_look(world)  # open again by the time the run would look

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    if waits:
        assert _steps(world, run_id, "tunnel-wait") == ["succeeded"]
        assert run.state == RunState.succeeded, run.reason
        assert world.upgraded() == [1, 1, 1]
    else:
        assert _steps(world, run_id, "tunnel-wait") == []  # no look: a node would no longer fit
        assert run.state == RunState.planned, run.reason
        assert world.upgraded() == [1, 0, 0]
        assert world.notices(run_id)[-1] == "rescheduled"


def test_a_cancel_while_the_run_waits_mid_run_is_not_announced_as_rescheduled(world: World) -> None:
    run_id = _planned(world)
    _close_under(world, SECOND)
    asked = [False]

    def cancel(_host: str) -> None:  # the tunnel stays closed; the SRE cancels while the run waits
        if not asked[0]:
            asked[0] = True
            from upkeep.updates import request_stop

            request_stop(run_id, "cancel", engine=world.engine, actor="sre", reason="customer asked")

    _fleet(world).on_closed = cancel

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    run = world.run()
    assert run.state == RunState.cancelled, run.reason
    assert run.reason.startswith("cancelled by sre: customer asked"), run.reason
    assert world.upgraded() == [1, 0, 0]
    assert world.notices(run_id) == ["started", "cancelled"]
    assert _steps(world, run_id, "upgrade") == ["succeeded", "interrupted"]


def test_a_tunnel_reopened_to_another_nodes_sshd_while_the_run_waits_is_refused_and_upgrades_nothing(
    world: World,
) -> None:
    """While the run waits for node 2's tunnel, node 2's port is opened forwarding to node 3's sshd (a
    customer's mistake, or worse): its host key is not node 2's. Refused at the look, before anything is
    asked; the run fails to the SRE (a wrong key is a security matter, not a closed tunnel), and neither
    node 2 nor node 3 is upgraded on the other's behalf."""
    run_id = _planned(world)
    _close_under(world, SECOND)

    def wrong_sshd(host: str) -> None:
        _fleet(world).closed.discard(host)
        _fleet(world).foreign.add(host)

    _fleet(world).on_closed = wrong_sshd

    world.update(run_id=run_id)

    run = world.run()
    assert run.state == RunState.failed, run.reason
    assert "host key" in run.reason and SECOND in run.reason, run.reason
    assert world.upgraded() == [1, 0, 0]
    assert _steps(world, run_id, "upgrade") == ["succeeded", "interrupted"]
    assert "rescheduled" not in world.notices(run_id)


class _Killed(BaseException):
    """The process running the flow dies (kill -9): nothing of the flow's own handling runs after it."""


def test_a_run_killed_while_waiting_mid_run_and_resumed_asks_the_node_and_says_what_it_does(
    world: World,
) -> None:
    """The dispatcher's process dies while the run waits for node 2's tunnel; the SRE resumes it once the
    tunnel is open. Node 2 (its upgrade cut, outcome unknown) is asked and upgraded once; nothing twice.
    While the resumed run works, `upkeep show` must not still say it waits for the customer's tunnel."""
    run_id = _planned(world)
    _close_under(world, SECOND)

    def die(_host: str) -> None:
        if world.run().reason.startswith("waiting up to"):  # the wait's look, not closed_under's
            raise _Killed

    _fleet(world).on_closed = die
    with pytest.raises(_Killed):
        world.update(run_id=run_id)
    assert world.run().reason.startswith("waiting up to")
    _fleet(world).closed.clear()
    _fleet(world).on_closed = None
    world.clock.advance(timedelta(minutes=30))  # the dead process's lease has run out
    said: list[str] = []
    world.nodes[2].before["upgrade"] = lambda _node: said.append(world.run().reason)

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert world.run().state == RunState.succeeded, world.run().reason
    assert world.upgraded() == [1, 1, 1]
    assert said == [""], said  # not "waiting up to N min for the customer's support tunnel ..."


def test_an_sre_resume_while_the_dispatchers_run_waits_is_refused_and_the_run_goes_on(world: World) -> None:
    """Two operators: while the dispatcher's run waits for node 2's tunnel, an SRE runs `upkeep resume`
    on it. The run's lease is live: the resume is refused (exit 2, one line) and takes nothing; the
    waiting run uses the tunnel once it is back and every node is upgraded once."""
    from upkeep.console import CliError
    from upkeep.updates import resume_run

    run_id = _planned(world)
    _close_under(world, SECOND)
    refused: list[str] = []

    def resume_then_reopen(host: str) -> None:
        if not world.run().reason.startswith("waiting up to"):
            return  # closed_under's look: the run does not wait yet
        owner = world.run().lease_owner
        try:
            resume_run(run_id, engine=world.engine, as_json=False, actor="sre2")
        except CliError as exc:
            refused.append(str(exc))
        assert world.run().lease_owner == owner  # the resume took nothing
        _fleet(world).closed.discard(host)

    _fleet(world).on_closed = resume_then_reopen

    state = world.update(run_id=run_id)

    assert state.is_completed(), state.message
    assert len(refused) == 1 and str(run_id) in refused[0], refused
    assert world.run().state == RunState.succeeded, world.run().reason
    assert world.upgraded() == [1, 1, 1]


def test_the_tunnel_server_going_down_while_the_run_waits_is_not_told_as_the_customers_tunnel(
    world: World,
) -> None:
    """While the run waits for node 2's tunnel, the vendor's tunnel server stops answering (during a look:
    node 2 still reads closed, the others cannot be reached). That is not the customer's closed tunnel: no
    'rescheduled' notice asking them to open it; the run fails to the SRE naming the tunnel server, and the
    customer's notice (a node was touched) blames nobody. Before: the reason read only "the customer's
    support tunnel is closed on NODE" - the other nodes' problems were dropped from the look's message."""
    from inventory.outbox import Notice

    run_id = _planned(world)
    _close_under(world, SECOND)

    def server_goes_down(_host: str) -> None:
        if world.run().reason.startswith("waiting up to"):
            _fleet(world).server_down = True

    _fleet(world).on_closed = server_goes_down

    world.update(run_id=run_id)

    run = world.run()
    assert run.state == RunState.failed, run.reason
    assert "tunnel server 127.0.0.1:2222 unreachable" in run.reason, run.reason
    assert world.upgraded() == [1, 0, 0]
    assert "rescheduled" not in world.notices(run_id)
    with session_scope(world.engine) as session:
        told = session.exec(select(Notice).where(col(Notice.update_ref).startswith(f"update-{run_id}"))).all()
    failed = [n.body_text for n in told if n.kind == "failed"]
    assert failed and not any("tunnel" in body for body in failed), failed
