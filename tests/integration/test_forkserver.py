"""tests/support/forkserver.py answers as a fresh `python -m upkeep` does: the same stdout, stderr and
exit code, byte for byte, on each kind of answer the tests that use it read, under signals too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import forkserver
from tests.support.cli import home_env

INVENTORY = """\
customers:
  - name: acme
    timezone: America/New_York
    contacts: [{email: ops@acme.example}]
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        access: {type: direct}
        nodes: [{hostname: acme-c1-n1}, {hostname: acme-c1-n2}]
        windows:
          - {days: mon-sun, start: "02:00", duration: 4h}
"""


def fresh(args: list[str], env: dict[str, str], cwd: Path, input: str | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "upkeep", *args],
        env=env,
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def forked(args: list[str], env: dict[str, str], cwd: Path, input: str | None = None) -> tuple[int, str, str]:
    done = forkserver.run(args, env=env, cwd=cwd, input=input, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose database is at head, made once (tests copy it: a fresh child costs ~1 CPU-s)."""
    home = tmp_path_factory.mktemp("forkserver") / "home"
    done = forkserver.run(["db", "upgrade"], env=home_env(home), cwd=home.parent)
    assert done.returncode == 0, done.stderr
    return home


@pytest.fixture
def env(migrated: Path, tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    shutil.copytree(migrated, home)
    return home_env(home)


def _same(
    args: list[str], env: dict[str, str], cwd: Path, input: str | None = None, *, writes: bool = False
) -> tuple[int, str, str]:
    """The answer of both; `writes`: each in a home of its own (a copy of `env`'s, made first, whose
    path the forked answer may name), so that the second does not find what the first wrote."""
    other = env
    if writes:
        home = Path(env["UPKEEP_HOME"])
        copy = home.with_name(home.name + "-forked")
        if not copy.exists():
            shutil.copytree(home, copy) if home.exists() else copy.mkdir(parents=True)
        other = {**env, "UPKEEP_HOME": str(copy)}
    child = fresh(args, env, cwd, input)
    code, out, err = forked(args, other, cwd, input)
    if other is not env:  # an answer that names the home names the copy
        out, err = (text.replace(other["UPKEEP_HOME"], env["UPKEEP_HOME"]) for text in (out, err))
    assert (code, out, err) == child, args
    return child


def test_answers_as_a_fresh_interpreter(env: dict[str, str], tmp_path: Path) -> None:
    for args in (
        ["--help"],
        ["nosuch"],
        ["--json", "nosuch"],
        ["show", "999"],
        ["show", "abc"],
        ["settings"],
        ["runs", "--json"],
    ):
        _same(args, env, tmp_path)


def test_a_write_as_a_fresh_interpreters(tmp_path: Path) -> None:
    """`db upgrade` of a new database: the same answer, and the same tables after."""
    env = home_env(tmp_path / "home")
    _same(["db", "upgrade"], env, tmp_path, writes=True)
    _same(["db", "upgrade"], env, tmp_path)  # at head already


def test_the_environment_is_the_childs_own_not_the_servers(env: dict[str, str], tmp_path: Path) -> None:
    """Settings, colour and width come from the environment given: the server imported everything
    with none of these set."""
    (tmp_path / "fleet.yaml").write_text(INVENTORY)
    _same(["inventory", "import", str(tmp_path / "fleet.yaml")], env, tmp_path, writes=True)
    wide = {**env, "COLUMNS": "132", "UPKEEP_PER_NODE_MINUTES": "7"}
    _same(["inventory", "show"], wide, tmp_path)
    code, out, _ = _same(["settings", "--json"], wide, tmp_path)
    assert code == 0 and "7" in json.dumps(json.loads(out))
    _same(["show", "999"], {**env, "FORCE_COLOR": "1"}, tmp_path)
    # Prefect's settings: the API URL the environment names (nothing listens there).
    down = {**env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    checks = [json.loads(answer[1])["checks"] for answer in (fresh(["doctor", "--json"], down, tmp_path),)]
    mine = json.loads(forked(["doctor", "--json"], down, tmp_path)[1])["checks"]
    prefect = [[c["detail"] for c in each if c["name"] == "prefect api"] for each in (*checks, mine)]
    assert prefect[0] == prefect[1] and "127.0.0.1:9" in prefect[0][0], prefect


def test_a_relative_path_is_the_childs_working_directory(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(INVENTORY)
    code, _out, err = _same(["inventory", "import", "fleet.yaml"], env, tmp_path, writes=True)
    assert code == 0, err


def _reading(fifo: Path) -> int:
    """Wait (bounded) until a process has opened `fifo` to read it (`inventory import FIFO`); the
    write end, held open and never written, keeps it reading."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            time.sleep(0.02)
    pytest.fail("the process never opened the inventory file")


def _in_read(pid: int) -> None:
    """Wait (bounded) until `pid` sleeps in the FIFO's read(), the one state in which a signal has one
    outcome. Sent as soon as the FIFO has a reader, a SIGINT can reach the child (on a loaded machine,
    not yet scheduled since the writer woke it) before it is back from open(): Python only notes it, and
    if the flag is taken where the KeyboardInterrupt cannot escape (a finalizer run by a collection in
    between: "Exception ignored"), or in the few bytecodes before read() with no check, the CLI blocks in
    read() for good, and communicate() timed out (once, 60 s, fresh, under the suite's load)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/wchan").read_text().endswith("pipe_read"):
            return
        time.sleep(0.005)
    pytest.fail(f"{pid} never read the inventory file")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_ends_it_as_it_ends_a_fresh_interpreter(
    sig: signal.Signals, env: dict[str, str], tmp_path: Path
) -> None:
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    args = ["inventory", "import", str(fifo)]
    answers = []
    for how in ("fresh", "forked"):
        if how == "forked":
            proc: Any = forkserver.popen(args, env=env, cwd=tmp_path)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", "upkeep", *args],
                env=env,
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        writer = _reading(fifo)
        _in_read(proc.pid)
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
        os.close(writer)
        answers.append((proc.returncode, out, err))
    assert answers[0] == answers[1]
    if sig == signal.SIGKILL:
        assert answers[0][0] == -signal.SIGKILL


def test_the_console_script_as_the_venvs_upkeep(env: dict[str, str], tmp_path: Path) -> None:
    script = str(Path(sys.executable).parent / "upkeep")
    for args in (["--help"], ["nosuch"]):
        child = subprocess.run(
            [script, *args], env=env, cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        mine = forkserver.run(args, env=env, cwd=tmp_path, console_script=True)
        assert (mine.returncode, mine.stdout, mine.stderr) == (child.returncode, child.stdout, child.stderr)


def test_an_environment_that_starts_an_interpreter_otherwise_gets_a_fresh_one(
    env: dict[str, str], tmp_path: Path
) -> None:
    ascii_env = {**env, "PYTHONIOENCODING": "ascii"}
    proc = forkserver.popen(["--help"], env=ascii_env, cwd=tmp_path)
    assert isinstance(proc, subprocess.Popen)
    proc.communicate()
    _same(["show", "999"], ascii_env, tmp_path)


def test_the_child_is_a_process_of_its_own(env: dict[str, str], tmp_path: Path) -> None:
    """Its own pid (what `upkeep show` names as a run's holder), its own session when asked, the
    working directory asked for."""
    fifo = tmp_path / "fleet.yaml"
    os.mkfifo(fifo)
    proc = forkserver.popen(["inventory", "import", str(fifo)], env=env, cwd=tmp_path, start_new_session=True)
    writer = _reading(fifo)
    assert os.getsid(proc.pid) == proc.pid and proc.pid not in (os.getpid(), os.getppid())
    assert Path(f"/proc/{proc.pid}/cwd").resolve() == tmp_path.resolve()
    assert proc.poll() is None
    proc.kill()
    proc.communicate()
    os.close(writer)
    assert proc.returncode == -signal.SIGKILL
