"""Fleet benchmark: Upkeep vs a bare-SSH floor vs Ansible, on the same lab, in the same run.

    .venv/bin/python bench/fleet.py [--workloads W1,W2,W3] [--reps 3] [--impls upkeep,floor,ansible]
                                    [--profile W1] [--results bench/results.md] [--work DIR]

Each workload is C clusters x 3 lab nodes (real sshd each, node agent upgrade = 0.5 s, health at once)
upgraded from 9.8.0 to 9.10.0 with at most K clusters at a time:

    W1  C=10  K=10   ideal 1.5 s        W2  C=100 K=10   ideal 15 s        W3  C=100 K=50   ideal 3 s

(ideal = the upgrades alone: 3 nodes x 0.5 s per cluster, C/K rounds). Every implementation does the
same remote steps per node - pre-check (version, health, disk), stage (package over SFTP/scp into the
node's incoming dir + `upkeep-agent stage PKG SHA`), upgrade (version, `upkeep-agent upgrade`), health
(polled), version - nodes of a cluster strictly one after another for the upgrade, a cluster stopped at
its first failure, host keys verified against the lab's known_hosts, cold connections every run:

- upkeep:  the product. Planned runs due now in a fresh SQLite database (the lab's inventory imported
           without customer contacts: notices off), then `upkeep dispatch --max-running K` in one
           process (bench/upkeep_tick.py) against a Prefect server started once for the bench, on a
           PostgreSQL database of its own. Pre-check and staging run on a cluster's 3 nodes at once
           (the product's runbook), the upgrades one node after another.
- floor:   bench/floor.py, a minimal Fabric script: one connection per node, a thread pool over
           clusters, the same shape as the product's runbook.
- ansible: bench/ansible/fleet.yml (ansible-core), one inventory host per cluster, loops over its nodes
           with delegate_to and loop_control.break_when, -f K, strategy free, pipelining, `raw` for the
           agent commands and `copy` for the package, a fresh ControlPath dir per run, `ssh -O exit`
           after it. Its loops take the nodes one at a time in every task (Ansible's natural shape).

Per repetition the implementations run one after another in a rotating order; node state (version,
staged/incoming packages, logs) is reset between runs and every node is checked after each run (its
version and exactly one upgrade in its upgrade log). "fleet" seconds are what each implementation
measures around its fleet work (Upkeep: the dispatcher tick; floor: its thread pool; Ansible: play
start to stats); "process" seconds are the whole command, start-up included.
The final line per workload: `fleet W2 upkeep_over_floor=R1 upkeep_over_ansible=R2` (ratios of medians).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from upkeep.lab import Lab  # noqa: E402
from upkeep.lab.procs import LOCALHOST, free_ports  # noqa: E402

PYTHON = sys.executable
BIN = Path(sys.executable).parent
NODES = 3
UPGRADE_SECONDS = 0.5
FROM, TO = "9.8.0", "9.10.0"
# W4 (issue #19): K clusters all in flight at once, node upgrades of 60 s wall that cost the node
# almost no CPU (the lab agent sleeps). Its scale comes from --w4-clusters / --w4-upgrade-seconds.
W4_CLUSTERS, W4_UPGRADE_SECONDS = 200, 60.0
WORKLOADS = {"W1": (10, 10), "W2": (100, 10), "W3": (100, 50), "W4": (W4_CLUSTERS, W4_CLUSTERS)}
UPGRADE = {"W1": UPGRADE_SECONDS, "W2": UPGRADE_SECONDS, "W3": UPGRADE_SECONDS, "W4": W4_UPGRADE_SECONDS}
IMPLS = ("upkeep", "floor", "ansible")
RUN_TIMEOUT = 600.0


def ideal(clusters: int, k: int, upgrade_seconds: float = UPGRADE_SECONDS) -> float:
    return -(-clusters // k) * NODES * upgrade_seconds


def ideal_of(w: str) -> float:
    c, k = WORKLOADS[w]
    return ideal(c, k, UPGRADE[w])


def run_timeout(w: str) -> float:
    return max(RUN_TIMEOUT, 5 * ideal_of(w))


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, *, reaped: bool = True) -> float:
    """CPU seconds of a live process (user + system), with its reaped children's when `reaped`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if reaped else 0)
    return ticks / _TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants."""
    from upkeep.lab.procs import descendants

    return proc_cpu(pid) + sum(proc_cpu(child) for child in descendants(pid))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Result:
    workload: str
    impl: str
    rep: int
    fleet_seconds: float
    process_seconds: float
    nodes_ok: int
    nodes: int
    peak_rss_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # CPU seconds during the run: "controller" (the implementation's process tree), "nodes" (every
    # lab sshd with its sessions and node agents), "prefect server" (Upkeep only).
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.nodes_ok == self.nodes


# -- the lab -----------------------------------------------------------------------------------------
class FleetLab:
    """One lab per workload; node state is reset between runs."""

    def __init__(self, root: Path, clusters: int, upgrade_seconds: float = UPGRADE_SECONDS) -> None:
        self.root = root
        self.lab = Lab(root)
        self.clusters = clusters
        self.upgrade_seconds = upgrade_seconds

    def up(self) -> float:
        started = time.monotonic()
        self.lab.down()
        self.lab.up(
            clusters=self.clusters, nodes=NODES, upgrade_seconds=self.upgrade_seconds, health_delay=0.0
        )
        status = self.lab.status()
        self.nodes = status["nodes"]
        self.settings = self.lab.settings_overrides()
        inventory = yaml.safe_load(self.lab.inventory_path.read_text())
        for customer in inventory["customers"]:
            customer.pop("contacts", None)  # notices off: a customer without contacts is sent nothing
        self.inventory = self.root / "inventory-nocontacts.yaml"
        self.inventory.write_text(yaml.safe_dump(inventory, sort_keys=False))
        release = next(r for r in inventory["releases"] if r["version"] == TO)
        self.package = self.lab.fileserver_root / release["package"]
        clusters: dict[str, list[dict[str, Any]]] = {}
        for node in self.nodes:
            clusters.setdefault(node["cluster"], []).append(node)
        self.spec = {
            "known_hosts": str(self.lab.known_hosts),
            "ssh_key": str(self.lab.ssh_key),
            "package": str(self.package),
            "package_name": self.package.name,
            "sha256": release["sha256"],
            "from_version": FROM,
            "to_version": TO,
            "clusters": [
                {
                    "name": name,
                    "nodes": [
                        {
                            "hostname": n["hostname"],
                            "port": n["port"],
                            "user": n["user"],
                            "dir": n["node_dir"],
                        }
                        for n in nodes
                    ],
                }
                for name, nodes in clusters.items()
            ],
        }
        self.spec_path = self.root / "spec.json"
        self.spec_path.write_text(json.dumps(self.spec, indent=1))
        self.ansible_inventory = self.root / "ansible-inventory.yml"
        write_ansible_inventory(self, self.ansible_inventory)
        return time.monotonic() - started

    def reset(self) -> None:
        for node in self.nodes:
            d = Path(node["node_dir"])
            (d / "version").write_text(FROM + "\n")
            for name in ("upgraded_at", "upgrades.log", "fault"):
                (d / name).unlink(missing_ok=True)
            for sub in ("incoming", "staged", "logs"):
                shutil.rmtree(d / sub, ignore_errors=True)
                (d / sub).mkdir()

    def node_cpu(self) -> float:
        """CPU seconds of the lab's sshds so far, sessions and agents included (reaped by sshd)."""
        return sum(tree_cpu(n["pid"]) for n in self.lab.status()["nodes"] if n["pid"])

    def check(self) -> int:
        """Nodes at the target version with exactly one upgrade in their own log."""
        ok = 0
        for node in self.nodes:
            d = Path(node["node_dir"])
            log = d / "upgrades.log"
            lines = log.read_text().splitlines() if log.exists() else []
            if (d / "version").read_text().strip() == TO and len(lines) == 1:
                ok += 1
        return ok

    def down(self) -> None:
        self.lab.down()


# -- Prefect server (one for the whole bench) ---------------------------------------------------------
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", f"postgresql://postgres@{LOCALHOST}:5432/postgres")
PG_DATABASE = "upkeep_bench_prefect"
UPKEEP_PG_DATABASE = "upkeep_bench_w4"  # Upkeep's own database in W4 (K clusters' writes at once)


def _pg(statement: str) -> bool:
    """Run one admin statement on the local PostgreSQL; False if there is none to talk to."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(statement)  # type: ignore[arg-type]
        return True
    except Exception as exc:
        print(f"PostgreSQL at {PG_ADMIN}: {exc}", flush=True)
        return False


@contextlib.contextmanager
def prefect_server(work: Path, database: str = "postgres") -> Iterator[dict[str, str]]:
    """`prefect server start` on a PostgreSQL database of its own (dropped afterwards), as in
    docs/deploying.md. On SQLite (`--prefect-db sqlite`, or no PostgreSQL here) the server answers 503
    "database is locked" once a few flow runs write at once, and Prefect's client backs off 2, 4, 8 s."""
    home = work / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    on_pg = database == "postgres" and _pg(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")
    if on_pg:
        _pg(f"CREATE DATABASE {PG_DATABASE}")
        url = PG_ADMIN.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0]
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = f"{url}/{PG_DATABASE}"
    log = open(work / "prefect-server.log", "wb")  # noqa: SIM115 - closed below
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", LOCALHOST, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://{LOCALHOST}:{port}/api"
    try:
        import httpx

        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited; see {work / 'prefect-server.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() - started > 180:
                raise RuntimeError("prefect server did not become healthy in 180 s")
            time.sleep(0.3)
        where = f"PostgreSQL database {PG_DATABASE}" if on_pg else "SQLite"
        print(
            f"prefect server on {where} ready at {api} after {time.monotonic() - started:.1f} s", flush=True
        )
        yield {
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(home),
            "BENCH_PREFECT_DB": where,
            "BENCH_PREFECT_PID": str(proc.pid),
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        if on_pg:
            _pg(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)")


# -- implementations ---------------------------------------------------------------------------------
def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_", "ANSIBLE_"))}
    env.update({"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "LC_ALL": "C.UTF-8"})
    return env


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(ValueError):
                data: dict[str, Any] = json.loads(line)
                return data
    raise ValueError(f"no JSON result in output:\n{text[-2000:]}")


def _run(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO, timeout: float = RUN_TIMEOUT
) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    log.write_text(
        f"$ {' '.join(cmd)}\nexit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[1]} exited {done.returncode}; see {log}\n{done.stderr[-1500:]}")
    return seconds, done.stdout


def upkeep_db_url(home: Path, database: str) -> str:
    """Upkeep's own database for a run: SQLite in its home, or (`postgres`, W4) a PostgreSQL database of
    its own on the bench's server, created fresh here."""
    if database != "postgres":
        return f"sqlite:///{home / 'upkeep.db'}"
    _pg(f"DROP DATABASE IF EXISTS {UPKEEP_PG_DATABASE} WITH (FORCE)")
    _pg(f"CREATE DATABASE {UPKEEP_PG_DATABASE}")
    base = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0]
    return f"{base}/{UPKEEP_PG_DATABASE}"


def prepare_upkeep_home(fleet: FleetLab, home: Path, url: str | None = None) -> None:
    """A fresh Upkeep database: the lab's inventory (no contacts) and one planned run per cluster, due now."""
    from sqlmodel import select

    from inventory.db import make_engine, migrate, session_scope
    from inventory.importer import import_inventory
    from inventory.models import Cluster, RunState
    from inventory.runs import create_run

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    engine = make_engine(url or f"sqlite:///{home / 'upkeep.db'}")
    migrate(engine)
    import_inventory(fleet.inventory, engine=engine, actor="bench")
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        for cluster in session.exec(select(Cluster).order_by(Cluster.id)).all():  # type: ignore[arg-type]
            run = create_run(
                cluster,
                to_version=TO,
                source="schedule",
                requested_by="bench",
                session=session,
                state=RunState.planned,
            )
            run.slot_start, run.slot_end, run.notice_sequence = (
                now - timedelta(minutes=1),
                now + timedelta(hours=4),
                1,
            )
            # Announced in good time: the dispatcher re-checks the notice period before it claims a
            # run (#13), and an update never told is moved to a later slot instead of started.
            run.told_at = now - timedelta(days=30)
            session.add(run)
    engine.dispose()


def _percentile(xs: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; nan for no values."""
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * q // 100) - 1))]


def upkeep_db_report(home: Path, url: str | None = None) -> dict[str, Any]:
    """What the product's own record says: run states, and where each run's time went."""
    from sqlmodel import select

    from inventory.db import make_engine, session_scope
    from inventory.models import NodeStep, UpgradeRun

    engine = make_engine(url or f"sqlite:///{home / 'upkeep.db'}")
    with session_scope(engine) as session:
        runs = session.exec(select(UpgradeRun)).all()
        steps = session.exec(select(NodeStep)).all()
    engine.dispose()
    by_run: dict[int, list[Any]] = {}
    for step in steps:
        by_run.setdefault(step.run_id, []).append(step)
    spans, in_steps, first_step, since_first_claim = [], [], [], []
    phase: Counter[str] = Counter()
    # The tick's first claim: with every run due at once (W4) the time from it to a run's first step
    # is how long that cluster waited in all, claimed or not (the dispatcher staggers its claims).
    first_claim = min((r.started_at for r in runs if r.started_at is not None), default=None)
    for run in runs:
        rows = sorted(by_run.get(run.id or 0, []), key=lambda s: s.started_at)
        if not rows or run.finished_at is None or run.started_at is None:
            continue
        span = (run.finished_at - run.started_at).total_seconds()
        spans.append(span)
        first_step.append((rows[0].started_at - run.started_at).total_seconds())
        if first_claim is not None:
            since_first_claim.append((rows[0].started_at - first_claim).total_seconds())
        # Critical path inside a run: download, the pre-flight and distribute phases (parallel over
        # nodes: their wall span), then the serial per-node steps.
        covered = 0.0
        for name in ("download", "pre-flight", "distribute"):
            group = [s for s in rows if s.step == name and s.finished_at]
            if group:
                wall = (max(s.finished_at for s in group) - min(s.started_at for s in group)).total_seconds()
                covered += wall
                phase[name] += wall
        for s in rows:
            if s.step in ("check", "upgrade", "health", "verify") and s.finished_at:
                d = (s.finished_at - s.started_at).total_seconds()
                covered += d
                phase[s.step] += d
        in_steps.append(covered)
    n = max(len(spans), 1)
    return {
        "runs": len(runs),
        "succeeded": sum(1 for r in runs if r.state == "succeeded"),
        "node_steps": len(steps),
        "run_span_mean": sum(spans) / n,
        "in_steps_mean": sum(in_steps) / n,
        "outside_steps_mean": (sum(spans) - sum(in_steps)) / n,
        "claim_to_first_step_mean": sum(first_step) / n,
        "claim_to_first_step_p50": _percentile(first_step, 50),
        "claim_to_first_step_p95": _percentile(first_step, 95),
        "claim_to_first_step_max": max(first_step, default=float("nan")),
        "first_claim_to_first_step_p50": _percentile(since_first_claim, 50),
        "first_claim_to_first_step_p95": _percentile(since_first_claim, 95),
        "first_claim_to_first_step_max": max(since_first_claim, default=float("nan")),
        "phase_mean": {k: v / n for k, v in phase.items()},
    }


def run_upkeep(
    fleet: FleetLab,
    k: int,
    out: Path,
    prefect_env: dict[str, str],
    profile: Path | None = None,
    server_pid: int = 0,
    database: str = "sqlite",
    timeout: float = RUN_TIMEOUT,
    count_api: bool = False,
) -> Result:
    """With `profile`: py-spy samples the Upkeep process (every thread, only samples holding the GIL,
    i.e. Python running) into `profile`, and the Prefect server likewise into `<profile>.server`."""
    home = out / "home"
    home.mkdir(parents=True, exist_ok=True)
    url = upkeep_db_url(home, database)
    prepare_upkeep_home(fleet, home, url)
    env = _base_env()
    env.update(prefect_env)
    env.update({f"UPKEEP_{key.upper()}": str(value) for key, value in fleet.settings.items()})
    env["UPKEEP_HOME"] = str(home)
    if database == "postgres":
        env["UPKEEP_DATABASE_URL"] = url
    cmd = [PYTHON, str(REPO / "bench" / "upkeep_tick.py"), "--max-running", str(k)]
    if count_api:
        cmd.append("--count-api")
    spy = [str(BIN / "py-spy"), "record", "--gil", "--format", "raw", "--rate", "250"]
    server_spy = None
    if profile is not None:
        cmd = [*spy, "--output", str(profile), "--", *cmd]
        if server_pid:
            server_out = profile.with_name(profile.name + ".server")
            server_spy = subprocess.Popen(
                [*spy, "--pid", str(server_pid), "--output", str(server_out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    try:
        seconds, stdout = _run(cmd, env, out / "upkeep.log", timeout=timeout)
    finally:
        if server_spy is not None:
            server_spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            server_spy.wait(timeout=60)
    data = _last_json(stdout)
    report = upkeep_db_report(home, url)
    return Result(
        workload="",
        impl="upkeep",
        rep=0,
        fleet_seconds=data["tick_seconds"],
        process_seconds=seconds,
        nodes_ok=fleet.check(),
        nodes=len(fleet.nodes),
        peak_rss_mb=data["peak_rss_mb"],
        extra={"driver": data, "db": report},
    )


def run_floor(fleet: FleetLab, k: int, out: Path, timeout: float = RUN_TIMEOUT) -> Result:
    cmd = [PYTHON, str(REPO / "bench" / "floor.py"), str(fleet.spec_path), "--workers", str(k)]
    seconds, stdout = _run(cmd, _base_env(), out / "floor.log", timeout=timeout)
    data = _last_json(stdout)
    return Result(
        "",
        "floor",
        0,
        data["fleet_seconds"],
        seconds,
        fleet.check(),
        len(fleet.nodes),
        extra={"failures": data["failures"][:5]},
    )


def write_ansible_inventory(fleet: FleetLab, path: Path) -> None:
    clusters = {
        c["name"]: {"nodes": [{"name": n["hostname"], "dir": n["dir"]} for n in c["nodes"]]}
        for c in fleet.spec["clusters"]
    }
    nodes = {
        n["hostname"]: {"ansible_host": LOCALHOST, "ansible_port": n["port"], "ansible_user": n["user"]}
        for c in fleet.spec["clusters"]
        for n in c["nodes"]
    }
    inventory = {
        "all": {
            "children": {
                # A cluster is a name and a node list; every task is delegated to its nodes.
                "clusters": {"hosts": clusters, "vars": {"ansible_connection": "local"}},
                "nodes": {"hosts": nodes},
            }
        }
    }
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))


def run_ansible(fleet: FleetLab, k: int, out: Path, timeout: float = RUN_TIMEOUT) -> Result:
    here = REPO / "bench" / "ansible"
    inventory = fleet.ansible_inventory
    control = Path(f"/tmp/ucp{os.getpid()}-{int(time.time() * 1000) % 10**8}")  # short: unix socket paths
    control.mkdir()
    timing = out / "ansible-timing.json"
    env = _base_env()
    env.update(
        {
            "ANSIBLE_CONFIG": str(here / "ansible.cfg"),
            "ANSIBLE_CALLBACK_PLUGINS": str(here / "callback_plugins"),
            "ANSIBLE_HOME": str(out / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(out / "ansible-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
            "ANSIBLE_PRIVATE_KEY_FILE": fleet.spec["ssh_key"],
            "ANSIBLE_SSH_ARGS": (
                "-o ControlMaster=auto -o ControlPersist=120s -o BatchMode=yes -o IdentitiesOnly=yes "
                f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={fleet.spec['known_hosts']}"
            ),
            "BENCH_TIMING_FILE": str(timing),
        }
    )
    extra_vars = {
        "package": fleet.spec["package"],
        "package_name": fleet.spec["package_name"],
        "sha256": fleet.spec["sha256"],
        "from_version": FROM,
        "to_version": TO,
        "min_free": 2 * fleet.package.stat().st_size,
    }
    cmd = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        "-f",
        str(k),
        "-e",
        json.dumps(extra_vars),
        str(here / "fleet.yml"),
    ]
    try:
        seconds, _stdout = _run(cmd, env, out / "ansible.log", timeout=timeout)
    finally:
        for sock in control.iterdir():  # every run starts cold: close the masters this run opened
            subprocess.run(
                ["ssh", "-O", "exit", "-o", f"ControlPath={sock}", "x"], capture_output=True, check=False
            )
        shutil.rmtree(control, ignore_errors=True)
    data = json.loads(timing.read_text())
    return Result("", "ansible", 0, data["fleet_seconds"], seconds, fleet.check(), len(fleet.nodes))


# -- reporting -----------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _per_rep(runs: dict[str, list[Result]], impl: str, other: str) -> float:
    """Median over repetitions of impl's fleet time / other's, runs of the same repetition paired."""
    pairs = [
        (a.fleet_seconds, b.fleet_seconds)
        for a in runs.get(impl, [])
        for b in runs.get(other, [])
        if a.rep == b.rep and a.valid and b.valid
    ]
    return _median([x / y for x, y in pairs])


def summarize(results: list[Result], workloads: list[str]) -> tuple[str, list[str]]:
    """The table (markdown) and the final line per workload. Ratios are of the medians over the
    valid runs; "per rep" is the median of the ratios of runs made in the same repetition."""
    lines = [
        "| workload | impl | runs ok | fleet min s | fleet median s | × ideal | × floor (per rep) "
        "| × ansible (per rep) | process median s | peak RSS MB | CPU s per cluster: controller "
        "+ Prefect server / nodes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    finals = []
    nan = float("nan")
    for w in workloads:
        c, k = WORKLOADS[w]
        runs = {impl: [r for r in results if r.workload == w and r.impl == impl] for impl in IMPLS}
        runs = {impl: rs for impl, rs in runs.items() if rs}
        med = {impl: _median([r.fleet_seconds for r in rs if r.valid]) for impl, rs in runs.items()}

        for impl, rs in runs.items():
            ok = [r for r in rs if r.valid]
            rss = [r.peak_rss_mb for r in rs if r.peak_rss_mb]
            controller = _median(
                [(r.cpu.get("controller", nan) + r.cpu.get("prefect server", 0.0)) / c for r in rs]
            )
            server = _median([r.cpu["prefect server"] / c for r in rs if "prefect server" in r.cpu])
            nodes = _median([r.cpu.get("nodes", nan) / c for r in rs])
            split = f" (server {server:.2f})" if server == server else ""
            lines.append(
                f"| {w} (C={c}, K={k}, ideal {ideal_of(w):g} s) | {impl} | {len(ok)}/{len(rs)} "
                f"| {min((r.fleet_seconds for r in ok), default=nan):.2f} | {med[impl]:.2f} "
                f"| {med[impl] / ideal_of(w):.2f} "
                f"| {med[impl] / med.get('floor', nan):.2f} ({_per_rep(runs, impl, 'floor'):.2f}) "
                f"| {med[impl] / med.get('ansible', nan):.2f} ({_per_rep(runs, impl, 'ansible'):.2f}) "
                f"| {_median([r.process_seconds for r in rs]):.2f} | {f'{max(rss):.0f}' if rss else ''} "
                f"| {controller:.2f}{split} / {nodes:.2f} |"
            )
        if "upkeep" in med and w == "W4":
            r1 = med["upkeep"] / med.get("floor", nan)
            db = [r.extra["db"] for r in runs["upkeep"] if "db" in r.extra]
            p95 = _median([d["claim_to_first_step_p95"] for d in db])
            rss = max((r.peak_rss_mb or nan for r in runs["upkeep"]), default=nan)
            finals.append(f"fleet W4 upkeep_over_floor={r1:.2f} p95_start_s={p95:.1f} rss_mb={rss:.0f}")
        elif "upkeep" in med:
            r1 = med["upkeep"] / med.get("floor", nan)
            r2 = med["upkeep"] / med.get("ansible", nan)
            finals.append(f"fleet {w} upkeep_over_floor={r1:.2f} upkeep_over_ansible={r2:.2f}")
        if w == "W2":
            finals.append(f"orchestration_cpu_per_cluster W2 {orchestration_cpu(runs, c)}")
    return "\n".join(lines), finals


def orchestration_cpu(runs: dict[str, list[Result]], clusters: int) -> str:
    """CPU seconds per cluster on the orchestrating side (issue #19), medians over the runs: Upkeep's
    process (imports and start-up included) plus the Prefect server; the floor's and Ansible's
    process trees. The nodes' CPU (the lab's sshds and agents) is not in it."""
    nan = float("nan")
    parts = []
    for impl in IMPLS:
        cpu = [
            (r.cpu.get("controller", nan) + r.cpu.get("prefect server", 0.0)) / clusters
            for r in runs.get(impl, [])
        ]
        parts.append(f"{impl}={_median(cpu):.2f}" if cpu else f"{impl}=nan")
    return " ".join(parts)


def w4_table(results: list[Result]) -> str:
    """W4's own figures per run: wall over the ideal and the floor, how fast a claimed cluster got
    going, what the Upkeep process held, and what the Prefect server spent."""
    rows = [r for r in results if r.workload == "W4"]
    if not rows:
        return ""
    c, k = WORKLOADS["W4"]
    floor = _median([r.fleet_seconds for r in rows if r.impl == "floor" and r.valid])
    lines = [
        f"W4: C={c} clusters x {NODES} nodes, K={k} in flight, node upgrade {UPGRADE['W4']:g} s "
        f"(ideal {ideal_of('W4'):g} s).",
        "",
        "| impl | rep | nodes ok | fleet s | × ideal | × floor | claim → first step s p50 / p95 / max "
        "| tick's first claim → first step s p50 / p95 / max "
        "| peak RSS MB | peak threads / fds | CPU s: controller / Prefect server / nodes | error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        db = r.extra.get("db", {})
        drv = r.extra.get("driver", {})
        start = (
            f"{db['claim_to_first_step_p50']:.1f} / {db['claim_to_first_step_p95']:.1f} / "
            f"{db['claim_to_first_step_max']:.1f}"
            if db
            else ""
        )
        waited = (
            f"{db['first_claim_to_first_step_p50']:.1f} / {db['first_claim_to_first_step_p95']:.1f} / "
            f"{db['first_claim_to_first_step_max']:.1f}"
            if "first_claim_to_first_step_p50" in db
            else ""
        )
        held = f"{drv.get('peak_threads', '')} / {drv.get('peak_fds', '')}" if drv else ""
        server = r.cpu.get("prefect server")
        lines.append(
            f"| {r.impl} | {r.rep} | {r.nodes_ok}/{r.nodes} | {r.fleet_seconds:.1f} "
            f"| {r.fleet_seconds / ideal_of('W4'):.2f} | {r.fleet_seconds / floor:.2f} | {start} | {waited} "
            f"| {f'{r.peak_rss_mb:.0f}' if r.peak_rss_mb else ''} | {held} "
            f"| {r.cpu.get('controller', 0):.1f} / {'' if server is None else f'{server:.1f}'} "
            f"/ {r.cpu.get('nodes', 0):.1f} | {r.extra.get('error', '')[:160]} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, str]:
    def version(cmd: list[str]) -> str:
        with contextlib.suppress(Exception):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
            return (done.stdout or done.stderr).strip().splitlines()[0]
        return "?"

    from importlib.metadata import version as pkg

    def dist(name: str) -> str:
        try:
            return pkg(name)
        except Exception:
            return "not installed"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) / 1024 / 1024:.0f} GB"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} / {os.cpu_count()} cores ({cpu}) / {mem} / {platform.platform()}",
        "load (1/5/15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "prefect": dist("prefect"),
        "fabric / paramiko": f"{dist('fabric')} / {dist('paramiko')}",
        "sqlalchemy": dist("sqlalchemy"),
        "ansible-core": dist("ansible-core"),
        "OpenSSH": version(["ssh", "-V"]),
    }


# Client samples are labelled by the innermost frame that matches one of these (the code that asked
# for the work): SQLAlchemy under flows/records.py is "step records", under Prefect's parameter walk
# it is "Prefect engine", and so on.
_CLIENT_RULES = (
    ("<frozen importlib", "imports and start-up"),
    ("flows/records.py", "step records (our DB writes around each remote action)"),
    ("flows/report.py", "artifacts (Prefect API: progress, table, summary)"),
    ("prefect/artifacts", "artifacts (Prefect API: progress, table, summary)"),
    ("tasks/ssh.py", "SSH (connect, commands, SFTP)"),
    ("tasks/node.py", "SSH (connect, commands, SFTP)"),
    ("paramiko/", "SSH (connect, commands, SFTP)"),
    ("fabric/", "SSH (connect, commands, SFTP)"),
    ("invoke/", "SSH (connect, commands, SFTP)"),
    ("tasks/fileserver.py", "package download (HTTPS + SHA-256)"),
    ("prefect/logging", "logging (Prefect console + API handlers)"),
    ("rich/", "logging (Prefect console + API handlers)"),
    ("logging/", "logging (Prefect console + API handlers)"),
    ("prefect/events", "Prefect events (task-run states to the server)"),
    ("prefect/", "Prefect engine (flow/task runs, client, settings, API calls)"),
    ("inventory/", "run bookkeeping (our DB: claim, plan, checks between nodes, finish)"),
    ("flows/", "run bookkeeping (our DB: claim, plan, checks between nodes, finish)"),
    ("upkeep/", "imports and start-up"),
)
_SERVER_RULES = (
    ("task_run_recorder", "task-run recorder (task-run states from events)"),
    ("event_persister", "event persister (every event stored)"),
    ("prefect/server/api/events", "events websocket (receiving events)"),
    ("prefect/server/events", "event processing (triggers, messaging)"),
    ("prefect/server/orchestration", "orchestration rules (flow-run state changes)"),
    ("prefect/server/api/flow_runs", "flow-run API"),
    ("prefect/server/api/task_runs", "task-run API"),
    ("prefect/server/api/artifacts", "artifacts API"),
    ("prefect/server/api/logs", "logs API"),
    ("prefect/server/services", "other server services (scheduler, foreman, ...)"),
    ("prefect/server/api", "other API endpoints"),
    ("sqlalchemy/", "database work (SQLAlchemy in greenlets: the calling service is not on the stack)"),
    ("asyncpg/", "database work (SQLAlchemy in greenlets: the calling service is not on the stack)"),
    ("", "HTTP and event loop (uvicorn, starlette, pydantic, asyncio)"),
)


def profile_summary(
    raw: Path, rules: tuple[tuple[str, str], ...] = _CLIENT_RULES, *, innermost: bool = True, top: int = 12
) -> str:
    """py-spy's collapsed stacks (samples holding the GIL) grouped by what they were doing."""
    parts: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return "(no profile written)"
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        if innermost:  # the innermost frame that matches any rule decides
            label = next(
                (label for frame in reversed(stack.split(";")) for needle, label in rules if needle in frame),
                "other",
            )
        else:  # the first rule that matches anywhere on the stack decides
            label = next((label for needle, label in rules if needle in stack), "other")
        parts[label] += n
    if not total:
        return "(no samples)"
    out = ["| doing | share of samples |", "|---|---|"]
    out += [f"| {name} | {100 * n / total:.1f} % |" for name, n in parts.most_common(top)]
    return f"{total} samples holding the GIL ({total / 250:.1f} s at 250 Hz).\n\n" + "\n".join(out)


# -- main ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="W1,W2,W3,W4")
    parser.add_argument(
        "--w4-clusters",
        type=int,
        default=W4_CLUSTERS,
        help="W4's K: clusters x 3 nodes, all in flight at once (the issue's 200 = 600 sshds)",
    )
    parser.add_argument("--w4-upgrade-seconds", type=float, default=W4_UPGRADE_SECONDS)
    parser.add_argument(
        "--count-api",
        action="store_true",
        help="count the Upkeep process's Prefect API requests and events (per cluster, in the output)",
    )
    parser.add_argument("--w4-reps", type=int, default=1, help="repetitions of W4 (each ~3 x 3+ minutes)")
    parser.add_argument(
        "--w4-upkeep-db",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="Upkeep's own database in W4 (PostgreSQL: K runs writing at once)",
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument(
        "--profile",
        default="W1",
        help="workload for one extra, untimed Upkeep run under py-spy ('' for none); W1 has the same "
        "concurrency (K=10) as W2 and takes a tenth of the time",
    )
    parser.add_argument("--prefect-db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.md")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "upkeep-bench")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    WORKLOADS["W4"] = (args.w4_clusters, args.w4_clusters)
    UPGRADE["W4"] = args.w4_upgrade_seconds
    impls = [i for i in args.impls.split(",") if i]
    args.work.mkdir(parents=True, exist_ok=True)
    info = machine()
    bench_started = time.monotonic()
    results: list[Result] = []
    profiles: dict[str, str] = {}
    lab_up: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        prefect_env = (
            stack.enter_context(prefect_server(args.work, args.prefect_db)) if "upkeep" in impls else {}
        )
        if "W4" in workloads and "upkeep" in impls and args.w4_upkeep_db == "postgres":
            stack.callback(_pg, f"DROP DATABASE IF EXISTS {UPKEEP_PG_DATABASE} WITH (FORCE)")
        server_pid = 0
        if prefect_env:
            info["Prefect server database"] = prefect_env.pop("BENCH_PREFECT_DB")
            server_pid = int(prefect_env.pop("BENCH_PREFECT_PID"))
        for w in workloads:
            clusters, k = WORKLOADS[w]
            fleet = FleetLab(args.work / f"lab-{w}", clusters, UPGRADE[w])
            reps = min(args.reps, args.w4_reps) if w == "W4" else args.reps
            timeout = run_timeout(w)
            database = args.w4_upkeep_db if w == "W4" else "sqlite"
            lab_up[w] = fleet.up()
            print(f"{w}: lab of {clusters}x{NODES} nodes up in {lab_up[w]:.1f} s", flush=True)
            try:
                for rep in range(reps):
                    order = impls[rep % len(impls) :] + impls[: rep % len(impls)]
                    for impl in order:
                        fleet.reset()
                        out = args.work / f"{w}-{impl}-{rep}"
                        shutil.rmtree(out, ignore_errors=True)
                        out.mkdir(parents=True)
                        before = (
                            children_cpu(),
                            fleet.node_cpu(),
                            tree_cpu(server_pid) if server_pid else 0.0,
                        )
                        try:
                            if impl == "upkeep":
                                result = run_upkeep(
                                    fleet,
                                    k,
                                    out,
                                    prefect_env,
                                    database=database,
                                    timeout=timeout,
                                    count_api=args.count_api,
                                )
                            elif impl == "floor":
                                result = run_floor(fleet, k, out, timeout=timeout)
                            else:
                                result = run_ansible(fleet, k, out, timeout=timeout)
                        except Exception as exc:  # reported (W4: "if it survives"), the others still run
                            if w != "W4":
                                raise
                            error = f"{exc.__class__.__name__}: {str(exc).strip().splitlines()[0][:300]}"
                            print(f"  {w} rep {rep} {impl}: FAILED {error}", flush=True)
                            result = Result(
                                "", impl, 0, float("nan"), float("nan"), fleet.check(), len(fleet.nodes)
                            )
                            result.extra["error"] = error
                        result.cpu = {
                            "controller": children_cpu() - before[0],
                            "nodes": fleet.node_cpu() - before[1],
                        }
                        if impl == "upkeep" and server_pid:
                            result.cpu["prefect server"] = tree_cpu(server_pid) - before[2]
                        result.workload, result.rep = w, rep
                        results.append(result)
                        api = result.extra.get("driver", {}).get("api")
                        if api:
                            http = sum(n for name, n in api.items() if not name.startswith("event "))
                            events = sum(n for name, n in api.items() if name.startswith("event "))
                            print(
                                f"api_calls_per_cluster {w} http={http / clusters:.1f} "
                                f"events={events / clusters:.1f} ({json.dumps(api)})",
                                flush=True,
                            )
                        quarters = result.extra.get("driver", {}).get("rss_quarters_mb")
                        rss = f" rss {result.peak_rss_mb:.0f} MB {quarters}" if result.peak_rss_mb else ""
                        cpu = " ".join(f"{name} {sec:.1f}" for name, sec in result.cpu.items())
                        print(
                            f"  {w} rep {rep} {impl:8s} fleet {result.fleet_seconds:7.2f} s  process "
                            f"{result.process_seconds:7.2f} s  nodes ok {result.nodes_ok}/{result.nodes}{rss}"
                            f"  cpu s: {cpu}",
                            flush=True,
                        )
                if w == args.profile and "upkeep" in impls:
                    fleet.reset()
                    out = args.work / f"{w}-upkeep-profile"
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                    raw = out / "py-spy.txt"
                    profiled = run_upkeep(fleet, k, out, prefect_env, profile=raw, server_pid=server_pid)
                    server_raw = raw.with_name(raw.name + ".server")
                    profiles[w] = (
                        "Profiled run (py-spy record --gil, 250 Hz, not in the table): "
                        f"tick {profiled.fleet_seconds:.2f} s, "
                        f"nodes ok {profiled.nodes_ok}/{profiled.nodes}.\n\n"
                        "Upkeep process (`upkeep dispatch`): " + profile_summary(raw) + "\n\n"
                        "Prefect server: " + profile_summary(server_raw, _SERVER_RULES, innermost=False)
                    )
                    (out / "db-report.json").write_text(json.dumps(profiled.extra["db"], indent=2))
            finally:
                fleet.down()
    table, finals = summarize(results, workloads)
    w4 = w4_table(results)
    if w4:
        table += "\n\n" + w4
    print()
    print(table)
    write_results(
        args.results, info, table, finals, results, profiles, lab_up, time.monotonic() - bench_started
    )
    (args.work / "fleet-results.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1, default=str)
    )
    print()
    for line in finals:
        print(line)


def _rss(r: Result) -> str:
    if r.peak_rss_mb is None:
        return ""
    quarters = r.extra.get("driver", {}).get("rss_quarters_mb") or []
    return f"{r.peak_rss_mb:.0f} ({' '.join(f'{q:.0f}' for q in quarters)})"


def write_results(
    path: Path,
    info: dict[str, str],
    table: str,
    finals: list[str],
    results: list[Result],
    profiles: dict[str, str],
    lab_up: dict[str, float],
    seconds: float,
) -> None:
    """The measured part of results.md, between markers; the analysis around it is written by hand."""
    runs = [
        "| workload | rep | impl | fleet s | process s | nodes ok | peak RSS MB (RSS at ¼ ½ ¾ 1 of the tick) "
        "| CPU s: controller | Prefect server | nodes (sshd + agents) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        server = r.cpu.get("prefect server")
        runs.append(
            f"| {r.workload} | {r.rep} | {r.impl} | {r.fleet_seconds:.2f} | {r.process_seconds:.2f} "
            f"| {r.nodes_ok}/{r.nodes} | {_rss(r)} "
            f"| {r.cpu.get('controller', 0):.1f} | {'' if server is None else f'{server:.1f}'} "
            f"| {r.cpu.get('nodes', 0):.1f} |"
        )
    db_lines = [
        "| workload | rep | runs succeeded | mean run span s | in steps s | outside steps s "
        "| claim → first step s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.impl == "upkeep" and "db" in r.extra:
            d = r.extra["db"]
            db_lines.append(
                f"| {r.workload} | {r.rep} | {d['succeeded']}/{d['runs']} | {d['run_span_mean']:.2f} "
                f"| {d['in_steps_mean']:.2f} | {d['outside_steps_mean']:.2f} "
                f"| {d['claim_to_first_step_mean']:.2f} |"
            )
    body = [
        "<!-- measured: written by bench/fleet.py; replaced on every run -->",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        f"- lab start-up: {', '.join(f'{w} {s:.1f} s' for w, s in lab_up.items())}; "
        f"whole fleet bench {seconds:.0f} s",
        "",
        table,
        "",
        "Every run (in the order they ran):",
        "",
        *runs,
        "",
        "Upkeep's own record per run (NodeStep rows in its database): mean per cluster run.",
        "",
        *db_lines,
        "",
        *(f"### Profile, {w}\n\n{text}\n" for w, text in profiles.items()),
        "```",
        *finals,
        "```",
        "",
        "<!-- /measured -->",
    ]
    text = (
        path.read_text()
        if path.exists()
        else "# Fleet benchmark results\n\n<!-- measured --><!-- /measured -->\n"
    )
    start = text.find("<!-- measured")
    end = text.find("<!-- /measured -->")
    block = "\n".join(body)
    if start == -1 or end == -1:
        text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len("<!-- /measured -->") :]
    path.write_text(text)


if __name__ == "__main__":
    main()
