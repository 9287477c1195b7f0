"""`make demo`: a real lab fleet, its inventory imported, one cluster updated node by node.

Uses its own home (<home>/demo) so a demo never touches a real inventory.
"""

from __future__ import annotations

import time

from flows import runtime as flow_runtime
from inventory.importer import import_inventory
from upkeep.bootstrap import build_runtime, open_database
from upkeep.console import console
from upkeep.lab import Lab
from upkeep.settings import load_settings
from upkeep.updates import run_update

TARGET = "9.10.0"


def run_demo(*, keep: bool = False) -> None:
    base = load_settings()
    home = base.home / "demo"
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
        console.print(f"[bold]2.[/] importing {lab.inventory_path}")
        summary = import_inventory(lab.inventory_path, engine=engine, actor="demo")
        console.print(f"   {summary}")
        flow_runtime.configure(build_runtime(settings, engine=engine))
        cluster = status["nodes"][0]["cluster"]
        console.print(f"[bold]3.[/] updating {cluster} to {TARGET}, one node at a time (Prefect flow)")
        run_id = run_update(cluster, TARGET, engine=engine, as_json=False)
    finally:
        if not keep:
            lab.down()
    env = f"UPKEEP_HOME={home} UPKEEP_DATABASE_URL=sqlite:///{home / 'upkeep.db'}"
    console.print(f"\n[bold green]demo done[/] in {time.monotonic() - started:.1f} s. Where to look:")
    console.print(f"  records   {home / 'upkeep.db'}  ->  {env} upkeep show {run_id}", markup=False)
    console.print(f"  runs      {env} upkeep runs", markup=False)
    console.print(f"  nodes     {lab.root}/nodes/*/upgrades.log (each node's own upgrade log)", markup=False)
    console.print(
        "  Prefect   `prefect server start`, then run the demo again to watch it in the UI", markup=False
    )
    if keep:
        console.print(f"  lab       still running: UPKEEP_HOME={home} upkeep lab status / down", markup=False)
