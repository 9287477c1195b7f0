"""h-told: what a carry-over and a stall tell, checked against what is true: the Prefect run summary of a
stall, the customer's 'stopped' promise against the SRE's alert, a carry-over of an update the customer
was never told about.

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_window_stalled_adversarial.py."""

from __future__ import annotations

from inventory.db import session_scope
from tests.support.update_world import CLUSTER, TARGET, World
from tests.unit.test_update_branches import _planned_monday, short_window
from tests.unit.test_window_stalled_adversarial import _taken_up_late

__all__ = ["short_window"]  # the fixture, used here by name


def test_the_prefect_run_summary_of_a_stall_says_stalled_in_its_headline(short_window: World) -> None:
    """adv49: the summary's headline read "paused" while its Cause line read "stalled: ...". An SRE
    scanning the Artifacts page reads "paused" as someone's deliberate pause; nobody paused it."""
    from flows.plan import plan_update
    from flows.report import _summary_lines

    world = short_window
    run_id = _planned_monday(world)
    assert [_taken_up_late(world, run_id, day) for day in (0, 1, 2)] == ["carried over"] * 2 + ["paused"]
    with session_scope(world.engine) as session:
        plan = plan_update(CLUSTER, TARGET, session=session)
    lines = _summary_lines(world.runtime, plan, run_id, "paused")
    assert lines[0] == f"# Update {plan.label}: stalled", lines[0]
    assert "paused" not in lines[0]
