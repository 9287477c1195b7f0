"""Bare-SSH floor: the same remote steps as Upkeep's product update, with nothing else around them.

    .venv/bin/python bench/floor.py SPEC.json --workers K

A minimal Fabric script: one connection per node (host keys checked against the lab's known_hosts with
Paramiko's RejectPolicy, never learned), a thread pool of K over clusters, and per cluster the runbook's
shape: pre-check every node (version, health, disk) and stage the package on every node (SFTP into the
node's incoming dir + `upkeep-agent stage`), the nodes of a cluster in parallel as Upkeep does; then
node after node: version, upgrade, health (polled), version. A cluster stops at its first failure.
No database, no Prefect, no logging. Prints one JSON line: fleet seconds (first connection to last
node done), per-cluster outcome counts.

SPEC.json is written by bench/fleet.py: known_hosts, ssh_key, package (local path), package_name,
sha256, from_version, to_version, clusters: [{name, nodes: [{hostname, port, user}]}].
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection

HEALTH_TIMEOUT = 120.0
COMMAND_TIMEOUT = 600.0


class Failed(Exception):
    pass


class _Connection(Connection):
    # As in tasks/ssh.py: Fabric's __init__ assigns inline_ssh_env, which Invoke turns into a write to
    # the shared Config - a rebuild that other threads saw as "No attribute or config key found for
    # 'runners'". A class attribute keeps the assignment on the Connection.
    inline_ssh_env = None


class Floor:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        # One Config for every connection, read-only (_Connection): no config files read per node.
        self.config = Config(overrides={"load_ssh_configs": False})

    def connect(self, node: dict[str, Any]) -> Connection:
        conn = _Connection(
            host="127.0.0.1",
            port=node["port"],
            user=node["user"],
            config=self.config,
            connect_timeout=10,
            connect_kwargs={
                "key_filename": [self.spec["ssh_key"]],
                "look_for_keys": False,
                "allow_agent": False,
            },
        )
        client = paramiko.SSHClient()
        client.load_host_keys(self.spec["known_hosts"])
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client = client
        conn.open()
        return conn

    @staticmethod
    def agent(conn: Connection, *args: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        result = conn.run(
            shlex.join(["upkeep-agent", *args]), hide=True, warn=True, timeout=timeout, in_stream=False
        )
        return result.exited, (result.stdout.strip() or result.stderr.strip())

    def precheck(self, conn: Connection, package_size: int) -> None:
        code, version = self.agent(conn, "version", timeout=30)
        if code or version not in (self.spec["from_version"], self.spec["to_version"]):
            raise Failed(f"version: {version}")
        code, health = self.agent(conn, "health", timeout=30)
        if code:
            raise Failed(f"health: {health}")
        code, free = self.agent(conn, "disk", timeout=30)
        if code or not free.isdigit() or int(free) < 2 * package_size:
            raise Failed(f"disk: {free}")

    def stage(self, conn: Connection) -> None:
        conn.put(self.spec["package"], self.spec["package_name"])
        code, out = self.agent(conn, "stage", self.spec["package_name"], self.spec["sha256"])
        if code:
            raise Failed(f"stage: {out}")

    def upgrade(self, conn: Connection) -> None:
        code, before = self.agent(conn, "version", timeout=30)
        if code:
            raise Failed(f"version: {before}")
        if before != self.spec["to_version"]:
            if before != self.spec["from_version"]:
                raise Failed(f"at {before}")
            code, out = self.agent(conn, "upgrade", self.spec["to_version"])
            if code:
                raise Failed(f"upgrade: {out}")
        deadline, interval = time.monotonic() + HEALTH_TIMEOUT, 0.1
        while True:
            code, health = self.agent(conn, "health", timeout=30)
            if code == 0:
                break
            if time.monotonic() >= deadline:
                raise Failed(f"unhealthy: {health}")
            time.sleep(interval)
            interval = min(interval * 2, 2.0)
        code, after = self.agent(conn, "version", timeout=30)
        if code or after != self.spec["to_version"]:
            raise Failed(f"after: {after}")

    def cluster(self, cluster: dict[str, Any]) -> str:
        nodes = cluster["nodes"]
        size = Path(self.spec["package"]).stat().st_size
        conns: dict[str, Connection] = {}
        try:

            def prepare(node: dict[str, Any]) -> None:
                conn = conns[node["hostname"]] = self.connect(node)
                self.precheck(conn, size)

            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(prepare, nodes))  # the first exception is raised here, all finished
                list(pool.map(lambda node: self.stage(conns[node["hostname"]]), nodes))
            for node in nodes:
                self.upgrade(conns[node["hostname"]])
        except Exception as exc:
            return f"failed: {exc}"
        finally:
            for conn in conns.values():
                conn.close()
        return "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    floor = Floor(spec)
    started = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        outcomes = list(pool.map(floor.cluster, spec["clusters"]))
    seconds = time.monotonic() - started
    failures = [f"{c['name']}: {o}" for c, o in zip(spec["clusters"], outcomes, strict=True) if o != "ok"]
    print(json.dumps({"fleet_seconds": seconds, "ok": len(outcomes) - len(failures), "failures": failures}))


if __name__ == "__main__":
    main()
