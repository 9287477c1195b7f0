"""`upkeep tunnel status`: the customers' reverse SSH tunnels as the vendor's tunnel server sees them."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import typer

from upkeep.cli_common import JsonOpt, open_engine
from upkeep.console import console, print_json

tunnel_app = typer.Typer(help="Customers' reverse SSH tunnels (inventory access: tunnel).")

# Updates are listed 72 h ahead at most; a year keeps 'now + within' far from datetime's end (1e308
# overflowed it: 'unexpected OverflowError', exit 1).
MAX_WITHIN_HOURS = 24 * 365
EXIT_ATTENTION = 3  # beside diagnostics' "partial": done, but not all is well (2 is a usage error)


@tunnel_app.command("status")
def tunnel_status_cmd(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's clusters.")] = None,
    within: Annotated[
        float,
        typer.Option(
            "--within",
            min=0,
            max=MAX_WITHIN_HOURS,
            help="Hours: a closed tunnel needs attention when an update of its cluster starts within this "
            "(or its window has started).",
        ),
    ] = 1.0,
    json: JsonOpt = False,
) -> None:
    """Which nodes have their tunnel open now and since when (both read from the tunnel server: a probe
    of each node's port, and the start of the sshd session holding it; nothing written), what the
    customer runs to open a closed one, and planned updates within 72 h that need them.

    Exit status, for monitoring: 0 nothing to act on (a closed tunnel is the customer's choice until an
    update needs it); 3 attention: a tunnel server could not be asked, or a node's tunnel is closed while
    an update of its cluster starts within --within hours, waits in its started window, or runs (each listed
    under 'attention'); 1 the command could not run (unknown customer, no database)."""
    from flows.runtime import current
    from flows.tunnels import tunnel_status
    from inventory.types import utcnow

    open_engine()
    now = utcnow()
    clusters = tunnel_status(current(), customer=customer, now=now, within=timedelta(hours=within))
    attention = [line for entry in clusters for line in entry["attention"]]
    if json:
        print_json({"clusters": clusters, "attention": attention})
    elif not clusters:
        console.print(
            "no cluster with access tunnel" + (f" for {customer}" if customer else ""), markup=False
        )
    else:
        for entry in clusters:
            _print_cluster(entry, now)
        for line in attention:
            console.print(f"ATTENTION: {line}", markup=False, soft_wrap=True)
    if attention:
        raise typer.Exit(EXIT_ATTENTION)


def _print_cluster(entry: dict[str, object], now: datetime) -> None:
    head = f"{entry['customer']}/{entry['cluster']} via {entry['tunnel_server']}"
    console.print(head + (f": {entry['error']}" if entry["error"] else ""), markup=False)
    if entry.get("since_unknown"):
        console.print(f"  since when: unknown ({entry['since_unknown']})", markup=False, soft_wrap=True)
    nodes = entry["nodes"]
    assert isinstance(nodes, list)
    for node in nodes:
        if node["open"]:
            since = node["since"]
            when = f"  since {since} ({_ago(now, datetime.fromisoformat(since))})" if since else ""
            line = f"  {node['node']:<24} open    port {node['tunnel_port']}{when}"
        elif "customer_runs" in node:
            line = (
                f"  {node['node']:<24} CLOSED  port {node['tunnel_port']}: the customer runs "
                f"`{node['customer_runs']}` on {node['node']}"
            )
        else:
            line = f"  {node['node']:<24} {node['state']}"
        console.print(line, markup=False, soft_wrap=True)
    updates = entry["updates_soon"]
    assert isinstance(updates, list)
    for update in updates:
        console.print(
            f"  needs it: update {update['update']} to {update['to_version']} at {update['slot_start']}",
            markup=False,
        )


def _ago(now: datetime, then: datetime) -> str:
    minutes = max(0, int((now - then).total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours < 48 else f"{hours // 24} days"
