"""`upkeep deploy` and `upkeep live on|off` against a real Prefect server (one per module: a deploy costs
5-20 s, a server start more).

`upkeep deploy` runs `prefect --no-prompt deploy --all` only when the server's `upkeep_schedules_active`
is JSON true or false and agrees with the dispatch schedule; every other state is refused in one line
with nothing deployed (checked on the server: no deployment created, none updated). `upkeep live on|off`
sets the variable and every schedule. The commands run as an operator runs them: a child process
(forked, tests/support/forkserver.py) with the server's environment.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.prefect_server import (
    POOL,
    REPO_ROOT,
    SCHEDULES_VARIABLE,
    PrefectServer,
    running_prefect_server,
)
from tests.integration.prefect_server import deployments as _deployments
from tests.integration.prefect_server import doctor_line as _doctor_line
from tests.integration.prefect_server import scheduled_runs as _scheduled_runs
from tests.integration.prefect_server import scheduler_has_run as _scheduler_has_run
from tests.integration.prefect_server import set_variable as _set_variable
from tests.support import forkserver
from upkeep.lab.procs import free_ports

pytestmark = [pytest.mark.prefect_server, pytest.mark.postgres]
SCHEDULED = ["dispatch", "case-auto-close", "monthly-cloud-release"]
UPKEEP = ["product-update", *SCHEDULED]
timings: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path_factory.mktemp("upkeep-deploy"), deploy=False) as server:
        yield server
    print(f"\nupkeep deploy timings (s): {timings}; server: {server.timings}")


@pytest.fixture
def api(server: PrefectServer) -> Iterator[httpx.Client]:
    """A client on `server` with no deployment, no schedules variable and no work pool."""
    with httpx.Client(base_url=server.api_url + "/", timeout=10) as http:
        for deployment in _deployments(http).values():
            http.delete(f"deployments/{deployment['id']}").raise_for_status()
        gone = http.delete(f"variables/name/{SCHEDULES_VARIABLE}")
        assert gone.status_code in (204, 404), gone.text
        gone = http.delete(f"work_pools/{POOL}")
        assert gone.status_code in (204, 404), gone.text
        yield http


def _env(server: PrefectServer, tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(server.env)
    env.update({"UPKEEP_HOME": str(tmp / "home"), **extra})
    return env


def _upkeep(env: dict[str, str], *args: str) -> Any:
    started = time.monotonic()
    done = forkserver.run(args, env=env, cwd=REPO_ROOT, timeout=300)
    timings.setdefault(" ".join(a for a in args if a != "--json"), []).append(
        round(time.monotonic() - started, 1)
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done


def _refused(done: Any, *phrases: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    print(f"\nrefused: {lines[0]}")  # the exact line, under -s
    return str(lines[0])


def _actives(http: httpx.Client) -> dict[str, list[bool]]:
    found = _deployments(http)
    return {name: [s["active"] for s in found[name]["schedules"]] for name in SCHEDULED}


def _variable(http: httpx.Client) -> Any:
    reply = http.get(f"variables/name/{SCHEDULES_VARIABLE}")
    return "unset" if reply.status_code == 404 else reply.json()["value"]


def _snapshot(http: httpx.Client) -> dict[str, Any]:
    """Every deployment with its schedules and when it was last updated: a refused deploy changes none."""
    return {
        name: (d["updated"], [(s["id"], s["active"]) for s in d["schedules"]], d.get("paused"))
        for name, d in _deployments(http).items()
    }


def _doc_block(heading: str) -> str:
    """The first ```bash block after `heading` in docs/deploying.md."""
    text = (REPO_ROOT / "docs" / "deploying.md").read_text()
    after = text[text.index(heading) :]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


ALL = {name: [True] for name in SCHEDULED}
NONE = {name: [False] for name in SCHEDULED}


# -- refusals, nothing deployed --------------------------------------------------------------------------
def test_a_null_variable_creates_no_live_schedule(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """adv47's fail-open (was a strict xfail in test_deploy_schedules.py): `prefect variable set
    upkeep_schedules_active null` made a first `prefect deploy` create every schedule ACTIVE. `upkeep
    deploy` refuses it, naming the value, and creates nothing."""
    _set_variable(api, None)
    done = _upkeep(_env(server, tmp_path), "deploy")
    _refused(done, f"{SCHEDULES_VARIABLE} is null", "creates new schedules ACTIVE", "nothing was deployed")
    assert _deployments(api) == {}


@pytest.mark.parametrize("value", ["no", 0, "yes", 1, "true", "maybe", ""], ids=repr)
def test_a_value_prefect_reads_loosely_is_refused_with_nothing_deployed(
    server: PrefectServer, api: httpx.Client, tmp_path: Path, value: Any
) -> None:
    _set_variable(api, value)
    line = _refused(
        _upkeep(_env(server, tmp_path), "deploy"), "nothing was deployed", "not JSON true or false"
    )
    assert f"{SCHEDULES_VARIABLE} is {json.dumps(value)} on the Prefect server (PREFECT_API_URL" in line
    assert server.api_url in line
    assert _deployments(api) == {}
    assert _variable(api) == value  # not "fixed" behind the operator's back


def test_no_api_url_and_an_api_that_does_not_answer_are_refused(
    server: PrefectServer, tmp_path: Path
) -> None:
    env = _env(server, tmp_path, PREFECT_HOME=str(tmp_path / "empty-prefect-home"))
    del env["PREFECT_API_URL"]
    _refused(
        _upkeep(env, "deploy"), "PREFECT_API_URL is not set", "temporary local server", "nothing was deployed"
    )
    _refused(_upkeep(env, "live", "on"), "PREFECT_API_URL is not set", "nothing was changed")

    closed = f"http://127.0.0.1:{free_ports(1)[0]}/api"
    env["PREFECT_API_URL"] = closed
    _refused(_upkeep(env, "deploy"), f"PREFECT_API_URL {closed}:", "nothing was deployed")


@contextlib.contextmanager
def _api_erring_but_healthy() -> Iterator[str]:
    """An API that answers /health as Prefect does and HTTP 500 on every other path (a broken server
    behind a healthy front)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ok = self.path.endswith("/health")
            body = b"true" if ok else b'{"detail": "boom"}'
            self.send_response(200 if ok else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_an_api_that_errs_is_refused_in_one_line(server: PrefectServer, tmp_path: Path) -> None:
    with _api_erring_but_healthy() as url:
        env = _env(server, tmp_path, PREFECT_API_URL=url)
        _refused(
            _upkeep(env, "deploy"),
            f"the Prefect API ({url}) answered /api/deployments/filter with HTTP 500 Internal Server Error",
            "nothing was deployed",
        )
        _refused(_upkeep(env, "live", "off"), "HTTP 500", "nothing was changed")


# -- deploying ------------------------------------------------------------------------------------------
def test_the_first_deploy_on_an_empty_server_is_one_command_and_schedules_nothing(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """No work pool, no variable, no deployment: `upkeep deploy` creates the pool and the variable
    (false), then deploys every schedule inactive; the scheduler creates no run. UPKEEP_CHECKOUT set in
    the SRE's shell is not baked into the pull step."""
    env = _env(server, tmp_path, UPKEEP_CHECKOUT="/srv/deployer/checkout")
    done = _upkeep(env, "deploy")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "a first deploy" in done.stdout and "dispatch schedule paused" in done.stdout, done.stdout

    assert api.get(f"work_pools/{POOL}").status_code == 200
    assert _variable(api) is False
    assert _actives(api) == NONE
    deployments = _deployments(api)
    assert sorted(deployments) == sorted(UPKEEP)
    for deployment in deployments.values():
        assert "/srv/deployer" not in str(deployment["pull_steps"]), deployment["pull_steps"]
        assert "{{ $UPKEEP_CHECKOUT }}" in str(deployment["pull_steps"]), deployment["pull_steps"]
    _scheduler_has_run(api)
    assert {name: _scheduled_runs(api, deployments[name]["id"]) for name in SCHEDULED} == {
        name: 0 for name in SCHEDULED
    }


def test_live_on_redeploy_live_off_redeploy(server: PrefectServer, api: httpx.Client, tmp_path: Path) -> None:
    """Going live, upgrading live (step 4's block pasted again), stopping, upgrading stopped: each deploy
    keeps what the server records, and the doctor's line says so after each command; a variable that
    disagrees with the dispatch schedule (trap 2: `variable set ... false --overwrite` on a live server)
    is refused."""
    env = _env(server, tmp_path)
    assert _upkeep(env, "deploy").returncode == 0
    dispatch = _deployments(api)["dispatch"]["id"]

    on = _upkeep(env, "live", "on")
    assert on.returncode == 0, on.stdout + on.stderr
    assert "dispatch schedule ACTIVE" in on.stdout, on.stdout
    assert _variable(api) is True and _actives(api) == ALL
    check = _doctor_line(api)
    assert check.status == "ok" and "dispatch schedule ACTIVE" in check.detail, check.detail
    again = _upkeep(env, "live", "on", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    answer = json.loads(again.stdout)
    assert answer["live"] is True and answer["changed"] == [] and answer["problem"] == "", answer
    assert "dispatch schedule ACTIVE" in answer["deployments"]["detail"], answer

    # upgrading a live installation, or step 4's block pasted again into a shell on it (no `set -e`)
    shell = dict(env, CHECKOUT=str(REPO_ROOT), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    redeploy = subprocess.run(
        ["bash", "-c", _doc_block("## 4. ")], env=shell, capture_output=True, text=True, timeout=300
    )
    assert redeploy.returncode == 0, redeploy.stdout + redeploy.stderr
    assert "dispatch schedule ACTIVE" in redeploy.stdout, redeploy.stdout
    assert _actives(api) == ALL and _deployments(api)["dispatch"]["id"] == dispatch

    # trap 2: the variable set false by hand on a live server; the deploy would switch everything off
    api.patch(f"variables/name/{SCHEDULES_VARIABLE}", json={"value": False}).raise_for_status()
    before = _snapshot(api)
    _refused(
        _upkeep(env, "deploy"),
        f"{SCHEDULES_VARIABLE} is false on the Prefect server",
        "dispatch schedule is ACTIVE",
        "would switch every schedule OFF",
        "nothing was deployed",
    )
    assert _snapshot(api) == before
    check = _doctor_line(api)
    assert "switches every schedule OFF" in check.detail and check.fix == "upkeep live on", check.fix

    off = _upkeep(env, "live", "off")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "dispatch schedule paused" in off.stdout, off.stdout
    assert _variable(api) is False and _actives(api) == NONE

    stays = _upkeep(env, "deploy")
    assert stays.returncode == 0, stays.stdout + stays.stderr
    assert _actives(api) == NONE and _variable(api) is False
    check = _doctor_line(api)
    assert check.status == "ok" and "dispatch schedule paused" in check.detail, check.detail


def test_an_installation_deployed_before_the_variable_is_told_what_to_set(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    env = _env(server, tmp_path)
    assert _upkeep(env, "deploy").returncode == 0
    api.delete(f"variables/name/{SCHEDULES_VARIABLE}").raise_for_status()  # as before the variable
    before = _snapshot(api)
    _refused(
        _upkeep(env, "deploy"),
        f"{SCHEDULES_VARIABLE} is not set on the Prefect server",
        "the dispatch schedule is paused",
        f"`upkeep live off` (or `prefect variable set {SCHEDULES_VARIABLE} false`)",
        "nothing was deployed",
    )
    for deployment in _deployments(api).values():  # resumed by hand, the old step 7
        for schedule in deployment["schedules"]:
            api.patch(
                f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": True}
            ).raise_for_status()
    before = _snapshot(api)
    _refused(
        _upkeep(env, "deploy"),
        "the dispatch schedule is ACTIVE",
        f"`upkeep live on` (or `prefect variable set {SCHEDULES_VARIABLE} true`)",
    )
    assert _snapshot(api) == before and _variable(api) == "unset"

    on = _upkeep(env, "live", "on")  # the advice, followed
    assert on.returncode == 0, on.stdout + on.stderr
    assert _variable(api) is True and _actives(api) == ALL


def test_a_variable_flipped_while_deploying_is_found_and_said(
    api: httpx.Client, in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time of check is the time of use: `prefect deploy` gets the value `upkeep deploy` checked,
    written into its copy of prefect.yaml, so another SRE's `variable set ... true` in between does not
    switch the schedules on; the change is found after the deploy and the command says so (exit 1).
    In this process, with the flip made just before `prefect deploy` starts (red before the copy: the
    schedules were deployed ACTIVE). UPKEEP_CHECKOUT of the caller is not touched, only left out."""
    monkeypatch.setenv("UPKEEP_CHECKOUT", "/srv/deployer/checkout")
    _set_variable(api, False)
    real = in_process._run_prefect

    def flipped_first(api_url: str, *args: str, **kwargs: Any) -> Any:
        if args[0] == "deploy":
            api.patch(f"variables/name/{SCHEDULES_VARIABLE}", json={"value": True}).raise_for_status()
        return real(api_url, *args, **kwargs)

    monkeypatch.setattr(in_process, "_run_prefect", flipped_first)
    outcome = in_process.deploy()
    assert "changed from false to true" in outcome.problem and "deployed paused" in outcome.problem
    assert _actives(api) == NONE  # deployed as checked, not as flipped
    assert os.environ["UPKEEP_CHECKOUT"] == "/srv/deployer/checkout"
    assert all("/srv/deployer" not in str(d["pull_steps"]) for d in _deployments(api).values())


class Killed(BaseException):
    """The command's process killed at this point (nothing after it runs, no handler sees it)."""


@pytest.fixture
def in_process(server: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """upkeep/deploy.py in this process, against `server`, as the CLI would run it there."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from upkeep import deploy as deploy_module

    for key, value in server.env.items():
        if key.startswith("PREFECT_"):
            monkeypatch.setenv(key, value)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield deploy_module


def _upkeep_deployments_by_api(http: httpx.Client) -> None:
    """prefect.yaml's deployments as a deploy leaves them paused (one schedule each if scheduled), made
    through the API: what `upkeep live` switches, without paying for a `prefect deploy`."""
    flow = http.post("flows/", json={"name": "upkeep-probe"})
    flow.raise_for_status()
    for name in UPKEEP:
        schedules = [{"schedule": {"interval": 3600}, "active": False}] if name in SCHEDULED else []
        http.post(
            "deployments/", json={"name": name, "flow_id": flow.json()["id"], "schedules": schedules}
        ).raise_for_status()


@pytest.mark.parametrize("command", ["on", "off"])
def test_live_killed_between_its_halves_leaves_nothing_running_and_the_doctor_saying_so(
    server: PrefectServer,
    api: httpx.Client,
    tmp_path: Path,
    in_process: Any,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """`live on` killed after setting the variable, `live off` killed after pausing the schedules: both
    leave the schedules paused with the variable true. The doctor says the dispatcher is paused and what
    the next deploy would do; `upkeep deploy` refuses; the same command again finishes."""
    _upkeep_deployments_by_api(api)
    if command == "off":  # a live installation
        _set_variable(api, True)
        for deployment in _deployments(api).values():
            for schedule in deployment["schedules"]:
                api.patch(
                    f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": True}
                ).raise_for_status()
    else:
        _set_variable(api, False)
    second_half = "_set_schedules" if command == "on" else "_set_variable"

    def killed(*_args: Any) -> None:
        raise Killed

    monkeypatch.setattr(in_process, second_half, killed)
    with pytest.raises(Killed):
        in_process.switch(command == "on")
    monkeypatch.undo()  # the environment too: the CLI below gets its own

    assert _actives(api) == NONE and _variable(api) is True  # nothing runs
    check = _doctor_line(api)
    assert check.status == "warn", check.detail
    assert "dispatch schedule paused" in check.detail, check.detail
    assert "the next `prefect deploy` switches every schedule ON" in check.detail, check.detail
    assert check.fix == "to stay paused: upkeep live off; to go live: upkeep live on", check.fix
    env = _env(server, tmp_path)
    before = _snapshot(api)
    _refused(_upkeep(env, "deploy"), "dispatch schedule is paused", "would switch every schedule ON")
    assert _snapshot(api) == before

    again = _upkeep(env, "live", command)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _actives(api) == (ALL if command == "on" else NONE)
    assert _variable(api) is (command == "on")


def test_live_on_resumes_a_deployment_paused_with_the_ui_toggle(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """The UI's toggle pauses the deployment, not its schedule: `live on` resumes it too, as the doctor's
    fix for that state says (schedules alone would leave the dispatcher idle)."""
    _upkeep_deployments_by_api(api)
    _set_variable(api, True)
    for deployment in _deployments(api).values():
        for schedule in deployment["schedules"]:
            api.patch(
                f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": True}
            ).raise_for_status()
    dispatch = _deployments(api)["dispatch"]["id"]
    api.post(f"deployments/{dispatch}/pause_deployment").raise_for_status()
    check = _doctor_line(api)
    assert "dispatch deployment paused" in check.detail and "upkeep live on" in check.fix, check.fix

    on = _upkeep(_env(server, tmp_path), "live", "on")
    assert on.returncode == 0, on.stdout + on.stderr
    assert "dispatch deployment resumed" in on.stdout, on.stdout
    assert _deployments(api)["dispatch"]["paused"] is False
    check = _doctor_line(api)
    assert check.status == "ok" and "dispatch schedule ACTIVE" in check.detail, check.detail


# -- the scheduler ---------------------------------------------------------------------------------------
