"""`make demo` is the README's first command: `upkeep demo` starts a lab, imports it, updates one
cluster node by node through the Prefect flow, prints what the nodes logged and where to look, and
takes the lab down again. Run here as the real command in processes of their own, against this worker's
Prefect test server (a temporary server is what a fresh machine gets; `update`'s tests cover that).

One story, so that it costs one whole demo and two partial ones (~20 s each whole): two operators in
one checkout, the first demo killed mid-update, and the demo after it, which must work as on a fresh
machine."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import forkserver
from tests.support.cli import home_env, no_traceback
from upkeep.demo import hint_env
from upkeep.lab.lab import Lab


def _demo_env(home: Path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return home_env(home, PREFECT_API_URL=str(PREFECT_API_URL.value()), DO_NOT_TRACK="1")


def _until(proc: forkserver.Forked | subprocess.Popen[bytes], out: Path, pattern: str) -> None:
    """Until the demo's output matches `pattern` (it must still be running then)."""
    deadline = time.monotonic() + 180
    while not re.search(pattern, out.read_text(), re.M):
        assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
        time.sleep(0.05)


def _assert_a_whole_demo(out: str, demo: Path, tmp_path: Path) -> None:
    """What a demo that went well printed, and that the run it names is there, done."""
    assert f"1. starting a lab under {demo / 'lab'}" in out
    assert re.search(r"^   customer: 2 created; .*cluster: 2 created; node: 6 created", out, re.M), out
    [cluster] = re.findall(r"3\. updating (\S+) to ", out)
    upgraded = re.findall(rf"   ({re.escape(cluster)}-n\d): (\S+) -> (\S+) at ", out)
    assert len(upgraded) == 3 and len({node for node, *_ in upgraded}) == 3, out
    assert "demo done in " in out
    [run_id] = re.findall(
        rf"records   {re.escape(str(demo / 'upkeep.db'))}: {re.escape(hint_env(demo))} \S+ show (\d+)", out
    )
    assert re.search(
        r"^  Prefect   the flow run in the UI: http://127\.0\.0\.1:\d+/runs/flow-run/\S+$", out, re.M
    ), out
    assert re.search(r"portal .* portal serve; sign in as it@acme\.example", out), out
    assert re.search(r"^ +http://127\.0\.0\.1:\d+/signin/link\?t=\S+$", out, re.M), out
    # What the hint says to run shows the run the demo made, done, every node once.
    shown = forkserver.run(["show", run_id, "--json"], env=home_env(demo), cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert run["state"] == "succeeded" and run["cluster"] == cluster, run


def test_a_second_demo_refuses_a_killed_one_is_cleaned_up_and_the_next_works_as_on_a_fresh_machine(
    tmp_path: Path, prefect_harness: None
) -> None:
    home = tmp_path / "home"
    env = _demo_env(home)
    demo = home / "demo"  # a home that is not the default one keeps its demo inside it
    first_out = tmp_path / "first.out"
    with first_out.open("w") as out:
        first = forkserver.popen(["demo"], env=env, cwd=tmp_path, stdout=out, stderr=out)
    try:
        # Two operators, one checkout: the second's `lab.down()` stopped the first's lab under its
        # update. Now it refuses at once with one line naming the home and the first's pid.
        _until(first, first_out, r"^1\. starting a lab")
        second = forkserver.run(["demo"], env=env, cwd=tmp_path, timeout=120)
        no_traceback(second)
        assert (second.returncode, second.stdout) == (1, ""), second.stdout + second.stderr
        [line] = second.stderr.splitlines()
        assert line.startswith(f"error: a demo is already running in {demo} (pid {first.pid})"), line
        # kill -9 of the first while a node upgrades (a closed terminal, the OOM killer): its lab keeps
        # running and its run stays `running` with no flow left to end it. The next demo was refused at
        # its import for good ("upgrade run 1 is running; change the cluster after it ends").
        _until(first, first_out, r"-n1 upgrade started")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert Lab(demo / "lab").status()["up"] is True  # what the killed demo left

    result = forkserver.run(["demo"], env=env, cwd=tmp_path, timeout=240)

    assert result.returncode == 0, result.stdout + result.stderr
    no_traceback(result)
    _assert_a_whole_demo(result.stdout, demo, tmp_path)
    # And nothing of the lab is left running (`make demo KEEP=1` is the one that keeps it).
    assert Lab(demo / "lab").status()["up"] is False


def test_a_demo_whose_prefect_server_does_not_answer_refuses_before_it_starts_anything(
    tmp_path: Path,
) -> None:
    """A PREFECT_API_URL left from another shell, its server gone: one line naming it, before the lab,
    the last demo's records or its lock are touched (it was found only at the update, the lab started
    and the records deleted)."""
    import socket

    home = tmp_path / "home"
    demo = home / "demo"
    demo.mkdir(parents=True)
    (demo / "upkeep.db").write_bytes(b"the last demo's records")
    with socket.socket() as closed:  # bound, never listening: refused, and no one else gets the port
        closed.bind(("127.0.0.1", 0))
        api = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
        result = forkserver.run(
            ["demo"], env=home_env(home, PREFECT_API_URL=api, DO_NOT_TRACK="1"), cwd=tmp_path, timeout=120
        )
    no_traceback(result)
    assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: PREFECT_API_URL {api}: ") and line.endswith("nothing was started"), line
    assert (demo / "upkeep.db").read_bytes() == b"the last demo's records"
    assert sorted(p.name for p in demo.iterdir()) == ["upkeep.db"]  # no lab, no lock, no portal


def test_a_demo_whose_prefect_url_is_not_the_api_refuses_before_it_starts_anything(tmp_path: Path) -> None:
    """PREFECT_API_URL=http://host:4200, the UI's address without /api: the UI answers every path
    with its page (200, HTML), /health included, so the check passed; the lab was started and the last
    demo's records deleted before the update found no API."""
    import http.server
    import threading

    class EveryPathAPage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>Prefect</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    home = tmp_path / "home"
    demo = home / "demo"
    demo.mkdir(parents=True)
    (demo / "upkeep.db").write_bytes(b"the last demo's records")
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), EveryPathAPage) as ui:
        threading.Thread(target=ui.serve_forever, daemon=True).start()
        api = f"http://127.0.0.1:{ui.server_address[1]}"
        result = forkserver.run(
            ["demo"], env=home_env(home, PREFECT_API_URL=api, DO_NOT_TRACK="1"), cwd=tmp_path, timeout=120
        )
        ui.shutdown()
    no_traceback(result)
    assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: PREFECT_API_URL {api}: ") and "/api" in line, line
    assert (demo / "upkeep.db").read_bytes() == b"the last demo's records"
    assert sorted(p.name for p in demo.iterdir()) == ["upkeep.db"]  # no lab, no lock, no portal


@pytest.mark.parametrize(
    ("api", "shown"),
    [
        ("http://ops:s3cret@[::1/api", "http://[::1/api"),
        # httpx refuses it (InvalidURL, no HTTPError): "unexpected InvalidURL ... a bug in Upkeep"
        ("http://ops:s3cret@127.0.0.1:1/a\x1b[2Jpi", "http://127.0.0.1:1/a\\x1b[2Jpi"),
    ],
    ids=["bracket", "control-character"],
)
def test_a_demo_whose_prefect_url_does_not_parse_is_one_line_not_prefects_traceback(
    tmp_path: Path, api: str, shown: str
) -> None:
    """PREFECT_API_URL=http://[::1/api (a bracket left off): Prefect's settings refuse it when Prefect is
    imported, which printed 'Failed to initialize plugins' and a 40-line pydantic traceback (the error's
    explanation imported Prefect again). The password in it is never shown."""
    home = tmp_path / "home"
    demo = home / "demo"
    demo.mkdir(parents=True)
    (demo / "upkeep.db").write_bytes(b"the last demo's records")

    result = subprocess.run(  # a new interpreter: the forkserver's Prefect is imported with other settings
        [sys.executable, "-m", "upkeep", "demo"],
        env=home_env(home, PREFECT_API_URL=api, DO_NOT_TRACK="1"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: PREFECT_API_URL {shown}: not a URL (") and "s3cret" not in line, line
    assert (demo / "upkeep.db").read_bytes() == b"the last demo's records"
    assert sorted(p.name for p in demo.iterdir()) == ["upkeep.db"]
