"""Root of the suite. Fixtures live in tests/support/fixtures.py (one plugin, so each session fixture is
set up once per test process): `engine` runs a test on SQLite AND PostgreSQL (the guide requires both),
`sqlite_engine` is for tests that only need a database; both are migrated to the newest schema.

Hypothesis: `make test` runs the "test" profile (a few hundred examples per property), `make soak` the
"soak" profile (thousands); HYPOTHESIS_PROFILE picks one by name. A property whose examples are
expensive (a database or the portal per example) sets its own smaller count.
"""

from __future__ import annotations

import os

from hypothesis import settings

from tests.support.databases import POSTGRES_URL
from upkeep.telemetry import switch_off

__all__ = ["POSTGRES_URL"]

pytest_plugins = ["tests.support.fixtures"]

switch_off()  # every test process, and the CLI/worker processes it starts, send no telemetry

settings.register_profile("test", max_examples=200)
settings.register_profile("soak", max_examples=5000)
_SOAK = os.environ.get("UPKEEP_SOAK", "") not in ("", "0")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("soak" if _SOAK else "test"))
