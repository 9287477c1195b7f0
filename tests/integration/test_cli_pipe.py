"""`upkeep ... | head -1`: a reader that closes the pipe before the output ends. The command ends as git
and coreutils end there: nothing on stderr, killed by SIGPIPE (a shell's 141, which `set -o pipefail`
scripts see), its work done as it would have been with the whole output read (upkeep/console.py).

Each reader takes one line, byte by byte, then closes: at most a pipe's 64 KiB plus that line have been
read or buffered, so an output longer than that meets the closed pipe, with no timing involved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import forkserver
from tests.support.cli import database, home_env, upkeep_here

PIPE_BYTES = 64 * 1024
CLUSTERS = 800


def _inventory(clusters: int) -> str:
    spec = {
        "customers": [
            {
                "name": "acme",
                "timezone": "UTC",
                "contacts": [{"email": "ops@acme.example"}],
                "clusters": [
                    {
                        "name": f"acme-cluster-{i:04d}",
                        "kind": "software",
                        "version": "9.8.0",
                        "access": {"type": "direct"},
                        "nodes": [{"hostname": f"acme-cluster-{i:04d}-node-{n}"} for n in range(3)],
                    }
                    for i in range(clusters)
                ],
            }
        ],
        "releases": [{"version": "9.9.0", "package": "r/9.9.0.tgz", "sha256": "ab" * 32, "from": ["9.8.0"]}],
    }
    return yaml.safe_dump(spec, sort_keys=False)


@pytest.fixture(scope="module")
def big_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose inventory shows as far more than a pipe holds. Tests using it must not change it."""
    root = tmp_path_factory.mktemp("pipe")
    source = root / "big.yaml"
    source.write_text(_inventory(CLUSTERS))
    home = root / "home"
    done = upkeep_here(home, "inventory", "import", str(source))
    assert done.returncode == 0, done.stderr
    return home


def _first_line_then_close(home: Path, *args: str) -> tuple[bytes, int, bytes]:
    """`upkeep ARGS | head -1`, with the reader made exact: the first line, the exit status, stderr."""
    proc = forkserver.popen(args, env=home_env(home), cwd=home.parent, text=False)
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(proc.stdout.fileno(), 1)
        assert byte, f"the output ended before its first line: {line!r}"
        line += byte
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    return line, proc.wait(timeout=120), err


@pytest.mark.parametrize(
    "args",
    [
        ("inventory", "show"),
        ("inventory", "show", "--json"),
        ("inventory", "schema"),
        ("--verbose", "inventory", "show"),
    ],
    ids=["table", "json", "schema", "verbose"],
)
def test_a_reader_that_closes_early_ends_the_command_quietly_as_sigpipe(
    big_home: Path, args: tuple[str, ...]
) -> None:
    whole = forkserver.run(args, env=home_env(big_home), cwd=big_home.parent, timeout=120)
    assert (whole.returncode, whole.stderr) == (0, ""), whole.stderr
    assert len(whole.stdout.encode()) > PIPE_BYTES + 4096, "too short to meet the closed pipe"
    before = database(big_home)

    line, code, err = _first_line_then_close(big_home, *args)

    assert (code, err) == (-signal.SIGPIPE, b""), err.decode(errors="replace")
    assert line.decode() == whole.stdout.splitlines(keepends=True)[0]
    assert database(big_home) == before


def test_a_shell_pipeline_to_head_sees_141_under_pipefail(big_home: Path) -> None:
    done = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$0" -m upkeep inventory show | head -1; echo "status $?"',
            sys.executable,
        ],
        env=home_env(big_home),
        cwd=big_home.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stderr == ""
    first, status = done.stdout.splitlines()
    assert first.startswith("┏") and status == "status 141", done.stdout  # the table's top edge


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_an_import_whose_output_nobody_reads_is_committed_whole(tmp_path: Path, as_json: bool) -> None:
    """A command that writes, then prints (`| head -0`: the reader gone before the first byte): the
    import is committed before its report is printed, and the report's fate changes nothing."""
    source = tmp_path / "big.yaml"
    source.write_text(_inventory(20))
    home = tmp_path / "home"
    read, write = os.pipe()
    os.close(read)
    try:
        args = ["inventory", "import", *(["--json"] if as_json else []), str(source)]
        proc = forkserver.popen(args, env=home_env(home), cwd=tmp_path, stdout=write, text=False)
    finally:
        os.close(write)
    _out, err = proc.communicate(timeout=120)

    assert (proc.returncode, err) == (-signal.SIGPIPE, b""), err.decode(errors="replace")
    shown = json.loads(upkeep_here(home, "inventory", "show", "--json").stdout)
    clusters = [cluster["name"] for cluster in shown["customers"][0]["clusters"]]
    assert clusters == [f"acme-cluster-{i:04d}" for i in range(20)]


def test_a_send_that_fails_keeps_its_error_when_nobody_reads_its_report(tmp_path: Path) -> None:
    """`upkeep notices send | head -0` with the mail server down: each notice's attempt is committed in
    its own transaction before the report is printed, and the failure after the report is still the
    answer (exit 1, its line on stderr), not SIGPIPE's."""
    source = tmp_path / "one.yaml"
    spec = yaml.safe_load(_inventory(1))
    always = {"days": "mon-sun", "start": "00:00", "duration": "24h"}
    spec["customers"][0]["clusters"][0]["windows"] = [always]
    source.write_text(yaml.safe_dump(spec))
    home = tmp_path / "home"
    for args in (
        ("inventory", "import", str(source)),
        ("request", "acme-cluster-0000", "--to", "9.9.0", "--source", "customer"),
    ):
        done = upkeep_here(home, *args)
        assert done.returncode == 0, done.stderr
    down = {"UPKEEP_SMTP_HOST": "127.0.0.1", "UPKEEP_SMTP_PORT": "9"}  # discard: nothing listens
    read, write = os.pipe()
    os.close(read)
    try:
        proc = forkserver.popen(
            ["notices", "send"], env=home_env(home, **down), cwd=tmp_path, stdout=write, text=False
        )
    finally:
        os.close(write)
    _out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1, err
    assert err.decode().startswith("error: mail server unusable: SMTP 127.0.0.1:9: "), err
    assert len(err.splitlines()) == 1, err
    notices = json.loads(upkeep_here(home, "notices", "list", "--json").stdout)
    assert [(n["state"], bool(n["note"])) for n in notices] == [("pending", True)], notices


# A command of the test's own, mounted on the real `upkeep` app and run through `main`.
_RAW_COMMAND = """
import socket, sys
from upkeep.cli import app, main

@app.command("raw")
def raw(where: str) -> None:
    if where == "stdout":
        print("line\\n" * 100_000, end="")  # a print, not upkeep.console: Click answered EPIPE with exit 1
    else:
        mine, theirs = socket.socketpair()
        theirs.close()
        mine.send(b"x")  # EPIPE of a socket: not the reader of stdout going away

sys.argv = ["upkeep", "raw", sys.argv[1]]
main()
"""


@pytest.mark.parametrize("where", ["stdout", "socket"])
def test_an_epipe_is_a_closed_stdout_only_when_stdout_is_the_closed_pipe(tmp_path: Path, where: str) -> None:
    """stdout's reader gone before the first byte for "stdout"; read to its end for "socket"."""
    read, write = os.pipe()
    if where == "stdout":
        os.close(read)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RAW_COMMAND, where],
            env=home_env(tmp_path / "home"),
            cwd=tmp_path,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(write)
    if where == "socket":
        with open(read, "rb") as reader:
            assert reader.read() == b""
    _out, err = proc.communicate(timeout=120)

    if where == "stdout":
        assert (proc.returncode, err) == (-signal.SIGPIPE, "")
    else:  # Click took every EPIPE for stdout's and exited 1 without a word
        assert proc.returncode == 1
        assert err.startswith("error: unexpected BrokenPipeError: [Errno 32] Broken pipe (this is a bug"), err


@pytest.mark.parametrize(
    "args",
    [("inventory", "show"), ("inventory", "show", "--json"), ("inventory", "schema")],
    ids=["table", "json", "schema"],
)
def test_a_full_disk_under_stdout_is_one_line_not_a_bug_and_not_a_closed_pipe(
    big_home: Path, args: tuple[str, ...]
) -> None:
    """`upkeep ... > /dev/full` (ENOSPC, as a full disk): not a reader gone (no silent SIGPIPE), not
    "unexpected OSError ... a bug in Upkeep", and with --json not a traceback (its error went to the
    same full stdout and failed again)."""
    with open("/dev/full", "w") as full:
        proc = forkserver.popen(args, env=home_env(big_home), cwd=big_home.parent, stdout=full, text=True)
    _out, err = proc.communicate(timeout=120)

    assert (proc.returncode, err) == (1, "error: cannot write to standard output: No space left on device\n")


def test_a_table_to_a_closed_stdout_is_one_line_as_json_is(big_home: Path) -> None:
    """`upkeep inventory show >&-`: Rich wrote the table to nowhere and the command exited 0, while its
    `--json` twin says stdout is closed (test_cli_inventory)."""
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" -m upkeep inventory show >&-', sys.executable],
        env=home_env(big_home),
        cwd=big_home.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (
        1,
        "error: standard output is closed: nowhere to write the answer\n",
    )


def test_a_json_refusal_to_a_full_disk_is_its_own_line_on_stderr(tmp_path: Path) -> None:
    """The refusal is the answer: its JSON could not be written, so it is said on stderr, once."""
    missing = tmp_path / "missing.yaml"
    with open("/dev/full", "w") as full:
        proc = forkserver.popen(
            ["inventory", "import", "--json", str(missing)],
            env=home_env(tmp_path / "home"),
            cwd=tmp_path,
            stdout=full,
        )
    _out, err = proc.communicate(timeout=120)

    assert (proc.returncode, err) == (
        1,
        f"error: {missing}: cannot read the file: No such file or directory\n",
    )


def test_ctrl_c_in_the_middle_of_a_json_document_says_aborted_on_stderr_not_inside_it(big_home: Path) -> None:
    """Ctrl-C while the document is half written (its reader slow: the pipe full): the error object
    was appended to stdout mid-token ('"acme-cluster-0157-node{"error": "aborted", ...}'), so a script
    got neither the document nor the error as JSON. Once the document has begun, errors go to stderr.
    No timing: the first byte read means the write has begun, and it cannot end before we read more."""
    proc = forkserver.popen(
        ("inventory", "show", "--json"), env=home_env(big_home), cwd=big_home.parent, text=False
    )
    assert proc.stdout.read(1) == b"{"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)

    assert (proc.returncode, err) == (130, b"error: aborted\n")
    assert b'"error"' not in out


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_a_non_blocking_stdout_whose_reader_lags_gets_the_whole_answer(big_home: Path, as_json: bool) -> None:
    """A pipe with O_NONBLOCK (set by whoever made it, e.g. a Node.js parent; shared with us): once it is
    full, write(2) says EAGAIN. That was "cannot write to standard output: Resource temporarily
    unavailable" (exit 1, the answer cut at 64 KiB); a lagging reader is no error. The reader here waits
    until the pipe is full (FIONREAD), so the full pipe is met, with no timing."""
    import array
    import fcntl
    import select
    import termios

    args = ("inventory", "show", *(["--json"] if as_json else []))
    whole = forkserver.run(args, env=home_env(big_home), cwd=big_home.parent, timeout=120)
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    size = fcntl.fcntl(write, 1032)  # F_GETPIPE_SZ
    try:
        proc = forkserver.popen(args, env=home_env(big_home), cwd=big_home.parent, stdout=write)
    finally:
        os.close(write)
    waiting = array.array("i", [0])
    while proc.poll() is None and waiting[0] < size:
        fcntl.ioctl(read, termios.FIONREAD, waiting)
        select.select([], [], [], 0.01)  # not spinning a core; the loop's condition is what counts
    with open(read, "rb") as reader:
        out = reader.read()
    err = proc.stderr.read()

    assert (proc.wait(timeout=120), err) == (0, "")
    assert out.decode() == whole.stdout
