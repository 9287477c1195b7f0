"""Who the lab's emulated customers are, how their clusters are named, and the inventory YAML for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CUSTOMERS: list[tuple[str, str]] = [
    ("acme", "America/New_York"),
    ("globex", "Europe/Berlin"),
    ("initech", "Asia/Kolkata"),
    ("umbrella", "Australia/Lord_Howe"),  # half-hour DST shift: catches naive window maths
]
KINDS = ("software", "cloud")
# Every lab cluster may be touched at any time, so lab updates can run "now". Daily 00:00 for 24 h of
# elapsed time in the customer's zone: on the day clocks go back, the last local hour (half hour at
# Lord Howe) before midnight is outside.
ALWAYS_OPEN = {"days": "mon-sun", "start": "00:00", "duration": "24h"}
ACCESS = ("direct", "jump", "tunnel")


@dataclass
class ClusterPlan:
    customer: str
    timezone: str
    name: str
    ring: str
    nodes: list[str] = field(default_factory=list)


def default_rings(clusters: int) -> list[str]:
    """First cluster canary, the next ~third early, the rest broad."""
    early = -(-(clusters - 1) // 3)  # ceil((n - 1) / 3)
    return ["canary"] + ["early"] * early + ["broad"] * (clusters - 1 - early) if clusters else []


def plan(clusters: int, nodes: int, kind: str, rings: list[str] | None) -> list[ClusterPlan]:
    if clusters < 1 or nodes < 1:
        raise ValueError("need at least one cluster with at least one node")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if rings is not None and len(rings) != clusters:
        raise ValueError(f"got {len(rings)} ring(s) for {clusters} cluster(s)")
    if rings is None:
        rings = default_rings(clusters) if kind == "cloud" else ["broad"] * clusters
    result = []
    for i in range(1, clusters + 1):
        customer, tz = CUSTOMERS[(i - 1) % len(CUSTOMERS)]
        name = f"{customer}-c{i}"
        result.append(
            ClusterPlan(customer, tz, name, rings[i - 1], [f"{name}-n{j}" for j in range(1, nodes + 1)])
        )
    return result


def inventory(
    clusters: list[ClusterPlan],
    *,
    kind: str,
    version: str,
    access: dict[str, Any],
    ports: dict[str, int],
    user: str,
    releases: list[dict[str, Any]],
    node_extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    customers: dict[str, dict[str, Any]] = {}
    for plan_ in clusters:
        customer = customers.setdefault(
            plan_.customer,
            {
                "name": plan_.customer,
                "timezone": plan_.timezone,
                "contacts": [
                    {
                        "email": f"ops@{plan_.customer}.example",
                        "name": f"{plan_.customer.title()} Ops",
                        "role": "primary",
                    }
                ],
                "clusters": [],
            },
        )
        customer["clusters"].append(
            {
                "name": plan_.name,
                "kind": kind,
                "version": version,
                "profile": "standard",
                "ring": plan_.ring,
                "access": dict(access),
                "nodes": [
                    {
                        "hostname": host,
                        "address": "127.0.0.1",
                        "port": ports[host],
                        "user": user,
                        **(node_extra or {}).get(host, {}),
                    }
                    for host in plan_.nodes
                ],
                "windows": [dict(ALWAYS_OPEN)],
            }
        )
    return {
        "customers": list(customers.values()),
        "releases": [
            {"version": r["version"], "package": r["package"], "sha256": r["sha256"], "from": list(r["from"])}
            for r in releases
        ],
    }


def write_inventory(path: Path, data: dict[str, Any]) -> None:
    header = "# Written by `upkeep lab up`; regenerated at every start.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
