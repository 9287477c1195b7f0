"""No telemetry from Upkeep's processes: Prefect's client analytics (DO_NOT_TRACK) and the analytics of
any server it starts (a temporary one when PREFECT_API_URL is unset) stay off unless the operator
explicitly sets them. Called before anything imports Prefect, so its settings see it."""

from __future__ import annotations

import os

OFF = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def switch_off() -> None:
    for name, value in OFF.items():
        os.environ.setdefault(name, value)
