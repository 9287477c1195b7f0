"""The start gate's pure rules for cloud-release rollouts: per-ring tallies of a rollout's runs, and why a
run must wait (earlier rings and their soak, the rollout-wide error budget, in-flight limits), or None.
No database: `flows.rollout` loads the members and applies these in the dispatcher's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from inventory.models import RunState
from inventory.releases import Member, Rollout
from scheduling.waves import RINGS_DEFAULT, ErrorBudget, budget_exceeded, wave_may_start

IN_FLIGHT = (RunState.running, RunState.paused)
ACTIVE = (RunState.planned, *IN_FLIGHT)


@dataclass(frozen=True)
class RingTally:
    """The runs of one ring of a rollout, as the wave rules see them."""

    ring: str
    runs: int = 0
    active: int = 0  # planned, running or paused
    started: int = 0  # began at least once: counted once, however many windows it was carried over
    failed: int = 0
    ended: int = 0  # started and ended (not planned, running or paused again): what a resume acknowledges
    last_finished: datetime | None = None


def tally(members: Sequence[Member], rings: Sequence[str] = RINGS_DEFAULT) -> list[RingTally]:
    """One tally per ring in `rings` order (rings not listed follow, by name)."""
    names = list(rings) + sorted({m.entry.ring for m in members} - set(rings))
    result = []
    for ring in names:
        runs = [m.run for m in members if m.entry.ring == ring and m.run is not None]
        done = [r.finished_at for r in runs if r.state not in ACTIVE and r.finished_at is not None]
        began = [r for r in runs if r.started_at is not None or r.state is RunState.failed]
        result.append(
            RingTally(
                ring=ring,
                runs=len(runs),
                active=sum(1 for r in runs if r.state in ACTIVE),
                started=len(began),
                failed=sum(1 for r in runs if r.state is RunState.failed),
                ended=sum(1 for r in began if r.state not in ACTIVE),
                last_finished=max(done, default=None),
            )
        )
    return result


def budget_reason(
    budget: ErrorBudget, tallies: Sequence[RingTally], acked_started: int = 0, acked_failed: int = 0
) -> str | None:
    """Why the rollout must halt, or None: its budget over the runs since the last resume. The resume
    acknowledged the runs that had ended (`acknowledge`): a run in flight then (running, or carried over
    to its next window) is counted after it, its start and its outcome alike."""
    started = sum(t.started for t in tallies) - acked_started
    failed = sum(t.failed for t in tallies) - acked_failed
    return budget_exceeded(budget, max(started, 0), min(max(failed, 0), max(started, 0)))


def wave_reason(
    ring: str,
    tallies: Sequence[RingTally],
    *,
    soak: timedelta,
    now: datetime,
    rings: Sequence[str] = RINGS_DEFAULT,
) -> str | None:
    """Why a run in `ring` must wait for the earlier rings, or None. Earlier rings without runs (all
    their clusters skipped or blocked) do not hold anyone up."""
    order = list(rings)
    if ring not in order:
        return f"ring {ring!r} is not one of {', '.join(order)}: not started"
    earlier = [t for t in tallies if t.ring in order[: order.index(ring)] and t.runs]
    for previous in earlier:
        if previous.active:
            return (
                f"waiting for ring {previous.ring}: {previous.active} of {previous.runs} updates not finished"
            )
    if not earlier:
        return None
    previous = earlier[-1]
    finished = min(previous.last_finished, now) if previous.last_finished else None  # clock skew
    decision = wave_may_start(finished, soak, now, None)
    return None if decision.allowed else f"waiting for ring {previous.ring}: {decision.reason}"


def acknowledge(tallies: Sequence[RingTally]) -> tuple[int, int]:
    """What a resume acknowledges: (started, failed) of the runs that have ended. A run in flight (a
    carried-over one between its windows, a running one) is not acknowledged: its failure after the
    resume counts against the budget afresh, and so must its start, or failures ran ahead of starts."""
    return sum(t.ended for t in tallies), sum(t.failed for t in tallies)


def concurrency_reason(
    in_flight: int, customer_in_flight: int, *, max_concurrent: int, per_customer_limit: int
) -> str | None:
    """Why one more update may not start: the rollout's or the customer's in-flight limit."""
    if in_flight >= max_concurrent:
        return f"{_in_flight(in_flight, 'of this release')} (limit {max_concurrent})"
    if customer_in_flight >= per_customer_limit:
        return f"{_in_flight(customer_in_flight, 'of this customer')} (limit {per_customer_limit})"
    return None


def _in_flight(count: int, whose: str) -> str:
    return f"1 update {whose} is in flight" if count == 1 else f"{count} updates {whose} are in flight"


def budget_of(rollout: Rollout) -> ErrorBudget:
    return ErrorBudget(rollout.max_failures, rollout.max_failure_rate)
