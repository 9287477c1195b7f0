"""SSH to product nodes: a small `RemoteRunner` protocol and its Fabric implementation.

Every remote command is an argv list joined with `shlex.join`, so no value ever reaches a remote shell
unquoted. Host keys are checked against one known_hosts file with Paramiko's RejectPolicy: an unknown
or changed key is refused, never learned.
"""

from __future__ import annotations

import base64
import json
import logging
import select
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import paramiko
from fabric import Config, Connection

# Paramiko logs a refused channel ("Secsh channel 0 open FAILED: Connection refused") at ERROR; with no
# handler configured, Python's last-resort handler printed it to a CLI's stderr beside our own line (a
# closed tunnel is an answer we report, not an error of ours). Handlers the process sets up still get it.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def _refused_channel_is_debug(record: logging.LogRecord) -> bool:
    """A process that does configure handlers (the CLI, once Prefect is imported: a console handler on the
    root logger) still printed that ERROR line beside ours; the refusal reaches the caller as a
    ChannelException (TunnelClosed, or a RemoteError naming the prohibition), so it is logged at DEBUG."""
    if record.levelno == logging.ERROR and record.getMessage().startswith("Secsh channel"):
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True


logging.getLogger("paramiko.transport").addFilter(_refused_channel_is_debug)


@dataclass(frozen=True)
class SshTarget:
    """Where a node is and how to get there (directly, through a jump host, or through the customer's
    reverse tunnel: `via_tunnel`, where `jump` is the vendor's tunnel server and address:port the
    node's forwarded port on it).

    `host_key` ("ssh-ed25519 AAAA..."), when the inventory holds it, is the only key accepted; else
    known_hosts decides. A tunnelled node is known by its name, like OpenSSH's HostKeyAlias: the
    forwarded port says nothing about who answers on it."""

    name: str
    address: str
    port: int
    user: str
    jump: SshTarget | None = None
    host_key: str | None = None
    via_tunnel: bool = False

    @property
    def known_as(self) -> str:
        """The name its host key is looked up under."""
        if self.via_tunnel:
            return self.name
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class RemoteResult:
    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, lines: int = 20) -> str:
        text = "\n".join(part for part in (self.stdout.strip(), self.stderr.strip()) if part)
        return "\n".join(text.splitlines()[-lines:])


class RemoteError(Exception):
    """The node could not be reached, or a command could not be run to completion."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host


class HostKeyError(RemoteError):
    """The node's host key is unknown or changed: refused, possibly a man-in-the-middle."""


class TunnelClosed(RemoteError):
    """The node's reverse tunnel is not open at the tunnel server: only the customer can open it."""


class CommandTimeout(RemoteError):
    """A command ran longer than its timeout. `stopped`: its process group was ended on the node
    (the node's locks released with it); False: it could not be, and the node's state is unknown."""

    def __init__(self, host: str, message: str, *, stopped: bool = False) -> None:
        super().__init__(host, message)
        self.stopped = stopped


# Every command first tells its process group: sshd runs it in a session of its own (setsid), whose
# id is the shell's pid; `exec` keeps that pid for the command. A command past its timeout is then
# ended on the node - the whole group, children included - instead of being abandoned there.
_PGID_TAG = "upkeep-pgid "
_UNKNOWN = "the node's state is unknown; the run halts"
_STOP_GRACE_TICKS = 50  # tenths of a second between SIGTERM and SIGKILL


_NO_HANDSHAKE = frozenset({"No existing session", "Error reading SSH protocol banner"})


class RemoteRunner(Protocol):
    host: str

    def run(self, argv: Sequence[str], *, timeout: float) -> RemoteResult: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...

    def close(self) -> None: ...


class NodeConnector(Protocol):
    """How a flow reaches a node: a `RemoteRunner` for `target` (SSH here; a fake in unit tests)."""

    def connect(self, target: SshTarget) -> RemoteRunner: ...


@dataclass
class SshSettings:
    """How Upkeep reaches nodes over SSH; `connect` opens a `FabricRunner` (a `NodeConnector`)."""

    known_hosts: Path
    key_path: Path
    connect_timeout: float = 10.0
    # One Config for every Connection (building one per Connection re-reads config files each time),
    # so it must stay read-only: Connections are built and used in many threads at once (_Connection).
    config: Config = field(default_factory=lambda: Config(overrides={"load_ssh_configs": False}))

    def connect(self, target: SshTarget) -> RemoteRunner:
        return FabricRunner(target, self)


class FabricRunner:
    """One Fabric connection to one node, reused for all of that node's steps."""

    def __init__(self, target: SshTarget, settings: SshSettings) -> None:
        self.host = target.name
        self._settings = settings
        if not settings.known_hosts.is_file():
            raise HostKeyError(
                self.host,
                f"known_hosts {settings.known_hosts} does not exist: host keys must be known in advance",
            )
        self._gateway = _connection(target.jump, settings) if target.jump else None
        self._conn = _connection(target, settings, gateway=self._gateway)

    def open(self) -> FabricRunner:
        try:
            self._conn.open()
        except RemoteError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                self.host,
                f"host key CHANGED for {exc.hostname} (got {exc.key.get_name()} "
                f"{exc.key.get_fingerprint().hex()}): refusing to connect, possible man-in-the-middle",
            ) from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyError(
                    self.host,
                    f"{exc} ({self._settings.known_hosts}): unknown host key refused, not learned",
                ) from None
            if str(exc) in _NO_HANDSHAKE:
                # Paramiko's own words for "nothing answered as SSH" (a blackholed or wrong port):
                # its banner timeout, then "No existing session" - neither says what happened.
                raise RemoteError(
                    self.host,
                    f"cannot connect: no SSH answer within {self._settings.connect_timeout:g} s "
                    "(the port accepted the connection; nothing answered as an SSH server)",
                ) from None
            raise RemoteError(self.host, f"SSH failed: {exc}") from None
        except (TimeoutError, OSError, EOFError) as exc:
            raise RemoteError(self.host, f"cannot connect: {exc or type(exc).__name__}") from None
        return self

    def run(self, argv: Sequence[str], *, timeout: float) -> RemoteResult:
        command = shlex.join(argv)
        self.open()
        started = time.monotonic()
        transport = self._conn.client.get_transport()
        try:
            if transport is None:
                raise EOFError("connection closed")
            exit_code, stdout, stderr = _exec(transport, _tagged(command), timeout)
        except _TimedOut as late:
            raise self._stop(transport, command, timeout, late.stderr) from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise RemoteError(self.host, f"{command!r} was cut off: {exc or type(exc).__name__}") from None
        if exit_code == -1:
            # No exit status: the connection died under the command (a reset, sshd killed). Said as
            # it is - whether the command ran to the end on the node is unknown until someone asks -
            # never passed on as the command's own failure ("upgrade failed (exit -1)").
            raise RemoteError(
                self.host,
                f"{command!r} was cut off: the connection closed before the command reported an exit "
                "status; its outcome on the node is unknown",
            )
        return RemoteResult(
            host=self.host,
            command=command,
            exit_code=exit_code,
            stdout=stdout,
            stderr=_untagged(stderr),
            seconds=time.monotonic() - started,
        )

    def _stop(
        self, transport: paramiko.Transport | None, command: str, timeout: float, stderr: str
    ) -> CommandTimeout:
        """End the timed-out command's process group on the node: SIGTERM, then SIGKILL after
        `_STOP_GRACE_TICKS` tenths of a second; the answer says whether it is gone."""
        late = f"{command!r} timed out after {timeout:g} s"
        pgid = _pgid(stderr)
        if pgid is None or transport is None:
            return CommandTimeout(
                self.host,
                f"{late}; it could not be stopped on the node (no process group known): {_UNKNOWN}",
            )
        stop = (
            f"kill -TERM -- -{pgid} 2>/dev/null; i=0; while kill -0 -- -{pgid} 2>/dev/null; do "
            f"i=$((i+1)); [ $i -ge {_STOP_GRACE_TICKS} ] && kill -KILL -- -{pgid} 2>/dev/null; "
            f"[ $i -ge {2 * _STOP_GRACE_TICKS} ] && exit 1; sleep 0.1; done; exit 0"
        )
        try:
            code, _out, err = _exec(transport, stop, 30.0)
        except (_TimedOut, OSError, EOFError, paramiko.SSHException) as exc:
            code, err = -1, str(exc) or type(exc).__name__
        if code == 0:
            return CommandTimeout(self.host, f"{late}; stopped on the node", stopped=True)
        why = f"process group {pgid} still there ({err.strip() or f'exit {code}'})"
        return CommandTimeout(
            self.host, f"{late}; it could not be stopped on the node ({why}): the node's state is unknown"
        )

    def put(self, local: Path, remote: str) -> None:
        self.open()
        try:
            self._conn.put(str(local), remote)
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(self.host, f"upload of {local.name} failed: {exc}") from None

    def get(self, remote: str, local: Path) -> None:
        self.open()
        try:
            self._conn.get(remote, str(local))
        except (OSError, paramiko.SSHException) as exc:
            raise RemoteError(self.host, f"download of {remote} failed: {exc}") from None

    def close(self) -> None:
        self._conn.close()
        if self._gateway is not None:
            self._gateway.close()

    def __enter__(self) -> FabricRunner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _TimedOut(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__("timed out")
        self.stderr = stderr


def _tagged(command: str) -> str:
    return f"printf '{_PGID_TAG}%s\\n' \"$$\" >&2; exec {command}"


def _pgid(stderr: str) -> int | None:
    first = stderr.split("\n", 1)[0]
    value = first[len(_PGID_TAG) :].strip() if first.startswith(_PGID_TAG) else ""
    return int(value) if value.isdigit() and int(value) > 1 else None


def _untagged(stderr: str) -> str:
    return stderr.split("\n", 1)[1] if stderr.startswith(_PGID_TAG) and "\n" in stderr else stderr


def _exec(transport: paramiko.Transport, command: str, timeout: float) -> tuple[int, str, str]:
    """Run `command` in a new session channel of the open connection: (exit status, stdout, stderr).

    What Fabric's `Connection.run(hide=True, warn=True, in_stream=False)` does, without its
    general-purpose runner: no reader, stdin and timer threads per command and no 10 ms polling for
    the exit; one wait on the channel's own event pipe instead. The exit status is -1 when the
    channel closed without one (as with Fabric); past `timeout` the channel is closed and _TimedOut
    raised."""
    deadline = time.monotonic() + timeout
    chan = transport.open_session(timeout=timeout)
    try:
        chan.exec_command(command)
        # readable while stdout or stderr holds data, or once they are closed. poll(), not select():
        # select() takes no descriptor above 1023, and a dispatcher with 200 clusters in flight holds
        # more than that (W4 of `make bench` failed 4 of 200 clusters on it).
        ready = select.poll()
        ready.register(chan.fileno(), select.POLLIN)
        out, err = bytearray(), bytearray()
        while True:
            while chan.recv_ready():
                out += chan.recv(_CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(_CHUNK)
            if chan.closed or (chan.eof_received and chan.status_event.is_set()):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                while chan.recv_stderr_ready():  # its process group is in there
                    err += chan.recv_stderr(_CHUNK)
                raise _TimedOut(err.decode(errors="replace"))
            if chan.eof_received:  # all output is in; the exit status follows it
                chan.status_event.wait(left)
            else:
                ready.poll(left * 1000)
        while chan.recv_ready():  # what arrived together with the close
            out += chan.recv(_CHUNK)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(_CHUNK)
        return chan.exit_status, out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        chan.close()


_CHUNK = 1 << 16


class _Connection(Connection):
    """A Fabric Connection that never writes to the Config it is given.

    Fabric's __init__ assigns `self.inline_ssh_env`; being no class attribute, Invoke's DataProxy turns
    that into a write to the Config, and every write rebuilds the whole Config in place (merge(): an
    empty dict, then refilled). With one Config shared by all Connections, another thread reading it
    meanwhile (`connect_kwargs`, `forward_agent`, `authentication` at open, `runners` at run) got
    "No attribute or config key found for ...". Declared here, the assignment stays on the Connection.
    """

    inline_ssh_env = None


class _TunnelledConnection(_Connection):
    """A node behind the customer's reverse tunnel: a direct-tcpip channel from the tunnel server to the
    node's forwarded port, and the SSH session in it checked against the node's own name and key
    (`host` is the node's name, `port` 22 so Paramiko looks its key up by that name alone)."""

    forward_to: tuple[str, int] = ("", 0)

    def open_gateway(self) -> paramiko.Channel:
        gateway = self.gateway
        assert isinstance(gateway, Connection)
        try:
            gateway.open()
        except (TimeoutError, OSError, EOFError) as exc:
            # Said as the node's "cannot connect: [Errno None] Unable to connect to port P" it read as
            # the node being down, and P was not the node's port: the SRE must know it is the server.
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            where = f"{gateway.host}:{gateway.port}"
            raise RemoteError(
                self.host, f"tunnel server {where} unreachable ({reason}); no node reached"
            ) from None
        try:
            return gateway.transport.open_channel(
                kind="direct-tcpip", dest_addr=self.forward_to, src_addr=("", 0), timeout=self.connect_timeout
            )
        except paramiko.ChannelException as exc:
            where = (
                f"{self.forward_to[0]}:{self.forward_to[1]} on tunnel server {gateway.host}:{gateway.port}"
            )
            if exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
                raise RemoteError(
                    self.host, f"the tunnel server does not let Upkeep open {where} (its authorized_keys)"
                ) from None
            raise TunnelClosed(
                self.host,
                f"support tunnel closed: nothing listens on {where}; the customer must run "
                f"`upkeep-agent tunnel start` on {self.host}",
            ) from None


def _connection(target: SshTarget, settings: SshSettings, gateway: Connection | None = None) -> Connection:
    # connect_kwargs must stay non-empty: given none, Fabric writes key_filename into the Config's own.
    tunnelled = target.via_tunnel and gateway is not None
    conn = (_TunnelledConnection if tunnelled else _Connection)(
        host=target.name if tunnelled else target.address,
        port=22 if tunnelled else target.port,
        user=target.user,
        config=settings.config,
        gateway=gateway if gateway is not None else False,
        connect_timeout=settings.connect_timeout,
        connect_kwargs={
            "key_filename": [str(settings.key_path)],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": settings.connect_timeout,
            "auth_timeout": settings.connect_timeout,
        },
    )
    # Fabric's client auto-adds unknown keys; replace it with one that knows only our known_hosts.
    if isinstance(conn, _TunnelledConnection):
        conn.forward_to = (target.address, target.port)
    client = paramiko.SSHClient()
    client.load_host_keys(str(settings.known_hosts))
    if target.host_key:  # the inventory's key, and no other, for this name
        keys = client.get_host_keys()
        keys.pop(target.known_as, None)
        kind, _, blob = target.host_key.strip().partition(" ")
        keys.add(
            target.known_as, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(blob.split()[0]))
        )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client = client
    return conn


@dataclass(frozen=True)
class TunnelProbe:
    """What the tunnel server said. `ports`: per port "open (<SSH banner>)", "closed", or "refused by the
    tunnel server". `since`: per port held by a tunnel, when the tunnel server's sshd session holding it
    started (UTC), as its reporter read it (tasks/tunnel_sessions.py); `since_problem`: why there is no
    `since` at all (the reporter is not Upkeep's forced command there, or failed)."""

    ports: dict[int, str]
    since: dict[int, datetime]
    since_problem: str | None = None


SESSIONS_COMMAND = "upkeep-tunnel-sessions"


def probe_tunnels(server: SshTarget, ports: Sequence[int], settings: SshSettings) -> TunnelProbe:
    """Which forwarded ports on the tunnel server answer now, and since when their tunnels are open: one
    connection to the server (its key checked), one direct-tcpip channel per port, one exec (the server
    runs its reporter whatever is asked: the forced command of Upkeep's key). RemoteError/HostKeyError
    when the tunnel server itself cannot be reached."""
    runner = FabricRunner(SshTarget(server.name, server.address, server.port, server.user,
                                    host_key=server.host_key), settings)  # fmt: skip
    runner.open()
    found: dict[int, str] = {}
    try:
        transport = runner._conn.client.get_transport()
        if transport is None:
            raise RemoteError(server.name, "connection closed")
        for port in ports:
            try:
                chan = transport.open_channel(
                    "direct-tcpip", ("127.0.0.1", port), ("", 0), timeout=settings.connect_timeout
                )
            except paramiko.ChannelException as exc:
                prohibited = exc.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
                found[port] = "refused by the tunnel server" if prohibited else "closed"
                continue
            try:
                chan.settimeout(settings.connect_timeout)
                banner = b""
                while b"\n" not in banner and len(banner) < 256:
                    chunk = chan.recv(256)
                    if not chunk:
                        break
                    banner += chunk
            except (OSError, TimeoutError):
                banner = b""
            finally:
                chan.close()
            line = banner.split(b"\n", 1)[0].strip().decode(errors="replace")
            found[port] = f"open ({line})" if line.startswith("SSH-") else "closed"
        since, problem = _tunnel_sessions(transport, settings.connect_timeout)
    finally:
        runner.close()
    return TunnelProbe(found, since, problem)


def _tunnel_sessions(transport: paramiko.Transport, timeout: float) -> tuple[dict[int, datetime], str | None]:
    """Run the tunnel server's reporter on an open connection: (port -> since, None), or ({}, why not)."""
    try:
        chan = transport.open_session(timeout=timeout)
    except (paramiko.SSHException, OSError) as exc:
        return {}, f"the tunnel server opened no session for its reporter ({exc})"
    out, err = bytearray(), bytearray()
    try:
        chan.settimeout(timeout)
        chan.exec_command(SESSIONS_COMMAND)
        while True:
            chunk = chan.recv(65536)
            if not chunk:
                break
            out += chunk
            if len(out) > 4_000_000:
                return {}, "the tunnel server's reporter said too much"
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(4096)
        status = chan.recv_exit_status()
    except (paramiko.SSHException, OSError, TimeoutError) as exc:
        return {}, f"the tunnel server's reporter did not answer ({exc})"
    finally:
        chan.close()
    said = (bytes(err) or bytes(out)).decode(errors="replace").strip().splitlines()
    try:
        if status != 0:
            raise ValueError(said[0] if said else f"exit {status}")
        rows = json.loads(out)["tunnels"]
        since = {
            int(row["port"]): datetime.fromisoformat(row["since"].replace("Z", "+00:00")).astimezone(UTC)
            for row in rows
        }
    except (ValueError, KeyError, TypeError) as exc:
        return {}, f"the tunnel server does not report since when ({SESSIONS_COMMAND}: {exc})"
    return since, None
