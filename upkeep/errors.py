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
    prefect_exceptions = sys.modules.get("prefect.exceptions")  # not imported: not Prefect's error
    if (
        prefect_exceptions is not None
        and isinstance(exc, prefect_exceptions.PrefectHTTPStatusError)
        and exc.response.status_code >= 500
    ):  # it answered `prefect_answers`, then went away (restarting, its database down, ...)
        cause = " ".join(str(exc).split())[:300]
        return f"the Prefect API stopped answering ({cause}); try again once it answers (PREFECT_API_URL)"
    from inventory.db import server_away

    if server_away(exc):  # down, restarting or failing over: the operator's to fix, not our bug
        cause = " ".join(str(getattr(exc, "orig", None) or exc).split())
        return (
            f"the database is unavailable ({cause}); a run this interrupted is left as it was "
            "and continues with `upkeep resume RUN`"
        )
    return None
