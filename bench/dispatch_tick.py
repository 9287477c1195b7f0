"""One dispatcher tick over a large inventory, on PostgreSQL: how long, which queries, which plans.

    .venv/bin/python bench/dispatch_tick.py [--sizes 1000,10000,100000] [--max-running 200]
                                            [--results bench/results.md] [--keep]
                                            [--database upkeep_bench_tick]

For each size N (planned updates), a database of its own (`upkeep_bench_tick`, or `--database`, on
127.0.0.1:5432, created, migrated with the product's migrations and dropped afterwards) holds:

- N/10 customers (one contact each, zone UTC), 10 clusters each, one planned update per cluster;
  each cluster one maintenance window open all week (so every slot is valid and a due run is claimed,
  not re-slotted);
- N/100 updates due now (slot began 5 minutes ago), N/20 whose 24 h reminder is due (slot in 12 h,
  announced 48 h before it, so the 72 h reminder - which runs an SSH pre-flight - is not due), the
  rest planned 4 to 60 days out. At N=100,000: 1,000 due, 5,000 reminders, 10,000 customers.

Then one tick: the `dispatch` flow's body (`dispatch.fn`, so no Prefect flow run of its own; its log
lines go to a plain logger) with `via_deployments=True` and `--max-running` slots, where handing the
claimed runs to the workers (`run_deployment`, one API call per run) is replaced by recording them:
the tick's time **excludes the flow runs it starts**. Everything else is the product's code: reslot
check, reminders queued (templates rendered, notices inserted), re-check and claim of each started
run, on-call and alerts, then - the flow run's last step, bounded by DELIVERY_LIMIT (500) notices and
DELIVERY_BUDGET of time - the outbox delivered (to an outbox directory: an fsync per notice, no SMTP
round trips). A second tick follows (reminders already queued: the steady state).

"The tick" is the decisions, up to the outbox delivery; the delivery is reported apart (notices, its
seconds, notices per second), and the whole first flow run (decisions + delivery) next to both.

Every SQL statement of the first tick is recorded (by text, with a count) and each distinct one that
reads or writes `upgraderun` is EXPLAINed with its parameters after the tick: a `Seq Scan on
upgraderun` fails the check. Per-phase times come from wrapping the tick's steps.

The last line: `dispatch_tick updates=N seconds=S whole_tick_seconds=W delivery_notices=D
delivery_seconds=T ...` for the largest N (S: the first tick without its outbox delivery; W: with it -
before 2026-12-05 03:30 UTC `seconds=` was W, the whole first tick), also written
into the "others" block of bench/results.md by bench/all.py, and, run alone, into this script's own
block there.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOCALHOST = "127.0.0.1"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", f"postgresql://postgres@{LOCALHOST}:5432/postgres")
DATABASE = "upkeep_bench_tick"
TO, FROM = "9.10.0", "9.8.0"
START, END = "<!-- dispatch_tick: written by bench/dispatch_tick.py -->", "<!-- /dispatch_tick -->"


def admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def db_url(name: str) -> str:
    return PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def database(name: str, keep: bool) -> Iterator[str]:
    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(f"CREATE DATABASE {name}")
    try:
        yield db_url(name)
    finally:
        if not keep:
            admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def load(engine: Any, n: int, now: datetime) -> dict[str, int]:
    """The inventory and N planned updates, written with bulk INSERTs (the product's tables)."""
    from sqlalchemy import insert, text

    from inventory.models import Cluster, Contact, Customer, Release, UpgradeRun
    from inventory.windows import MaintenanceWindow

    customers = max(1, n // 10)
    due, reminders = n // 100, n // 20
    rows_customer = [
        {
            "id": c + 1,
            "name": f"customer-{c:05d}",
            "timezone": "UTC",
            "requires_approval": False,
        }
        for c in range(customers)
    ]
    rows_contact = [
        {"customer_id": c + 1, "email": f"ops@customer-{c:05d}.example", "name": "Ops", "role": "primary"}
        for c in range(customers)
    ]
    rows_cluster, rows_window, rows_run = [], [], []
    for i in range(n):
        cid = i + 1
        rows_cluster.append(
            {
                "id": cid,
                "customer_id": i % customers + 1,
                "name": f"cl-{i:06d}",
                "kind": "software",
                "version": FROM,
                "profile": "standard",
                "ring": "broad",
                "access": "direct",
            }
        )
        rows_window.append(
            {
                "cluster_id": cid,
                "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "start": "00:00",
                "duration_minutes": 24 * 60,
                "timezone": "",
            }
        )
        # Spread the three kinds over the customers (every 100th due, every 20th reminded).
        if i % 100 == 0 and i // 100 < due:
            start = now - timedelta(minutes=5)
            told = start - timedelta(days=10)
        elif i % 20 == 1 and i // 20 < reminders:
            start = now + timedelta(hours=12) + timedelta(seconds=i % 3600)
            told = start - timedelta(hours=48)
        else:
            start = now + timedelta(days=4) + timedelta(minutes=(i * 7919) % (56 * 24 * 60))
            told = start - timedelta(days=10)
        rows_run.append(
            {
                "cluster_id": cid,
                "active_cluster_id": cid,
                "from_version": FROM,
                "to_version": TO,
                "state": "planned",
                "source": "schedule",
                "requested_by": "bench",
                "reason": "",
                "kind": "product_update",
                "urgent": False,
                "slot_start": start,
                "slot_end": start + timedelta(hours=1),
                "window_start": None,
                "window_end": None,
                "notice_sequence": 1,
                "deferrals": 0,
                "override_reason": "",
                "requested_action": "",
                "needs_approval": False,
                "approved_by": "",
                "told_at": told,
                "held_reason": "",
                "organizer": "upkeep@localhost",
                "support_contact": "support@localhost",
                "created_at": told,
            }
        )
    with engine.begin() as conn:
        conn.execute(
            insert(Release),
            [
                {
                    "version": TO,
                    "package": "pkg/upkeep-9.10.0.tar",
                    "sha256": "0" * 64,
                    "upgradable_from": [FROM],
                }
            ],
        )
        for model, rows in (
            (Customer, rows_customer),
            (Contact, rows_contact),
            (Cluster, rows_cluster),
            (MaintenanceWindow, rows_window),
            (UpgradeRun, rows_run),
        ):
            for chunk in range(0, len(rows), 10_000):
                conn.execute(insert(model), rows[chunk : chunk + 10_000])
        for table in ("customer", "cluster", "upgraderun"):
            conn.execute(
                text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE"))
    return {"customers": customers, "due": due, "reminders": reminders}


class Recorder:
    """Every statement the engine runs, by text; the upgraderun ones kept with their parameters."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.counts: Counter[str] = Counter()
        self.samples: dict[str, Any] = {}
        self.on = False

        @event.listens_for(engine, "before_cursor_execute")
        def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            if not self.on:
                return
            key = re.sub(r"\s+", " ", statement).strip()
            self.counts[key] += 1
            if "upgraderun" in key.lower() and key not in self.samples and not many:
                self.samples[key] = parameters

    def explain(self, engine: Any) -> list[dict[str, Any]]:
        plans = []
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement, params in self.samples.items():
                if not statement.upper().startswith(("SELECT", "UPDATE", "DELETE")):
                    continue
                try:
                    cursor.execute("EXPLAIN " + statement, params)
                    plan = "\n".join(row[0] for row in cursor.fetchall())
                except Exception as exc:  # a statement we cannot re-run as-is: say so, do not guess
                    raw.rollback()
                    plan = f"(not explained: {exc.__class__.__name__}: {str(exc).splitlines()[0]})"
                plans.append(
                    {
                        "statement": statement,
                        "count": self.counts[statement],
                        "plan": plan,
                        "seq_scan_upgraderun": "Seq Scan on upgraderun" in plan,
                    }
                )
            raw.rollback()
        finally:
            raw.close()
        return plans


def runtime_for(engine: Any, work: Path, now: datetime) -> Any:
    from flows.runtime import Runtime
    from tasks.fileserver import HttpFileServer
    from tasks.mail import OutboxDirTransport
    from tasks.ssh import SshSettings

    (work / "known_hosts").touch()
    (work / "key").touch()
    return Runtime(
        engine=engine,
        fileserver=HttpFileServer(f"http://{LOCALHOST}:9", "u", "p", allow_http=True),
        ssh=SshSettings(known_hosts=work / "known_hosts", key_path=work / "key"),
        work_dir=work,
        mailer=OutboxDirTransport(work / "outbox"),
        clock=lambda: now,
        actor="bench",
    )


# The tick's steps, as flows/dispatch.py calls them (module attributes, looked up at call time).
_STEPS = {
    "flows.escalation": ["check_update_cadence"],
    "flows.dispatch": [
        "replan_skipped",
        "reslot_missed",
        "send_reminders",
        "start_due_runs",
        "held_summaries",
        "deliver_pending",
        "page_triggers",
        "escalate_due",
        "deliver_alerts",
    ],
}


def timed_steps(phases: dict[str, float]) -> Callable[[], None]:
    """Wrap each step to add its seconds to `phases` (and its CPU seconds under "STEP cpu"); returns
    the undo."""
    import importlib

    undo = []
    for module_name, names in _STEPS.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)

            def wrapper(*args: Any, __f: Any = original, __n: str = name, **kwargs: Any) -> Any:
                started, cpu = time.perf_counter(), time.process_time()
                try:
                    return __f(*args, **kwargs)
                finally:
                    phases[__n] = phases.get(__n, 0.0) + time.perf_counter() - started
                    phases[__n + " cpu"] = phases.get(__n + " cpu", 0.0) + time.process_time() - cpu

            functools.update_wrapper(wrapper, original)
            setattr(module, name, wrapper)
            undo.append((module, name, original))

    def restore() -> None:
        for module, name, original in undo:
            setattr(module, name, original)

    return restore


def tick(max_running: int, profile: Path | None = None) -> tuple[float, dict[str, Any], list[Any]]:
    import cProfile

    import flows.dispatch

    started_runs: list[Any] = []
    original = flows.dispatch._start_deployments
    flows.dispatch._start_deployments = lambda runtime, claimed: started_runs.extend(claimed)
    try:
        profiler = cProfile.Profile() if profile else None
        cpu = time.process_time()
        began = time.perf_counter()
        if profiler:
            profiler.enable()
        result = flows.dispatch.dispatch.fn(max_running=max_running, via_deployments=True)
        seconds = time.perf_counter() - began
        result["_cpu_seconds"] = time.process_time() - cpu
        if profiler and profile:
            profiler.disable()
            profiler.dump_stats(str(profile))
        return seconds, result, started_runs
    finally:
        flows.dispatch._start_deployments = original  # type: ignore[assignment]


def measure(
    n: int, max_running: int, keep: bool, profile: Path | None = None, name: str = DATABASE
) -> dict[str, Any]:
    import flows.dispatch
    from flows.runtime import configure
    from inventory.db import make_engine, migrate

    now = datetime.now(UTC).replace(microsecond=0)
    with database(name, keep) as url, tempfile.TemporaryDirectory(prefix="upkeep-tick-") as tmp:
        engine = make_engine(url)
        migrate(engine)
        began = time.perf_counter()
        shape = load(engine, n, now)
        load_seconds = time.perf_counter() - began
        runtime = runtime_for(engine, Path(tmp), now)
        configure(runtime)
        # The tick logs through Prefect's run logger; here there is no run: a plain logger instead.
        flows.dispatch.get_run_logger = lambda: logging.getLogger("bench.dispatch")  # type: ignore[assignment]
        recorder = Recorder(engine)
        phases: dict[str, float] = {}
        restore = timed_steps(phases)
        try:
            recorder.on = True
            seconds, result, started = tick(max_running, profile)
            recorder.on = False
            first_phases = dict(phases)
            phases.clear()
            second, result2, started2 = tick(max_running)
        finally:
            restore()
            configure(None)
        plans = recorder.explain(engine)
        engine.dispose()
    return {
        "updates": n,
        **shape,
        "max_running": max_running,
        "load_seconds": round(load_seconds, 1),
        "seconds": round(seconds, 3),
        # The outbox delivery is the flow run's last step, bounded in count and time (flows/dispatch.py
        # DELIVERY_LIMIT, DELIVERY_BUDGET), and I/O: an fsync'd file or an SMTP exchange, and a commit,
        # per notice. The tick is the decisions before it; the whole flow run stays reported.
        "seconds_without_delivery": round(seconds - first_phases.get("deliver_pending", 0.0), 3),
        "delivery_seconds": round(first_phases.get("deliver_pending", 0.0), 3),
        "cpu_seconds_without_delivery": round(
            result["_cpu_seconds"] - first_phases.get("deliver_pending cpu", 0.0), 3
        ),
        "cpu_seconds": round(result["_cpu_seconds"], 3),
        "phases": {k: round(v, 3) for k, v in first_phases.items()},
        "statements": sum(recorder.counts.values()),
        "distinct_statements": len(recorder.counts),
        "started": len(started),
        "reminders_queued": len(result["reminders"]),
        "notices_sent": result["notices_sent"],
        "second_tick_seconds": round(second, 3),
        "second_phases": {k: round(v, 3) for k, v in phases.items()},
        "second_started": len(started2),
        "second_reminders": len(result2["reminders"]),
        "plans": plans,
        "seq_scans_of_upgraderun": sum(p["seq_scan_upgraderun"] for p in plans),
        "top_statements": recorder.counts.most_common(8),
        "all_statements": recorder.counts.most_common(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average at the end of each size in the table",
        "",
        "| updates | customers | due | reminders due | started (max-running) | tick s, its CPU s (without "
        "the outbox delivery) | outbox delivery: notices (s, per s) | whole first tick s (its CPU s) | "
        "second tick s | SQL statements (distinct) | seq scans of upgraderun | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rate = r["notices_sent"] / r["delivery_seconds"] if r["delivery_seconds"] else 0.0
        lines.append(
            f"| {r['updates']:,} | {r['customers']:,} | {r['due']:,} | {r['reminders']:,} "
            f"| {r['started']} ({r['max_running']}) "
            f"| {r['seconds_without_delivery']:.2f} ({r['cpu_seconds_without_delivery']:.2f}) "
            f"| {r['notices_sent']} ({r['delivery_seconds']:.2f} s, {rate:.0f}/s) "
            f"| {r['seconds']:.2f} ({r['cpu_seconds']:.2f}) "
            f"| {r['second_tick_seconds']:.2f} "
            f"| {r['statements']:,} ({r['distinct_statements']}) | {r['seq_scans_of_upgraderun']} "
            f"| {r['load_average']} |"
        )
    steps = sorted({k for r in results for k in r["phases"] if not k.endswith(" cpu")})
    lines += ["", "Per step of the first tick, seconds (its CPU seconds):", ""]
    lines.append("| step | " + " | ".join(f"{r['updates']:,}" for r in results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for step in steps:
        cells = [f"{r['phases'].get(step, 0):.3f} ({r['phases'].get(step + ' cpu', 0):.3f})" for r in results]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    big = results[-1]
    lines += ["", f"Query plans at {big['updates']:,} (every distinct statement on upgraderun):", ""]
    for p in big["plans"]:
        first = p["plan"].splitlines()[0] if p["plan"] else ""
        scan = next((line.strip() for line in p["plan"].splitlines() if "Scan" in line), first)
        statement = p["statement"]
        if statement.startswith("SELECT") and " FROM " in statement:  # the column list says little
            statement = "SELECT ..." + statement[statement.index(" FROM ") :]
        lines.append(f"- x{p['count']}: `{statement[:220]}` -> `{scan[:110]}`")
    return "\n".join(lines)


def write_block(path: Path, body: str, final: str) -> None:
    block = "\n".join([START, "", body, "", "```", final, "```", "", END])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        marker = "<!-- others: written by bench/all.py -->"
        at = text.find(marker)
        text = (text[:at] + block + "\n\n" + text[at:]) if at != -1 else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--max-running", type=int, default=200, help="slots the tick fills (W4's K)")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only; results.md untouched")
    parser.add_argument("--keep", action="store_true", help="keep the last database (to EXPLAIN by hand)")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the first tick (pstats file)")
    parser.add_argument(
        "--database",
        default=DATABASE,
        help="the database to create, use and drop (another bench may be using the default)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    args = parser.parse_args()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", args.database):  # it goes into CREATE/DROP DATABASE
        parser.error(f"--database {args.database!r}: a lower-case SQL name (letters, digits, _) is needed")
    logging.basicConfig(level=logging.WARNING)
    results = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        print(f"{n:,} planned updates: loading, then two ticks ...", flush=True)
        r = measure(n, args.max_running, args.keep, args.profile, args.database)
        print(
            f"  tick {r['seconds_without_delivery']:.2f} s + outbox delivery {r['delivery_seconds']:.2f} s "
            f"({r['notices_sent']} notices) = first tick {r['seconds']:.2f} s; tick CPU "
            f"{r['cpu_seconds_without_delivery']:.2f} s (phases {r['phases']}), "
            f"second {r['second_tick_seconds']:.2f} s; "
            f"{r['statements']} statements, {r['seq_scans_of_upgraderun']} seq scans of upgraderun; "
            f"started {r['started']}, reminders {r['reminders_queued']}, load {r['load_average']}",
            flush=True,
        )
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    big = results[-1]
    final = (
        f"dispatch_tick updates={big['updates']} seconds={big['seconds_without_delivery']:.2f} "
        f"whole_tick_seconds={big['seconds']:.2f} delivery_notices={big['notices_sent']} "
        f"delivery_seconds={big['delivery_seconds']:.2f} statements={big['statements']} "
        f"cpu_seconds={big['cpu_seconds_without_delivery']:.2f} "
        f"whole_tick_cpu_seconds={big['cpu_seconds']:.2f}"
    )
    text = report(results)
    print(text)
    if not args.no_write:
        write_block(args.results, text, final)
    print(final)
    if results[-1]["seq_scans_of_upgraderun"]:  # at small sizes the planner may rightly prefer one
        print("sequential scan of upgraderun in a tick query (see the plans above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
