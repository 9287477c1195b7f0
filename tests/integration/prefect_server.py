"""A real Prefect server for integration tests: the production path, not the test harness.

`running_prefect_server(tmp_dir)` gives a `prefect server start` on a PostgreSQL database of its own,
the process work pool `upkeep-process`, every deployment of `prefect.yaml` (`prefect deploy --all`
from the repository root) and, when the caller passes `worker_env`, a `prefect worker start` whose
environment carries the caller's UPKEEP_* settings. On the way out it stops the worker and the server
(their process groups, by pid) and drops the database, even when a step in between failed.

Every phase is timed (`PrefectServer.timings`, seconds) so the costs stay visible.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql

from tests.support.orphans import die_with_parent
from upkeep.lab.procs import LOCALHOST, free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = "upkeep-process"
ADMIN_DSN = f"postgresql://postgres@{LOCALHOST}:5432/test"
HEALTH_TIMEOUT = 120.0  # first start on a fresh database runs every migration (≈ 40 s measured)
WORKER_TIMEOUT = 60.0
STOP_GRACE = 10.0
SCHEDULES_VARIABLE = "upkeep_schedules_active"  # prefect.yaml's schedules read `active` from it
PREFECT = str(Path(sys.executable).with_name("prefect"))


class PrefectServerError(RuntimeError):
    """A phase failed; the message carries the relevant log tail."""


@dataclass
class PrefectServer:
    api_url: str  # http://127.0.0.1:<port>/api
    env: dict[str, str]  # environment for prefect CLI commands and clients talking to this server
    database: str  # the PostgreSQL database the server owns (dropped on exit)
    home: Path  # PREFECT_HOME of the server, the CLI commands and the worker
    log: Path  # the server's stdout + stderr
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    worker_log: Path | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def prefect(self, *args: str, timeout: float = 120, env: Mapping[str, str] | None = None) -> str:
        """Run `prefect --no-prompt ARGS` from the repository root against this server; its output."""
        done = subprocess.run(
            [PREFECT, "--no-prompt", *args],
            cwd=REPO_ROOT,
            env=dict(env if env is not None else self.env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise PrefectServerError(
                f"`prefect {' '.join(args)}` exited {done.returncode}:\n{_tail(done.stdout + done.stderr)}"
            )
        return done.stdout


def go_live(server: PrefectServer) -> None:
    """docs/deploying.md step 7: every schedule on, and kept on by later deploys."""
    server.prefect("variable", "set", SCHEDULES_VARIABLE, "true", "--overwrite")
    server.prefect("deployment", "schedule", "resume", "--all")


@contextlib.contextmanager
def running_prefect_server(
    tmp_dir: Path,
    worker_env: Mapping[str, str] | None = None,
    *,
    deploy: bool = True,
    health_timeout: float = HEALTH_TIMEOUT,
) -> Iterator[PrefectServer]:
    """Server on a fresh PostgreSQL database + work pool + `deploy --all` (+ a worker if `worker_env`).

    `worker_env` is added to the worker's environment (UPKEEP_* settings; UPKEEP_CHECKOUT defaults to
    this checkout). Phases and their `timings` keys: database, server, work_pool, deploy, worker, then
    on exit stop_worker, stop_server, drop_database.
    """
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    home = tmp_dir / "prefect-home"
    home.mkdir(exist_ok=True)
    port = free_ports(1)[0]
    database = f"upkeep_prefect_{secrets.token_hex(6)}"
    api_url = f"http://{LOCALHOST}:{port}/api"
    env = _clean_environ()
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                f"postgresql+asyncpg://postgres@{LOCALHOST}:5432/{database}"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            # The scheduler's main loop (default 60 s) is what a test waiting for scheduled runs pays.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        }
    )
    server = PrefectServer(api_url=api_url, env=env, database=database, home=home, log=tmp_dir / "server.log")
    with contextlib.ExitStack() as stack:
        with _timed(server, "database"):
            _create_database(database)
        stack.callback(_timed_call, server, "drop_database", _drop_database, database)

        with _timed(server, "server"):
            proc = _spawn(["server", "start", "--host", LOCALHOST, "--port", str(port)], env, server.log)
            stack.callback(_timed_call, server, "stop_server", _stop, proc)
            _await_health(server, proc, health_timeout)

        with _timed(server, "work_pool"):
            _create_work_pool(server)
        if deploy:
            with _timed(server, "deploy"):
                # UPKEEP_CHECKOUT must NOT be set here: `prefect deploy` would bake this machine's path
                # into the stored pull step. Left as the placeholder, each worker resolves its own.
                deploy_env = {k: v for k, v in env.items() if k != "UPKEEP_CHECKOUT"}
                # Deployed paused, as docs/deploying.md step 4: prefect.yaml's schedules take `active`
                # from this variable, so nothing is scheduled until a caller goes live (go_live).
                server.prefect("variable", "set", SCHEDULES_VARIABLE, "false")
                server.prefect("deploy", "--all", env=deploy_env, timeout=180)

        if worker_env is not None:
            stack.enter_context(running_worker(server, tmp_dir, worker_env))
        yield server


@contextlib.contextmanager
def running_worker(
    server: PrefectServer, tmp_dir: Path, worker_env: Mapping[str, str], *, name: str = "worker"
) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect worker start --pool upkeep-process` until the server lists it as the pool's worker.

    The worker polls every second (PREFECT_WORKER_QUERY_SECONDS=1; the default 10 s would be paid on
    every run a test starts). Stopped with its process group, flow-run subprocesses included.
    """
    env = dict(server.env)
    env.update({"UPKEEP_CHECKOUT": str(REPO_ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    env.update(worker_env)
    log = Path(tmp_dir) / f"{name}.log"
    server.worker_log = log
    with contextlib.ExitStack() as stack:
        with _timed(server, name):
            worker_name = f"{name}-{secrets.token_hex(3)}"
            proc = _spawn(["worker", "start", "--pool", POOL, "--name", worker_name], env, log)
            stack.callback(_timed_call, server, f"stop_{name}", _stop, proc)
            _await_worker(server, proc, log, worker_name)
        yield proc


def _create_work_pool(server: PrefectServer) -> None:
    """The pool `prefect work-pool create upkeep-process --type process` makes, through the API: the same
    WorkPoolCreate (the process worker's default base job template, not paused), without a `prefect`
    process (~6-14 s of CLI start-up on this machine under load, at every server start)."""
    from prefect.workers.process import ProcessWorker

    pool = {
        "name": POOL,
        "type": "process",
        "base_job_template": ProcessWorker.get_default_base_job_template(),
    }
    with httpx.Client(base_url=server.api_url + "/", timeout=30.0) as http:
        reply = http.post("work_pools/", json=pool)
    if reply.status_code != 201:
        raise PrefectServerError(f"creating work pool {POOL} answered HTTP {reply.status_code}: {reply.text}")


# -- database -----------------------------------------------------------------------------------------
def _create_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def _drop_database(name: str) -> None:
    """Terminate whatever still holds a connection (a server killed mid-query), then drop."""
    with psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- processes ----------------------------------------------------------------------------------------
def _clean_environ() -> dict[str, str]:
    """This process's environment without PREFECT_* / UPKEEP_* settings that would leak into ours."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "UPKEEP_"))}


def _spawn(args: list[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    # The child writes to its own copy of the log's descriptor; ours closes right away.
    # A session of its own: stopping it signals the group (uvicorn, flow-run subprocesses), nothing else.
    # Ended with this process too, when no teardown runs (kill -9 of the pytest worker).
    with open(log, "ab") as out:
        return subprocess.Popen(
            die_with_parent([PREFECT, *args]),
            cwd=REPO_ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, SIGKILL it after STOP_GRACE seconds."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; children in its group may still linger for a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _await_health(server: PrefectServer, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PrefectServerError(
                    f"prefect server exited {proc.returncode} before it was healthy:\n"
                    + _tail_file(server.log)
                )
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{server.api_url}/health").status_code == 200:
                    return
            time.sleep(0.25)
    raise PrefectServerError(
        f"prefect server at {server.api_url} not healthy after {timeout:.0f} s:\n{_tail_file(server.log)}"
    )


def _await_worker(server: PrefectServer, proc: subprocess.Popen[bytes], log: Path, name: str) -> None:
    """Until the server lists a worker of this name in the pool (its first heartbeat)."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    with httpx.Client(timeout=5.0) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PrefectServerError(f"prefect worker exited {proc.returncode}:\n{_tail_file(log)}")
            with contextlib.suppress(httpx.HTTPError):
                reply = http.post(f"{server.api_url}/work_pools/{POOL}/workers/filter", json={})
                if reply.status_code == 200 and any(w["name"] == name for w in reply.json()):
                    return
            time.sleep(0.25)
    raise PrefectServerError(
        f"prefect worker not registered after {WORKER_TIMEOUT:.0f} s:\n{_tail_file(log)}"
    )


# -- timings and logs ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _timed(server: PrefectServer, phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        server.timings[phase] = round(time.monotonic() - started, 2)


def _timed_call(server: PrefectServer, phase: str, fn: Callable[..., Any], *args: Any) -> None:
    with _timed(server, phase):
        fn(*args)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError as exc:
        return f"(no log: {exc})"


# -- reading a Prefect server in tests (test_deploy_schedules, test_upkeep_deploy) ----------------------
SCHEDULER_HANG = 120.0  # bounds a wait for the scheduler (loops every 2 s here); not a performance claim


def deployments(http: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every deployment on the server, by name."""
    reply = http.post("deployments/filter", json={})
    reply.raise_for_status()
    return {d["name"]: d for d in reply.json()}


def set_variable(http: httpx.Client, value: Any) -> None:
    """`upkeep_schedules_active` set to `value` with its JSON type, as `prefect variable set NAME VALUE`
    stores it (it JSON-parses VALUE first)."""
    http.delete(f"variables/name/{SCHEDULES_VARIABLE}")
    http.post("variables/", json={"name": SCHEDULES_VARIABLE, "value": value}).raise_for_status()


def doctor_line(http: httpx.Client) -> Any:
    """`upkeep doctor`'s `deployments` check against the server `http` talks to."""
    from upkeep.doctor import _deployments as doctor_deployments

    [check] = list(doctor_deployments(http))
    return check


def scheduled_runs(http: httpx.Client, deployment_id: str) -> int:
    query = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
    }
    reply = http.post("flow_runs/count", json=query)
    reply.raise_for_status()
    count: int = reply.json()
    return count


def wait_for(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + SCHEDULER_HANG
    while not condition():
        assert time.monotonic() < deadline, f"waited {SCHEDULER_HANG:.0f} s, still not {what}"
        time.sleep(0.5)


def scheduler_has_run(http: httpx.Client) -> None:
    """Returns once a scheduler loop that began after this call has finished: it gave a probe
    deployment, created now with an active hourly schedule, its runs (the scheduler reads every
    deployment in the same loop, so it has also been through the others)."""
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
    wait_for(lambda: scheduled_runs(http, probe.json()["id"]) > 0, "probe runs scheduled")
