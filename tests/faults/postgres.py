"""A private PostgreSQL 15 cluster for tests that stop or restart the database server.

The machine's shared server at 127.0.0.1:5432 is used by other suites at the same time, so a test
that restarts PostgreSQL gets one of its own: `initdb` into a temporary directory, listening only
on 127.0.0.1 on a free port, trust authentication, its unix socket inside that directory.

PostgreSQL refuses to run as root, so when the tests run as root every server binary runs as the
`postgres` OS user (`runuser -u postgres --`) and the directory (under /tmp, not pytest's 0700
temporary tree, which that user cannot enter) is handed to that user.

`restart()` is `pg_ctl restart -m fast`: for a cluster we own (not registered with Debian's
`postgresql-common`) it is what `pg_ctlcluster 15 main restart` does - a fast shutdown (every
session is terminated, open transactions roll back) followed by a start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN = Path(os.environ.get("UPKEEP_PG_BIN", "/usr/lib/postgresql/15/bin"))
OS_USER = "postgres"


def missing_binaries() -> str | None:
    """Why a private cluster cannot be started here, or None."""
    absent = [name for name in ("initdb", "pg_ctl", "postgres") if not (BIN / name).is_file()]
    if absent:
        return f"PostgreSQL server binaries not found in {BIN}: {', '.join(absent)}"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root and `runuser` is missing: PostgreSQL will not run as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """One PostgreSQL cluster in `root`: `start()`, `restart()`, `stop()`; `url(db)` for SQLAlchemy."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="upkeep-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.logfile = self.root / "postgres.log"
        self.port = 0
        self.restarts = 0

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
        proc = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root, check=False
        )
        if proc.returncode != 0:
            log = self.logfile.read_text()[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}{log}")
        return proc

    def _ctl(self, action: str, *extra: str) -> None:
        self._run(str(BIN / "pg_ctl"), action, "-D", str(self.data), "-l", str(self.logfile), "-w", *extra)

    def start(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, OS_USER)
            shutil.chown(self.socket_dir, OS_USER)
        self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        self.port = _free_port()
        conf = (
            f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
            f"unix_socket_directories = '{self.socket_dir}'\n"
            # A test database: durability is not what is under test, speed on a shared machine is.
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
        )
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(conf)
        self._ctl("start")

    def restart(self) -> float:
        """`pg_ctl restart -m fast`; returns the seconds it took (the server is down for part of it)."""
        began = time.monotonic()
        self._ctl("restart", "-m", "fast")
        self.restarts += 1
        return time.monotonic() - began

    def down(self) -> None:
        """A fast shutdown, files kept: the first half of a restart, for tests that act in between."""
        self._ctl("stop", "-m", "fast")

    def up(self) -> None:
        self._ctl("start")

    def stop(self, *, remove: bool = True) -> None:
        """Stop the server (immediate: nothing here needs a clean shutdown) and remove its files."""
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", "immediate")
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
