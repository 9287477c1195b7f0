"""One emulated product node on disk: agent install, node directory, and its entry in the lab status."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from upkeep.lab import procs, sshd
from upkeep.lab.lab_root import LabError

SUBDIRS = ("incoming", "staged", "outgoing", "logs")


def node_python() -> str:
    """The interpreter the lab's nodes run their agent (and the tunnel server its reporter) with: the
    system's python3, as on a product node, or $UPKEEP_LAB_NODE_PYTHON when set. `make coverage` sets
    it to a wrapper that measures what runs there (tests/support/coverage_node.py)."""
    chosen = os.environ.get("UPKEEP_LAB_NODE_PYTHON")
    if chosen:
        if not (os.path.isabs(chosen) and os.path.isfile(chosen) and os.access(chosen, os.X_OK)):
            raise LabError(
                f"UPKEEP_LAB_NODE_PYTHON={chosen!r} (environment) is not an absolute path to an executable"
            )
        return shlex.quote(chosen)
    return shlex.quote("/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable)


def install_agent(root: Path) -> None:
    """Copy the agent to <lab>/agent.py; <lab>/bin/upkeep-agent runs it (bin is on every node's PATH)."""
    python = node_python()
    shutil.copyfile(Path(__file__).with_name("agent.py"), root / "agent.py")
    wrapper = root / "bin" / "upkeep-agent"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    # -I -S: the node's own interpreter, untouched by PYTHON* variables or site-packages of whoever
    # logged in (the lab's venv included) - the agent must prove it needs only the stdlib.
    # Bytes as the file system has them: a path that is not UTF-8 is a lone surrogate in Python.
    script = shlex.quote(str(root / "agent.py"))
    wrapper.write_bytes(os.fsencode(f'#!/bin/sh\nexec {python} -I -S {script} "$@"\n'))
    wrapper.chmod(0o755)


def install_tunnel_sessions(root: Path) -> Path:
    """Copy the tunnel server's reporter (tasks/tunnel_sessions.py) to <lab>/tunnel/; <lab>/bin/
    upkeep-tunnel-sessions runs it: the forced command of Upkeep's key on the lab's tunnel server, as on
    the vendor's. Returns the wrapper's path."""
    import tasks.tunnel_sessions as reporter

    python = node_python()
    (root / "tunnel").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reporter.__file__, root / "tunnel" / "tunnel_sessions.py")
    wrapper = root / "bin" / "upkeep-tunnel-sessions"
    wrapper.parent.mkdir(parents=True, exist_ok=True)
    script = shlex.quote(str(root / "tunnel" / "tunnel_sessions.py"))
    wrapper.write_bytes(os.fsencode(f"#!/bin/sh\nexec {python} -I -S {script}\n"))
    wrapper.chmod(0o755)
    return wrapper


def prepare(
    spec: sshd.SshdSpec, version: str, upgrade_seconds: float, health_delay: float, client_pub: str
) -> None:
    node_dir = spec.node_dir
    if node_dir is None:
        raise ValueError(f"{spec.name} is not a product node")
    for sub in SUBDIRS:
        (node_dir / sub).mkdir(parents=True, exist_ok=True)
    (node_dir / "version").write_text(version + "\n")
    config = {"hostname": spec.name, "upgrade_seconds": upgrade_seconds, "health_delay": health_delay}
    (node_dir / "agent.json").write_text(json.dumps(config) + "\n")
    spec.authorized_keys.write_text(client_pub)


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def describe(spec: sshd.SshdSpec, node: dict[str, Any]) -> dict[str, Any]:
    """A node's entry in `Lab.status()`, with live pid and the version/fault the node itself reports."""
    node_dir = spec.node_dir
    if node_dir is None:
        raise ValueError(f"{spec.name} is not a product node")
    pid = procs.read_pid(spec.pidfile, str(spec.conf))
    return {
        "customer": node["customer"],
        "cluster": node["cluster"],
        "hostname": node["hostname"],
        "address": procs.LOCALHOST,
        "port": node["port"],
        "user": spec.user,
        "node_dir": str(node_dir),
        "version": _text(node_dir / "version"),
        "upgrade_log": str(node_dir / "upgrades.log"),
        "pid": pid,
        "running": pid is not None,
        "fault": _text(node_dir / "fault"),
        **({"tunnel_port": node["tunnel_port"]} if "tunnel_port" in node else {}),
    }
