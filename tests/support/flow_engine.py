"""Upkeep's Prefect flows run in-process without a Prefect API: flows and tasks called as the plain
functions they wrap, for unit tests of a flow's branching with the fakes of tests/support/fakes.py.

What this replaces is Prefect's engine only: no server to start (the session harness takes 10 s and more
under load), no task-run bookkeeping. Flows return their states as Prefect would (`return_state=True`:
`Completed` with the result, `Failed` with the exception's line, or the state the flow returned), and
tasks run once: their `retries` are Prefect's, not the flow's logic, and are not exercised here. Artifacts
are kept in `Engine.artifacts` instead of the API. Anything else that would reach the API fails at once:
the API URL is a closed loopback port, with no client retries.

The flows' decisions, our database record, the scheduling rules and the notices are real; the same
branches run under the real Prefect engine and the real lab in tests/integration.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.flows import Flow
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import Completed, Failed, State
from prefect.tasks import Task

LOG = logging.getLogger("tests.flow_engine")
# Nothing listens on port 9 (discard) on loopback: a call that slips through fails at once.
NO_API = "http://127.0.0.1:9/api"


@dataclass
class Done:
    """A finished task's future (`Task.submit`)."""

    value: Any = None
    error: BaseException | None = None

    def result(self, *_args: Any, **_kwargs: Any) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def wait(self, *_args: Any, **_kwargs: Any) -> None:
        return None


@dataclass
class Engine:
    """What the flows wrote for the Prefect UI, in order: (kind, arguments)."""

    artifacts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)

    def artifact(self, kind: str) -> Any:
        def create(*args: Any, **kwargs: Any) -> UUID:
            self.artifacts.append((kind, {"args": args, **kwargs}))
            return uuid4()

        return create


def _call_task(task: Task[Any, Any], *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
    if not return_state:
        return task.fn(*args, **kwargs)
    try:
        return Completed(data=task.fn(*args, **kwargs))
    except Exception as exc:
        return Failed(message=str(exc), data=exc)


def _submit_task(task: Task[Any, Any], *args: Any, **kwargs: Any) -> Done:
    try:
        return Done(task.fn(*args, **kwargs))
    except Exception as exc:
        return Done(error=exc)


def _flow_caller(engine: Engine) -> Any:
    def call(flow: Flow[Any, Any], *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        engine.flows.append(flow.name)
        try:
            returned = flow.fn(*args, **kwargs)
        except Exception as exc:
            if not return_state:
                raise
            return Failed(message=f"Flow run encountered an exception: {type(exc).__name__}: {exc}", data=exc)
        if isinstance(returned, State):
            if return_state:
                return returned
            if returned.is_failed():
                raise RuntimeError(returned.message)
            return returned.result()
        return Completed(data=returned) if return_state else returned

    return call


def _run_logger(*_args: Any, **_kwargs: Any) -> logging.Logger:
    return LOG


@contextmanager
def prefect_in_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """Within: every Prefect flow and task is a plain call (see the module's docstring)."""
    import prefect

    engine = Engine()
    monkeypatch.setattr(Task, "__call__", _call_task)
    monkeypatch.setattr(Task, "submit", _submit_task)
    monkeypatch.setattr(Flow, "__call__", _flow_caller(engine))
    # `from prefect import get_run_logger` bound the name in each flows module: replace it there.
    for name, module in list(sys.modules.items()):
        ours = name.split(".")[0] in ("flows", "upkeep") and module is not None
        if ours and getattr(module, "get_run_logger", None) is prefect.get_run_logger:
            monkeypatch.setattr(module, "get_run_logger", _run_logger)
    import flows.report

    for kind in ("create_markdown_artifact", "create_progress_artifact", "update_progress_artifact"):
        monkeypatch.setattr(flows.report, kind, engine.artifact(kind))
    with temporary_settings(updates={PREFECT_API_URL: NO_API, PREFECT_CLIENT_MAX_RETRIES: 0}):
        yield engine
