"""Entrypoints for Prefect deployments (prefect.yaml) and workers.

Importing this module wires the flows' Runtime to UPKEEP_* settings (lazily: nothing is built until
a flow asks) and re-exports the flow objects unchanged, so a deployment runs exactly the flow the CLI
runs, under the same name.
"""

from __future__ import annotations

from flows.case_auto_close import case_auto_close
from flows.cloud_release import cloud_release
from flows.dispatch import dispatch
from flows.product_update import product_update
from upkeep.bootstrap import configure_from_settings

configure_from_settings()

__all__ = ["case_auto_close", "cloud_release", "dispatch", "product_update"]
