"""docs/deploying.md, followed literally: its marked shell blocks, read from the file itself and run in
order in bash on this machine, against PostgreSQL at 127.0.0.1, a real `prefect server start`, a real
worker and the lab (standing in for the customers' nodes and the vendor's file server).

Markers in the document (HTML comments, invisible when rendered) say what each fenced block is:
`site` (the site's values: the test substitutes its own for exactly the names it knows, and fails on
any other name), `run` (must exit 0), `background NAME` (a long-running process: server, worker),
`toml` (the example settings file: must load as settings), `systemd` (the worker's unit: its stop
settings and command are checked against the worker block, and the worker is stopped as it would stop
the worker). Nothing else from the document runs, and nothing the document does not say is done for it
except what a machine provides: the databases' names, ports, the lab, and a PREFECT_HOME of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql

from tests.integration.prefect_server import (
    ADMIN_DSN,
    REPO_ROOT,
    PrefectServer,
    _await_worker,
    _drop_database,
    _stop,
    _tail_file,
)
from tests.support.labs import guarded
from upkeep.lab import Lab
from upkeep.lab.procs import LOCALHOST, free_ports

DOC = REPO_ROOT / "docs" / "deploying.md"
_MARKED = re.compile(r"<!-- doc-test: (\w+)(?: (\w+))? -->\n```(\w+)\n(.*?)\n```", re.DOTALL)
# Names the site block may set that the test keeps as the document wrote them.
_KEPT = {"PATH", "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED"}
BLOCK_TIMEOUT = 300.0  # generous: a loaded 2-core machine; not a performance claim


def _port_no_one_is_handed() -> int:
    """A free port below the kernel's ephemeral range, for the Prefect server the doc starts many
    seconds later. A port from `free_ports` (bind to 0, closed) went back to the kernel, which handed
    it to a lab's sshd of another test meanwhile: the server could not bind, and the doc's `curl
    .../health` read the SSH banner ("Received HTTP/0.9 when not allowed", a fresh-clone run). Below
    the range no bind to 0 and no outgoing connection is given it; other pickers here are rare."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    floor = 10000 if low > 12000 else 1024
    for _ in range(200):
        port = floor + secrets.randbelow(max(1, low - floor))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((LOCALHOST, port))
            except OSError:
                continue
        return port
    return free_ports(1)[0]


@dataclass(frozen=True)
class Block:
    role: str
    name: str
    lang: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"{DOC.name}:{self.line} ({self.role}{' ' + self.name if self.name else ''})"


def doc_blocks() -> list[Block]:
    text = DOC.read_text()
    return [
        Block(m[1], m[2] or "", m[3], m[4], text.count("\n", 0, m.start()) + 2)
        for m in _MARKED.finditer(text)
    ]


def _one(blocks: list[Block], role: str) -> Block:
    found = [b for b in blocks if b.role == role]
    assert len(found) == 1, f"{DOC} must have exactly one `doc-test: {role}` block, has {len(found)}"
    return found[0]


def site_block(doc_site: Block, values: dict[str, str]) -> str:
    """The document's site block with the test's values for the names it knows."""
    lines = []
    for line in doc_site.text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[0] == "export", f"{doc_site}: only `export NAME=VALUE` lines belong here: {line!r}"
        names = [word.split("=", 1)[0] for word in words[1:]]
        unknown = [n for n in names if n not in values and n not in _KEPT]
        assert not unknown, f"{doc_site} sets {unknown}; give the test a value for it (values in this test)"
        if all(n in _KEPT for n in names):
            lines.append(line)
        else:
            lines.append("export " + " ".join(f"{n}={shlex.quote(values[n])}" for n in names))
    missing = set(values) - {w.split("=", 1)[0] for ln in lines for w in shlex.split(ln)[1:]}
    assert not missing, f"{doc_site} no longer sets {sorted(missing)}"
    return "\n".join(lines)


def test_the_example_settings_file_loads_as_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from upkeep.settings import load_settings

    toml = _one(doc_blocks(), "toml")
    (tmp_path / "upkeep.toml").write_text(toml.text)
    for name in [n for n in os.environ if n.startswith("UPKEEP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("UPKEEP_CONFIG", str(tmp_path / "upkeep.toml"))
    settings = load_settings()  # unknown keys and wrong types raise, naming the file
    assert settings.database_url.startswith("postgresql+psycopg://") and settings.smtp_host


class _Machine:
    """Runs the document's blocks: `run` ones to completion, `background` ones until the end."""

    def __init__(self, tmp_path: Path, site: str, env: dict[str, str]) -> None:
        self.tmp, self.site, self.env = tmp_path, site, env
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.background: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.timings: dict[str, float] = {}

    def script(self, block: Block, *, exec_last: bool = False) -> str:
        body = block.text.rstrip().splitlines()
        if exec_last:  # as systemd would run it: the command itself, not a shell waiting on it
            body[-1] = "exec " + body[-1]
        return "set -euo pipefail\n" + self.site + "\n" + "\n".join(body) + "\n"

    def run(self, block: Block) -> str:
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-c", self.script(block)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
        self.timings[f"line {block.line}" if block.line else block.text] = round(
            time.monotonic() - started, 1
        )
        if done.returncode != 0:
            logs = "\n".join(
                f"--- {name} log:\n{_tail_file(log)}" for name, (_, log) in self.background.items()
            )
            pytest.fail(
                f"{block} exited {done.returncode}:\n{block.text}\n--- stdout:\n{done.stdout[-4000:]}\n"
                f"--- stderr:\n{done.stderr[-4000:]}\n{logs}",
                pytrace=False,
            )
        return done.stdout

    def doctor(self) -> dict[str, Any]:
        """`upkeep doctor --json` on this machine (the test's own check, not a step of the document)."""
        done = subprocess.run(
            ["bash", "-c", f"set -euo pipefail\n{self.site}\nupkeep doctor --json"],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return dict(json.loads(done.stdout))

    def start(self, block: Block) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{block.name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["bash", "-c", self.script(block, exec_last=True)],
                cwd=self.work,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.background[block.name] = (proc, log)
        return proc


@contextlib.contextmanager
def _databases(names: list[str]) -> Iterator[None]:
    """Drop what the document creates (databases and their roles), even when a step failed."""
    try:
        yield
    finally:
        for name in names:
            with contextlib.suppress(psycopg.Error):
                _drop_database(name)
            with contextlib.suppress(psycopg.Error), psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _unit(block: Block) -> dict[str, list[str]]:
    unit: dict[str, list[str]] = {}
    for line in block.text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            unit.setdefault(key.strip(), []).append(value.strip())
    return unit


def _dispatch_runs(api: str) -> int:
    with httpx.Client(timeout=10) as http:
        deployment = http.get(f"{api}/deployments/name/dispatch/dispatch")
        deployment.raise_for_status()
        runs = http.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"deployment_id": {"any_": [deployment.json()["id"]]}}},
        )
        runs.raise_for_status()
        return len(runs.json())


def _scheduler_probe(api: str) -> str:
    """A deployment with an active hourly schedule, created now (not a step of the document): once the
    scheduler has given it runs, a scheduler loop has been through every deployment made before it."""
    with httpx.Client(timeout=10) as http:
        flow = http.post(f"{api}/flows/", json={"name": "scheduler-probe"})
        flow.raise_for_status()
        probe = http.post(
            f"{api}/deployments/",
            json={
                "name": "probe",
                "flow_id": flow.json()["id"],
                "schedules": [{"schedule": {"interval": 3600}, "active": True}],
            },
        )
        probe.raise_for_status()
        probe_id: str = probe.json()["id"]
        return probe_id


def _await_scheduler(api: str, probe: str) -> None:
    scheduled = {"state": {"type": {"any_": ["SCHEDULED"]}}}
    query = {"deployments": {"id": {"any_": [probe]}}, "flow_runs": scheduled}
    deadline = time.monotonic() + 300  # bounds a hang only (the scheduler loops every 2 s here)
    with httpx.Client(timeout=10) as http:
        while True:
            reply = http.post(f"{api}/flow_runs/count", json=query)
            reply.raise_for_status()
            if reply.json() > 0:
                return
            assert time.monotonic() < deadline, "the scheduler gave the probe deployment no run in 300 s"
            time.sleep(1)


@pytest.mark.prefect_server
@pytest.mark.lab
@pytest.mark.postgres
def test_the_deploying_doc_works_when_followed_literally(tmp_path: Path) -> None:
    started = time.monotonic()
    blocks = doc_blocks()
    unit = _unit(_one(blocks, "systemd"))
    worker_block = next(b for b in blocks if b.role == "background" and b.name == "worker")
    stop_timeout = float(unit["TimeoutStopSec"][0])

    # The unit and the worker block describe the same worker; the unit stops it with SIGINT to it alone.
    assert unit["KillSignal"] == ["SIGINT"] and unit["KillMode"] == ["mixed"], unit
    exec_start = shlex.split(unit["ExecStart"][0])
    worker_command = shlex.split(worker_block.text.strip().splitlines()[-1])
    assert exec_start[0].endswith("/.venv/bin/prefect") and worker_command[0] == "prefect"
    assert [w.replace("$(hostname)", "%H") for w in worker_command[1:]] == exec_start[1:], (
        exec_start,
        worker_command,
    )
    environment = {e.split("=", 1)[0] for e in unit["Environment"]}
    assert {"PREFECT_API_URL", "UPKEEP_CHECKOUT", "UPKEEP_CONFIG", "DO_NOT_TRACK"} <= environment, environment

    # This machine's site: fresh database names, a free port, the lab where `upkeep lab env` finds it.
    token = secrets.token_hex(4)
    port = _port_no_one_is_handed()
    home = tmp_path / "home"
    lab = Lab(home / "lab")
    values = {
        "DB_HOST": LOCALHOST,
        "PREFECT_DB": f"upkeep_doc_prefect_{token}",
        "PREFECT_DB_PASSWORD": secrets.token_hex(8),
        "UPKEEP_DB": f"upkeep_doc_{token}",
        "UPKEEP_DB_PASSWORD": secrets.token_hex(8),
        "PREFECT_SERVER_API_HOST": LOCALHOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://{LOCALHOST}:{port}/api",
        "UPKEEP_CONFIG": str(tmp_path / "upkeep.toml"),
        "FLEET_YAML": str(lab.inventory_path),
        "CHECKOUT": str(REPO_ROOT),
    }
    site = site_block(_one(blocks, "site"), values)
    (tmp_path / "upkeep.toml").write_text(
        f'home = "{home}"\n'
        f'database_url = "postgresql+psycopg://{values["UPKEEP_DB"]}:{values["UPKEEP_DB_PASSWORD"]}'
        f'@{LOCALHOST}:5432/{values["UPKEEP_DB"]}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # this machine's Prefect profile dir
    # The test's own: the scheduler loops every 2 s instead of 60 s, so waiting for one loop after the
    # deploy (the probe, before going live) costs seconds.
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "2"
    machine = _Machine(tmp_path, site, env)
    worker_stopped_in: float | None = None
    probe: str | None = None  # a deployment made right after the first deploy, to see the scheduler's loop

    with guarded(lab):
        lab.up(clusters=1, nodes=3, upgrade_seconds=0.1, health_delay=0.1)
        # The rehearsal the document describes: `eval "$(upkeep lab env)"` after the site's values. Its
        # output is the same for every block, so it is asked once and the exports it printed go in.
        machine.site += "\n" + machine.run(Block("run", "", "bash", "upkeep lab env", 0))
        with _databases([values["PREFECT_DB"], values["UPKEEP_DB"]]):
            try:
                for block in blocks:
                    if block.role == "run":
                        if "upkeep live on" in block.text:
                            # Deployed paused, and no pause needed: the scheduler has been through the
                            # deployments since (it scheduled the probe) and gave the dispatcher nothing,
                            # so with a worker up the dispatcher has not run once.
                            assert probe is not None, "no block deployed before going live"
                            _await_scheduler(values["PREFECT_API_URL"], probe)
                            assert _dispatch_runs(values["PREFECT_API_URL"]) == 0
                        machine.run(block)
                        if "upkeep deploy" in block.text and probe is None:
                            probe = _scheduler_probe(values["PREFECT_API_URL"])
                    elif block.role == "background":
                        if block.name == "worker":
                            # Deployed, no worker yet: the doctor names exactly that (and its fix).
                            report = machine.doctor()
                            assert report["failed"] == ["workers"], report
                        proc = machine.start(block)
                        if block.name == "worker":
                            server = PrefectServer(
                                values["PREFECT_API_URL"], env, "", tmp_path, tmp_path / "x"
                            )
                            _await_worker(server, proc, machine.background["worker"][1], socket.gethostname())
                # The update the document ran reached every node of the cluster exactly once.
                for node in lab.status()["nodes"]:
                    assert len(lab.upgrade_log(node["hostname"])) == 1, node
                worker, _log = machine.background["worker"]
                stopping = time.monotonic()
                os.kill(worker.pid, signal.SIGINT)  # KillSignal=SIGINT, KillMode=mixed: the worker alone
                try:
                    worker.wait(timeout=stop_timeout)
                except subprocess.TimeoutExpired:
                    pytest.fail(
                        f"the worker ignored SIGINT for TimeoutStopSec={stop_timeout:g} s", pytrace=False
                    )
                worker_stopped_in = round(time.monotonic() - stopping, 1)
            finally:
                for proc, _log in machine.background.values():
                    _stop(proc)
    print(
        f"\ndeploying.md followed in {time.monotonic() - started:.1f} s; blocks (s): {machine.timings}; "
        f"worker stopped by SIGINT in {worker_stopped_in} s"
    )
