"""adv60: `node_rows` over a node's steps across several windows (a carried-over or stalled run, as
flows write them): what the customer's notices and the portal are given for node 1. A node's upgrade
began only with an upgrade, health or verify step; a failed pre-flight, copy or download, or a version
check (a read) changes nothing on it; an interrupted upgrade is never hidden by what failed after it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from inventory.db import session_scope
from inventory.models import Node, NodeStep, RunState, StepState, UpgradeRun
from inventory.run_report import node_rows, node_unfinished
from tests.support.update_world import MONDAY, World
from tests.unit.test_tunnel_adversarial_flow import world
from tests.unit.test_update_branches import _planned_monday

__all__ = ["world"]

OK, FAILED, CUT = StepState.succeeded, StepState.failed, StepState.interrupted
UPGRADED = [("check", OK, "9.9.0"), ("upgrade", OK, ""), ("health", OK, ""), ("verify", OK, "9.10.0")]

CASES = {
    # window 1 | window 2 -> (result, unfinished)
    "upgrade cut, then pre-flight failed": (
        [("pre-flight", OK, ""), ("check", OK, "9.9.0"), ("upgrade", CUT, "tunnel closed")],
        [("pre-flight", FAILED, "support tunnel closed")],
        ("interrupted", True),
    ),
    "pre-flight failed, then upgraded": (
        [("pre-flight", FAILED, "support tunnel closed")],
        [("pre-flight", OK, ""), *UPGRADED],
        ("upgraded", False),
    ),
    "upgraded, then pre-flight failed": (
        [("pre-flight", OK, ""), *UPGRADED],
        [("pre-flight", FAILED, "support tunnel closed")],
        ("upgraded", False),
    ),
    "check cut, then pre-flight failed": (
        [("pre-flight", OK, ""), ("check", CUT, "tunnel closed")],
        [("pre-flight", FAILED, "support tunnel closed")],
        ("pending", False),
    ),
    "upgrade cut, then its copy failed": (
        [("check", OK, "9.9.0"), ("upgrade", CUT, "tunnel closed")],
        [("distribute", FAILED, "disk full")],
        ("interrupted", True),
    ),
    "upgrade cut, then found at another version": (
        [("check", OK, "9.9.0"), ("upgrade", CUT, "tunnel closed")],
        [("check", FAILED, "at 9.9.5, expected 9.9.0")],
        ("failed at check: at 9.9.5, expected 9.9.0", True),
    ),
    "upgrade cut, then done when asked again": (
        [("check", OK, "9.9.0"), ("upgrade", CUT, "tunnel closed")],
        [("pre-flight", OK, ""), ("check", OK, "9.10.0"), ("health", OK, ""), ("verify", OK, "9.10.0")],
        ("upgraded", False),
    ),
    "upgrade cut, then unhealthy": (
        [("check", OK, "9.9.0"), ("upgrade", CUT, "tunnel closed")],
        [("check", OK, "9.10.0"), ("health", FAILED, "unhealthy")],
        ("failed at health: unhealthy", True),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_node_1_across_two_windows(world: World, case: str) -> None:
    first, second, expected = CASES[case]
    run_id = _planned_monday(world)
    with session_scope(world.engine) as session:
        node = session.exec(select(Node).where(Node.position == 1)).first()
        assert node is not None
        for day, steps in enumerate((first, second)):
            at = MONDAY + timedelta(days=day)
            for n, (step, state, tail) in enumerate(steps):
                started = at + timedelta(minutes=n)
                session.add(
                    NodeStep(
                        run_id=run_id, node_id=node.id, step=step, state=state, output_tail=tail,
                        started_at=started, finished_at=started + timedelta(seconds=30),
                    )
                )  # fmt: skip
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        run.state = RunState.paused  # stalled after window 2
        session.add(run)
    with session_scope(world.engine) as session:
        run = session.get(UpgradeRun, run_id)
        assert run is not None
        [row, *_] = node_rows(run, session)
    assert (row["result"], node_unfinished(row)) == expected, row
