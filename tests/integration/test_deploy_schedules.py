"""What `prefect deploy --all` does to the schedules of prefect.yaml, on a real Prefect server.

prefect.yaml's schedules take `active` from the Prefect variable `upkeep_schedules_active`, read by
`prefect deploy` from the server it deploys to (docs/deploying.md, steps 4 and 7 and "Upgrading"):

- the first deploy, with the variable `false`, creates every schedule inactive: the scheduler never
  creates a run, so there is nothing to pause and no race with the scheduler (a deploy with active
  schedules followed by `schedule pause --all` left 61 scheduled dispatcher runs behind in CI);
- a redeploy on a live installation (the variable `true` since going live) keeps every schedule on:
  upgrading Upkeep never switches the dispatcher off by itself;
- without the variable, `prefect deploy` creates no scheduled deployment at all.

Whether the scheduler has run since the deploy is not guessed from a sleep: a probe deployment with an
active schedule is created after the deploy, and once the scheduler has given the probe its runs it has
also been through every deployment of prefect.yaml (it reads them all in the same loop).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.prefect_server import (
    PREFECT,
    REPO_ROOT,
    SCHEDULES_VARIABLE,
    PrefectServer,
    go_live,
    running_prefect_server,
)

pytestmark = [pytest.mark.prefect_server, pytest.mark.postgres]
SCHEDULED = ["dispatch", "case-auto-close", "monthly-cloud-release"]
HANG = 120.0  # bounds a wait for the scheduler (loops every 2 s here); not a performance claim


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path_factory.mktemp("deploy-schedules"), deploy=False) as server:
        yield server


@pytest.fixture
def api(server: PrefectServer) -> Iterator[httpx.Client]:
    """A client on `server` with no deployment and no schedules variable left by an earlier test."""
    with httpx.Client(base_url=server.api_url + "/", timeout=10) as http:
        for deployment in _deployments(http).values():
            http.delete(f"deployments/{deployment['id']}").raise_for_status()
        gone = http.delete(f"variables/name/{SCHEDULES_VARIABLE}")
        assert gone.status_code in (204, 404), gone.text
        yield http


def test_the_first_deploy_creates_no_scheduled_run_without_any_pause(
    server: PrefectServer, api: httpx.Client
) -> None:
    server.prefect("variable", "set", SCHEDULES_VARIABLE, "false")
    _deploy(server)

    _scheduler_has_run(api)
    deployments = _deployments(api)
    assert {name: _scheduled_runs(api, deployments[name]["id"]) for name in SCHEDULED} == {
        name: 0 for name in SCHEDULED
    }
    assert {name: _actives(deployments[name]) for name in SCHEDULED} == {name: [False] for name in SCHEDULED}


def test_a_redeploy_keeps_a_live_installation_live(server: PrefectServer, api: httpx.Client) -> None:
    server.prefect("variable", "set", SCHEDULES_VARIABLE, "false")
    _deploy(server)
    go_live(server)
    dispatch = _deployments(api)["dispatch"]["id"]
    _wait_for(lambda: _scheduled_runs(api, dispatch) > 0, "dispatcher runs scheduled after going live")

    _deploy(server)  # upgrading Upkeep: the same command as the first deploy

    deployments = _deployments(api)
    assert {name: _actives(deployments[name]) for name in SCHEDULED} == {name: [True] for name in SCHEDULED}
    assert deployments["dispatch"]["id"] == dispatch  # updated in place, not replaced
    _scheduler_has_run(api)
    assert _scheduled_runs(api, dispatch) > 0  # the scheduler keeps scheduling the dispatcher


def test_without_the_variable_no_scheduled_deployment_is_created(
    server: PrefectServer, api: httpx.Client
) -> None:
    done = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=REPO_ROOT,
        env=_deploy_env(server),
        capture_output=True,
        text=True,
        timeout=180,
    )
    print(f"\nprefect deploy without {SCHEDULES_VARIABLE}: exit {done.returncode}")
    assert "active must be able to be parsed as a boolean" in done.stdout + done.stderr, done.stdout
    deployments = _deployments(api)
    assert not set(SCHEDULED) & set(deployments), sorted(deployments)


def _deploy_env(server: PrefectServer) -> dict[str, str]:
    return {k: v for k, v in server.env.items() if k != "UPKEEP_CHECKOUT"}


def _deploy(server: PrefectServer) -> None:
    server.prefect("deploy", "--all", env=_deploy_env(server), timeout=180)


def _deployments(http: httpx.Client) -> dict[str, dict[str, Any]]:
    reply = http.post("deployments/filter", json={})
    reply.raise_for_status()
    return {d["name"]: d for d in reply.json()}


def _actives(deployment: dict[str, Any]) -> list[bool]:
    return [s["active"] for s in deployment["schedules"]]


def _scheduled_runs(http: httpx.Client, deployment_id: str) -> int:
    query = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    reply = http.post("flow_runs/count", json=query)
    reply.raise_for_status()
    count: int = reply.json()
    return count


def _scheduler_has_run(http: httpx.Client) -> None:
    """Returns once a scheduler loop that began after this call has finished: it gave a probe
    deployment, created now with an active hourly schedule, its runs."""
    flow = http.post("flows/", json={"name": "scheduler-probe"})
    flow.raise_for_status()
    probe = http.post(
        "deployments/",
        json={
            "name": f"probe-{time.monotonic_ns()}",
            "flow_id": flow.json()["id"],
            "schedules": [{"schedule": {"interval": 3600}, "active": True}],
        },
    )
    probe.raise_for_status()
    _wait_for(lambda: _scheduled_runs(http, probe.json()["id"]) > 0, "probe runs scheduled")


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, f"waited {HANG:.0f} s, still not {what}"
        time.sleep(0.5)


def test_the_doctor_warns_before_a_deploy_would_switch_the_schedules(
    server: PrefectServer, api: httpx.Client
) -> None:
    """The `deployments` line: paused and recorded paused is ok; the variable and the dispatch schedule
    disagreeing is a warning naming what the next `prefect deploy` does and the fix."""
    from upkeep.doctor import _deployments as doctor_deployments

    def line() -> tuple[str, str]:
        [check] = list(doctor_deployments(api))
        return check.status, check.detail

    server.prefect("variable", "set", SCHEDULES_VARIABLE, "false")
    _deploy(server)
    status, detail = line()
    assert status == "ok" and "dispatch schedule paused" in detail, detail

    server.prefect("variable", "set", SCHEDULES_VARIABLE, "true", "--overwrite")
    status, detail = line()
    assert status == "warn" and "the next `prefect deploy` switches every schedule ON" in detail, detail

    server.prefect("deployment", "schedule", "resume", "--all")
    status, detail = line()
    assert status == "ok" and "dispatch schedule ACTIVE" in detail, detail

    server.prefect("variable", "set", SCHEDULES_VARIABLE, "false", "--overwrite")
    status, detail = line()
    assert status == "warn" and "the next `prefect deploy` switches every schedule OFF" in detail, detail

    api.delete(f"variables/name/{SCHEDULES_VARIABLE}").raise_for_status()
    status, detail = line()
    assert status == "warn" and "fails on the scheduled deployments" in detail, detail
