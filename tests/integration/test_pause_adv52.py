"""adv52 under the real Prefect engine and server and a real SMTP server (aiosmtpd): the customer's mailbox
after a pause told 'stopped', resumed in the next window and paused again before it started."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flows.dispatch import dispatch
from flows.notify import deliver_pending
from tests.integration.test_pause_stopped import SENDER, _text, world
from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import _planned_monday
from upkeep.updates import request_stop

pytestmark = [pytest.mark.prefect, pytest.mark.smtp]

__all__ = ["world"]  # the fixture, used here by name


def test_a_pause_resumed_and_paused_again_before_it_started_mails_stopped_once(
    world: World, smtp: Any
) -> None:
    """Monday's window ends paused: the tick mails 'stopped'. Tuesday 00:01 the SRE resumes it inside the
    window and pauses it again during its pre-flight: no 'started' goes out. Tuesday's window ends: the
    customer's mailbox holds one 'stopped', not two in a row."""
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    end = world.run().window_end
    assert end is not None
    world.clock.now = end
    assert dispatch(max_running=1)["stopped"] == [run_id]

    def pause_in_preflight(_node: object) -> None:
        world.nodes[2].before.clear()
        request_stop(run_id, "pause", engine=world.engine, actor="sre")

    world.nodes[2].before["disk"] = pause_in_preflight
    world.clock.now = MONDAY + timedelta(days=1, minutes=1)
    state = world.update(run_id=run_id)
    assert state.is_completed() and state.result()["state"] == "paused", state.message

    world.clock.now = end + timedelta(days=1)
    dispatch(max_running=1)
    dispatch(max_running=1)
    deliver_pending(world.engine, smtp.transport(), now=world.clock.now + timedelta(hours=1), sender=SENDER)
    customer = [m for m in smtp.handler.messages if "ops@fakeco.example" in str(m["To"])]
    stopped = [m for m in customer if "stopped for now" in _text(m)]
    assert len(stopped) == 1, [str(m["Subject"]) for m in customer]
