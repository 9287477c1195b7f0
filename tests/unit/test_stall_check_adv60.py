"""adv60: a support tunnel closed under a node's version check (the read `upgrade_node` takes before its
upgrade: `upkeep-agent version`, nothing changed) is not an upgrade that began.

The world of tests/unit/test_stall_tunnel.py (fakes at the NodeConnector boundary, in-process flows)."""

from __future__ import annotations

from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import NodeStep
from inventory.run_report import node_rows, node_unfinished
from tasks.ssh import RemoteError
from tests.support.fakes import FakeNode
from tests.support.update_world import World
from tests.unit.test_stall_tunnel import _stalled_alert, _stopped, _three_windows
from tests.unit.test_tunnel_adversarial_flow import FIRST, HOSTS, _fleet, world
from tests.unit.test_update_branches import _planned_monday

__all__ = ["world"]


def _close_under_check(world: World, host: str) -> None:
    """The customer closes `host`'s tunnel while the run asks the node its version before upgrading it
    (after the window's pre-flight passed): the read was cut, nothing was sent to change the node."""
    node = world.nodes[HOSTS.index(host)]
    asked = [0]

    def cut(_node: FakeNode) -> None:
        asked[0] += 1
        if _fleet(world).closed or not any(c[0] == "stage" for c in node.commands):
            return  # the pre-flight's reads, before the copy: left alone
        _fleet(world).closed.add(host)
        raise RemoteError(host, "'upkeep-agent version' was cut off: the connection closed")

    node.before["version"] = cut


def _steps(world: World, run_id: int) -> list[tuple[str, str]]:
    with session_scope(world.engine) as session:
        query = select(NodeStep.step, NodeStep.state).where(col(NodeStep.run_id) == run_id)
        return [(s, str(getattr(t, "value", t))) for s, t in session.exec(query.order_by(col(NodeStep.id)))]


def test_a_tunnel_closed_under_the_version_check_is_no_unfinished_upgrade(world: World) -> None:
    run_id = _planned_monday(world)
    _close_under_check(world, FIRST)

    assert _three_windows(world, run_id) == ["carried over", "carried over", "paused"], _steps(world, run_id)
    assert world.upgraded() == [0, 0, 0]
    assert ("upgrade", "started") not in _steps(world, run_id)
    assert all(step != "upgrade" for step, _ in _steps(world, run_id)), _steps(world, run_id)
    with session_scope(world.engine) as session:
        rows = node_rows(world.run(), session)
    assert not any(node_unfinished(row) for row in rows), rows
    stopped = _stopped(world, run_id)
    assert "did not complete" not in stopped and "checking this node" not in stopped, stopped
    assert "Check fake-c1-n1" not in _stalled_alert(world, run_id)
