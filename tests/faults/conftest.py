"""Fixtures of the fault suite: the recorder behind docs/reliability.md and seeded randomness. Its labs
(`faults_lab`, `crash_lab`), runtimes and the Prefect harness are in tests/support/fixtures.py with every
other shared fixture: defined once, they exist once per test process whichever directories run.

The suite uses labs of its own instead of the integration ones: the labs hand out their clusters one
per test that asks, and are sized by counting those tests.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.fixtures import SOAK
from tests.support.labs import take_cluster

__all__ = ["SOAK", "take_cluster"]

RESULTS_ENV = "UPKEEP_FAULTS_RESULTS"


# -- the record behind docs/reliability.md --------------------------------------------------------------
@dataclass
class Row:
    area: str
    case: str
    cases: int
    nodeid: str
    detail: str = ""
    outcome: str = "held"
    seconds: float = 0.0


@dataclass
class Recorder:
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


_recorder = Recorder()


@dataclass
class FaultRecord:
    """What one test tried: `record(area, case, cases)` for each fault or input class it covers."""

    nodeid: str
    rows: list[Row] = field(default_factory=list)

    def __call__(self, area: str, case: str, cases: int = 1, detail: str = "") -> None:
        row = Row(area, case, cases, self.nodeid, detail)
        self.rows.append(row)
        _recorder.rows.append(row)


@pytest.fixture
def record(request: pytest.FixtureRequest) -> FaultRecord:
    recorded = FaultRecord(request.node.nodeid)
    request.node._fault_record = recorded
    return recorded


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    recorded: FaultRecord | None = getattr(item, "_fault_record", None)
    if recorded is not None and (report.when == "call" or report.failed):
        if report.failed and not recorded.rows:
            # Failed before it could say what it tried: the table must still show the failure.
            crash = getattr(report.longrepr, "reprcrash", None)
            why = (getattr(crash, "message", "") or str(report.longrepr)).splitlines()[0][:200]
            recorded("(failed before recording)", item.nodeid, 0, why)
        for row in recorded.rows:
            if report.failed:
                row.outcome = "failed"
            row.seconds += report.duration
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(RESULTS_ENV)
    if not target or not _recorder.rows:
        return
    data = {
        "soak": SOAK,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.monotonic() - _recorder.started, 1),
        "rows": [row.__dict__ for row in _recorder.rows],
    }
    Path(target).write_text(json.dumps(data, indent=2) + "\n")


# -- seeds ------------------------------------------------------------------------------------------------
@pytest.fixture
def seeded(request: pytest.FixtureRequest) -> Callable[[str], random.Random]:
    """A random generator whose seed is printed (and shown on failure): UPKEEP_FAULTS_SEED replays it."""

    def make(what: str) -> random.Random:
        seed = int(os.environ.get("UPKEEP_FAULTS_SEED") or random.SystemRandom().randrange(1, 2**31))
        print(f"{what}: seed {seed} (replay: UPKEEP_FAULTS_SEED={seed} pytest '{request.node.nodeid}')")
        request.node.user_properties.append(("seed", seed))
        rng = random.Random(seed)
        rng.seed_value = seed  # type: ignore[attr-defined]
        return rng

    return make
