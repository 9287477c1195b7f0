"""Writing NodeSteps around remote actions, each in its own short transaction.

A step row is committed as `started` before the remote action and as `succeeded`/`failed` after it,
so after a crash the database says exactly which action on which node may have been in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from inventory.db import session_scope
from inventory.models import NodeStep, StepState
from inventory.runs import end_step, start_step


@dataclass
class StepNote:
    output: str = ""
    detail: str | None = None


@contextmanager
def recorded(
    engine: Engine, run_id: int, node_id: int | None, step: str, detail: str = ""
) -> Iterator[StepNote]:
    with session_scope(engine) as session:
        row = start_step(run_id, node_id, step, detail=detail, session=session)
    note = StepNote()
    try:
        yield note
    except BaseException as exc:
        with session_scope(engine) as session:
            row = session.merge(row)
            end_step(
                row, StepState.failed, output=note.output or str(exc), detail=note.detail, session=session
            )
        raise
    with session_scope(engine) as session:
        row = session.merge(row)
        end_step(row, StepState.succeeded, output=note.output, detail=note.detail, session=session)


def node_done(engine: Engine, run_id: int, node_id: int) -> bool:
    """True once the node's final verification succeeded in this run: it must not be touched again."""
    with session_scope(engine) as session:
        row = session.exec(
            select(NodeStep.id).where(
                col(NodeStep.run_id) == run_id,
                col(NodeStep.node_id) == node_id,
                col(NodeStep.step) == "verify",
                col(NodeStep.state) == StepState.succeeded,
            )
        ).first()
    return row is not None
