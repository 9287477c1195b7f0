"""Node agent: emulates the product on one lab node. STDLIB ONLY - it runs "on the node".

The lab copies this file to <lab>/agent.py; `<lab>/bin/upkeep-agent` runs it with `python3 -I -S`.
sshd hands every session UPKEEP_NODE_DIR (sshd_config SetEnv), which is all the node state there is:
agent.json (config), version, fault, staged/, incoming/, outgoing/, logs/product.log, upgrades.log.
Output lines and exit codes are a contract the upgrade tasks parse; change them only together.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

USAGE = (
    "usage: upkeep-agent version | health | disk | stage PACKAGE SHA256 | upgrade VERSION"
    " | logs collect --since ISO --until ISO"
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
        return 0 if self.fault == "disk-full" else shutil.disk_usage(self.root).free

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


def cmd_stage(node: Node, package: str, expected: str) -> tuple[int, str]:
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
