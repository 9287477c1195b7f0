"""`make demo`: a real lab fleet, its inventory imported, one cluster updated node by node.

Uses a home of its own so a demo never touches a real inventory: inside the checkout it runs from
(`.upkeep/demo`, gitignored), so two checkouts' demos never share a lab (a second one would stop the
first one's); `<UPKEEP_HOME>/demo` when a home is set explicitly or Upkeep is not run from a checkout.
One demo at a time per home (a second one there refuses); each starts with fresh records.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.markup import escape
from sqlmodel import select

from flows import runtime as flow_runtime
from inventory.importer import import_inventory
from upkeep.bootstrap import build_runtime
from upkeep.console import console
from upkeep.database import open_database
from upkeep.lab import Lab
from upkeep.portal.signin import sign_in_link
from upkeep.settings import Settings, default_home, load_settings
from upkeep.updates import run_update

TARGET = "9.10.0"
CHECKOUT = Path(__file__).resolve().parents[1]


def demo_home(settings: Settings) -> Path:
    if settings.home == default_home() and (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / ".upkeep" / "demo"
    return settings.home / "demo"


def _with_portal_user(path: Path, home: Path) -> Path:
    """The lab's inventory with a designated portal user for its first customer."""
    import yaml

    data = yaml.safe_load(path.read_text())
    first = data["customers"][0]
    first["portal_users"] = [{"email": f"it@{first['name']}.example", "name": "Demo user"}]
    out = home / "inventory.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _portal_hints(settings: Settings, engine: Any, env: str, served: str = "") -> list[str]:
    """How to see the demo customer's portal: a fresh sign-in link, and how to serve the portal unless
    `served` (its URL: `demo --keep` left it running)."""
    from datetime import timedelta

    from inventory.db import session_scope
    from inventory.portal_tables import PortalUser

    url = served or settings.portal_url
    with session_scope(engine) as session:
        user = session.exec(select(PortalUser)).first()
        if user is None:
            return []
        ttl = timedelta(minutes=settings.portal_link_minutes)
        link = sign_in_link(url, settings.resolved_portal_secret(), ttl, user.email, session=session)
    minutes = settings.portal_link_minutes
    how = f"served at {url}" if served else f"{env} .venv/bin/upkeep portal serve"
    return [
        f"portal    {how}; sign in as {user.email}: open, once, within {minutes} min:",
        f"          {link}",
    ]


PORTAL_PID = "portal.pid"


def stop_demo_portal(home: Path) -> None:
    """Stop the portal an earlier `demo --keep` left running in this home, if it still runs."""
    from upkeep.lab import procs

    pid = procs.read_pid(home / PORTAL_PID, "portal serve")
    if pid is not None:
        procs.stop_tree(pid)
    (home / PORTAL_PID).unlink(missing_ok=True)


def serve_demo_portal(settings: Settings, home: Path) -> tuple[str, int]:
    """Start `upkeep portal serve` on the demo's home and lab, in the background and in a session of its
    own (it outlives the demo), on the port of UPKEEP_PORTAL_URL when that is free, else on a free
    one; (its URL, its pid) once it answers. Its output goes to <home>/portal.log."""
    import os
    import socket
    import subprocess
    import sys
    from urllib.parse import urlsplit

    import httpx

    from upkeep.lab import procs

    port = urlsplit(settings.portal_url).port or 8600
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            port = procs.free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)  # the settings in force, with the demo's home, database and lab:
    env |= {
        "UPKEEP_HOME": str(home),
        "UPKEEP_DATABASE_URL": settings.resolved_database_url(),
        "UPKEEP_FILESERVER_URL": settings.fileserver_url,
        "UPKEEP_FILESERVER_USER": settings.fileserver_user,
        "UPKEEP_FILESERVER_PASSWORD": settings.fileserver_password.get_secret_value(),
        "UPKEEP_PORTAL_URL": url,
    }
    if settings.fileserver_ca is not None:
        env["UPKEEP_FILESERVER_CA"] = str(settings.fileserver_ca)
    with (home / "portal.log").open("ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "upkeep", "portal", "serve", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (home / PORTAL_PID).write_text(f"{server.pid}\n")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the portal did not start: {procs.tail(home / 'portal.log')}")
        try:
            if httpx.get(f"{url}/signin", timeout=2).status_code == 200:
                return url, server.pid
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    procs.stop_tree(server.pid)
    raise RuntimeError(f"the portal did not answer at {url} within 60 s; see {home / 'portal.log'}")


def _prefect_hints(run_id: int, engine: Any) -> list[str]:
    """Where the run is in Prefect's UI: the flow run's page when the demo ran against a Prefect server
    of the operator's (PREFECT_API_URL set), else how to get one (the demo's temporary server has
    stopped by now, and its pages with it)."""
    from prefect.settings import PREFECT_API_URL

    from flows.links import flow_run_url
    from inventory.db import session_scope
    from inventory.runs import get_run

    if PREFECT_API_URL.value():
        with session_scope(engine) as session:
            url = flow_run_url(get_run(run_id, session=session).flow_run_id)
        return [f"Prefect   the flow run in the UI: {url}"] if url else []
    return [
        "Prefect   start `.venv/bin/prefect server start` elsewhere and export",
        "          PREFECT_API_URL=http://127.0.0.1:4200/api before `make demo` to watch runs in the UI",
    ]


def _step(number: int, text: str) -> None:
    """One numbered step, whole on its line (a path wrapped by Rich cannot be copied) and as text (a
    path may hold '[')."""
    console.print(f"[bold]{number}.[/] {escape(text)}", soft_wrap=True)


DEMO_LOCK = "demo.lock"


@contextmanager
def _only_demo(home: Path) -> Iterator[None]:
    """This process's demo is the only one in `home` while it runs: a second one (two operators, one
    checkout) would take the first one's lab down under its update. Refused at once, naming the home and
    the pid; the kernel drops the lock when its holder exits, however it ended (kill -9 included)."""
    import fcntl
    import os

    from upkeep.console import CliError

    home.mkdir(parents=True, exist_ok=True)
    with open(home / DEMO_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise CliError(
                f"a demo is already running in {home} (pid {holder}): wait for it to finish, or give "
                "yours a home of its own (UPKEEP_HOME=<another directory>)"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def run_demo(*, keep: bool = False) -> None:
    """The demo, once the Prefect server it would use is known to answer: a PREFECT_API_URL left from
    another shell, its server gone, was found only at the update, after the lab had started and the
    last demo's records were deleted."""
    from upkeep.console import CliError
    from upkeep.prefect_server import unreachable_prefect_api

    home = demo_home(load_settings())
    problem = unreachable_prefect_api()
    if problem:
        raise CliError(
            f"{problem}; start that server or correct the URL, or unset PREFECT_API_URL for a temporary "
            "one; nothing was started"
        )
    with _only_demo(home):
        _run_demo(home, keep=keep)


def hint_env(home: Path) -> str:
    """What the commands in the final hints set before `upkeep ...`, shell-quoted: they are pasted. The
    database too: an exported UPKEEP_DATABASE_URL (a production setup) would win over the home's."""
    return f"UPKEEP_HOME={shlex.quote(str(home))} UPKEEP_DATABASE_URL={shlex.quote(_demo_database_url(home))}"


def _demo_database_url(home: Path) -> str:
    return f"sqlite:///{home / 'upkeep.db'}"


def _run_demo(home: Path, *, keep: bool) -> None:
    lab = Lab(home / "lab")
    lab.down()  # a previous demo that was interrupted leaves nothing behind
    stop_demo_portal(home)  # nor a portal an earlier `demo --keep` left running
    # nor records: a demo killed mid-update left its run `running` with no flow to end it, and the
    # import below refuses to change a cluster under a running update. The lock says no other demo
    # has this database open.
    for name in ("upkeep.db", "upkeep.db-wal", "upkeep.db-shm"):
        (home / name).unlink(missing_ok=True)
    started = time.monotonic()
    _step(1, f"starting a lab under {lab.root}: 2 clusters x 3 real sshd nodes + nginx")
    status = lab.up(clusters=2, nodes=3)
    try:
        settings = load_settings(home=home, database_url=_demo_database_url(home), **lab.settings_overrides())
        engine = open_database(settings)
        inventory = _with_portal_user(lab.inventory_path, home)
        _step(2, f"importing {inventory} (the lab's, with a designated portal user)")
        summary = import_inventory(inventory, engine=engine, actor="demo")
        console.print(f"   {summary}", markup=False, soft_wrap=True)
        flow_runtime.configure(build_runtime(settings, engine=engine))
        cluster = status["nodes"][0]["cluster"]
        _step(3, f"updating {cluster} to {TARGET}, one node at a time (Prefect flow)")
        run_id = run_update(cluster, TARGET, engine=engine, as_json=False)
        _step(4, "what the nodes themselves logged (their append-only upgrade logs):")
        for node in (n for n in lab.status()["nodes"] if n["cluster"] == cluster):
            for entry in lab.upgrade_log(node["hostname"]):
                line = f"   {node['hostname']}: {entry['from']} -> {entry['to']} at {entry['at']}"
                console.print(line, markup=False, soft_wrap=True)
    finally:
        if not keep:
            lab.down()
    env = hint_env(home)
    hints = [
        f"records   {home / 'upkeep.db'}: {env} .venv/bin/upkeep show {run_id}  (also: runs, show --json)",
        *_prefect_hints(run_id, engine),
    ]
    served = ""
    if keep:
        served, pid = serve_demo_portal(settings, home)
    hints += _portal_hints(settings, engine, env, served)
    if keep:
        hints.append(
            f"          still running (pid {pid}, log {home / 'portal.log'}): stop it with `kill {pid}`"
        )
        hints.append(f"lab       still running: {env} .venv/bin/upkeep lab status | down")
    console.print(f"\n[bold green]demo done[/] in {time.monotonic() - started:.1f} s. Where to look:")
    for hint in hints:
        console.print("  " + hint, markup=False, soft_wrap=True)
