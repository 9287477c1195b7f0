"""The product node's agent, spoken over SSH: version, health, disk, stage, upgrade, logs.

This is the whole vocabulary Upkeep uses on a node. Each call is one remote command on the node's
already-open connection; arguments are validated here and quoted by the runner.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from scheduling.versions import Version
from tasks.ssh import RemoteResult, RemoteRunner

AGENT = "upkeep-agent"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NodeCommandFailed(Exception):
    """The agent answered, and the answer was a failure."""

    def __init__(self, result: RemoteResult, what: str) -> None:
        super().__init__(f"{result.host}: {what} failed (exit {result.exit_code}): {result.tail(3)}")
        self.result = result


@dataclass(frozen=True)
class Health:
    healthy: bool
    detail: str


class NodeAgent:
    def __init__(self, runner: RemoteRunner, *, command_timeout: float = 600.0) -> None:
        self.runner = runner
        self.host = runner.host
        self.command_timeout = command_timeout
        self.last: RemoteResult | None = None

    def _run(self, *args: str, timeout: float | None = None) -> RemoteResult:
        self.last = self.runner.run([AGENT, *args], timeout=timeout or self.command_timeout)
        return self.last

    def version(self) -> str:
        result = self._run("version", timeout=30)
        if not result.ok:
            raise NodeCommandFailed(result, "version")
        return str(Version.parse(result.stdout.strip()))

    def health(self) -> Health:
        result = self._run("health", timeout=30)
        return Health(result.ok, result.stdout.strip() or result.stderr.strip())

    def disk_free(self) -> int:
        result = self._run("disk", timeout=30)
        if not result.ok or not result.stdout.strip().isdigit():
            raise NodeCommandFailed(result, "disk")
        return int(result.stdout.strip())

    def stage(self, package_name: str, sha256: str) -> RemoteResult:
        if not _PACKAGE_NAME.fullmatch(package_name) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"refusing to stage {package_name!r} with checksum {sha256!r}")
        result = self._run("stage", package_name, sha256)
        if not result.ok:
            raise NodeCommandFailed(result, "stage")
        return result

    def upgrade(self, version: str) -> RemoteResult:
        result = self._run("upgrade", str(Version.parse(version)))
        if not result.ok:
            raise NodeCommandFailed(result, f"upgrade to {version}")
        return result

    def wait_healthy(
        self, *, timeout: float, interval: float = 0.1, stop: Callable[[], bool] | None = None
    ) -> Health:
        """Poll health until healthy or `timeout` elapses; returns the last answer. `stop`, asked
        between answers: True ends the wait at once (the last answer, unhealthy, is returned)."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health.healthy or time.monotonic() >= deadline or (stop is not None and stop()):
                return health
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 2, 2.0)
