"""Fixtures of the fault suite: the integration fixtures (imported, not copied), labs of its own, and
the recorder behind docs/reliability.md.

Session fixtures are keyed by the conftest that defines them, so re-exporting `prefect_harness` here
would start a second Prefect test server (≈ 10 s and a process) whenever tests/integration runs in the
same session. `_shared` wraps it once, before pytest registers tests/integration/conftest.py, so
both directories get the one harness; if that conftest happens to be registered first (e.g.
`pytest tests/integration tests/faults`) the wrap comes too late and each keeps its own - slower, not
wrong.

The suite uses labs of its own (`faults_lab`, `crash_lab`) instead of the integration ones: a lab is
0.3 s to start, and the integration labs hand out their clusters by count (`fresh_cluster`), which a
second user would exhaust.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tests.integration.conftest as _integration
from tests.integration.conftest import _runtime

SOAK = os.environ.get("UPKEEP_SOAK", "") not in ("", "0")
RESULTS_ENV = "UPKEEP_FAULTS_RESULTS"


# -- one Prefect harness per session ------------------------------------------------------------------
def _shared(definition: Any) -> Any:
    """A session fixture that sets `definition` up once however many conftests expose it, and tears
    it down when the last of them is done."""
    unwrap = getattr(definition, "_get_wrapped_function", None)  # pytest >= 8.4 wraps fixture functions
    factory = unwrap() if unwrap else definition
    state: dict[str, Any] = {"users": 0}

    @pytest.fixture(scope="session", name=definition.name)
    def shared() -> Iterator[Any]:
        """One instance for the whole session, whichever directory's tests ask first."""
        if state["users"] == 0:
            gen = factory()
            state["gen"], state["value"] = gen, next(gen)
        state["users"] += 1
        try:
            yield state["value"]
        finally:
            state["users"] -= 1
            if state["users"] == 0:
                with contextlib.suppress(StopIteration):
                    next(state["gen"])

    shared._upkeep_shared = True  # type: ignore[attr-defined]
    return shared


if not getattr(_integration.prefect_harness, "_upkeep_shared", False):
    _integration.prefect_harness = _shared(_integration.prefect_harness)
prefect_harness = _integration.prefect_harness


# -- labs of our own ------------------------------------------------------------------------------------
FAULTS_LAB_CLUSTERS = 16


@pytest.fixture(scope="session")
def faults_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Quick nodes (0.1 s upgrade, 0.1 s to healthy) for the remote, file-server and secrets tests."""
    from upkeep.lab import Lab

    lab = Lab(tmp_path_factory.mktemp("faultslab"))
    lab.up(clusters=FAULTS_LAB_CLUSTERS, nodes=3, upgrade_seconds=0.1, health_delay=0.1)
    try:
        yield lab
    finally:
        lab.down()


_faults_numbers = itertools.count(1)


def take_cluster(lab: Any) -> str:
    """A faults-lab cluster no earlier test has touched."""
    clusters = list(dict.fromkeys(node["cluster"] for node in lab.status()["nodes"]))
    number = next(_faults_numbers)
    if number > len(clusters):
        pytest.fail(f"the faults lab has only {len(clusters)} clusters; raise FAULTS_LAB_CLUSTERS")
    return clusters[number - 1]


@pytest.fixture
def faults_cluster(faults_lab: Any) -> str:
    return take_cluster(faults_lab)


@pytest.fixture
def faults_settings(faults_lab: Any, tmp_path: Path) -> Any:
    from upkeep.settings import load_settings

    return load_settings(home=tmp_path / "home", **faults_lab.settings_overrides())


@pytest.fixture
def faults_runtime(
    faults_lab: Any, faults_settings: Any, sqlite_engine: Any, prefect_harness: None
) -> Iterator[Any]:
    """A flow Runtime on the faults lab and a fresh SQLite database holding its inventory."""
    yield from _runtime(faults_lab, faults_settings, sqlite_engine)


@pytest.fixture(scope="session")
def crash_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Nodes slow enough for a kill to land inside an upgrade (0.5 s) or a health wait (0.4 s)."""
    from upkeep.lab import Lab

    lab = Lab(tmp_path_factory.mktemp("crashlab"))
    lab.up(clusters=10 if SOAK else 3, nodes=3, upgrade_seconds=0.5, health_delay=0.4)
    try:
        yield lab
    finally:
        lab.down()


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
