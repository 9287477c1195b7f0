"""Which exceptions are the user's to read (one line, no traceback) and which are our bugs."""

from __future__ import annotations

import sys


def explain(exc: BaseException) -> str | None:
    """The message (plain text) for an expected failure, or None for a bug (which then shows its
    traceback)."""
    from flows.plan import PlanError
    from flows.steps import StepFailed
    from inventory.cases import CaseError
    from inventory.runs import ActiveRunExists
    from scheduling.errors import SchedulingError
    from tasks.diagnostics import DiagnosticsRefused
    from tasks.fileserver import FileServerError
    from tasks.ssh import RemoteError
    from upkeep.settings import SettingsError

    expected: list[type[BaseException]] = [
        PlanError,
        StepFailed,
        ActiveRunExists,
        FileServerError,
        RemoteError,
        SettingsError,
        LookupError,
        CaseError,
        SchedulingError,
        DiagnosticsRefused,
    ]
    try:
        from inventory.importer import InventoryError

        expected.append(InventoryError)
    except ImportError:  # pragma: no cover - during bootstrap of the package
        pass
    try:
        from upkeep.lab import LabError

        expected.append(LabError)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, tuple(expected)):
        return str(exc)
    if _prefect_api_gone(exc):  # it answered `prefect_answers`, then went away (restarting, ...)
        from flows.prefect_api import scrubbed

        cause = scrubbed(" ".join(str(exc).split()))[:300] or "(no message)"  # httpx names the full URL
        return (
            f"the Prefect API stopped answering ({type(exc).__name__}: {cause}); try again once it "
            "answers (PREFECT_API_URL)"
        )
    from inventory.db import server_away

    if server_away(exc):  # down, restarting or failing over: the operator's to fix, not our bug
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())
        return (
            f"the database is unavailable ({cause}); a run this interrupted is left as it was "
            "and continues with `upkeep resume RUN`"
        )
    return None


def _prefect_api_gone(exc: BaseException) -> bool:
    """A 5xx from the Prefect API, or its connection lost or refused (a request to PREFECT_API_URL)."""
    prefect_exceptions = sys.modules.get("prefect.exceptions")  # not imported: not Prefect's error
    if prefect_exceptions is None:
        return False
    if isinstance(exc, prefect_exceptions.PrefectHTTPStatusError):
        return exc.response.status_code >= 500
    import httpx
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api or not isinstance(exc, httpx.TransportError):
        return False
    try:
        url = str(exc.request.url)
    except RuntimeError:  # no request: not one of the API's
        return False
    return url.startswith(api.rstrip("/") + "/")
