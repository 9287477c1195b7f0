"""Live progress (issue #16 item 4), through the real `upkeep` process against the lab: read from the
steps our flows record, a line per event when stdout is not a terminal, a Rich live table (a row per
node: step, elapsed, outcome) on a terminal; Prefect's own log lines only with `--verbose`."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from typing import Any

import pytest

from tests.integration.conftest import nodes_of
from tests.support import forkserver

pytestmark = pytest.mark.lab

PREFECT_LINE = re.compile(r"\| (INFO|WARNING|ERROR) +\| ")


@pytest.fixture(scope="module")
def env(lab: Any, prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("progress") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
    for key in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES"):
        env.pop(key, None)
    env.update({f"UPKEEP_{k.upper()}": str(v) for k, v in lab.settings_overrides().items()})
    env.update(
        {
            "UPKEEP_HOME": str(home),
            "UPKEEP_HEALTH_TIMEOUT": "10",
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    imported = _run(env, "inventory", "import", str(lab.inventory_path))
    assert imported.returncode == 0, imported.stderr
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return forkserver.run(args, env=env, timeout=300)


def test_not_a_terminal_one_line_per_event_and_no_prefect_lines(
    lab: Any, env: dict[str, str], fresh_cluster: str
) -> None:
    done = _run(env, "update", fresh_cluster, "--to", "9.10.0")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert not PREFECT_LINE.search(out), out  # Prefect's own log lines: only with --verbose
    lines = done.stdout.splitlines()
    events = [line.split(maxsplit=4)[1:4] for line in lines if line.startswith("update-")]
    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    assert ["(run)", "download", "started"] in events
    for host in hosts:
        for step in ("pre-flight", "distribute", "check", "upgrade", "health", "verify"):
            assert events.index([host, step, "started"]) < events.index([host, step, "succeeded"]), events
    # Node by node: the first node verified before the second starts its upgrade.
    assert events.index([hosts[0], "verify", "succeeded"]) < events.index([hosts[1], "upgrade", "started"])
    # Each step ended once, with how long it took.
    assert all(" after " in line for line in lines if line.startswith("update-") and "succeeded" in line)


def test_a_terminal_gets_a_live_table_a_row_per_node(
    lab: Any, env: dict[str, str], fresh_cluster: str
) -> None:
    primary, replica = pty.openpty()
    proc = forkserver.popen(
        ["update", fresh_cluster, "--to", "9.10.0"],
        env={**env, "COLUMNS": "120", "LINES": "40"},
        stdout=replica,
        stderr=replica,
        text=False,
    )
    os.close(replica)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(primary)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert not PREFECT_LINE.search(screen), screen[-3000:]
    header = next(line for line in screen.splitlines() if "elapsed" in line)
    assert re.findall(r"[a-z]+", header) == [
        "update",
        "node",
        "step",
        "elapsed",
        "outcome",
    ]
    for node in nodes_of(lab, fresh_cluster):
        assert re.search(rf"{node['hostname']} .*verify .*\d+\.\ds .*ok", screen), screen[-3000:]
    assert "update-" not in screen.split("elapsed", 1)[0]  # no plain event lines on a terminal


def test_prefect_log_lines_only_with_verbose(env: dict[str, str]) -> None:
    quiet = _run(env, "dispatch")
    assert quiet.returncode == 0, quiet.stderr
    assert not PREFECT_LINE.search(quiet.stdout + quiet.stderr), quiet.stdout + quiet.stderr
    loud = _run(env, "--verbose", "dispatch")
    assert loud.returncode == 0, loud.stderr
    assert PREFECT_LINE.search(loud.stdout + loud.stderr), loud.stdout + loud.stderr


def test_on_worker_without_a_deployment_is_refused_before_anything_is_written(
    env: dict[str, str], fresh_cluster: str
) -> None:
    _no_product_update_deployment(env["PREFECT_API_URL"])
    before = _run(env, "runs", "--json").stdout
    refused = _run(env, "update", fresh_cluster, "--to", "9.10.0", "--on-worker", "--json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    error = json.loads(refused.stdout)
    assert error["exit"] == 1 and "no deployment product-update/product-update" in error["error"]
    watch = _run(env, "update", fresh_cluster, "--to", "9.10.0", "--watch", "--here", "--json")
    assert watch.returncode == 1 and "--watch goes with --on-worker" in json.loads(watch.stdout)["error"]
    assert _run(env, "runs", "--json").stdout == before  # no run recorded


def _no_product_update_deployment(api_url: str) -> None:
    """This test's premise, made true: the worker's Prefect test server is shared by every module the
    worker runs (tests/support/fixtures.py `prefect_harness`), and in one loaded full run (15:03 this
    session, 4,027 s) the server had a `product-update` deployment from an earlier module when this test
    ran, so the refusal named the missing worker instead (the deployment is read first). Deleted here if
    present, whoever made it: that module has ended (--dist loadfile runs a worker's modules in turn)."""
    import httpx

    with httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=60) as http:
        found = http.get("deployments/name/product-update/product-update")
        if found.status_code == 200:
            http.delete(f"deployments/{found.json()['id']}").raise_for_status()
        else:
            assert found.status_code == 404, found.text
