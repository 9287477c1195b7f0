"""Less Prefect per cluster (issue #19): what the UI is sent, and how the in-process dispatcher lets its
claimed runs start. Prefect's artifact calls are replaced by recorders: the point is which calls are
made, not what the server does with them (tests/integration/test_update_artifacts.py reads those back)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest

import flows.dispatch as dispatch
import flows.report as report


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    made: list[tuple[Any, ...]] = []
    artifact = uuid4()

    def create(progress: float, description: str) -> UUID:
        made.append(("create", progress, description))
        return artifact

    def update(artifact_id: UUID, progress: float, description: str) -> None:
        assert artifact_id == artifact
        made.append(("update", progress, description))

    monkeypatch.setattr(report, "create_progress_artifact", create)
    monkeypatch.setattr(report, "update_progress_artifact", update)
    return made


def _plan(nodes: int = 3) -> Any:
    return SimpleNamespace(nodes=[object()] * nodes, label="acme/c1 9.8.0→9.10.0")


def test_progress_is_created_at_the_first_node_that_ends_and_moved_on_after_each_next(
    calls: list[tuple[Any, ...]],
) -> None:
    progress = report.Progress(_plan())
    assert calls == []  # no 0 % bar at the start: one request and one event less per cluster
    for done, node in enumerate(("n1", "n2", "n3"), 1):
        progress.update(done, node, "9.8.0→9.10.0")
    assert [(kind, round(pct)) for kind, pct, _ in calls] == [("create", 33), ("update", 67), ("update", 100)]
    assert calls[-1][2].splitlines()[-3:] == [
        "- n1: 9.8.0→9.10.0",
        "- n2: 9.8.0→9.10.0",
        "- n3: 9.8.0→9.10.0",
    ]


def test_progress_not_created_while_the_api_is_away_is_created_at_the_next_node(
    calls: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    working = report.create_progress_artifact

    def refused(progress: float, description: str) -> UUID:
        raise ConnectionError("refused")

    monkeypatch.setattr(report, "create_progress_artifact", refused)
    progress = report.Progress(_plan())
    progress.update(1, "n1", "9.8.0→9.10.0")  # a warning says so; the run goes on
    monkeypatch.setattr(report, "create_progress_artifact", working)
    progress.update(2, "n2", "9.8.0→9.10.0")
    assert [(kind, round(pct)) for kind, pct, _ in calls] == [("create", 67)]
    assert "- n1: 9.8.0→9.10.0" in calls[0][2]  # the node the UI missed is in the description


def test_a_start_slot_is_given_back_once_whoever_releases_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "STARTING_WAIT", 0.0)  # never wait: only a free slot is taken
    gate = dispatch._StartGate(1)
    slot = dispatch._StartSlot(gate)
    slot.release()  # the run's first step
    slot.release()  # the run's end: nothing more to give back
    assert gate.take()
    assert not gate.take()  # one slot, not two


def test_a_run_gives_up_on_a_slot_only_when_no_start_moved_for_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatch, "STARTING_WAIT", 0.0)
    gate = dispatch._StartGate(0)  # every slot taken by runs standing still before their first step
    slot = dispatch._StartSlot(gate)  # starts anyway, without one
    slot.release()
    assert not gate.take()  # releasing it did not make a slot out of nothing
    monkeypatch.setattr(dispatch, "STARTING_WAIT", 3600.0)
    gate._moved -= 3601.0  # the last slot given back an hour ago: stuck, whatever the setting
    assert not gate.take()
    gate.give()  # a start moved: the wait counts from now, and the slot is there
    assert gate.take()
