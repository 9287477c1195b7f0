"""Node agent: emulates the product on one lab node. STDLIB ONLY - it runs "on the node".

The lab copies this file to <lab>/agent.py; `<lab>/bin/upkeep-agent` runs it with `python3 -I -S`.
sshd hands every session UPKEEP_NODE_DIR (sshd_config SetEnv), which is all the node state there is:
agent.json (config), version, fault, staged/, incoming/, outgoing/, logs/product.log, upgrades.log.
Output lines and exit codes are a contract the upgrade tasks parse; change them only together.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

# Every SSH command a lab node answers starts this file in a new interpreter: ~3,400 times in a
# `make test` run (process accounting, 2026-12-05). hashlib, shutil, subprocess, tarfile, tempfile,
# signal and contextlib are imported by the commands that use them: a start took 34 ms of CPU with
# them imported here and 22.5 ms without (mean of 60 runs each, same machine, quiet).

USAGE = (
    "usage: upkeep-agent version | health | disk | stage PACKAGE SHA256 | upgrade VERSION"
    " | logs collect --since ISO --until ISO | tunnel start|status|stop"
)
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
# Fixed-width UTC stamps so `logs collect` can compare lines as bytes instead of parsing each one.
STAMP = "%Y-%m-%dT%H:%M:%S.%f+00:00"
HANG_SECONDS = 3600.0
EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_TEMPFAIL, EX_CONFIG = 64, 65, 66, 75, 78


class Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).strftime(STAMP)


class Node:
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            config = json.loads((root / "agent.json").read_text())
        except (OSError, ValueError) as exc:
            raise Fail(EX_CONFIG, f"cannot read {root / 'agent.json'}: {exc}") from None
        self.hostname = str(config["hostname"])
        self.upgrade_seconds = float(config.get("upgrade_seconds", 0.0))
        self.health_delay = float(config.get("health_delay", 0.0))

    @property
    def fault(self) -> str:
        try:
            return (self.root / "fault").read_text().strip()
        except FileNotFoundError:
            return ""

    @property
    def version(self) -> str:
        return (self.root / "version").read_text().strip()

    def disk_free(self) -> int:
        if self.fault == "disk-full":
            return 0
        stat = os.statvfs(self.root)  # shutil.disk_usage's "free", without importing shutil
        return stat.f_bavail * stat.f_frsize

    def log(self, line: str) -> None:
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        # One write() of one line in O_APPEND mode: concurrent sessions never interleave mid-line.
        with open(logs / "product.log", "a", encoding="utf-8") as fh:
            fh.write(f"{stamp()} {self.hostname} upkeep-agent[{os.getpid()}]: {line}\n")


def write_atomic(path: Path, data: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(data)
    os.replace(tmp, path)


def cmd_health(node: Node) -> tuple[int, str]:
    if node.fault == "unhealthy":
        return 1, "unhealthy: simulated fault"
    if node.fault == "bad-upgrade" and (node.root / "upgraded_at").exists():
        return 1, "unhealthy: service failed to start after the upgrade (simulated fault)"
    try:
        since = time.time() - float((node.root / "upgraded_at").read_text())
    except (FileNotFoundError, ValueError):
        since = float("inf")
    return (1, "starting") if since < node.health_delay else (0, "healthy")


def _hold(node: Node, what: str, fault: str) -> None:
    """Faults hold-upgrade and hold-stage: the command waits, under way on the node, until the fault is
    cleared (a test chooses the moment it ends, e.g. closes the support tunnel meanwhile), then goes on."""
    node.log(f"{what}: held until the fault is cleared (simulated)")
    until = time.monotonic() + HANG_SECONDS
    while node.fault == fault and time.monotonic() < until:
        time.sleep(0.05)


def cmd_stage(node: Node, package: str, expected: str) -> tuple[int, str]:
    import hashlib
    import shutil
    import tarfile

    if node.fault == "hold-stage":
        _hold(node, f"stage {package}", "hold-stage")
    if node.fault == "disk-full":
        raise Fail(3, "No space left on device")
    path = node.root / "incoming" / package  # absolute PACKAGE wins over the join
    if not path.is_file():
        raise Fail(EX_NOINPUT, f"no such package: {path}")
    digest = hashlib.sha256(b"corrupted in transit" if node.fault == "corrupt-package" else b"")
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise Fail(2, f"checksum mismatch: expected {expected} got {digest.hexdigest()}")
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.extractfile("VERSION")
            version = member.read(64).decode().strip() if member else ""
    except (tarfile.TarError, KeyError, OSError, UnicodeDecodeError) as exc:
        raise Fail(EX_DATAERR, f"not a product package: {path}: {exc}") from None
    if not VERSION_RE.match(version):
        raise Fail(EX_DATAERR, f"not a product package: {path}: bad VERSION {version!r}")
    staged = node.root / "staged"
    staged.mkdir(exist_ok=True)
    tmp = staged / f".{version}.{os.getpid()}.tmp"
    shutil.copyfile(path, tmp)
    os.replace(tmp, staged / f"{version}.tar.gz")
    return 0, f"staged {version}"


def cmd_upgrade(node: Node, target: str) -> tuple[int, str]:
    if not VERSION_RE.match(target):
        raise Fail(EX_USAGE, f"bad version {target!r} (expected MAJOR.MINOR.PATCH)")
    # A second upgrade racing the first is a scheduler bug; refuse it loudly instead of queueing it.
    with open(node.root / ".upgrade.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Fail(EX_TEMPFAIL, "another upgrade is in progress") from None
        old = node.version
        if old == target:
            return 0, f"already at {target}"
        if not (node.root / "staged" / f"{target}.tar.gz").is_file():
            raise Fail(4, f"not staged: {target}")
        fault = node.fault
        if fault == "hold-upgrade":  # holding the lock
            _hold(node, f"upgrade {target}", fault)
        if fault == "fail-upgrade":
            raise Fail(1, "upgrade failed: simulated fault")
        if fault == "hang":
            node.log(f"upgrade {target}: hanging (simulated fault)")
            time.sleep(HANG_SECONDS)
            raise Fail(1, "upgrade failed: hung")
        time.sleep(node.upgrade_seconds)
        write_atomic(node.root / "version", target + "\n")
        write_atomic(node.root / "upgraded_at", repr(time.time()))
        entry = {"at": datetime.now(UTC).isoformat(), "from": old, "to": target, "pid": os.getpid()}
        with open(node.root / "upgrades.log", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
    return 0, f"upgraded {old} -> {target}"


def _bound(text: str) -> bytes:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return stamp(when).encode()


def _line_stamp(line: bytes) -> bytes | None:
    head = line[:32]
    if len(head) == 32 and head[10:11] == b"T" and head[19:20] == b"." and head.endswith(b"+00:00"):
        return head
    token = line.split(None, 1)[0] if line.strip() else b""
    try:
        return _bound(token.decode())
    except (ValueError, UnicodeDecodeError):
        return None  # continuation line: follows the decision for the line before it


def cmd_collect(node: Node, args: list[str]) -> tuple[int, str]:
    import contextlib
    import tarfile
    import tempfile

    opts = dict(zip(args[::2], args[1::2], strict=False))
    if len(args) != 4 or set(opts) != {"--since", "--until"}:
        raise Fail(EX_USAGE, USAGE)
    try:
        since, until = _bound(opts["--since"]), _bound(opts["--until"])
    except ValueError as exc:
        raise Fail(EX_USAGE, f"bad time: {exc}") from None
    out = node.root / "outgoing"
    out.mkdir(exist_ok=True)
    source = node.root / "logs" / "product.log"
    lines = 0
    # Stream line by line into a temp file: product logs can be hundreds of MB, memory stays flat.
    with tempfile.TemporaryDirectory(dir=out, prefix=".collect-") as tmpdir:
        picked = Path(tmpdir) / "product.log"
        with open(picked, "wb") as dst:
            keep = False
            with contextlib.suppress(FileNotFoundError), open(source, "rb") as src:
                for line in src:
                    at = _line_stamp(line)
                    if at is not None:
                        keep = since <= at <= until
                    if keep:
                        dst.write(line)
                        lines += 1
        metrics = {
            "hostname": node.hostname,
            "version": node.version,
            "disk_free": node.disk_free(),
            "uptime_seconds": round(time.time() - _booted(node), 3),
            "collected_at": datetime.now(UTC).isoformat(),
            "since": opts["--since"],
            "until": opts["--until"],
            "product_log_lines": lines,
        }
        (Path(tmpdir) / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        bundle = Path(tmpdir) / "bundle.tar.gz"
        with tarfile.open(bundle, "w:gz", compresslevel=6) as tar:
            tar.add(picked, "product.log")
            if (node.root / "upgrades.log").is_file():
                tar.add(node.root / "upgrades.log", "upgrades.log")
            tar.add(Path(tmpdir) / "metrics.json", "metrics.json")
        base = f"diag-{node.hostname}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        for n in range(1000):  # never overwrite an earlier bundle from the same second
            target = out / (f"{base}.tar.gz" if n == 0 else f"{base}-{n}.tar.gz")
            try:
                os.link(bundle, target)
                break
            except FileExistsError:
                continue
        else:
            raise Fail(EX_TEMPFAIL, f"too many bundles named {base}")
    return 0, str(target)


def _booted(node: Node) -> float:
    try:
        return float((node.root / "booted_at").read_text())
    except (FileNotFoundError, ValueError):
        return (node.root / "agent.json").stat().st_mtime


# -- the support tunnel: the customer starts, watches and stops it; Upkeep never does -------------------
# `tunnel start` leaves a supervisor (this file, `tunnel _supervise`, in a session of its own) that keeps
# `ssh -N -R 127.0.0.1:PORT:127.0.0.1:SSHD_PORT` to the vendor's tunnel server up, starting it again
# when it exits; `stop` ends the supervisor's whole process group. Everything goes to logs/tunnel.log.
TUNNEL_UP = "remote forward success"  # ssh -v's line once the server listens for us
TUNNEL_WAIT = 15.0
_RETRY = (1.0, 2.0, 5.0, 10.0, 30.0)


def _tunnel_config(node: Node) -> dict[str, object]:
    config = json.loads((node.root / "agent.json").read_text()).get("tunnel")
    if not config:
        raise Fail(EX_CONFIG, f"{node.hostname} has no support tunnel configured (agent.json)")
    return dict(config)


def _tunnel_log(node: Node, line: str) -> None:
    (node.root / "logs").mkdir(exist_ok=True)
    with open(node.root / "logs" / "tunnel.log", "a", encoding="utf-8") as fh:
        fh.write(f"{stamp()} {node.hostname} tunnel[{os.getpid()}]: {line}\n")


def _tunnel_pid(node: Node) -> int | None:
    """The live supervisor's pid (its command line checked: a recycled pid is never taken for it)."""
    try:
        pid = int((node.root / "tunnel.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"_supervise" in cmdline and str(node.root).encode() in cmdline and state != "Z" else None


def _ssh_argv(node: Node, config: dict[str, object]) -> list[str]:
    return [
        "ssh", "-N", "-v", "-E", str(node.root / "logs" / "tunnel.log"),
        "-R", f"127.0.0.1:{config['listen_port']}:127.0.0.1:{config['sshd_port']}",
        "-i", str(config["identity"]), "-p", str(config["server_port"]),
        "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={config['known_hosts']}",
        "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ConnectTimeout=10", "-F", "/dev/null",
        f"{config['user']}@{config['server_host']}",
    ]  # fmt: skip


def _supervise(node: Node) -> int:
    import contextlib
    import signal
    import subprocess

    config = _tunnel_config(node)
    stopping: list[bool] = []
    child: list[subprocess.Popen[bytes]] = []

    def stop(_signum: int, _frame: object) -> None:
        stopping.append(True)
        for proc in child:
            with contextlib.suppress(OSError):
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    attempt = 0
    while not stopping:
        proc = subprocess.Popen(_ssh_argv(node, config), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        child[:] = [proc]
        _tunnel_log(node, f"ssh started (pid {proc.pid}) to {config['server_host']}:{config['server_port']}")
        started = time.monotonic()
        code = proc.wait()
        if stopping:
            break
        attempt = 0 if time.monotonic() - started > 60 else attempt + 1
        pause = _RETRY[min(attempt, len(_RETRY) - 1)]
        _tunnel_log(node, f"ssh exited {code}; starting it again in {pause:g} s")
        deadline = time.monotonic() + pause
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    _tunnel_log(node, "stopped")
    return 0


def _tunnel_since(node: Node) -> str | None:
    """When the running ssh's forward was granted, from the tunnel log (None: not granted yet)."""
    try:
        lines = (node.root / "logs" / "tunnel.log").read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    since = started = None
    for line in lines:
        if " tunnel[" in line and "ssh started" in line:
            since, started = None, line.split(" ", 1)[0]  # ssh's own lines carry no time
        elif TUNNEL_UP in line and since is None:
            since = started
    return since


def _ssh_alive(node: Node, supervisor: int) -> bool:
    import contextlib

    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == supervisor and fields[0] != "Z":
                    return True
    return False


def cmd_tunnel(node: Node, action: str) -> tuple[int, str]:
    import contextlib
    import signal
    import subprocess

    pid = _tunnel_pid(node)
    if action == "_supervise":
        return _supervise(node), ""
    if action == "status":
        if pid is None:
            return 3, "tunnel stopped"
        since = _tunnel_since(node) if _ssh_alive(node, pid) else None
        if since is None:
            return 1, f"tunnel connecting (supervisor pid {pid}; see {node.root / 'logs' / 'tunnel.log'})"
        return 0, f"tunnel up since {since} (supervisor pid {pid})"
    if action == "stop":
        if pid is None:
            return 0, "tunnel already stopped"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _tunnel_pid(node) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if _tunnel_pid(node) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _tunnel_log(node, "stop asked by the customer")
        return 0, "tunnel stopped"
    if action != "start":
        raise Fail(EX_USAGE, USAGE)
    config = _tunnel_config(node)
    if pid is not None:
        return 0, f"tunnel already running (supervisor pid {pid})"
    _tunnel_log(node, "start asked by the customer")
    log = node.root / "logs" / "tunnel.log"
    mark = log.stat().st_size
    sup = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), "tunnel", "_supervise", str(node.root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, env={"UPKEEP_NODE_DIR": str(node.root), "PATH": os.environ.get("PATH", "")},
        cwd=node.root,
    )  # fmt: skip
    (node.root / "tunnel.pid").write_text(f"{sup.pid}\n")
    deadline = time.monotonic() + TUNNEL_WAIT
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            fh.seek(mark)
            text = fh.read().decode(errors="replace")
        if TUNNEL_UP in text:
            return (
                0,
                f"tunnel up: 127.0.0.1:{config['listen_port']} on {config['server_host']} (pid {sup.pid})",
            )
        if "exited" in text or sup.poll() is not None:
            break
        time.sleep(0.05)
    problems = [ln for ln in text.splitlines() if "debug" not in ln][-5:]
    return 1, "tunnel not up yet (it keeps trying; `upkeep-agent tunnel stop` ends it):\n" + "\n".join(
        problems
    )


def dispatch(node: Node, argv: list[str]) -> tuple[int, str]:
    match argv:
        case ["version"]:
            return 0, node.version
        case ["health"]:
            return cmd_health(node)
        case ["disk"]:
            return 0, str(node.disk_free())
        case ["stage", package, sha256]:
            return cmd_stage(node, package, sha256)
        case ["upgrade", version]:
            return cmd_upgrade(node, version)
        case ["logs", "collect", *rest]:
            return cmd_collect(node, rest)
        case ["tunnel", action] | ["tunnel", "_supervise" as action, _]:
            return cmd_tunnel(node, action)
    raise Fail(EX_USAGE, USAGE)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = os.environ.get("UPKEEP_NODE_DIR")
    if not root:
        print("upkeep-agent: UPKEEP_NODE_DIR is not set", file=sys.stderr)
        return EX_CONFIG
    try:
        node = Node(Path(root))
    except Fail as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    try:
        code, out = dispatch(node, args)
        print(out)
        node.log(f"{' '.join(args)} -> {code} {out}")
    except Fail as exc:
        print(exc.message, file=sys.stderr)
        node.log(f"{' '.join(args)} -> {exc.code} {exc.message}")
        code = exc.code
    return code


if __name__ == "__main__":
    sys.exit(main())
