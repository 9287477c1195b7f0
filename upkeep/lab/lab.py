"""`Lab`: a real local fleet - one sshd per emulated node, a jump host, and an nginx file server.

Everything lives under one root directory (its layout and state file: `upkeep.lab.lab_root`); processes
are found again through their pid files, so a second process (the CLI's `down`, a test teardown) can
stop what the first one started.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from upkeep.lab import node, procs, releases, sshd, topology
from upkeep.lab.fileserver import USER as FILESERVER_USER
from upkeep.lab.lab_root import LabError, LabRoot  # LabError: re-exported

FAULTS = (
    "fail-upgrade", "hang", "hold-upgrade", "hold-stage", "down", "unhealthy", "bad-upgrade", "disk-full",
    "corrupt-package", "clear",
)  # fmt: skip
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# What `up` owns under the root (and wipes first, so no versions or faults survive a restart).
_MANAGED = (
    "nodes jump tunnel fileserver bin agent.py inventory.yaml known_hosts id_ed25519 id_ed25519.pub lab.json"
)


class Lab(LabRoot):
    # -- lifecycle -----------------------------------------------------------------------------------
    def up(
        self,
        clusters: int = 2,
        nodes: int = 3,
        kind: str = "software",
        initial_version: str = "9.8.0",
        upgrade_seconds: float = 0.2,
        health_delay: float = 0.2,
        access: str = "direct",
        rings: list[str] | None = None,
    ) -> dict[str, Any]:
        if not _VERSION.match(initial_version):
            raise LabError(f"initial_version {initial_version!r} is not MAJOR.MINOR.PATCH")
        if access not in topology.ACCESS:
            raise LabError(f"unknown access {access!r} (expected one of {', '.join(topology.ACCESS)})")
        try:
            plan = topology.plan(clusters, nodes, kind, rings)
        except ValueError as exc:
            raise LabError(str(exc)) from None
        with self._locked():
            if self._running():
                raise LabError(f"lab already up at {self.root}; run `upkeep lab down` first")
            try:
                self._start(plan, kind, initial_version, upgrade_seconds, health_delay, access)
            except BaseException as exc:  # Ctrl-C included: never leave half a fleet running
                note = ""
                try:
                    self._stop_all()
                    procs.release_ports(self.root)
                except (LabError, OSError) as stop_exc:
                    note = f" (cleanup: {stop_exc})"
                if not isinstance(exc, Exception):
                    raise
                raise LabError(f"lab failed to start at {self.root}: {exc}{note}") from exc
        return self.status()

    def _start(
        self,
        plan: list[topology.ClusterPlan],
        kind: str,
        version: str,
        upgrade_seconds: float,
        health_delay: float,
        access: str,
    ) -> None:
        for name in _MANAGED.split():
            path = self.root / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        user = getpass.getuser()
        hosts = [host for c in plan for host in c.nodes]
        specs = {host: self._spec(host, user) for host in hosts}
        jump = self._spec(None, user)
        tunnel = access == "tunnel"
        # Ports: file server, jump, tunnel server, every node's sshd; every node's tunnel port apart, from
        # below the ephemeral range (bound only when the customer opens the tunnel, maybe much later).
        ports = dict(
            zip(["<fileserver>", "<jump>", "<tunnel>", *hosts], procs.free_ports(len(hosts) + 3), strict=True)
        )
        procs.release_ports(self.root)  # a previous `up` here
        tunnel_ports: dict[str, int] = {}
        if tunnel:
            chosen = procs.reserved_free_ports(len(hosts), owner=self.root)
            tunnel_ports = dict(zip(hosts, chosen, strict=True))
        server = self._tunnel_spec(user, tuple(tunnel_ports.values()) if tunnel else ())
        node.install_agent(self.root)
        identities = [self._tunnel_identity(h) for h in hosts] if tunnel else []
        sshd.keygen(
            [self.ssh_key, jump.host_key, *(s.host_key for s in specs.values())]
            + ([server.host_key, *identities] if tunnel else [])
        )
        client_pub = sshd.public_key(self.ssh_key) + " upkeep-lab-client\n"
        for spec in specs.values():
            node.prepare(spec, version, upgrade_seconds, health_delay, client_pub)
        jump.state_dir.mkdir(parents=True, exist_ok=True)
        jump.authorized_keys.write_text(client_pub)
        password = self.fileserver.prepare()
        index = releases.publish(self.fileserver_root)
        if tunnel:
            server.state_dir.mkdir(parents=True, exist_ok=True)
            reporter = node.install_tunnel_sessions(self.root)
            server.authorized_keys.write_text(_tunnel_authorized_keys(self, hosts, tunnel_ports, reporter))
        state: dict[str, Any] = {
            "root": str(self.root),
            "started_at": datetime.now(UTC).isoformat(),
            "user": user,
            "kind": kind,
            "access": access,
            # What `add_clusters` gives the clusters it adds: the same nodes per cluster and node settings.
            "shape": {
                "nodes": len(plan[0].nodes),
                "version": version,
                "upgrade_seconds": upgrade_seconds,
                "health_delay": health_delay,
            },
            "fileserver": {"port": ports["<fileserver>"], "user": FILESERVER_USER, "password": password},
            "jump": {"port": ports["<jump>"]},
            "tunnel": {"port": ports["<tunnel>"]} if tunnel else None,
            "nodes": _node_records(plan, ports, tunnel_ports),
        }
        self._save(state)  # before any daemon starts, so `down` finds them even if we crash here
        daemons = {"<jump>": jump, **specs, **({"<tunnel>": server} if tunnel else {})}
        launched = {name: sshd.launch(spec, ports[name]) for name, spec in daemons.items()}
        ports["<fileserver>"] = self.fileserver.start(ports["<fileserver>"])
        for name, launcher in launched.items():
            ports[name] = sshd.await_ready(daemons[name], ports[name], launcher)
        state["fileserver"]["port"] = ports["<fileserver>"]
        state["jump"]["port"] = ports["<jump>"]
        if tunnel:
            state["tunnel"]["port"] = ports["<tunnel>"]
        for entry in state["nodes"]:
            entry["port"] = ports[entry["hostname"]]
        self._save(state)
        lines = [f"[{procs.LOCALHOST}]:{ports['<jump>']} {sshd.public_key(jump.host_key)}"]
        lines += [f"[{procs.LOCALHOST}]:{ports[h]} {sshd.public_key(specs[h].host_key)}" for h in hosts]
        route: dict[str, Any] = {"type": "direct"}
        extra: dict[str, dict[str, Any]] = {}
        if access == "jump":
            route = {"type": "jump", "host": procs.LOCALHOST, "port": ports["<jump>"], "user": user}
        if tunnel:
            server_key = sshd.public_key(server.host_key)
            lines.append(f"[{procs.LOCALHOST}]:{ports['<tunnel>']} {server_key}")
            # Through a tunnel a node is known by its name (HostKeyAlias), never by the forwarded port.
            lines += [f"{h} {sshd.public_key(specs[h].host_key)}" for h in hosts]
            route = {
                "type": "tunnel",
                "host": procs.LOCALHOST,
                "port": ports["<tunnel>"],
                "user": user,
                "host_key": server_key,
            }
            extra = {
                h: {"tunnel_port": tunnel_ports[h], "host_key": sshd.public_key(specs[h].host_key)}
                for h in hosts
            }
            for h in hosts:
                self._configure_tunnel(h, server_key, ports["<tunnel>"], user, tunnel_ports[h], ports[h])
        self.known_hosts.write_text("\n".join(lines) + "\n")
        data = topology.inventory(
            plan,
            kind=kind,
            version=version,
            access=route,
            ports=ports,
            user=user,
            releases=index,
            node_extra=extra,
        )
        topology.write_inventory(self.inventory_path, data)

    def add_clusters(self, clusters: int) -> dict[str, Any]:
        """Start `clusters` more clusters on the running lab, as a lab started with that many more would
        have them (names numbered on, the same nodes per cluster, version and node settings, ring broad),
        and add them to known_hosts, the inventory and, on a tunnel lab, the tunnel server (reloaded with
        SIGHUP: open tunnels stay up). Nodes already running are not touched."""
        if clusters < 1:
            raise LabError(f"cannot add {clusters} clusters: need at least one")
        with self._locked():
            state = self._state()
            if state is None or not self._running():
                raise LabError(f"lab at {self.root} is not up; run `upkeep lab up` first")
            shape = state.get("shape")
            if shape is None:
                raise LabError(f"lab at {self.root} was started without its shape recorded; restart it")
            known = len(dict.fromkeys(n["cluster"] for n in state["nodes"]))
            try:
                plan = topology.plan(known + clusters, shape["nodes"], state["kind"], None)[known:]
            except ValueError as exc:
                raise LabError(str(exc)) from None
            for cluster in plan:
                cluster.ring = "broad"
            before = [dict(n) for n in state["nodes"]]
            try:
                self._extend(state, plan, shape)
            except BaseException as exc:  # Ctrl-C included: the added nodes go, the running ones stay
                note = ""
                try:
                    self._stop_nodes([h for c in plan for h in c.nodes], state["user"])
                    self._save({**state, "nodes": before})
                except (LabError, OSError) as stop_exc:
                    note = f" (cleanup: {stop_exc})"
                if not isinstance(exc, Exception):
                    raise
                raise LabError(f"could not add clusters to the lab at {self.root}: {exc}{note}") from exc
        return self.status()

    def _extend(self, state: dict[str, Any], plan: list[topology.ClusterPlan], shape: dict[str, Any]) -> None:
        user = state["user"]
        tunnel = state["access"] == "tunnel"
        hosts = [host for c in plan for host in c.nodes]
        specs = {host: self._spec(host, user) for host in hosts}
        ports = dict(zip(hosts, procs.free_ports(len(hosts)), strict=True))
        held = {n["tunnel_port"] for n in state["nodes"] if "tunnel_port" in n}  # bound only when opened
        tunnel_ports: dict[str, int] = {}
        if tunnel:
            tunnel_ports = dict(
                zip(hosts, procs.reserved_free_ports(len(hosts), exclude=held, owner=self.root), strict=True)
            )
        identities = [self._tunnel_identity(h) for h in hosts] if tunnel else []
        sshd.keygen([*(s.host_key for s in specs.values()), *identities])
        client_pub = sshd.public_key(self.ssh_key) + " upkeep-lab-client\n"
        for spec in specs.values():
            node.prepare(spec, shape["version"], shape["upgrade_seconds"], shape["health_delay"], client_pub)
        added = _node_records(plan, ports, tunnel_ports)
        state["nodes"] = [*state["nodes"], *added]
        self._save(state)  # before any daemon starts, so `down` finds them even if we crash here
        launched = {h: sshd.launch(specs[h], ports[h]) for h in hosts}
        for h, launcher in launched.items():
            ports[h] = sshd.await_ready(specs[h], ports[h], launcher)
        for entry in added:
            entry["port"] = ports[entry["hostname"]]
        self._save(state)
        lines = [f"[{procs.LOCALHOST}]:{ports[h]} {sshd.public_key(specs[h].host_key)}" for h in hosts]
        extra: dict[str, dict[str, Any]] = {}
        if tunnel:
            server = self._tunnel_spec(user)
            server_key = sshd.public_key(server.host_key)
            server_port = state["tunnel"]["port"]
            lines += [f"{h} {sshd.public_key(specs[h].host_key)}" for h in hosts]
            extra = {
                h: {"tunnel_port": tunnel_ports[h], "host_key": sshd.public_key(specs[h].host_key)}
                for h in hosts
            }
            for h in hosts:
                self._configure_tunnel(h, server_key, server_port, user, tunnel_ports[h], ports[h])
            everyone = [n["hostname"] for n in state["nodes"]]
            allowed = {n["hostname"]: n["tunnel_port"] for n in state["nodes"]}
            server.authorized_keys.write_text(
                _tunnel_authorized_keys(self, everyone, allowed, self.root / "bin" / "upkeep-tunnel-sessions")
            )
            self._reload_tunnel_server(self._tunnel_spec(user, tuple(allowed.values())), server_port)
        _write_atomically(self.known_hosts, self.known_hosts.read_text() + "\n".join(lines) + "\n")
        data = yaml.safe_load(self.inventory_path.read_text())
        first = data["customers"][0]["clusters"][0]
        more = topology.inventory(
            plan,
            kind=state["kind"],
            version=shape["version"],
            access=first["access"],
            ports=ports,
            user=user,
            releases=[],
            node_extra=extra,
        )
        customers = {customer["name"]: customer for customer in data["customers"]}
        for customer in more["customers"]:
            if customer["name"] in customers:
                customers[customer["name"]]["clusters"] += customer["clusters"]
            else:
                data["customers"].append(customer)
        tmp = self.inventory_path.with_suffix(".tmp")
        topology.write_inventory(tmp, data)
        os.replace(tmp, self.inventory_path)

    def _reload_tunnel_server(self, server: sshd.SshdSpec, port: int) -> None:
        """The tunnel server rereads its config and keys (`sshd.reload`: same port; tunnels already
        open are processes of their own and stay)."""
        pid = procs.read_pid(server.pidfile, str(server.conf))
        if pid is None:
            raise LabError(f"the tunnel server of the lab at {self.root} is not running")
        sshd.reload(server, port, pid)

    def _stop_nodes(self, hostnames: list[str], user: str) -> None:
        running = {}
        for hostname in hostnames:
            spec = self._spec(hostname, user)
            pid = procs.read_pid(spec.pidfile, str(spec.conf))
            if pid is not None:
                running[spec] = pid
        procs.stop_trees(running.values())
        for spec in running:
            spec.pidfile.unlink(missing_ok=True)

    def down(self) -> None:
        if not self.root.is_dir():
            return  # nothing was ever started here; don't create the directory just to lock it
        with self._locked():
            self._stop_all()
            procs.release_ports(self.root)

    # -- the customer's side of the support tunnel ------------------------------------------------------
    def _tunnel_identity(self, hostname: str) -> Path:
        return self.root / "nodes" / hostname / "tunnel" / "id_ed25519"

    def _configure_tunnel(
        self, hostname: str, server_key: str, server_port: int, user: str, listen: int, sshd_port: int
    ) -> None:
        """What the customer's node knows about the tunnel: the server (and its key), its own identity,
        the port it is given there and its own sshd."""
        node_dir = self.root / "nodes" / hostname
        known = node_dir / "tunnel" / "known_hosts"
        known.write_text(f"[{procs.LOCALHOST}]:{server_port} {server_key}\n")
        config = json.loads((node_dir / "agent.json").read_text())
        config["tunnel"] = {
            "server_host": procs.LOCALHOST,
            "server_port": server_port,
            "user": user,
            "listen_port": listen,
            "sshd_port": sshd_port,
            "identity": str(self._tunnel_identity(hostname)),
            "known_hosts": str(known),
        }
        (node_dir / "agent.json").write_text(json.dumps(config) + "\n")

    def tunnel(self, hostname: str, action: str) -> tuple[int, str]:
        """Run `upkeep-agent tunnel ACTION` on the node, as the customer would there: (exit, output)."""
        if action not in ("start", "status", "stop"):
            raise LabError(f"unknown tunnel action {action!r} (start, status or stop)")
        node_dir = self.node_dir(hostname)
        env = {"UPKEEP_NODE_DIR": str(node_dir), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        proc = subprocess.run(
            [str(self.root / "bin" / "upkeep-agent"), "tunnel", action],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return proc.returncode, (proc.stdout + proc.stderr).strip()

    def _stop_tunnels(self) -> None:
        """The customers' tunnel supervisors (and their ssh), found by pid file and command line."""
        nodes = self.root / "nodes"
        for pidfile in nodes.glob("*/tunnel.pid") if nodes.is_dir() else []:
            pid = procs.read_pid(pidfile, str(pidfile.parent))
            if pid is not None:
                procs.stop_tree(pid)

    def _stop_all(self) -> None:
        errors = []
        try:
            self._stop_tunnels()
        except OSError as exc:
            errors.append(f"tunnels: {exc}")
        running = {}
        for spec in self._all_specs():
            pid = procs.read_pid(spec.pidfile, str(spec.conf))
            if pid is not None:
                running[spec] = pid
        try:
            procs.stop_trees(running.values())  # all nodes at once: one look at /proc, one wait
        except OSError as exc:
            errors.append(f"sshd: {exc}")
        for spec in running:
            spec.pidfile.unlink(missing_ok=True)
        try:
            self.fileserver.stop()
        except OSError as exc:
            errors.append(f"nginx: {exc}")
        if errors:
            raise LabError("could not stop: " + "; ".join(errors))

    # -- faults --------------------------------------------------------------------------------------
    def fault(self, hostname: str, kind: str) -> None:
        if kind not in FAULTS:
            raise LabError(f"unknown fault {kind!r} (valid: {', '.join(FAULTS)})")
        with self._locked():
            port = self._node(hostname)["port"]
            if not self._running():
                raise LabError(f"lab at {self.root} is not up; run `upkeep lab up` first")
            state = self._state() or {}
            spec = self._spec(hostname, state["user"])
            fault_file = self.root / "nodes" / hostname / "fault"
            if kind == "down":
                fault_file.write_text("down\n")
                sshd.stop(spec)  # sessions and in-flight agents die too, as on a real outage
                return
            if kind == "clear":
                fault_file.unlink(missing_ok=True)
            else:
                fault_file.write_text(kind + "\n")
            if procs.read_pid(spec.pidfile, str(spec.conf)) is None:
                # Back from `down`: same port and host key, so known_hosts and inventory stay valid.
                try:
                    sshd.wait_ready(spec, port, sshd.launch(spec, port))
                except sshd.SshdError as exc:
                    raise LabError(f"could not restart {hostname}: {exc}") from None

    # -- views ---------------------------------------------------------------------------------------
    def upgrade_log(self, hostname: str) -> list[dict[str, Any]]:
        path = self.node_dir(hostname) / "upgrades.log"
        with contextlib.suppress(FileNotFoundError), open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
        return []

    def settings_overrides(self) -> dict[str, Any]:
        state = self._state()
        if state is None:
            raise LabError(f"no lab at {self.root}; run `upkeep lab up` first")
        fs = state["fileserver"]
        return {
            "fileserver_url": f"https://{procs.LOCALHOST}:{fs['port']}",
            "fileserver_user": fs["user"],
            "fileserver_password": fs["password"],
            "fileserver_ca": str(self.fileserver.ca),
            "known_hosts": str(self.known_hosts),
            "ssh_key": str(self.ssh_key),
        }

    def status(self) -> dict[str, Any]:
        """JSON-able view with live pids; never includes the file server password."""
        state = self._state() or {}
        fs, jump, user = state.get("fileserver"), state.get("jump"), state.get("user")
        tunnel = state.get("tunnel")
        tunnel_spec = self._tunnel_spec(user or "")
        tunnel_pid = procs.read_pid(tunnel_spec.pidfile, str(tunnel_spec.conf))
        fs_pid = self.fileserver.pid()
        jump_spec = self._spec(None, user or "")
        jump_pid = procs.read_pid(jump_spec.pidfile, str(jump_spec.conf))
        nodes = [node.describe(self._spec(n["hostname"], user or ""), n) for n in state.get("nodes", [])]
        return {
            "root": str(self.root),
            "up": bool(fs_pid or jump_pid or tunnel_pid or any(n["running"] for n in nodes)),
            "fileserver": fs
            and {
                "url": f"https://{procs.LOCALHOST}:{fs['port']}",
                "ca": str(self.fileserver.ca),
                "user": fs["user"],
                "pid": fs_pid,
                "running": fs_pid is not None,
            },
            "known_hosts": str(self.known_hosts),
            "ssh_key": str(self.ssh_key),
            "inventory": str(self.inventory_path),
            "jump": jump
            and {
                "address": procs.LOCALHOST,
                "port": jump["port"],
                "user": user,
                "pid": jump_pid,
                "running": jump_pid is not None,
            },
            "tunnel": tunnel
            and {
                "address": procs.LOCALHOST,
                "port": tunnel["port"],
                "user": user,
                "log": str(tunnel_spec.log),
                "pid": tunnel_pid,
                "running": tunnel_pid is not None,
            },
            "nodes": nodes,
        }


# Key options on the tunnel server. `restrict` takes everything (pty, agent, X11, forwarding, rc), then
# `port-forwarding` gives forwarding back and permitlisten/permitopen narrow it. authorized_keys has no
# "none" for them (OpenSSH 9.2 rejects the whole line), so the direction a key must not use is pinned to
# a name that can never resolve (RFC 2606 .invalid). No key gets a shell: a node identity's command
# refuses, Upkeep's runs only the read-only reporter.
_NOWHERE = "nowhere.invalid:1"
_NO_SHELL = 'command="echo this key only holds a support tunnel: no shell >&2; exit 1"'


def _node_records(
    plan: list[topology.ClusterPlan], ports: dict[str, int], tunnel_ports: dict[str, int]
) -> list[dict[str, Any]]:
    """lab.json's record of each planned node: its sshd port and, on a tunnel lab (where every node
    has one), the port its tunnel listens on at the tunnel server."""
    return [
        {
            "customer": c.customer,
            "cluster": c.name,
            "hostname": h,
            "port": ports[h],
            **({"tunnel_port": tunnel_ports[h]} if h in tunnel_ports else {}),
        }
        for c in plan
        for h in c.nodes
    ]


def _write_atomically(path: Path, text: str) -> None:
    """Readers (an SSH client loading known_hosts, an import reading the inventory) see the old file or
    the new one, never half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tunnel_authorized_keys(lab: Lab, hosts: list[str], ports: dict[str, int], reporter: Path) -> str:
    lines = []
    for host in hosts:
        pub = sshd.public_key(lab._tunnel_identity(host))
        lines.append(
            f'restrict,port-forwarding,permitlisten="{procs.LOCALHOST}:{ports[host]}",'
            f'permitopen="{_NOWHERE}",{_NO_SHELL} {pub} tunnel:{host}'
        )
    opens = ",".join(f'permitopen="{procs.LOCALHOST}:{ports[h]}"' for h in hosts)
    # Upkeep's key: open to the nodes' ports, and run nothing but the reporter of which ports are held
    # since when (`upkeep tunnel status`); still no shell, whatever command it sends.
    lines.append(
        f'restrict,port-forwarding,{opens},permitlisten="{_NOWHERE}",command="{reporter}" '
        f"{sshd.public_key(lab.ssh_key)} upkeep"
    )
    return "\n".join(lines) + "\n"
