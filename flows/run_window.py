"""The window a run runs in: its cluster's maintenance windows and blackouts, read for one run, and
the cutoff rule of `scheduling.cutoff` applied to it.

A run *has a window* unless it was overridden (`--override-window --reason`, audited) or was started
by an SRE's `upkeep update` (no slot, no window recorded): every scheduled, `request --now`, resumed
or taken-over run does, and a node of it starts only if the window's time left fits the estimate.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from inventory import repo
from inventory.models import Cluster, UpgradeRun
from inventory.windows import blackouts_for, cluster_windows
from scheduling.cutoff import node_may_start, open_window
from scheduling.windows import Interval


def has_window(run: UpgradeRun) -> bool:
    return not run.override_reason and (run.window_end is not None or run.slot_start is not None)


def window_at(run: UpgradeRun, at: datetime, *, session: Session) -> Interval | None:
    """The occurrence of the run's cluster's windows open at `at`, cut at a blackout (or None)."""
    cluster = session.get(Cluster, run.cluster_id)
    assert cluster is not None
    customer = repo.customer_of(cluster, session=session)
    windows = cluster_windows(cluster, customer, session=session)
    return open_window(windows, blackouts_for(customer, session=session), at)


def record_window(run: UpgradeRun, now: datetime, *, session: Session) -> None:
    """At every start (dispatcher, resume, take-over): the run runs in the window open now. With none
    open, the window it had stays recorded, so the cutoff stops it before any node and carries it over."""
    if not has_window(run):
        return
    window = window_at(run, now, session=session)
    if window is not None:
        run.window_start, run.window_end = window.start, window.end
    elif run.window_end is None:
        run.window_start, run.window_end = run.slot_start, run.slot_end
    session.add(run)


def window_end(run: UpgradeRun) -> datetime | None:
    """Where the cutoff applies: None when the run has no window."""
    if not has_window(run):
        return None
    return run.window_end or run.slot_end


def announced_end(run: UpgradeRun) -> datetime | None:
    """The end of the window the customer was told the update happens in: the run's window's
    (`window_end`), kept through an override (`--override-window`: the run may go on outside it, but
    the customer was told 'started' for that window); None when none was ever recorded (an overridden
    `request --now` outside any window, an SRE's `upkeep update`)."""
    return run.window_end or run.slot_end


def window_over(run: UpgradeRun, now: datetime, *, session: Session) -> bool:
    """Whether the run's window is over at `now`, as the cutoff reads it (`past_cutoff`): its recorded end
    has passed, or - an import since shortened or removed the window, moved the customer's zone, or a
    blackout now covers the rest of it - no window of its cluster is open now. False with no window."""
    end = window_end(run)
    if end is None:
        return False
    return end <= now or window_now(run, now, session=session) is None


def window_now(run: UpgradeRun, now: datetime, *, session: Session) -> Interval | None:
    """The run's cluster's window open at `now` as the inventory says now (None: none is open, or
    the run has no window)."""
    return window_at(run, now, session=session) if has_window(run) else None


def past_cutoff(run: UpgradeRun, now: datetime, per_node: timedelta, current: Interval | None) -> bool:
    """Whether no further node of `run` may start now (the window's time left is below one node).

    `current` is the window open now as the inventory says now (`window_now`): the run's recorded
    window ends no later than it (an import shortened or removed the window, or a blackout now covers
    the rest of it), and with none open now no node starts."""
    end = window_end(run)
    if end is None:
        return False
    if current is None:
        return True
    return not node_may_start(now, min(end, current.end), per_node)
