"""Root of the suite. Fixtures live in tests/support/fixtures.py (one plugin, so each session fixture is
set up once per test process): `engine` runs a test on SQLite AND PostgreSQL (the guide requires both),
`sqlite_engine` is for tests that only need a database; both are migrated to the newest schema.

Order: the files that take longest run first (`LONGEST_FIRST`), the rest in collection order. With
`--dist loadfile --no-loadscope-reorder` (the Makefile) pytest-xdist hands out whole files in this
order; by default it sorts files by their number of tests, so a file of a few long tests (a real
Prefect server, the deploying doc followed literally) started last and ran alone while the other
workers sat idle. Within a file the order is the file's own.

Hypothesis: `make test` runs the "test" profile (a few hundred examples per property), `make soak` the
"soak" profile (thousands); HYPOTHESIS_PROFILE picks one by name. A property whose examples are
expensive (a database or the portal per example) sets its own smaller count.
"""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import settings

from tests.support.databases import POSTGRES_URL
from upkeep.telemetry import switch_off

__all__ = ["POSTGRES_URL"]

pytest_plugins = ["tests.support.fixtures"]

switch_off()  # every test process, and the CLI/worker processes it starts, send no telemetry

# A suite started as a background job of a non-interactive shell (`nohup make test &`, a CI runner's
# step) inherits SIGINT ignored, and every process it starts keeps it ignored across exec: the tests
# that send a real Ctrl-C (test_cli_interface) or stop a worker the way its systemd unit does
# (KillSignal=SIGINT, test_deploying_doc) then see nothing happen (found in a fresh-clone run started
# that way: 4 Ctrl-C tests failed and the deploying doc hung 300 s). A handler, unlike SIG_IGN, is reset
# to the default at exec, so the processes these tests start get SIGINT the way a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("test", max_examples=200)
settings.register_profile("soak", max_examples=5000)
_SOAK = os.environ.get("UPKEEP_SOAK", "") not in ("", "0")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("soak" if _SOAK else "test"))


# Files that run long, longest first. The first six each start a real Prefect server and run real
# `prefect deploy`s (5-20 s each on a quiet machine, up to ~100 s at load 19). Measured side by side at
# load 17-19 (2026-12-06, test-seconds per module): test_upkeep_deploy_adversarial 1,523-1,531 and
# test_upkeep_deploy 1,412-1,440 (both with tests cut at the 300 s timeout: more in truth), the two
# halves of test_deploy_schedules 1,171 and 1,033 (the whole file, 2,706, had been the longest module);
# the monthly release end to end was ~300 s in the fresh-clone runs of 2026-12-04, about what the
# others come to on a quieter machine (test_deploy_schedules ~579 s alone under load). None of the
# first five but test_deployments was listed before: collection order handed the upkeep_deploy pair
# out near the end of the integration files. Then the deploying doc (129 s); the others hold waits by
# design (tunnels, pauses, the portal in a real browser, 200 MB of logs) and come late in collection
# order. Every other file keeps its place: tests/faults first, tests/unit (many quick files that fill
# the gaps at the end) last.
LONGEST_FIRST = (
    "tests/integration/test_upkeep_deploy_adversarial.py",
    "tests/integration/test_upkeep_deploy.py",
    "tests/integration/test_deployments.py",
    "tests/integration/test_deploy_schedules_variable.py",
    "tests/integration/test_deploy_schedules.py",
    "tests/integration/test_deploying_doc.py",
    "tests/integration/test_tunnel_midrun.py",
    "tests/integration/test_tunnel.py",
    "tests/integration/test_tunnel_windows.py",
    "tests/portal/test_portal_browser.py",
    "tests/integration/test_diagnostics.py",
    "tests/integration/test_update_control.py",
    "tests/integration/test_endings.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: position for position, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: file order kept
