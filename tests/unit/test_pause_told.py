"""h-pause: what the customer is told of an update an SRE paused (`upkeep pause`) once its announced window
ends, and what counts as the customer having been told of an update at all (`customer_knows`).

Fakes (tests/support/fakes.py) under the in-process flow engine, as test_stalled_adv49.py, on SQLite and
PostgreSQL (the `engine` fixture)."""

from __future__ import annotations

from datetime import timedelta

from tests.support.update_world import MONDAY, World
from tests.unit.test_stalled_adv49 import _deliver
from tests.unit.test_update_branches import _planned_monday
from tests.unit.test_window_stalled_adversarial import _taken_up_late, on_call_world

__all__ = ["on_call_world"]  # the fixture, used here by name

DAY = timedelta(days=1)


def test_a_customer_whose_only_notice_bounced_is_not_mailed_rescheduled_as_their_first_word(
    on_call_world: World,
) -> None:
    """The 'scheduled' notice refused for good by the customer's mail server (a 5xx): they never heard of
    the update. Taken up late and carried over, it mailed them 'rescheduled' - "your update moved" of an
    update they never knew of - as `customer_knows` counted any notice row, a failed one too."""
    from tasks.mail import PermanentMailError

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = PermanentMailError("550 5.1.1 mailbox unknown", code=550)
    mailbox: list[str] = []
    _deliver(world, MONDAY - 7 * DAY, mailbox)
    assert mailbox == []
    world.mail.fail_with = None

    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == ["scheduled"], world.notices(run_id)


def test_a_notice_still_on_its_way_counts_as_told(on_call_world: World) -> None:
    """A 'scheduled' refused for now (a 421, retried later) is still on its way: the customer is told of
    the move as of the update (their mailbox gets both, in order)."""
    from tasks.mail import TemporaryMailError

    world = on_call_world
    run_id = _planned_monday(world)
    world.mail.fail_with = TemporaryMailError("421 try again later", transport=True)
    _deliver(world, MONDAY - 7 * DAY, [])
    world.mail.fail_with = None

    assert _taken_up_late(world, run_id, 0) == "carried over"
    assert world.notices(run_id) == ["scheduled", "rescheduled"], world.notices(run_id)
