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

import contextlib
import http.server
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
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
from tests.integration.prefect_server import deployments as _deployments
from tests.integration.prefect_server import doctor_line as _doctor_line
from tests.integration.prefect_server import scheduled_runs as _scheduled_runs
from tests.integration.prefect_server import scheduler_has_run as _scheduler_has_run
from tests.integration.prefect_server import set_variable as _set_variable
from tests.integration.prefect_server import wait_for as _wait_for

pytestmark = [pytest.mark.prefect_server, pytest.mark.postgres]
SCHEDULED = ["dispatch", "case-auto-close", "monthly-cloud-release"]


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


def _actives(deployment: dict[str, Any]) -> list[bool]:
    return [s["active"] for s in deployment["schedules"]]


@pytest.fixture
def installed(server: PrefectServer) -> Iterator[httpx.Client]:
    """A client on `server` with prefect.yaml deployed (once per module while no test removes it; deployed
    anew, paused, when one did). Each test then sets the state it starts from with `_restore`."""
    with httpx.Client(base_url=server.api_url + "/", timeout=10) as http:
        if not set(SCHEDULED) <= set(_deployments(http)):
            _set_variable(http, False)
            _deploy(server)
        yield http


def _restore(http: httpx.Client, start: str) -> str:
    """The installation `start`s ("live": docs/deploying.md step 7 done; "paused": step 4 only) through the
    API calls `go_live` makes through the CLI (the variable, then every schedule's `active`), and any UI
    toggle undone. Checked, not assumed: the state before the test, as the doctor and a deploy see it."""
    live = start == "live"
    _set_variable(http, live)
    for name in SCHEDULED:
        deployment = _deployments(http)[name]
        if deployment["paused"]:
            http.post(f"deployments/{deployment['id']}/resume_deployment").raise_for_status()
        for schedule in deployment["schedules"]:
            patched = http.patch(
                f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": live}
            )
            patched.raise_for_status()
    deployments = _deployments(http)
    assert {name: (_actives(deployments[name]), deployments[name]["paused"]) for name in SCHEDULED} == {
        name: ([live], False) for name in SCHEDULED
    }
    return "ACTIVE" if live else "paused"


@contextlib.contextmanager
def _proxy_refusing(api_url: str, refused: str, status: int) -> Iterator[str]:
    """A reverse proxy on 127.0.0.1 in front of the server, as an SRE's auth proxy or WAF would be: it
    answers `status` for every path containing `refused` and forwards the rest. Its API URL."""
    upstream = httpx.Client(base_url=api_url.removesuffix("/api"), timeout=30)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if refused in self.path:
                reply_status, content, kind = (
                    status,
                    b'{"detail": "refused by the proxy"}',
                    "application/json",
                )
            else:
                reply = upstream.request(
                    self.command, self.path, content=body, headers={"Content-Type": "application/json"}
                )
                reply_status, content = reply.status_code, reply.content
                kind = reply.headers.get("Content-Type", "application/json")
            self.send_response(reply_status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PATCH = do_DELETE = _forward

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}/api"
    finally:
        proxy.shutdown()
        proxy.server_close()
        upstream.close()


def test_a_server_that_will_not_show_the_variable_still_gets_its_deployments_line(
    server: PrefectServer, installed: httpx.Client
) -> None:
    """A proxy refusing /variables (403) cost the whole Prefect part of the doctor before adv47: the
    HTTPStatusError from reading the variable turned it into one "could not check" line, without the
    deployments line (is the dispatcher live?) or the cluster limit after it."""
    _restore(installed, "paused")
    with (
        _proxy_refusing(server.api_url, "/variables/", 403) as url,
        httpx.Client(base_url=url + "/") as client,
    ):
        check = _doctor_line(client)
    assert check.status == "warn", check.detail
    assert "dispatch schedule paused" in check.detail and "could not be read (HTTP 403)" in check.detail


def test_a_deployment_deleted_from_a_live_installation_is_redeployed_live(
    server: PrefectServer, installed: httpx.Client
) -> None:
    """Someone deleted `case-auto-close` from a live installation: the doctor's fix is the plain deploy,
    which brings it back live (red before the fix: it said to set the variable to false first, which
    would have switched the live dispatcher off with it)."""
    _restore(installed, "live")
    installed.delete(f"deployments/{_deployments(installed)['case-auto-close']['id']}").raise_for_status()

    check = _doctor_line(installed)
    assert check.status == "fail" and "missing: case-auto-close" in check.detail, check.detail
    assert "creates the schedules ACTIVE" in check.detail and "--overwrite" not in check.fix, check.fix
    _deploy(server)
    deployments = _deployments(installed)
    assert {name: _actives(deployments[name]) for name in SCHEDULED} == {name: [True] for name in SCHEDULED}


def test_a_dispatch_deployment_paused_with_the_ui_toggle_is_named_so_with_a_fix_that_works(
    server: PrefectServer, installed: httpx.Client
) -> None:
    """The UI's toggle pauses the deployment, not its schedule, and the next `prefect deploy` un-pauses it
    (measured: paused back to false). The doctor called that "dispatch schedule paused" and offered
    `schedule resume --all` to go live, which changes nothing for a paused deployment (red before)."""
    _restore(installed, "live")
    dispatch = _deployments(installed)["dispatch"]["id"]
    installed.post(f"deployments/{dispatch}/pause_deployment").raise_for_status()

    check = _doctor_line(installed)
    assert check.status == "warn" and "dispatch deployment paused" in check.detail, check.detail
    assert "switches every schedule ON" in check.detail and "schedule resume" not in check.fix, check.fix
    _deploy(server)
    assert _deployments(installed)["dispatch"]["paused"] is False  # what the warning said the deploy would do
    assert _doctor_line(installed).status == "ok"


def test_the_doctor_warns_before_a_deploy_would_switch_the_schedules(
    server: PrefectServer, installed: httpx.Client
) -> None:
    """The `deployments` line: paused and recorded paused is ok; the variable and the dispatch schedule
    disagreeing is a warning naming what the next `prefect deploy` does and the fix."""
    from upkeep.doctor import _deployments as doctor_deployments

    def line() -> tuple[str, str]:
        [check] = list(doctor_deployments(installed))
        return check.status, check.detail

    _restore(installed, "paused")  # deployed as step 4 leaves it
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

    installed.delete(f"variables/name/{SCHEDULES_VARIABLE}").raise_for_status()
    status, detail = line()
    assert status == "warn" and "fails on the scheduled deployments" in detail, detail


def test_an_installation_deployed_before_the_variable_upgrades_live_with_one_schedule_each(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """The upgrade every existing installation makes (docs/deploying.md step 8, "deployed before
    `upkeep_schedules_active` existed"): deployed with the old prefect.yaml (`active: true`, no slugs),
    paused and resumed by hand, live; then the variable set to true and this prefect.yaml deployed. Prefect
    replaces slug-less schedules instead of patching them: each deployment must end with one schedule,
    active, now with its slug."""
    old = (REPO_ROOT / "prefect.yaml").read_text()
    old = old.replace('"{{ prefect.variables.upkeep_schedules_active }}"', "true")
    old = re.sub(r"slug: [\w-]+, |\n +slug: [\w-]+(?=\n)", "", old)
    assert "slug:" not in old and "active: true" in old and "{{ prefect.variables" not in old, old
    (tmp_path / "prefect.yaml").write_text(old)
    server.prefect(
        "deploy", "--all", "--prefect-file", str(tmp_path / "prefect.yaml"), env=_deploy_env(server)
    )
    server.prefect("deployment", "schedule", "pause", "--all")  # the old step 4
    server.prefect("deployment", "schedule", "resume", "--all")  # the old step 7
    assert {name: _actives(d) for name, d in _deployments(api).items() if name in SCHEDULED} == {
        name: [True] for name in SCHEDULED
    }

    server.prefect("variable", "set", SCHEDULES_VARIABLE, "true")
    _deploy(server)

    deployments = _deployments(api)
    assert {name: _actives(deployments[name]) for name in SCHEDULED} == {name: [True] for name in SCHEDULED}
    assert all(s["slug"] for name in SCHEDULED for s in deployments[name]["schedules"]), deployments
