"""h-pause under the real Prefect engine and server and a real SMTP server (aiosmtpd): an update an SRE
paused and left paused past its window's end reaches the customer's mailbox as 'stopped' from the
dispatcher's tick, once; a customer whose only notice the mail server refused for good (a 550) is not
mailed 'rescheduled' as their first word of the update."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from flows.dispatch import dispatch
from flows.notify import deliver_pending
from inventory.models import RunState
from tests.support.update_world import MONDAY, World
from tests.unit.test_update_branches import _planned_monday

pytestmark = [pytest.mark.prefect, pytest.mark.smtp]

SENDER = "upkeep@vendor.example"


@pytest.fixture
def world(prefect_world: World, smtp: Any) -> World:
    prefect_world.runtime.mailer = smtp.transport()
    prefect_world.runtime.mail_from = SENDER
    return prefect_world


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return " ".join(str(part.get_content()).split())


def test_the_dispatchers_tick_mails_stopped_once_for_a_run_left_paused_past_its_window(
    world: World, smtp: Any
) -> None:
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    deliver_pending(world.engine, smtp.transport(), now=world.clock.now, sender=SENDER)
    before = len(smtp.handler.messages)
    assert before >= 1  # 'started' (the 'scheduled' superseded by it, or both)

    end = world.run().window_end  # the window it ran in, as recorded at its start
    assert end is not None
    world.clock.now = end  # the window's end: the tick
    result = dispatch(max_running=1)
    assert result["stopped"] == [run_id], result
    again = dispatch(max_running=1)  # the next tick tells nothing more
    assert again["stopped"] == [], again

    received = smtp.handler.messages[before:]
    customer = [m for m in received if "ops@fakeco.example" in str(m["To"])]
    assert len(customer) == 1, [str(m["Subject"]) for m in received]
    [stopped] = customer
    body = _text(stopped)
    assert "stopped for now" in body and "1 of 3 nodes run 9.10.0 now" in body, body
    invite = [part for part in stopped.walk() if part.get_content_type() == "text/calendar"]
    assert invite and "METHOD:CANCEL" in str(invite[0].get_content()), [
        p.get_content_type() for p in stopped.walk()
    ]
    assert world.run().state == RunState.paused


def test_a_customer_whose_only_notices_got_a_550_is_not_mailed_stopped(world: World, smtp: Any) -> None:
    """The customer's mail server refused 'scheduled' and 'started' for good (550): they never heard of
    the update, and a 'stopped' would be their first word of it. The tick tells them nothing."""
    run_id = _planned_monday(world)
    world.clock.now = MONDAY + timedelta(minutes=1)
    world.paused_after_node_1(run_id=run_id)
    smtp.handler.refuse["ops@fakeco.example"] = "550 5.1.1 no such user"
    report = deliver_pending(world.engine, smtp.transport(), now=world.clock.now, sender=SENDER)
    assert report.failed, report
    del smtp.handler.refuse["ops@fakeco.example"]

    end = world.run().window_end
    assert end is not None
    world.clock.now = end
    assert dispatch(max_running=1)["stopped"] == []
    assert "stopped" not in world.notices(run_id), world.notices(run_id)
