"""Integration tests run against real parts: the labs, the Prefect test harness and the databases of
tests/support/fixtures.py (the one place fixtures are defined). The names below are kept for the
modules that import them from here."""

from __future__ import annotations

import os

from tests.support.fixtures import cli_engine, runtime_for, upkeep_cli
from tests.support.labs import nodes_of

_runtime = runtime_for

__all__ = ["_runtime", "cli_engine", "nodes_of", "upkeep_cli"]

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
