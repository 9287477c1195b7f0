"""Diagnostics from product nodes: have the node's agent collect its logs for a time range, fetch the
archive over SFTP, redact secrets while streaming it line by line to disk, and pack a bundle.

Redaction (`Redactor`, patterns in `PATTERNS`) is fail-closed and counted per pattern; nothing it
removes is ever logged. A private key's whole PEM block goes, from BEGIN to END: a BEGIN without an END
drops the rest of the file. A line over `MAX_LINE` bytes is dropped whole (it could hide anything).
Memory stays flat whatever the log size: archives and files are streamed, never read whole.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tasks.fileserver import CHUNK, safe_remote_path, sha256_of
from tasks.node import AGENT
from tasks.ssh import RemoteRunner

MAX_LINE = 1 << 20
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


# -- redaction -------------------------------------------------------------------------------------------
_KEY_WORDS = rb"(?:password|passwd|passphrase|token|secret|api[_-]?key|apikey|access[_-]?key|credential)"
_PEM = rb"-----%s (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_PEM_BEGIN = re.compile(_PEM % b"BEGIN")
_PEM_END = re.compile(_PEM % b"END")
_PEM_ONE_LINE = re.compile(_PEM % b"BEGIN" + rb".*?" + _PEM % b"END")
_NOT_DONE = rb"(?![\"']?\[REDACTED)"
_VALUE = rb"(?P<val>" + _NOT_DONE + rb"(?:\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s\"',;&}\])]+))"
# (name, pattern); a pattern's `val` group (or the whole match) is replaced. Order matters: the
# specific forms go first, and no pattern matches a value another one already redacted.
PATTERNS: list[tuple[str, re.Pattern[bytes]]] = [
    ("bearer", re.compile(rb"(?i)\bbearer\s+" + _NOT_DONE + rb"(?P<val>[A-Za-z0-9\-._~+/]+=*)")),
    ("basic_auth", re.compile(rb"(?i)\bauthorization\s*[:=]\s*basic\s+(?P<val>[A-Za-z0-9+/]+=*)")),
    ("aws_access_key", re.compile(rb"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")),
    ("password", re.compile(rb"(?i)\b[a-z][a-z0-9+.-]*://[^\s:/@]+:(?P<val>" + _NOT_DONE + rb"[^\s@/]+)@")),
    ("password", re.compile(rb"(?i)[\w.-]*(?:password|passwd|passphrase)[\w.-]*[\"']?\s*[:=]\s*" + _VALUE)),
    ("password", re.compile(rb"(?i)--[\w-]*(?:password|passwd|passphrase)[\w-]*\s+(?!-)" + _VALUE)),
    ("token", re.compile(rb"(?i)[\w.-]*" + _KEY_WORDS + rb"s?[\w.-]*[\"']?\s*[:=]\s*" + _VALUE)),
    ("token", re.compile(rb"(?i)--[\w-]*" + _KEY_WORDS + rb"[\w-]*\s+(?!-)" + _VALUE)),
]
# Cheap pre-filter: a line is run through PATTERNS only if its lowercased bytes contain one of these
# words (every pattern needs one), or it holds an AWS key id. Everything else is copied in bulk.
_TRIGGER = re.compile(rb"pass|token|secret|key|credential|bearer|basic|://")
_AWS_KEY = re.compile(rb"(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}")
PATTERN_NAMES = ("private_key", *dict.fromkeys(name for name, _ in PATTERNS), "overlong_line")


def _replacer(name: str, counts: Counter[str]) -> Callable[[re.Match[bytes]], bytes]:
    marker = b"[REDACTED " + name.encode() + b"]"

    def replace(match: re.Match[bytes]) -> bytes:
        counts[name] += 1
        if "val" not in match.re.groupindex:
            return marker
        whole, start, end = match.group(0), *match.span("val")
        value = match.group("val")
        quote = value[:1] if value[:1] in (b'"', b"'") and len(value) > 1 else b""
        offset = match.start()
        return whole[: start - offset] + quote + marker + quote + whole[end - offset :]

    return replace


class Redactor:
    """Streams bytes through the patterns; `counts` says how often each pattern fired."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._in_key = False
        self._skipping = False  # inside an overlong line
        self._subs = [(rx, _replacer(name, self.counts)) for name, rx in PATTERNS]

    def stream(self, src: IO[bytes], dst: IO[bytes]) -> None:
        """Copy `src` to `dst` redacted, in blocks of whole lines (at most ~2 * MAX_LINE in memory)."""
        pending = b""
        while chunk := src.read(CHUNK):
            if self._skipping:
                newline = chunk.find(b"\n")
                if newline < 0:
                    continue
                self._skipping, chunk = False, chunk[newline + 1 :]
            data = pending + chunk if pending else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) >= MAX_LINE:
                self.counts["overlong_line"] += 1
                dst.write(b"[REDACTED overlong_line]\n")
                pending, self._skipping = b"", True
                continue
            pending = data[cut:]
            if cut:
                self._block(data[:cut], dst)
        if pending:
            self._block(pending, dst)

    def text(self, text: str) -> str:
        """A short message (e.g. an error from a node), redacted the same way."""
        out = io.BytesIO()
        self.stream(io.BytesIO(text.encode("utf-8", "replace")), out)
        return out.getvalue().decode("utf-8", "replace")

    def _block(self, data: bytes, dst: IO[bytes]) -> None:
        """Whole lines: untouched runs are written as they are, lines with a trigger go through _line."""
        pos, size, low = 0, len(data), data.lower()
        aws = _AWS_KEY.search(data)
        while pos < size:
            if self._in_key:
                end_marker = _PEM_END.search(data, pos)
                if end_marker is None:
                    return  # the whole block is inside the key
                self._in_key = False
                end = _line_end(data, end_marker.end())
                rest = data[end_marker.end() : end]
                if rest.strip():
                    dst.write(self._line(rest))
                pos = end
                continue
            if aws is not None and aws.start() < pos:
                aws = _AWS_KEY.search(data, pos)
            word = _TRIGGER.search(low, pos)
            hits = [m.start() for m in (word, aws) if m is not None]
            if not hits:
                dst.write(data[pos:])
                return
            hit = min(hits)
            newline = data.rfind(b"\n", pos, hit)
            start = pos if newline < 0 else newline + 1
            end = _line_end(data, hit)
            if start > pos:
                dst.write(data[pos:start])
            dst.write(self._line(data[start:end]))
            pos = end

    def _line(self, line: bytes) -> bytes:
        """One line that may hold a secret; what may be shown of it (possibly b"")."""
        line, n = _PEM_ONE_LINE.subn(b"[REDACTED private_key]", line)
        if n:
            self.counts["private_key"] += n
        for rx, replace in self._subs:
            line = rx.sub(replace, line)
        begin = _PEM_BEGIN.search(line)
        if begin is None:
            return line
        self._in_key = True
        self.counts["private_key"] += 1
        newline = b"\n" if line.endswith(b"\n") else b""
        return line[: begin.start()] + b"[REDACTED private_key]" + newline


def _line_end(data: bytes, at: int) -> int:
    newline = data.find(b"\n", at)
    return len(data) if newline < 0 else newline + 1


def redact_text(text: str) -> str:
    return Redactor().text(text)


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
