"""Links from Upkeep's record to the Prefect UI (and back: the summary names `upkeep show RUN`)."""

from __future__ import annotations


def flow_run_url(flow_run_id: str | None) -> str:
    """The Prefect UI page of a flow run, or "" when there is no run or no UI URL is configured
    (PREFECT_UI_URL, derived by Prefect from PREFECT_API_URL)."""
    if not flow_run_id:
        return ""
    try:
        from prefect.utilities.urls import url_for

        return url_for("flow-run", obj_id=flow_run_id) or ""
    except Exception:  # a link is a convenience: never the reason something else fails
        return ""


def inspect_command(run_id: int | None) -> str:
    return f"upkeep show {run_id}" if run_id is not None else ""
