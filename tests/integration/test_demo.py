"""`make demo` is the README's first command: `upkeep demo` starts a lab, imports it, updates one
cluster node by node through the Prefect flow, prints what the nodes logged and where to look, and
takes the lab down again. Run here as the real command in a process of its own, against this worker's
Prefect test server (a temporary server is what a fresh machine gets; `update`'s tests cover that)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.support import forkserver
from tests.support.cli import home_env, no_traceback
from upkeep.lab.lab import Lab


def test_the_demo_updates_a_cluster_of_its_own_lab_says_where_to_look_and_leaves_no_lab_running(
    tmp_path: Path, prefect_harness: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    env = home_env(home, PREFECT_API_URL=str(PREFECT_API_URL.value()), DO_NOT_TRACK="1")
    demo = home / "demo"  # a home that is not the default one keeps its demo inside it

    result = forkserver.run(["demo"], env=env, cwd=tmp_path, timeout=240)

    assert result.returncode == 0, result.stdout + result.stderr
    no_traceback(result)
    out = result.stdout
    assert f"1. starting a lab under {demo / 'lab'}" in out
    assert re.search(r"^   customer: 2 created; .*cluster: 2 created; node: 6 created", out, re.M), out
    [cluster] = re.findall(r"3\. updating (\S+) to ", out)
    upgraded = re.findall(rf"   ({re.escape(cluster)}-n\d): (\S+) -> (\S+) at ", out)
    assert len(upgraded) == 3 and len({node for node, *_ in upgraded}) == 3, out
    assert "demo done in " in out
    [run_id] = re.findall(
        rf"records   {re.escape(str(demo / 'upkeep.db'))}: UPKEEP_HOME=\S+ \S+ show (\d+)", out
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
    # And nothing of the lab is left running (`make demo KEEP=1` is the one that keeps it).
    assert Lab(demo / "lab").status()["up"] is False


def test_a_second_demo_in_the_same_home_refuses_at_once_and_leaves_the_first_to_finish(
    tmp_path: Path, prefect_harness: None
) -> None:
    """Two operators running `make demo` in one checkout: the second's `lab.down()` stopped the first's
    lab under its running update (which then failed on 'download ... Connection refused; check
    fileserver_url'), and the second failed too ('acme-c1 already has an active update'). The second
    now refuses with one line naming the home, touching nothing; the first finishes."""
    import time

    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    env = home_env(home, PREFECT_API_URL=str(PREFECT_API_URL.value()), DO_NOT_TRACK="1")
    demo = home / "demo"
    first_out = tmp_path / "first.out"
    with first_out.open("w") as out:
        first = forkserver.popen(["demo"], env=env, cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 180
        while "3. updating " not in first_out.read_text() and first.poll() is None:
            assert time.monotonic() < deadline, first_out.read_text()
            time.sleep(0.1)
        second = forkserver.run(["demo"], env=env, cwd=tmp_path, timeout=120)
        assert first.wait(timeout=240) == 0, first_out.read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    no_traceback(second)
    assert second.returncode == 1, second.stdout + second.stderr
    assert second.stdout == "", second.stdout
    [line] = second.stderr.splitlines()
    assert line.startswith(f"error: a demo is already running in {demo} (pid {first.pid})"), line
    assert "demo done in " in first_out.read_text()
    assert Lab(demo / "lab").status()["up"] is False


def test_a_demo_killed_mid_update_leaves_nothing_that_stops_the_next_one(
    tmp_path: Path, prefect_harness: None
) -> None:
    """`kill -9` of a demo while a node upgrades (a closed terminal, the OOM killer): its lab keeps
    running and its run stays `running` in the demo's records. The next demo stops that lab (it did)
    and was refused at its import for good: "cluster 'acme-c1': upgrade run 1 is running; change the
    cluster after it ends", with no flow left to end it."""
    import signal
    import time

    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    env = home_env(home, PREFECT_API_URL=str(PREFECT_API_URL.value()), DO_NOT_TRACK="1")
    demo = home / "demo"
    killed_out = tmp_path / "killed.out"
    with killed_out.open("w") as out:
        killed = forkserver.popen(["demo"], env=env, cwd=tmp_path, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 180
        while not re.search(r"-n1 upgrade started", killed_out.read_text()):
            assert killed.poll() is None and time.monotonic() < deadline, killed_out.read_text()
            time.sleep(0.05)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert Lab(demo / "lab").status()["up"] is True  # what the killed demo left

    result = forkserver.run(["demo"], env=env, cwd=tmp_path, timeout=240)

    assert result.returncode == 0, result.stdout + result.stderr
    no_traceback(result)
    assert "demo done in " in result.stdout
    assert Lab(demo / "lab").status()["up"] is False
