"""`upkeep release ...`: the release catalog (add, sync) and the monthly cloud release (plan, status,
resume). Catalog entries are checked with the inventory file's own model (`inventory.importer_model.Release`)
and every entry is checked before any is written. Refusals are one line and exit 1.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table
from sqlalchemy.engine import Engine

from inventory.importer_model import Release, show
from inventory.importer_yaml import explain
from inventory.releases import ReleaseEntry, ReleaseError
from upkeep.cli_common import JsonOpt
from upkeep.console import CliError, console, print_json

release_app = typer.Typer(
    help="Cloud releases: the catalog, the monthly rollout and its waves.", no_args_is_help=True
)

VersionArg = Annotated[str, typer.Argument(help="Release version, e.g. 9.10.0.")]
INDEX = "releases/index.json"


def _engine() -> Engine:
    from upkeep.cli_common import open_engine as engine  # also wires flows' Runtime to the same settings

    return engine()


def check_entry(raw: Any, where: str) -> tuple[ReleaseEntry | None, list[str]]:
    """A release {"version", "package", "sha256", "from", ["deadline"], ["size"]} checked like the
    inventory file's `releases:` items (the same model); each problem is prefixed with `where`."""
    if not isinstance(raw, dict):
        return None, [f"{where}: expected an object with version, package, sha256 and from"]
    problems = []
    try:
        release = Release.model_validate({key: value for key, value in raw.items() if key != "size"})
    except ValidationError as exc:
        release = None
        problems = [
            f"{where}: {explain(error, root=Release).removeprefix('release: ')}"
            for error in exc.errors(include_url=False)
        ]
    size = raw.get("size", 0)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        problems.append(f"{where}: size {show(size)} is not a byte count")
    if release is None or problems:
        return None, problems
    entry = ReleaseEntry(
        release.version, release.package, release.sha256, list(release.from_), release.deadline
    )
    return entry, []


def parse_index(text: str, where: str) -> list[ReleaseEntry]:
    """The file server's releases/index.json: every entry checked before any is returned."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReleaseError(f"{where}: not JSON ({exc})") from None
    except RecursionError:  # the file server's bytes decide the depth; json raises this, not ValueError
        raise ReleaseError(f"{where}: not a release index (nested too deeply)") from None
    if not isinstance(data, list):
        raise ReleaseError(f"{where}: expected a JSON list of releases")
    entries, problems, versions = [], [], set()
    for number, raw in enumerate(data, 1):
        named = isinstance(raw, dict) and isinstance(raw.get("version"), str)
        label = f"{where} entry {number}" + (f" ({raw['version']})" if named else "")
        entry, found = check_entry(raw, label)
        problems += found
        if entry is not None and entry.version in versions:
            problems.append(f"{label}: version {entry.version} is listed twice")
        elif entry is not None:
            versions.add(entry.version)
            entries.append(entry)
    if problems:
        more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise ReleaseError("; ".join(problems[:3]) + more + "; nothing was written")
    return entries


def _save(
    entries: list[ReleaseEntry], source: str, *, quiet: bool = False, unverified: bool = False
) -> dict[str, int]:
    """Save the releases and, in the same transaction, re-check the planned updates to them (a new
    deadline may leave a slot too late): each one moved or held is printed. `unverified`: their
    SHA-256 was not checked against the file server (`release add --unverified`), audited as such."""
    from flows.integrity import recheck_planned
    from inventory.db import session_scope
    from inventory.releases import save_releases
    from inventory.repo import record_audit

    try:
        with session_scope(_engine()) as session:
            counts = save_releases(entries, session=session, actor=getpass.getuser(), source=source)
            for entry in entries if unverified else []:
                detail = {"package": entry.package, "sha256": entry.sha256, "why": "added with --unverified"}
                record_audit(
                    getpass.getuser(),
                    "release.unverified",
                    f"release/{entry.version}",
                    detail,
                    session=session,
                )
            outcomes = recheck_planned(
                now=datetime.now(UTC),
                session=session,
                actor=getpass.getuser(),
                versions=[entry.version for entry in entries],
                why=f"release change ({source})",
            )
    except ReleaseError as exc:
        raise CliError(f"{exc}; nothing was written") from None
    for outcome in [] if quiet else outcomes:
        console.print(outcome.describe(), markup=False, soft_wrap=True)
    return counts


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in counts.items())


@release_app.command("add")
def add(
    version: VersionArg,
    package: Annotated[
        str, typer.Option("--package", help="Path on the file server, e.g. releases/x.tar.gz.")
    ],
    sha256: Annotated[str, typer.Option("--sha256", help="SHA-256 of the package, 64 lowercase hex digits.")],
    from_: Annotated[str, typer.Option("--from", help="Versions it installs over, comma-separated.")],
    deadline: Annotated[str | None, typer.Option(help="Upgraded by, e.g. 2026-12-31T00:00:00Z.")] = None,
    unverified: Annotated[
        bool, typer.Option("--unverified", help="Do not check the SHA-256 against the file server's package.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Add a release to the catalog (checked like the inventory file's `releases:`), after checking
    that the package on the file server has that SHA-256 (refused if it cannot be reached)."""
    raw: dict[str, Any] = {"version": version, "package": package, "sha256": sha256}
    raw["from"] = [part.strip() for part in from_.split(",") if part.strip()]
    if deadline is not None:
        try:
            raw["deadline"] = datetime.fromisoformat(deadline.strip())
        except ValueError:
            raise CliError(
                f"--deadline {deadline!r} is not a date and time, e.g. 2026-12-31T00:00:00Z"
            ) from None
    entry, problems = check_entry(raw, f"release {version}")
    if entry is None:
        raise CliError("; ".join(problems) + "; nothing was written")
    if not unverified:
        _verify_package(version, package, sha256.strip().lower())
    counts = _save([entry], f"release/{version}", unverified=unverified, quiet=json_out)
    if json_out:
        print_json({"version": entry.version, "verified": not unverified, **counts})
        return
    console.print(f"release {version}: {_counts(counts)}")
    if unverified:
        console.print(
            f"release {version}: its SHA-256 was not checked against the file server (--unverified, "
            "audited); each update still verifies the package it downloads",
            markup=False,
        )


def _verify_package(version: str, package: str, sha256: str) -> None:
    """The package on the file server must have `sha256`: fetched (streamed) into a temporary directory
    and hashed there; a mismatch or a file server that cannot be reached refuses the release."""
    import tempfile
    from pathlib import Path

    from flows.runtime import current
    from tasks.fileserver import ChecksumMismatch

    _engine()
    fileserver = current().fileserver
    with tempfile.TemporaryDirectory(prefix="upkeep-release-") as tmp:
        try:
            fileserver.download(package, Path(tmp) / "package", sha256=sha256)
        except ChecksumMismatch as exc:
            raise CliError(f"release {version}: {exc}; nothing was written") from None
        except Exception as exc:
            raise CliError(
                f"release {version}: the SHA-256 of {package} could not be checked on the file server "
                f"({exc}); add --unverified to add it unchecked; nothing was written"
            ) from None


@release_app.command("sync")
def sync(
    index: Annotated[str, typer.Option(help="Path of the index on the file server.")] = INDEX,
    json_out: JsonOpt = False,
) -> None:
    """Add the file server's releases (releases/index.json) to the catalog; all entries or none."""
    from flows.runtime import current

    _engine()
    try:
        entries = parse_index(current().fileserver.fetch_text(index), index)
    except ReleaseError as exc:
        raise CliError(str(exc)) from None
    counts = _save(entries, index, quiet=json_out)
    if json_out:
        print_json({"index": index, "versions": [e.version for e in entries], **counts})
    else:
        console.print(f"{index}: {len(entries)} release(s): {_counts(counts)}")


@release_app.command("plan")
def plan(
    version: Annotated[
        str | None, typer.Option(help="Release to roll out (default: newest eligible).")
    ] = None,
    max_failures: Annotated[int, typer.Option(help="Halt after more failures than this.")] = 1,
    max_failure_rate: Annotated[float | None, typer.Option(help="Halt above this % of started.")] = None,
    soak_minutes: Annotated[float, typer.Option(help="Wait after a ring before the next.")] = 60,
    max_concurrent: Annotated[int, typer.Option(help="Updates of the release at once.")] = 10,
    per_customer_limit: Annotated[int, typer.Option(help="Updates of one customer at once.")] = 2,
    json_out: JsonOpt = False,
) -> None:
    """Run the cloud-release flow here: slot and announce the release for every cloud cluster."""
    import prefect

    from flows.cloud_release import cloud_release, pick_release
    from flows.runtime import current
    from inventory.db import session_scope
    from scheduling.waves import ErrorBudget
    from upkeep.bootstrap import quiet_prefect

    engine = _engine()
    try:  # refuse bad requests before Prefect starts
        ErrorBudget(max_failures, max_failure_rate)
        with session_scope(engine) as session:
            target = pick_release(version, session=session, now=current().clock()).version
    except (ReleaseError, ValueError) as exc:
        raise CliError(str(exc)) from None
    from upkeep.updates import prefect_answers

    prefect_answers()  # one line naming the API (or temporary server) that does not answer
    with quiet_prefect(), prefect.tags("source:cli", f"release:{target}"):
        state = cloud_release(
            version=target,
            max_failures=max_failures,
            max_failure_rate=max_failure_rate,
            soak_minutes=soak_minutes,
            max_concurrent=max_concurrent,
            per_customer_limit=per_customer_limit,
            return_state=True,
        )
    if state.is_failed():
        raise CliError(f"planning release {target} failed: {state.message}")
    result = state.result()
    if json_out:
        print_json(result)
        return
    console.print(f"release {target}: {result['summary']}", markup=False)
    _print_status(result["status"])


def _print_slots(data: dict[str, Any]) -> None:
    """Every announced slot with its ring, in ring order: what each customer was told."""
    table = Table("ring", "cluster", "customer", "slot (UTC)", "status")
    for ring in data["rings"]:
        for row in ring["clusters"]:
            if row["slot_start"]:
                slot = datetime.fromisoformat(row["slot_start"]).astimezone(UTC).strftime("%a %Y-%m-%d %H:%M")
                table.add_row(ring["ring"], row["cluster"], row["customer"], slot, row["status"])
    if table.row_count:
        console.print(table)


@release_app.command("status")
def status(version: VersionArg, json_out: JsonOpt = False) -> None:
    """Per ring: planned, notified, running, paused, stalled, done, failed, deferred, skipped, blocked;
    and why."""
    from flows.rollout import release_status
    from inventory.db import session_scope

    with session_scope(_engine()) as session:
        data = release_status(version, session=session)
    if json_out:
        print_json(data)
    else:
        _print_status(data)


@release_app.command("resume")
def resume(version: VersionArg, json_out: JsonOpt = False) -> None:
    """Continue a halted rollout: its failures so far are acknowledged, the budget counts afresh."""
    from flows.rollout import resume_rollout
    from inventory.db import session_scope
    from inventory.types import utcnow

    try:
        with session_scope(_engine()) as session:
            message = resume_rollout(version, session=session, now=utcnow(), actor=getpass.getuser())
    except ReleaseError as exc:
        raise CliError(str(exc)) from None
    if json_out:
        print_json({"version": version, "resumed": True, "message": message})
        return
    console.print(message, markup=False)


def _print_status(data: dict[str, Any]) -> None:
    console.print(f"[bold]release {data['version']}[/]: {data['state']}")
    if data["halted"]:
        console.print(f"halted: {data['halted_reason']}", markup=False)
    from inventory.releases import ATTENTION, COLUMNS

    columns = COLUMNS
    table = Table("ring", *columns)
    for ring in data["rings"]:
        table.add_row(ring["ring"], *(str(ring[c]) for c in columns))
    console.print(table)
    _print_slots(data)
    for ring in data["rings"]:
        for row in ring["clusters"]:
            if row["status"] in ATTENTION:
                console.print(
                    f"  {row['cluster']} ({ring['ring']}) {row['status']}: {row['reason']}", markup=False
                )
