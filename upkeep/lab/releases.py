"""Release packages the lab's file server publishes: byte-for-byte reproducible across lab restarts."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

# version -> versions it upgrades from; oldest first.
RELEASES: dict[str, list[str]] = {
    "9.8.0": [],
    "9.9.0": ["9.8.0"],
    "9.10.0": ["9.8.0", "9.9.0"],
}
FILLER_BYTES = 256 * 1024
_EPOCH = 1_700_000_000  # fixed mtimes: same bytes, same sha256, every time the lab comes up


def package_name(version: str) -> str:
    return f"upkeep-product-{version}.tar.gz"


def build_package(version: str) -> bytes:
    """A .tar.gz with a top-level VERSION file and ~256 KiB of deterministic, incompressible filler."""
    filler = hashlib.shake_256(f"upkeep-product-{version}".encode()).digest(FILLER_BYTES)
    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=_EPOCH) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in (("VERSION", f"{version}\n".encode()), ("payload.bin", filler)):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def publish(fileserver_root: Path) -> list[dict[str, Any]]:
    """Write packages, .sha256 files and releases/index.json; returns the index entries."""
    releases = fileserver_root / "releases"
    releases.mkdir(parents=True, exist_ok=True)
    index = []
    for version, sources in RELEASES.items():
        data = build_package(version)
        name = package_name(version)
        digest = hashlib.sha256(data).hexdigest()
        (releases / name).write_bytes(data)
        (releases / f"{name}.sha256").write_text(f"{digest}  {name}\n")
        index.append(
            {
                "version": version,
                "package": f"releases/{name}",
                "sha256": digest,
                "from": list(sources),
                "size": len(data),
            }
        )
    (releases / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index
