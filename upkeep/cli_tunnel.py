"""`upkeep tunnel status`: the customers' reverse SSH tunnels as the vendor's tunnel server sees them."""

from __future__ import annotations

from typing import Annotated

import typer

from upkeep.cli_common import JsonOpt, open_engine
from upkeep.console import console, print_json

tunnel_app = typer.Typer(help="Customers' reverse SSH tunnels (inventory access: tunnel).")


@tunnel_app.command("status")
def tunnel_status_cmd(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's clusters.")] = None,
    json: JsonOpt = False,
) -> None:
    """Which nodes have their tunnel open now (probed through the tunnel server, nothing written),
    what the customer runs to open a closed one, and planned updates within 72 h that need them."""
    from flows.runtime import current
    from flows.tunnels import tunnel_status
    from inventory.types import utcnow

    open_engine()
    clusters = tunnel_status(current(), customer=customer, now=utcnow())
    if json:
        print_json({"clusters": clusters})
        return
    if not clusters:
        console.print(
            "no cluster with access tunnel" + (f" for {customer}" if customer else ""), markup=False
        )
        return
    for entry in clusters:
        head = f"{entry['customer']}/{entry['cluster']} via {entry['tunnel_server']}"
        console.print(head + (f": {entry['error']}" if entry["error"] else ""), markup=False)
        for node in entry["nodes"]:
            if node["open"]:
                line = f"  {node['node']:<24} open    port {node['tunnel_port']}"
            elif "customer_runs" in node:
                line = (
                    f"  {node['node']:<24} CLOSED  port {node['tunnel_port']}: the customer runs "
                    f"`{node['customer_runs']}` on {node['node']}"
                )
            else:
                line = f"  {node['node']:<24} {node['state']}"
            console.print(line, markup=False, soft_wrap=True)
        for update in entry["updates_soon"]:
            console.print(
                f"  needs it: update {update['update']} to {update['to_version']} at {update['slot_start']}",
                markup=False,
            )
