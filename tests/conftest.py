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


# Files that run long, longest first, with their test-seconds (junit setup+call+teardown summed per
# file) in a full `-n 4 --dist loadfile` run at load 17-19 (2026-12-06, 4,027 s wall for 15,672
# test-seconds): every file of 150 s or more, then the long ones listed before. Machines differ; the
# ratios are what the order needs. Measure again (--junitxml) when files are added or split: a file not
# listed keeps its place in collection order, tests/faults first and tests/unit (many quick files that
# fill the gaps at the end) last. test_deploy_schedules (1,663 s, the longest) is split in two halves
# whose measured ratio, side by side, was 1,171 : 1,033.
LONGEST_FIRST = (
    "tests/integration/test_forkserver_adversarial.py",  # 885
    "tests/integration/test_deploy_schedules_variable.py",  # ~884 (half of 1,663, by the split's ratio)
    "tests/integration/test_upkeep_deploy_adversarial.py",  # 786
    "tests/integration/test_deploy_schedules.py",  # ~779
    "tests/integration/test_upkeep_deploy.py",  # 706
    "tests/integration/test_doctor.py",  # 672
    "tests/integration/test_forkserver.py",  # 511
    "tests/integration/test_gate_names.py",  # 413
    "tests/integration/test_windows.py",  # 365
    "tests/integration/test_schedule_integrity.py",  # 339
    "tests/integration/test_migrate_db.py",  # 324
    "tests/integration/test_deployments.py",  # 321
    "tests/faults/test_no_traceback.py",  # 319
    "tests/integration/test_deploying_doc.py",  # 270
    "tests/integration/test_resume.py",  # 257
    "tests/unit/test_pause_adv52.py",  # 216
    "tests/integration/test_tunnel.py",  # 183
    "tests/faults/test_concurrency.py",  # 180
    "tests/portal/test_portal_in_progress_adv53.py",  # 179
    "tests/integration/test_takeover.py",  # 176
    "tests/integration/test_cli_inventory.py",  # 171
    "tests/unit/test_pause_told.py",  # 168
    "tests/integration/test_gate_approve_write_fails.py",  # 159
    "tests/integration/test_cli_interface.py",  # 158
    "tests/portal/test_portal_pages.py",  # 158
    "tests/integration/test_readme_examples.py",  # 156
    "tests/integration/test_cli_pipe.py",  # 153
    "tests/integration/test_tunnel_windows.py",  # 139
    "tests/integration/test_endings.py",  # 125
    "tests/integration/test_tunnel_midrun.py",  # 105
    "tests/integration/test_update_control.py",  # 103
    "tests/portal/test_portal_browser.py",
    "tests/integration/test_diagnostics.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: position for position, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: file order kept
