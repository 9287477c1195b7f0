"""`python -m upkeep ARGS` as a real child process, forked from a process that has already imported
Upkeep, Prefect and the flows: the same stdout, stderr, exit code, pid, signals and races as a fresh
interpreter's, without paying for the interpreter and its imports at every call.

Why: a fresh `python -m upkeep` that runs a flow spends ~1.8 CPU-s importing before it does anything
(`import flows.product_update`, measured on this machine, 2026-12-05: 1.64 user + 0.18 sys), and ~150
such children of `make test` cost ~350 CPU-s on two cores that are busy for the whole run. A fork of a
process that has imported them starts in milliseconds.

How (one fork server per test process, started at its first call, stopped at the process's exit):
- the server is a plain `python` that imports what `python -m upkeep` imports on the way to a flow, in
  an environment with no UPKEEP_ or PREFECT_ variable, and then waits on a Unix socket;
- a call sends the argv, environment, working directory and three file descriptors (stdin, stdout,
  stderr: pipes or /dev/null) over the socket (SCM_RIGHTS);
- the server forks a *waiter*, which forks the *child*: the child puts the descriptors on 0/1/2, takes
  the working directory and exactly the environment asked for, makes anew what the imports made from
  the server's environment (Prefect's settings, the two Rich consoles, the time zone), and
  runs `upkeep`'s `__main__` as `python -m upkeep` would (`runpy`), then exits as Python exits
  (threads joined, atexit run, streams flushed);
- the waiter tells the caller the child's pid at once and its wait status when it ends.

`Forked` answers as much of `subprocess.Popen` as the tests use (pid, poll, wait, communicate, kill,
send_signal, returncode). Known differences from a fresh interpreter, none of which a test here reads:
the child's parent is the waiter, not the test process; /proc/PID/environ shows the server's
environment (os.environ is the one asked for, and what the child starts gets it); sys.path[0] is
the checkout, not the working directory.

What stays a fresh interpreter (the caller's choice, `fresh=True`, or automatic): an environment whose
PYTHON* or locale variables differ from the server's (they decide the interpreter's start: encoding,
flags), a different `sys.executable`, and whatever a test means to check about a fresh start (import
faults, the console script). tests/integration/test_forkserver.py compares forked answers with fresh
ones, byte for byte.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# What decides how an interpreter starts (stream encoding, flags, hash seed): a request whose values
# differ from the server's gets a fresh interpreter instead.
_START_VARIABLES = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ")
# What the server imports: most of what `update`/`resume`/`dispatch` import, but nothing that imports
# `prefect.main` (a `from prefect import flow`, `prefect.flow_engine`, flows/steps.py, the flow modules):
# importing it configures Prefect's logging, which a fresh process does only from that moment on
# (before it, Prefect's INFO lines go nowhere and its warnings to Python's last-resort handler). The
# child imports those itself (~0.1 CPU-s with the rest loaded), when a fresh process would.
_PRELOAD = (
    "upkeep.cli",
    "upkeep.updates",
    "upkeep.bootstrap",
    "upkeep.doctor",
    "upkeep.run_view",
    "flows.plan",
    "flows.outcomes",
    "inventory.public",
    "prefect.flows",
    "prefect.tasks",
    "prefect.deployments",
    "prefect.artifacts",
    "prefect.client.orchestration",
)


def _start_state(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in _START_VARIABLES}


# -- the caller's side -------------------------------------------------------------------------------------
class Forked:
    """A forked `python -m upkeep`: the `subprocess.Popen` surface the tests use."""

    def __init__(
        self, args: list[str], pid: int, status: socket.socket, stdin: Any, stdout: Any, stderr: Any
    ):
        self.args, self.pid, self._status = args, pid, status
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self.cpu_seconds: float | None = None
        self._lock = threading.Lock()

    def _collect(self, block: bool) -> int | None:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            self._status.setblocking(block)
            try:
                data = self._status.recv(64)
            except BlockingIOError:
                return None
            if not data:  # the waiter died without saying: not something a child can do
                raise RuntimeError(f"fork server's waiter for pid {self.pid} vanished")
            wait_status, cpu = data.split()
            self.cpu_seconds = float(cpu)  # the child's own (and its waited-for children's not)
            self.returncode = os.waitstatus_to_exitcode(int(wait_status))
            self._status.close()
            return self.returncode

    def poll(self) -> int | None:
        return self._collect(block=False)

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            code = self._collect(block=True)
            assert code is not None
            return code
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.01)
        return code

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[Any, Any]:
        if self.stdin is not None:
            if input:
                self.stdin.write(input)
            self.stdin.close()
        out: list[Any] = []
        err: list[Any] = []
        readers = [
            threading.Thread(target=lambda s=s, into=into: into.append(s.read()), daemon=True)
            for s, into in ((self.stdout, out), (self.stderr, err))
            if s is not None
        ]
        for reader in readers:
            reader.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for reader in readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return (out[0] if out else None), (err[0] if err else None)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        self.wait()


class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
        self.start_state = _start_state(env)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from tests.support.forkserver import serve; serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.sock = ours
        self.lock = threading.Lock()
        ready = ours.recv(16)
        if ready != b"ready":
            raise RuntimeError(f"the fork server did not start: {ready!r}")

    def stop(self) -> None:
        self.sock.close()  # the server's recv sees EOF and it exits
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_server: _Server | None = None
_server_lock = threading.Lock()


def _the_server() -> _Server:
    global _server
    with _server_lock:
        if _server is None or _server.proc.poll() is not None:
            _server = _Server()
            atexit.register(_server.stop)
        return _server


def _open(spec: Any, mode: str, pipe_for: str) -> tuple[int, Any]:
    """(the fd to give the child, the caller's end or None) for a Popen-style stdio argument."""
    if spec is None or spec == subprocess.DEVNULL:
        return os.open(os.devnull, os.O_RDWR), None
    if spec == subprocess.PIPE:
        read, write = os.pipe()
        if pipe_for == "child reads":
            return read, write
        return write, read
    if isinstance(spec, int):
        return os.dup(spec), None
    return os.dup(spec.fileno()), None


def popen(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
    text: bool = True,
    start_new_session: bool = False,
    fresh: bool = False,
    console_script: bool = False,
) -> Any:
    """`subprocess.Popen([sys.executable, "-m", "upkeep", *args], ...)`, forked (see the module's
    docstring); a fresh interpreter when `fresh` or when `env` starts an interpreter differently.
    `console_script`: as the venv's `upkeep` script instead of `python -m upkeep`."""
    script = str(Path(sys.executable).parent / "upkeep")
    argv = [script, *args] if console_script else [sys.executable, "-m", "upkeep", *args]
    server = None if fresh else _the_server()
    if server is None or _start_state(env) != server.start_state:
        return subprocess.Popen(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=text,
            start_new_session=start_new_session,
        )
    fds: list[int] = []
    ends: list[int | None] = []
    for spec, direction in ((stdin, "child reads"), (stdout, "child writes"), (stderr, "child writes")):
        if spec == subprocess.STDOUT:
            fds.append(-1)
            ends.append(None)
            continue
        fd, end = _open(spec, "rb" if direction == "child writes" else "wb", direction)
        fds.append(fd)
        ends.append(end)
    if fds[2] == -1:
        fds[2] = os.dup(fds[1])
    status_ours, status_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    request = json.dumps(
        {
            "args": list(args),
            "env": dict(env),
            "cwd": str(cwd or os.getcwd()),
            "setsid": start_new_session,
            "script": script if console_script else None,
        }
    ).encode()
    try:
        with server.lock:
            socket.send_fds(
                server.sock, [len(request).to_bytes(8, "big") + request], [*fds, status_theirs.fileno()]
            )
    finally:
        for fd in fds:
            os.close(fd)
        status_theirs.close()
    pid = int(_recv_line(status_ours))
    streams: list[Any] = []
    for end, mode in zip(ends, ("w", "r", "r"), strict=True):
        if end is None:
            streams.append(None)
        elif text:
            streams.append(open(end, mode, encoding="utf-8", errors="strict"))  # noqa: SIM115 - the caller closes
        else:
            streams.append(open(end, mode + "b"))  # noqa: SIM115 - the caller closes
    return Forked(argv, pid, status_ours, *streams)


def _recv_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise RuntimeError("the fork server closed the call before the child started")
        data += chunk
    return data[:-1]


def run(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str] | None = None,
    input: str | None = None,
    timeout: float | None = None,
    check: bool = False,
    fresh: bool = False,
    console_script: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run([sys.executable, "-m", "upkeep", *args], capture_output=True, text=True, ...)`,
    forked; stdin is /dev/null unless `input` is given."""
    proc = popen(
        args,
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        fresh=fresh,
        console_script=console_script,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


# -- the server's side -------------------------------------------------------------------------------------
def serve(fd: int) -> None:
    """The fork server's main loop (runs in its own interpreter; see the module's docstring)."""
    import importlib

    sys.path[:] = [str(REPO_ROOT) if p in ("", ".") else p for p in sys.path]  # wherever a child's cwd is
    for name in _PRELOAD:
        importlib.import_module(name)
    sock = socket.socket(fileno=fd)
    if "prefect.main" in sys.modules:  # see _PRELOAD
        sock.sendall(b"prefect.main")
        return
    if threading.active_count() != 1:  # forking a process with threads copies their locks mid-use
        sock.sendall(f"threads: {threading.enumerate()}".encode()[:16])
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    sock.sendall(b"ready")
    while True:
        try:
            header, fds, _flags, _addr = socket.recv_fds(sock, 8, 4)
        except OSError:
            return
        if not header:
            return
        size = int.from_bytes(header, "big")
        body = b""
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                return
            body += chunk
        request = json.loads(body)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            try:
                sock.close()
                _wait_for_the_child(request, fds)
            finally:
                os._exit(0)
        for each in fds:
            os.close(each)


def _wait_for_the_child(request: dict[str, Any], fds: list[int]) -> None:
    """The waiter: fork the child, tell the caller its pid, then its wait status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    *stdio, status_fd = fds
    status = socket.socket(fileno=status_fd)
    pid = os.fork()
    if pid == 0:
        status.close()
        _become_upkeep(request, stdio)  # never returns
    for each in stdio:
        os.close(each)
    with contextlib.suppress(OSError):
        status.sendall(f"{pid}\n".encode())
    _, wait_status, usage = os.wait4(pid, 0)
    with contextlib.suppress(OSError):
        status.sendall(f"{wait_status} {usage.ru_utime + usage.ru_stime:.3f}".encode())


def _become_upkeep(request: dict[str, Any], stdio: list[int]) -> None:
    """The child: `python -m upkeep ARGS` from here on, as a fresh interpreter would run it."""
    code = 1
    try:
        if request["setsid"]:
            os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in set(stdio):
            if fd > 2:
                os.close(fd)
        _standard_streams()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        time.tzset()
        _as_new(request["env"])
        script = request["script"]
        code = _run_script(script, request["args"]) if script else _run_module(request["args"])
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(_exit_as_python(code))


def _standard_streams() -> None:
    """sys.stdin/stdout/stderr made anew on fds 0-2 as an interpreter makes them at its start (the
    server's were made for its own streams): stdout line-buffered only on a terminal, stderr always."""
    import io

    encoding, errors = sys.stdout.encoding, sys.stdout.errors
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=encoding, errors=errors
    )
    out = io.FileIO(1, "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(out), encoding=encoding, errors=errors, line_buffering=out.isatty()
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
        encoding=encoding,
        errors="backslashreplace",
        line_buffering=True,
    )
    for name in ("stdin", "stdout", "stderr"):  # what Python keeps as the originals
        setattr(sys, f"__{name}__", getattr(sys, name))


def _as_new(env: Mapping[str, str]) -> None:
    """What the server's imports made from its own environment, made from the child's."""
    import prefect.context

    from upkeep import console as consoles
    from upkeep.telemetry import switch_off

    switch_off()  # upkeep.cli does it at its import, before Prefect reads its settings
    prefect.context.refresh_global_settings_context()
    made: list[Any] = [consoles.console, consoles.err_console]  # in place: modules hold them by reference
    made[0].__init__(**consoles.CONSOLE_OPTIONS)
    made[1].__init__(stderr=True, **consoles.CONSOLE_OPTIONS)


def _run_module(args: list[str]) -> int:
    import runpy

    sys.argv = ["-m", *args]  # runpy puts the module's file first, as `python -m` does
    try:
        runpy.run_module("upkeep", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _shutdown()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return 0


def _run_script(script: str, args: list[str]) -> int:
    """What the venv's `upkeep` script does: `sys.exit(main())` with its own path as argv[0]."""
    from upkeep.cli import main

    sys.argv = [script, *args]
    try:
        main()
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def _shutdown() -> None:
    """Python's own exit: non-daemon threads joined, atexit handlers run, the standard streams flushed."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()


def _exit_as_python(code: int) -> int:
    _shutdown()
    return code & 0xFF
