"""`make demo`: a real lab fleet, its inventory imported, one cluster updated node by node.

Uses a home of its own so a demo never touches a real inventory: inside the checkout it runs from
(`.upkeep/demo`, gitignored), so two checkouts' demos never share a lab (a second one would stop the
first one's); `<UPKEEP_HOME>/demo` when a home is set explicitly or Upkeep is not run from a checkout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlmodel import select

from flows import runtime as flow_runtime
from inventory.importer import import_inventory
from upkeep.bootstrap import build_runtime, open_database
from upkeep.console import console
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


def _portal_hints(settings: Settings, engine: Any, env: str) -> list[str]:
    """How to see the demo customer's portal: serve it, then follow a fresh sign-in link."""
    from datetime import timedelta

    from inventory.db import session_scope
    from inventory.portal_tables import PortalUser

    with session_scope(engine) as session:
        user = session.exec(select(PortalUser)).first()
        if user is None:
            return []
        ttl = timedelta(minutes=settings.portal_link_minutes)
        link = sign_in_link(
            settings.portal_url, settings.resolved_portal_secret(), ttl, user.email, session=session
        )
    minutes = settings.portal_link_minutes
    return [
        f"portal    {env} .venv/bin/upkeep portal serve   then open, once, within {minutes} min:",
        f"          {link}",
    ]


def run_demo(*, keep: bool = False) -> None:
    home = demo_home(load_settings())
    lab = Lab(home / "lab")
    lab.down()  # a previous demo that was interrupted leaves nothing behind
    started = time.monotonic()
    console.print(f"[bold]1.[/] starting a lab under {lab.root}: 2 clusters x 3 real sshd nodes + nginx")
    status = lab.up(clusters=2, nodes=3)
    try:
        settings = load_settings(
            home=home, database_url=f"sqlite:///{home / 'upkeep.db'}", **lab.settings_overrides()
        )
        engine = open_database(settings)
        inventory = _with_portal_user(lab.inventory_path, home)
        console.print(f"[bold]2.[/] importing {inventory} (the lab's, with a designated portal user)")
        summary = import_inventory(inventory, engine=engine, actor="demo")
        console.print(f"   {summary}")
        flow_runtime.configure(build_runtime(settings, engine=engine))
        cluster = status["nodes"][0]["cluster"]
        console.print(f"[bold]3.[/] updating {cluster} to {TARGET}, one node at a time (Prefect flow)")
        run_id = run_update(cluster, TARGET, engine=engine, as_json=False)
        console.print("[bold]4.[/] what the nodes themselves logged (their append-only upgrade logs):")
        for node in (n for n in lab.status()["nodes"] if n["cluster"] == cluster):
            for entry in lab.upgrade_log(node["hostname"]):
                console.print(f"   {node['hostname']}: {entry['from']} -> {entry['to']} at {entry['at']}")
    finally:
        if not keep:
            lab.down()
    env = f"UPKEEP_HOME={home}"
    hints = [
        f"records   {home / 'upkeep.db'}: {env} .venv/bin/upkeep show {run_id}  (also: runs, show --json)",
        "Prefect   start `.venv/bin/prefect server start` elsewhere and export",
        "          PREFECT_API_URL=http://127.0.0.1:4200/api before `make demo` to watch runs in the UI",
    ]
    hints += _portal_hints(settings, engine, env)
    if keep:
        hints.append(f"lab       still running: {env} .venv/bin/upkeep lab status | down")
    console.print(f"\n[bold green]demo done[/] in {time.monotonic() - started:.1f} s. Where to look:")
    for hint in hints:
        console.print("  " + hint, markup=False, soft_wrap=True)
