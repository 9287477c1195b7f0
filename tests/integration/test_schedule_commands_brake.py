"""`upkeep schedule`, `defer` and `reschedule` into a braked fleet (UPKEEP_CLUSTER_LIMIT names a Prefect
limit at 0: the dispatcher holds every start): each plans the update as asked and says, as `upkeep
request` does (upkeep/updates.py `fleet_brake`), that its start is held until the limit grants a slot;
--json has the same `cluster_limit` field. They said nothing of it: the SRE read "scheduled" and the
update did not start in its slot.

The real Prefect test server, a real limit of 0, the commands' own functions on the world's database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.test_cluster_limit_resumed import _limit_of_zero
from tests.support.update_world import CLUSTER, TARGET, World

pytestmark = [pytest.mark.prefect]


def _commands(world: World, monkeypatch: pytest.MonkeyPatch) -> Any:
    from upkeep import cli_common, cli_schedule

    monkeypatch.setattr(cli_common, "_opened", {"engine": world.engine})
    return cli_schedule


def _later(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).strftime("%Y-%m-%dT10:00")


@pytest.mark.parametrize("command", ["schedule", "defer", "reschedule"])
def test_a_schedule_command_into_a_braked_fleet_says_the_start_is_held(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    world = prefect_world
    commands = _commands(world, monkeypatch)
    limit = _limit_of_zero(world)
    if command == "schedule":
        commands.schedule(CLUSTER, TARGET, json=False)
    else:
        commands.schedule(CLUSTER, TARGET, json=True)
        capsys.readouterr()
        if command == "defer":
            commands.defer("update-1", to=_later(10)[:10], json=False)
        else:
            commands.reschedule("update-1", to=_later(12), reason="the customer's freeze", json=False)

    said = capsys.readouterr()
    assert said.out.startswith(("scheduled", "deferred", "rescheduled")), said.out
    assert "the fleet is held" in said.out and limit in said.out and "at least 1" in said.out, said.out
    assert said.err == "", said.err


@pytest.mark.parametrize("command", ["schedule", "defer", "reschedule"])
def test_a_schedule_commands_json_has_the_cluster_limit_as_requests_has(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    world = prefect_world
    commands = _commands(world, monkeypatch)
    limit = _limit_of_zero(world)
    commands.schedule(CLUSTER, TARGET, json=True)
    if command == "defer":
        capsys.readouterr()
        commands.defer("update-1", to=_later(10)[:10], json=True)
    elif command == "reschedule":
        capsys.readouterr()
        commands.reschedule("update-1", to=_later(12), reason="the customer's freeze", json=True)

    answer = json.loads(capsys.readouterr().out)
    assert answer["cluster_limit"]["limit"] == limit and answer["cluster_limit"]["held"] is True, answer
    assert limit in answer["cluster_limit"]["detail"], answer


def test_a_schedule_with_the_prefect_api_away_is_planned_with_the_requests_warning(
    prefect_world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    world = prefect_world
    commands = _commands(world, monkeypatch)
    world.runtime.cluster_limit = "clusters"
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        commands.schedule(CLUSTER, TARGET, json=True)

    said = capsys.readouterr()
    answer = json.loads(said.out)
    assert answer["state"] == "planned" and answer["cluster_limit"]["held"] is None, answer
    assert said.err.startswith("warning: whether the fleet is held could not be checked"), said.err
    assert len(said.err.strip().splitlines()) == 1, said.err
