"""Diagnostics from product nodes: have the node's agent collect its logs for a time range, fetch the
archive over SFTP, redact secrets while streaming it line by line to disk, and pack a bundle.

Redaction is tasks/redaction.py (detect-secrets' rules and the forms logs have; fail-closed, counted
per rule). Memory stays flat whatever the log size: archives and files are streamed, never read whole.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tasks.fileserver import CHUNK, safe_remote_path, sha256_of
from tasks.node import AGENT
from tasks.redaction import MAX_LINE, PATTERN_NAMES, Redactor, redact_text
from tasks.ssh import RemoteRunner

__all__ = ["MAX_LINE", "PATTERN_NAMES", "Redactor", "redact_text"]  # their home is tasks.redaction
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REMOTE_ARCHIVE = re.compile(r"^/[A-Za-z0-9._/-]+\.tar\.gz$")


class DiagnosticsRefused(ValueError):
    """Input that must not reach a remote command or a file-server path; the message says which."""


class CollectFailed(Exception):
    """The node answered, but its agent could not produce a log archive."""


def safe_segment(value: object, what: str) -> str:
    """`value` as one plain path segment (letters, digits, '.', '_', '-'; no '..', '/', spaces or shell
    metacharacters), else DiagnosticsRefused - before anything is connected to or uploaded."""
    if isinstance(value, str) and _SEGMENT.fullmatch(value) and ".." not in value:
        return value
    raise DiagnosticsRefused(
        f"{what} {str(value)[:80]!r} cannot be used in a file-server path: expected 1-128 of A-Z a-z 0-9 "
        "'.' '_' '-' (no '..', '/', spaces or shell characters)"
    )


def support_path(customer: str, case: str, bundle: str) -> str:
    """support/<customer>/<case>/<bundle>.tar.gz, every segment checked."""
    parts = [
        safe_segment(customer, "customer"),
        safe_segment(case, "case id"),
        safe_segment(bundle, "bundle"),
    ]
    return safe_remote_path("support/" + "/".join(parts) + ".tar.gz")


# -- one node --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleFile:
    path: str  # inside the bundle, e.g. "node-1/product.log"
    sha256: str
    size: int


def fetch_node_logs(
    runner: RemoteRunner, *, since: datetime, until: datetime, dest: Path, timeout: float
) -> Path:
    """Have the node's agent pack its logs for [since, until] and fetch the archive to `dest`."""
    argv = [AGENT, "logs", "collect", "--since", _iso(since), "--until", _iso(until)]
    result = runner.run(argv, timeout=timeout)
    if not result.ok:
        raise CollectFailed(f"log collection failed (exit {result.exit_code}): {redact_text(result.tail(3))}")
    remote = (result.stdout.strip().splitlines() or [""])[-1].strip()
    parts = PurePosixPath(remote).parts
    if not _REMOTE_ARCHIVE.fullmatch(remote) or ".." in parts or "." in parts:
        raise CollectFailed(f"the agent named no usable archive (got {redact_text(remote)[:200]!r})")
    runner.get(remote, dest)
    return dest


def redact_archive(archive: Path, out_dir: Path, prefix: str, redactor: Redactor) -> list[BundleFile]:
    """Every regular file of the node's archive, redacted into `out_dir/<name>`. Member names are
    reduced to plain file names: a node's archive never chooses where we write."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[BundleFile] = []
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            name = PurePosixPath(member.name).name
            source = tar.extractfile(member) if member.isfile() else None
            if source is None or not _SEGMENT.fullmatch(name) or (out_dir / name).exists():
                continue
            with source, (out_dir / name).open("wb", buffering=CHUNK) as dst:
                redactor.stream(source, dst)
            path = out_dir / name
            files.append(BundleFile(f"{prefix}/{name}", sha256_of(path), path.stat().st_size))
    return files


def pack_bundle(dest: Path, manifest: dict[str, Any], files: list[tuple[Path, str]]) -> tuple[str, int]:
    """A .tar.gz of manifest.json and `files` (local path, name in the bundle); returns (sha256, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    with tarfile.open(dest, "x:gz", compresslevel=6) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size, info.mtime, info.mode = len(data), int(datetime.now(UTC).timestamp()), 0o644
        tar.addfile(info, io.BytesIO(data))
        for local, name in files:
            tar.add(local, name, recursive=False)
    return sha256_of(dest), dest.stat().st_size


def _iso(when: datetime) -> str:
    if when.tzinfo is None or when.utcoffset() is None:
        raise DiagnosticsRefused(f"time {when.isoformat()} has no time zone")
    return when.astimezone(UTC).isoformat()
