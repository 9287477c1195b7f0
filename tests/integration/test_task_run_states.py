"""What the Prefect UI shows of an update's steps: the task runs' states, read from the real Prefect server
(the flow under the real engine; nodes, file server, mail and clock are tests/support/fakes.py's)."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from inventory.models import RunState
from tests.support.fakes import FakeNode
from tests.support.update_world import World

pytestmark = [pytest.mark.prefect]


def _task_runs(state: Any) -> dict[str, list[tuple[str, str]]]:
    """The flow run's task runs by name: (state type, state name) of each, in start order."""
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    found: dict[str, list[tuple[str, str]]] = {}
    for run in sorted(runs, key=lambda r: str(r.start_time)):
        assert run.state is not None  # named as Prefect names them: "pre-flight-" and a suffix
        found.setdefault(run.name.rsplit("-", 1)[0], []).append((run.state.type.value, str(run.state.name)))
    return found


@pytest.mark.parametrize("action", ["pause", "cancel"])
def test_a_stop_that_ends_the_resume_s_settle_wait_leaves_no_failed_step_in_the_prefect_ui(
    prefect_world: World, action: str
) -> None:
    """A resumed run waits at pre-flight for the node the stopped process was upgrading; `upkeep
    pause|cancel` ends that wait and the run ends paused/cancelled, as asked. Its pre-flight task run
    ended Failed: a red step in the Prefect UI of a run nobody let fail, which an on-call engineer reads
    as a failure at night. It ends Cancelled ("Stopped"), its message naming the node and the stop."""
    from upkeep.updates import request_stop

    world = prefect_world
    run = world.left_mid_upgrade_of_node_2()
    assert run.id is not None
    run_id = run.id

    def never_up_and_stopped(node: FakeNode) -> None:
        node.healthy = False
        request_stop(run_id, action, engine=world.engine, actor="sre", reason="customer asked")

    world.nodes[1].before["health"] = never_up_and_stopped
    world.runtime.health_timeout = 30.0  # without the stop, the run fails "not healthy" after it

    resumed = world.update(run_id=run_id)

    assert resumed.is_completed(), resumed.message
    assert world.run().state == (RunState.paused if action == "pause" else RunState.cancelled)
    steps = _task_runs(resumed)
    assert steps["pre-flight"] == [("CANCELLED", "Stopped")], steps
    assert not [name for name, states in steps.items() if any(kind == "FAILED" for kind, _ in states)], steps
