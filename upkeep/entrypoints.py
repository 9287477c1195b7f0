"""Entrypoints for Prefect deployments (prefect.yaml) and workers.

Importing this module wires the flows' Runtime to UPKEEP_* settings (lazily: nothing is built until
a flow asks) and re-exports the flow objects unchanged, so a deployment runs exactly the flow the CLI
runs, under the same name.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Prefect loads this file as a script with its own directory (upkeep/) first on sys.path, where
# upkeep/requests.py shadowed the `requests` package (detect_secrets and apprise import it): every
# deployment run and `prefect deploy` failed with "Could not find object 'product_update'". Only the
# repository root belongs on the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _HERE]

from flows.case_auto_close import case_auto_close  # noqa: E402
from flows.cloud_release import cloud_release  # noqa: E402
from flows.dispatch import dispatch  # noqa: E402
from flows.product_update import product_update  # noqa: E402
from upkeep.bootstrap import configure_from_settings  # noqa: E402

configure_from_settings()

__all__ = ["case_auto_close", "cloud_release", "dispatch", "product_update"]
