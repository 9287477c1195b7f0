"""adv54: `upkeep deploy` and `upkeep live on|off` attacked as two SREs at once, a hostile proxy, a
password in PREFECT_API_URL, a work pool of another type, and compared with a raw `prefect deploy --all`.

The races are made deterministic in this process (the other SRE's whole command runs at a chosen point
of the first one's), against a real Prefect server (one per module). The state that must never be left
behind: a schedule of Upkeep ACTIVE while `upkeep_schedules_active` is false (the operator said off;
the dispatcher runs; the doctor calls it wrong and the next deploy switches it).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.prefect_server import (
    POOL,
    PREFECT,
    REPO_ROOT,
    SCHEDULES_VARIABLE,
    PrefectServer,
    running_prefect_server,
)
from tests.integration.test_upkeep_deploy import (
    SCHEDULED,
    UPKEEP,
    _deployments,
    _doctor_line,
    _env,
    _set_variable,
    _upkeep,
    _upkeep_deployments_by_api,
    _variable,
)
from tests.support import forkserver

pytestmark = [pytest.mark.prefect_server, pytest.mark.postgres]
SECRET = "s3cretPW"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path_factory.mktemp("adv54"), deploy=False) as server:
        yield server


@pytest.fixture
def api(server: PrefectServer) -> Iterator[httpx.Client]:
    """A client on `server` with no deployment, no schedules variable and no work pool."""
    with httpx.Client(base_url=server.api_url + "/", timeout=10) as http:
        _clean(http)
        yield http


def _clean(http: httpx.Client) -> None:
    for deployment in _deployments(http).values():
        http.delete(f"deployments/{deployment['id']}").raise_for_status()
    assert http.delete(f"variables/name/{SCHEDULES_VARIABLE}").status_code in (204, 404)
    assert http.delete(f"work_pools/{POOL}").status_code in (204, 404)


@pytest.fixture
def in_process(server: PrefectServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from upkeep import deploy as deploy_module

    for key, value in server.env.items():
        if key.startswith("PREFECT_"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("UPKEEP_CHECKOUT", raising=False)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield deploy_module


def _all_schedules(http: httpx.Client, names: list[str] = SCHEDULED) -> dict[str, list[bool]]:
    found = _deployments(http)
    return {name: [s["active"] for s in found[name]["schedules"]] for name in names if name in found}


def _set_schedules(http: httpx.Client, active: bool) -> None:
    for deployment in _deployments(http).values():
        for schedule in deployment["schedules"]:
            http.patch(
                f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": active}
            ).raise_for_status()


def _running_with_variable_false(http: httpx.Client) -> list[str]:
    """Upkeep's schedules ACTIVE while the variable is false: the state no pair of commands may leave."""
    if _variable(http) is not False:
        return []
    return [name for name, actives in _all_schedules(http).items() if any(actives)]


def _once(fn: Any) -> Any:
    """`fn` on the first call only (the other SRE's command runs once, at the chosen point)."""
    done: list[bool] = []

    def call() -> None:
        if not done:
            done.append(True)
            fn()

    return call


# -- two SREs at once: live on / live off -------------------------------------------------------------
@pytest.mark.parametrize("start", ["half-done", "off"])
def test_live_off_with_live_on_running_in_between_leaves_nothing_running_with_the_variable_false(
    api: httpx.Client, in_process: Any, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """SRE A runs `upkeep live off` (to stop everything); SRE B's `upkeep live on` runs completely
    between A's read of the server and A's writes. Each command acts on what it read, so A pauses the
    schedules it saw active (none) and sets the variable false, after B resumed them: schedules ACTIVE
    with the variable false, i.e. the dispatcher running after A was told 'paused' (or 'run it again')."""
    _upkeep_deployments_by_api(api)
    _set_variable(api, start == "half-done")  # half-done: `upkeep live` killed between its halves
    real = in_process._set_schedules
    other = _once(lambda: in_process.switch(True))

    def b_first(http: Any, found: Any, active: bool, changed: list[str]) -> None:
        if not active:
            other()
        real(http, found, active, changed)

    monkeypatch.setattr(in_process, "_set_schedules", b_first)
    in_process.switch(False)
    assert _running_with_variable_false(api) == []


@pytest.mark.parametrize("start", ["half-done", "off"])
def test_live_on_with_live_off_running_in_between_leaves_nothing_running_with_the_variable_false(
    api: httpx.Client, in_process: Any, monkeypatch: pytest.MonkeyPatch, start: str
) -> None:
    """The other way round: A's `live on` has set the variable true; B's `live off` runs completely
    (pauses what it read active, sets the variable false); A then resumes every schedule."""
    _upkeep_deployments_by_api(api)
    _set_variable(api, start == "half-done")
    real = in_process._set_schedules
    other = _once(lambda: in_process.switch(False))

    def b_between(http: Any, found: Any, active: bool, changed: list[str]) -> None:
        if active:
            other()
        real(http, found, active, changed)

    monkeypatch.setattr(in_process, "_set_schedules", b_between)
    in_process.switch(True)
    assert _running_with_variable_false(api) == []


# -- two SREs at once: upkeep deploy / live off -----------------------------------------------------------
def test_live_off_while_a_live_deploy_runs_leaves_nothing_running_with_the_variable_false(
    server: PrefectServer, api: httpx.Client, tmp_path: Path, in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SRE A upgrades a live installation (`upkeep deploy`: it checked true, renders `active: true`);
    SRE B stops everything with `upkeep live off` while A's `prefect deploy` is starting, and is told
    'paused'. A's `prefect deploy` then writes every schedule ACTIVE: the dispatcher runs, the variable
    says false. A is told (exit 1) but the state is left; B believes it stopped. Two real deploys."""
    assert _upkeep(_env(server, tmp_path), "deploy").returncode == 0
    _set_variable(api, True)
    _set_schedules(api, True)
    real = in_process._run_prefect
    other = _once(lambda: in_process.switch(False))

    def b_stops_first(api_url: str, *args: str, **kwargs: Any) -> Any:
        if args[0] == "deploy":
            other()
            assert _running_with_variable_false(api) == [] and _variable(api) is False  # B: 'paused'
        return real(api_url, *args, **kwargs)

    monkeypatch.setattr(in_process, "_run_prefect", b_stops_first)
    outcome = in_process.deploy()
    assert outcome.problem  # A is told
    assert _running_with_variable_false(api) == []


# -- the temporary prefect.yaml ------------------------------------------------------------------------
VOLATILE = {"id", "created", "updated", "last_polled", "status", "flow_id", "work_queue_id", "pull_steps_id"}


def _fields(http: httpx.Client) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, deployment in _deployments(http).items():
        kept = {k: v for k, v in deployment.items() if k not in VOLATILE}
        kept["schedules"] = [
            {k: v for k, v in s.items() if k not in VOLATILE | {"deployment_id"}}
            | {"schedule": {k: v for k, v in s["schedule"].items() if k != "anchor_date"}}
            for s in deployment["schedules"]
        ]
        out[name] = kept
    return out


def test_upkeep_deploy_makes_the_deployments_a_raw_prefect_deploy_makes(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """`prefect deploy --prefect-file <temporary copy>` against `prefect deploy --all` from the
    checkout, field by field through the API (same variable, false): the copy lives in a temporary
    directory, which must reach no field a worker reads (path, entrypoint, pull steps). Two real deploys.
    An interval schedule's anchor_date is the time of each deploy (raw or not), so it is left out."""
    env = _env(server, tmp_path)
    assert _upkeep(env, "deploy").returncode == 0
    via_upkeep = _fields(api)
    raw_env = {k: v for k, v in env.items() if k != "UPKEEP_CHECKOUT"}
    subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--all"],
        cwd=REPO_ROOT,
        env=raw_env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    raw = _fields(api)
    assert sorted(raw) == sorted(UPKEEP)
    assert "upkeep-deploy-" not in json.dumps(via_upkeep)
    differ = {
        (name, key): (via_upkeep[name].get(key), raw[name].get(key))
        for name in raw
        for key in set(raw[name]) | set(via_upkeep.get(name, {}))
        if via_upkeep.get(name, {}).get(key) != raw[name].get(key)
    }
    assert differ == {}


# -- hostile environment --------------------------------------------------------------------------------
@contextlib.contextmanager
def _proxy(
    upstream: str, refuse: tuple[str, str], status: int = 403, body: bytes = b'{"detail": "denied by proxy"}'
) -> Iterator[str]:
    """A proxy in front of `upstream` (http://host:port) that answers `refuse` (method, path) with
    `status` and `body`, and forwards everything else."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if (self.command, self.path) == refuse:
                status_, content, kind = status, body, "application/json"
            else:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                reply = httpx.request(
                    self.command, upstream + self.path, content=sent, headers=headers, timeout=60
                )
                status_, content = reply.status_code, reply.content
                kind = reply.headers.get("content-type", "application/json")
            self.send_response(status_)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_password_in_prefect_api_url_is_never_shown(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """PREFECT_API_URL with a proxy's password in it: a refusal, and `prefect deploy` failing behind a
    proxy that refuses to create deployments (its output is echoed, and its last line is the refusal),
    never show the password, with or without --json; and nothing is created."""
    _set_variable(api, None)
    env = _env(server, tmp_path, PREFECT_API_URL=server.api_url.replace("://", f"://adv:{SECRET}@"))
    for args in (["deploy"], ["deploy", "--json"], ["live", "off"]):
        done = _upkeep(env, *args)
        assert SECRET not in done.stdout + done.stderr, done.stdout + done.stderr
    _set_variable(api, False)
    upstream = server.api_url.removesuffix("/api")
    with _proxy(upstream, ("POST", "/api/deployments/")) as hostport:
        env["PREFECT_API_URL"] = f"http://adv:{SECRET}@{hostport}/api"
        # not _upkeep: the tail of prefect's own output (a traceback of Prefect's) is echoed on purpose
        done = forkserver.run(["deploy"], env=env, cwd=REPO_ROOT, timeout=300)
    print(f"\nproxy refused: {done.stderr.strip().splitlines()[-1:]}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "nothing was deployed" in done.stderr.strip().splitlines()[-1]
    assert SECRET not in done.stdout + done.stderr, done.stdout + done.stderr
    assert _deployments(api) == {}


def test_a_work_pool_of_another_type_is_refused(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """`upkeep-process` exists but is a kubernetes pool (another team's, or a typo'd `--type`): the
    process workers of docs/deploying.md never pick up its runs. `upkeep deploy` must say so and deploy
    nothing, not deploy into it."""
    api.post("work_pools/", json={"name": POOL, "type": "kubernetes"}).raise_for_status()
    done = _upkeep(_env(server, tmp_path), "deploy")
    assert _deployments(api) == {}, done.stdout + done.stderr
    line = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(line) == 1 and "kubernetes" in line[0], done.stderr
    print(f"\nrefused: {line[0]}")
    from upkeep.doctor import _pool_and_workers

    pool = next(iter(_pool_and_workers(api)))  # the doctor tells the same truth
    assert pool.status == "fail" and "kubernetes" in pool.detail, pool


def test_live_off_stops_an_upkeep_deployment_prefect_yaml_no_longer_names_and_no_other(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """A deployment of Upkeep's flows deployed from an older prefect.yaml (renamed since) keeps its
    ACTIVE schedule on the server: `upkeep live off` ('to stop everything') must pause it too; another
    team's deployment on the same server stays as it is."""
    _upkeep_deployments_by_api(api)
    flow = api.post("flows/", json={"name": "cloud-release"}).json()["id"]
    for name, entrypoint in (
        ("monthly-release-old", "upkeep/entrypoints.py:cloud_release"),
        ("etl", "etl.py:etl"),
    ):
        api.post(
            "deployments/",
            json={
                "name": name,
                "flow_id": flow,
                "entrypoint": entrypoint,
                "schedules": [{"schedule": {"interval": 3600}, "active": True}],
            },
        ).raise_for_status()
    _set_variable(api, True)
    _set_schedules(api, True)
    done = _upkeep(_env(server, tmp_path), "live", "off")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _all_schedules(api, ["etl"]) == {"etl": [True]}  # not Upkeep's: untouched
    assert _all_schedules(api, ["monthly-release-old"]) == {"monthly-release-old": [False]}


# -- two SREs at once: two first deploys ------------------------------------------------------------------
def test_two_first_deploys_at_once_both_deploy_paused(
    server: PrefectServer, api: httpx.Client, in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two SREs run step 4 on a fresh server at once: both read 'empty'; B creates the work pool and the
    variable (false) first. A's `prefect work-pool create` then fails ('already exists. Use --overwrite')
    and its POST of the variable gets 409. What B made is what A would make: A goes on and deploys
    paused, instead of a refusal that names Prefect's --overwrite (which would reset the pool)."""
    real = in_process._run_prefect

    def b_first(api_url: str, *args: str, **kwargs: Any) -> Any:
        if args[0] == "work-pool" and api.get(f"work_pools/{POOL}").status_code == 404:
            server.prefect("work-pool", "create", POOL, "--type", "process")
            api.post("variables/", json={"name": SCHEDULES_VARIABLE, "value": False}).raise_for_status()
        return real(api_url, *args, **kwargs)

    monkeypatch.setattr(in_process, "_run_prefect", b_first)
    outcome = in_process.deploy()
    assert outcome.problem == "" and outcome.data["schedules_active"] is False, outcome.data
    assert sorted(_deployments(api)) == sorted(UPKEEP)
    assert _all_schedules(api) == {name: [False] for name in SCHEDULED}


def test_a_variable_answered_as_a_json_list_is_refused_in_one_line(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """A proxy (or a server of another version) answering the variable's read with 200 and a JSON list:
    `upkeep deploy`, `upkeep live off` and the doctor read `.get("value")` of it."""
    upstream = server.api_url.removesuffix("/api")
    path = f"/api/variables/name/{SCHEDULES_VARIABLE}"
    with _proxy(upstream, ("GET", path), status=200, body=b"[]") as hostport:
        env = _env(server, tmp_path, PREFECT_API_URL=f"http://{hostport}/api")
        for args in (["deploy"], ["live", "off"], ["doctor"]):
            done = _upkeep(env, *args)  # no traceback
            if args[0] != "doctor":
                lines = done.stderr.strip().splitlines()
                assert done.returncode == 1 and len(lines) == 1, done.stderr
                print(f"\nrefused: {lines[0]}")
                assert f"{SCHEDULES_VARIABLE} could not be read" in lines[0], lines[0]  # not 'a bug'
    assert _deployments(api) == {}


def test_another_teams_deployment_named_dispatch_is_not_upkeeps(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """Deployment names are unique per flow, not per server: another team's flow may have a deployment
    called `dispatch`. `upkeep live on` must resume Upkeep's dispatcher and leave theirs as it is
    (read by name alone, one of the two stood for the other)."""
    _upkeep_deployments_by_api(api)
    flow = api.post("flows/", json={"name": "zz-other-team"}).json()["id"]
    theirs = api.post(
        "deployments/",
        json={
            "name": "dispatch",
            "flow_id": flow,
            "entrypoint": "etl/dispatch.py:dispatch",
            "schedules": [{"schedule": {"interval": 3600}, "active": False}],
        },
    )
    theirs.raise_for_status()
    _set_variable(api, False)
    done = _upkeep(_env(server, tmp_path), "live", "on")
    assert done.returncode == 0, done.stdout + done.stderr
    found = api.post("deployments/filter", json={"deployments": {"name": {"any_": ["dispatch"]}}}).json()
    actives = {d["id"] == theirs.json()["id"]: [s["active"] for s in d["schedules"]] for d in found}
    assert actives == {True: [False], False: [True]}  # theirs untouched, Upkeep's resumed


def test_the_doctor_finds_upkeeps_deployments_among_more_than_a_page_of_others(
    server: PrefectServer, api: httpx.Client
) -> None:
    """A shared Prefect server with 200 other deployments named before Upkeep's: the doctor read one
    page (Prefect's default limit, 200) of every deployment and called Upkeep's 'missing'."""
    _upkeep_deployments_by_api(api)
    flow = api.post("flows/", json={"name": "aa-other-team"}).json()["id"]
    for n in range(200):
        api.post("deployments/", json={"name": f"aa-{n:03d}", "flow_id": flow}).raise_for_status()
    _set_variable(api, False)
    check = _doctor_line(api)
    assert "missing" not in check.detail, check.detail


# -- `prefect deploy` failing; a proxy's 404 -------------------------------------------------------------
def _no_deployment_left(http: httpx.Client) -> None:
    """Every deployment deleted, page by page: the `api` fixture reads one page (Prefect's 200), and after
    the test above (200 others and Upkeep's four) Upkeep's are left for the next test."""
    while found := http.post("deployments/filter", json={"limit": 200}).json():
        for deployment in found:
            http.delete(f"deployments/{deployment['id']}").raise_for_status()


def test_a_failing_prefect_deploy_is_prefects_error_and_our_line_never_its_traceback(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """`prefect deploy` behind a proxy that refuses to create deployments: the operator was shown the last
    30 lines of Prefect's output, Prefect's Python traceback among them, then our line. Prefect's error
    (its exception's line, the password masked) and our one line saying what was deployed: nothing."""
    _no_deployment_left(api)
    _set_variable(api, False)
    upstream = server.api_url.removesuffix("/api")
    env = _env(server, tmp_path)
    with _proxy(upstream, ("POST", "/api/deployments/")) as hostport:
        env["PREFECT_API_URL"] = f"http://adv:{SECRET}@{hostport}/api"
        done = _upkeep(env, "deploy")  # no "Traceback"
    lines = done.stderr.strip().splitlines()
    print("\nsaid:\n" + "\n".join(lines))
    assert done.returncode == 1, done.stdout + done.stderr
    assert not [line for line in lines if line.startswith(" ") or line.startswith("File ")], done.stderr
    assert len(lines) <= 6, done.stderr
    assert "exited 1: DeploymentApplyError: denied by proxy; nothing was deployed" in lines[-1], lines[-1]
    assert SECRET not in done.stdout + done.stderr
    assert _deployments(api) == {}


@pytest.mark.parametrize("before", ["empty", "deployed"])
def test_a_deploy_that_stops_half_way_says_which_deployments_it_made_and_which_not(
    api: httpx.Client, in_process: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any, before: str
) -> None:
    """`prefect deploy --all` deploys prefect.yaml's deployments one by one and stops at the first that
    fails (here the third: its flow cannot be loaded). The refusal said "nothing was deployed" whatever
    Prefect had made before it stopped. Read back from the server: which it made (created, or updated on
    a redeploy) and which not; nothing of Prefect's traceback on stderr."""
    _no_deployment_left(api)
    from upkeep.console import CliError

    if before == "deployed":
        assert in_process.deploy().problem == ""
    capsys.readouterr()
    real = in_process._rendered_prefect_yaml

    def third_fails(value: bool, directory: Path) -> Path:
        path = real(value, directory)
        text = path.read_text().replace(":case_auto_close", ":no_such_flow")
        path.write_text(text)
        return path

    monkeypatch.setattr(in_process, "_rendered_prefect_yaml", third_fails)
    with pytest.raises(CliError) as refused:
        in_process.deploy()
    said = str(refused.value)
    err = capsys.readouterr().err
    print(f"\nsaid:\n{err}{said}")
    assert "Traceback" not in err and '  File "' not in err, err
    assert "deployed: product-update, dispatch; not deployed: case-auto-close, monthly-cloud-release" in said
    assert "nothing was deployed" not in said, said
    if before == "empty":
        assert sorted(_deployments(api)) == ["dispatch", "product-update"]


def test_a_proxys_404_for_the_work_pool_is_refused_not_taken_for_no_pool(
    server: PrefectServer, api: httpx.Client, tmp_path: Path
) -> None:
    """A reverse proxy in front of the API answers 404 (its own page, not Prefect's JSON {"detail": ...})
    for the work pool's read: `upkeep deploy` took it for "no pool", created one through the proxy and
    deployed. Refused in one line naming the API's URL (masked) and the 404; nothing created; the doctor
    does not say "create it"."""
    _no_deployment_left(api)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from upkeep.doctor import Findings, check_prefect

    _set_variable(api, False)
    upstream = server.api_url.removesuffix("/api")
    page = b"<html><body><h1>404 Not Found</h1>nginx</body></html>"
    with _proxy(upstream, ("GET", f"/api/work_pools/{POOL}"), status=404, body=page) as hostport:
        env = _env(server, tmp_path, PREFECT_API_URL=f"http://adv:{SECRET}@{hostport}/api")
        done = _upkeep(env, "deploy")
        with temporary_settings({PREFECT_API_URL: f"http://{hostport}/api"}):
            checks = {check.name: check for check in check_prefect(Findings())}
    lines = done.stderr.strip().splitlines()
    print(f"\nrefused: {lines}\ndoctor: {checks['work pool']}")
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    assert f"http://{hostport}/api" in lines[0] and "404" in lines[0], lines[0]
    assert "nothing was deployed" in lines[0] and SECRET not in done.stdout + done.stderr, lines[0]
    assert api.get(f"work_pools/{POOL}").status_code == 404  # none created behind the proxy
    assert _deployments(api) == {}
    pool = checks["work pool"]
    assert pool.status == "fail" and "404" in pool.detail and "work-pool create" not in pool.fix, pool


# -- adv61: a failing deploy racing `live off`; credentials echoed by a proxy; a proxy's 404 JSON ---------
def test_live_off_while_a_live_deploy_that_then_fails_runs_leaves_nothing_running_with_the_variable_false(
    server: PrefectServer, api: httpx.Client, tmp_path: Path, in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adv61: as the test above, but A's `prefect deploy` stops half-way (the third deployment fails):
    the first two are written ACTIVE after B's `live off`, and the refusal was raised before the "off
    wins" re-check, so the dispatcher was left running with the variable false."""
    _no_deployment_left(api)
    assert _upkeep(_env(server, tmp_path), "deploy").returncode == 0
    _set_variable(api, True)
    _set_schedules(api, True)
    from upkeep.console import CliError

    real = in_process._run_prefect
    real_yaml = in_process._rendered_prefect_yaml
    other = _once(lambda: in_process.switch(False))

    def third_fails(value: bool, directory: Path) -> Path:
        path = real_yaml(value, directory)
        path.write_text(path.read_text().replace(":case_auto_close", ":no_such_flow"))
        return path

    def b_stops_first(api_url: str, *args: str, **kwargs: Any) -> Any:
        if args[0] == "deploy":
            other()
            assert _running_with_variable_false(api) == [] and _variable(api) is False  # B: 'paused'
        return real(api_url, *args, **kwargs)

    monkeypatch.setattr(in_process, "_rendered_prefect_yaml", third_fails)
    monkeypatch.setattr(in_process, "_run_prefect", b_stops_first)
    with pytest.raises(CliError) as refused:
        in_process.deploy()
    print(f"\nrefused: {refused.value}")
    assert _running_with_variable_false(api) == [], refused.value


KEY = "pnu_adv61SecretKey"
AUTH = "admin:adv61AuthPass"


@pytest.mark.parametrize("setting", ["PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"])
def test_a_credential_a_proxy_echoes_in_prefects_error_is_never_shown(
    server: PrefectServer, api: httpx.Client, tmp_path: Path, setting: str
) -> None:
    """adv61: a proxy refusing the deployment's creation quotes the credential it was sent (Prefect puts
    its `detail` in its error: the refusal's last words). PREFECT_API_KEY / PREFECT_API_AUTH_STRING must
    not reach stderr, stdout or --json."""
    _no_deployment_left(api)
    _set_variable(api, False)
    value = KEY if setting == "PREFECT_API_KEY" else AUTH
    body = json.dumps(
        {"detail": f"credential {value!r} not accepted here\n\x1b[2Jsee your admin; {value}"}
    ).encode()
    upstream = server.api_url.removesuffix("/api")
    with _proxy(upstream, ("POST", "/api/deployments/"), body=body) as hostport:
        env = _env(server, tmp_path, PREFECT_API_URL=f"http://{hostport}/api", **{setting: value})
        for args in (["deploy"], ["deploy", "--json"]):
            done = _upkeep(env, *args)
            said = done.stdout + done.stderr
            print(f"\n{args}: {said}")
            assert done.returncode == 1, said
            assert [p for p in (value, value.partition(":")[2]) if p and p in said] == [], said
            assert "\x1b" not in said, said
    assert _deployments(api) == {}


def _upkeeps_by_flow(http: httpx.Client, flow_id: str) -> dict[str, dict[str, Any]]:
    reply = http.post("deployments/filter", json={"flows": {"id": {"any_": [flow_id]}}})
    reply.raise_for_status()
    return {d["name"]: d for d in reply.json()}


def test_live_off_and_the_doctor_find_upkeeps_deployments_behind_a_page_of_namesakes(
    server: PrefectServer, api: httpx.Client, in_process: Any
) -> None:
    """adv61: a shared server where 200 other teams' flows each have a deployment named
    `case-auto-close` (names are unique per flow, not per server). Upkeep reads its deployments with one
    `deployments/filter` by name: Prefect answers one page (200, sorted by name), and Upkeep's dispatch,
    product-update and monthly-cloud-release are on page 2. `live off` must still pause the dispatcher,
    and the doctor must not call them missing."""
    _no_deployment_left(api)
    from upkeep.doctor import deployments_line

    _upkeep_deployments_by_api(api)
    probe = api.post("flows/", json={"name": "upkeep-probe"}).json()["id"]
    for n in range(200):
        flow = api.post("flows/", json={"name": f"aa-team-{n:03d}"}).json()["id"]
        api.post(
            "deployments/",
            json={"name": "case-auto-close", "flow_id": flow, "entrypoint": "theirs/flows.py:close"},
        ).raise_for_status()
    first_page = api.post("deployments/filter", json={"deployments": {"name": {"any_": UPKEEP}}}).json()
    assert "dispatch" not in {d["name"] for d in first_page}  # the state attacked: Upkeep's on page 2
    _set_variable(api, True)
    for deployment in _upkeeps_by_flow(api, probe).values():
        for schedule in deployment["schedules"]:
            api.patch(
                f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": True}
            ).raise_for_status()
    line = deployments_line(api, server.api_url)
    print(f"\ndoctor (live): {line}")
    assert "missing" not in line.detail, line.detail
    in_process.switch(False)
    active = [
        name
        for name, deployment in _upkeeps_by_flow(api, probe).items()
        if any(s["active"] for s in deployment["schedules"])
    ]
    assert _variable(api) is False and active == [], active


@contextlib.contextmanager
def _redirecting(upstream: str, moved: tuple[str, str]) -> Iterator[tuple[str, list[str]]]:
    """A proxy in front of `upstream` that answers `moved` (method, path) with 307 to another server (on
    loopback, to count what reaches it: in the world it is anyone's), and forwards everything else."""
    hits: list[str] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            hits.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if (self.command, self.path) == moved:
                self.send_response(307)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
            reply = httpx.request(
                self.command, upstream + self.path, content=sent, headers=headers, timeout=60
            )
            self.send_response(reply.status_code)
            self.send_header("Content-Type", reply.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(reply.content)))
            self.end_headers()
            self.wfile.write(reply.content)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{proxy.server_address[1]}", hits
    finally:
        for one in (proxy, elsewhere):
            one.shutdown()
            one.server_close()


@pytest.mark.parametrize(
    "moved",
    [
        ("GET", f"/api/work_pools/{POOL}"),
        ("POST", "/api/deployments/filter"),
        pytest.param(
            ("POST", "/api/deployments/"),
            marks=pytest.mark.xfail(
                strict=True,
                reason="adv61, product question: Prefect's own client follows redirects (prefect/client/"
                "orchestration/__init__.py: follow_redirects=True, no setting), so `prefect deploy` behind "
                "a proxy that answers 307 for POST /api/deployments/ sends the deployment (entrypoint, "
                "job_variables, pull steps with the checkout's path; httpx drops the Authorization header "
                "cross-origin) to whatever host the Location names, and fails with 'Malformed response'. "
                "Upkeep's own reads never follow. Should `upkeep deploy` run `prefect deploy` at all when "
                "it cannot rule this out (e.g. through a local pass-through that refuses 3xx), or is the "
                "proxy the operator's trust boundary (documented in docs/deploying.md)?",
            ),
        ),
    ],
)
def test_a_redirect_to_another_host_is_never_followed(
    server: PrefectServer, api: httpx.Client, tmp_path: Path, moved: tuple[str, str]
) -> None:
    """adv61: a proxy answering 307 to another host (where the request, its body and its credential
    would go): `upkeep deploy` and the doctor never follow it (nothing reaches the other host), refuse in
    one line naming the answer, and create nothing behind it."""
    _no_deployment_left(api)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from upkeep.doctor import Findings, check_prefect

    _set_variable(api, False)
    upstream = server.api_url.removesuffix("/api")
    with _redirecting(upstream, moved) as (hostport, hits):
        env = _env(server, tmp_path, PREFECT_API_URL=f"http://{hostport}/api", PREFECT_API_KEY=KEY)
        done = _upkeep(env, "deploy")
        with temporary_settings({PREFECT_API_URL: f"http://{hostport}/api"}):
            checks = {check.name: (check.status, check.detail) for check in check_prefect(Findings())}
    said = done.stdout + done.stderr
    print(f"\nsaid: {said}\ndoctor: {checks}\nelsewhere: {hits}")
    assert hits == [], hits
    assert done.returncode == 1 and "307" in done.stderr.strip().splitlines()[-1], said
    assert KEY not in said
