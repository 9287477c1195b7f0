"""An answer given between the gate's two calls to Prefect: the pause, then its question.

Prefect's `pause_flow_run(wait_for_input=...)` sets the run Paused, then saves the question's form (the
input schema) in a second call. `upkeep approve` in between was rejected by the server ("Run input schema
not found") and told the operator "no longer waiting for approval (...; another answer came first, or the
wait timed out)": neither was true. CI met it (stop 34): a test answered a gate right after it read as
paused. Now the answer is given again until the question is there; a question that never comes (the
process killed between the two calls) is one line saying so, nothing recorded.

A real Prefect server (the session's harness); the gate's two calls made by hand, in Prefect's order, so
the gap is as long as the test needs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from uuid import UUID

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.input import keyset_from_paused_state
from prefect.states import Paused, Running

from flows.approval import Approval, GateNotAsking, answer_gate

pytestmark = [pytest.mark.prefect]


@flow
def _gated() -> None:  # never run: only its flow run's states are set
    pass


@pytest.fixture
def paused_without_question(prefect_harness: None) -> Iterator[tuple[UUID, dict[str, str]]]:
    """A flow run Paused for input, as after the gate's first call: the question not saved yet."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(_gated)
        client.set_flow_run_state(run.id, Running(), force=True)
        paused = Paused(timeout_seconds=600, pause_key="approval-1")
        keyset = keyset_from_paused_state(paused)
        paused.state_details.run_input_keyset = keyset
        assert client.set_flow_run_state(run.id, paused, force=True).state.is_paused()
    yield run.id, dict(keyset)


def _state(flow_run_id: UUID) -> str:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state is not None
    return state.type.value


def test_an_answer_before_the_question_is_given_again_once_it_is_saved(
    paused_without_question: tuple[UUID, dict[str, str]],
):
    flow_run_id, keyset = paused_without_question
    asked = threading.Event()

    def ask_later() -> None:
        asked.wait(timeout=60)  # set once the first answer was rejected: the gap is really met
        Approval.save(keyset, flow_run_id=flow_run_id)  # the gate's second call

    saver = threading.Thread(target=ask_later)
    saver.start()
    from prefect.flow_runs import resume_flow_run

    with pytest.raises(RuntimeError, match="Run input schema not found"):
        resume_flow_run(flow_run_id, run_input={"approved": False, "approver": "t", "reason": "x"})
    asked.set()
    answer_gate(flow_run_id, {"approved": False, "approver": "sre", "reason": "not this week"}, patience=60)
    saver.join(timeout=60)
    assert _state(flow_run_id) == "RUNNING"  # resumed with the answer


def test_a_question_never_saved_is_said_so_and_the_run_stays_paused(
    paused_without_question: tuple[UUID, dict[str, str]],
):
    flow_run_id, _ = paused_without_question
    with pytest.raises(GateNotAsking, match="Run input schema not found"):
        answer_gate(flow_run_id, {"approved": True, "approver": "sre", "reason": "go"}, patience=0.3)
    assert _state(flow_run_id) == "PAUSED"  # not resumed: nothing answered
