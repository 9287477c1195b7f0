"""The customer portal as the SRE runs it: `upkeep portal serve` (the real CLI, uvicorn) on a free
loopback port, over a home whose database holds an inventory imported with `upkeep inventory import`.
Used by the browser tests and the proxy-header tests, which differ only in the settings they pass."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.fixtures import upkeep_cli
from upkeep.lab.procs import LOCALHOST, reserved_free_ports


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """`condition()`'s first true value, asked every 0.1 s; fails naming `what` after `timeout` s (a
    bound on a hang, not a performance claim)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


@contextmanager
def portal_served(tmp_path: Path, env: dict[str, str], inventory: dict[str, Any]) -> Iterator[str]:
    """`inventory` imported into the home that `env` names, then the portal served on a free port until
    the block ends; its URL (also given to the portal as UPKEEP_PORTAL_URL, for the links it mails)."""
    # Bound only after the import (seconds under load): a port below the ephemeral range, which no
    # outgoing connection or port-0 bind on this machine takes meanwhile ('address already in use').
    url = f"http://{LOCALHOST}:{reserved_free_ports(1)[0]}"
    env["UPKEEP_PORTAL_URL"] = url
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    upkeep_cli(env, "inventory", "import", str(path))
    log_path = tmp_path / "portal.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "upkeep", "portal", "serve", "--port", url.rsplit(":", 1)[1]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def up() -> bool:
                assert server.poll() is None, log_path.read_text()
                try:
                    return httpx.get(f"{url}/signin", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, "the portal to answer")
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
