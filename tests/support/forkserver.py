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
- a call sends the argv, environment, working directory (a relative one from the caller's, a missing
  one refused in the caller, as Popen does), umask and three file descriptors (stdin, stdout, stderr:
  pipes, /dev/null, or the caller's own for None) over the socket (SCM_RIGHTS);
- the server forks a *waiter*, which forks the *child*: the child puts the descriptors on 0/1/2, takes
  the working directory and exactly the environment asked for, makes anew what the imports made from
  the server's environment (Prefect's settings, the two Rich consoles, the time zone), and
  runs `upkeep`'s `__main__` as `python -m upkeep` would (`runpy`, in a __main__ of its own), reports
  an exception nothing caught as Python does (sys.excepthook, from runpy's frames on), then exits as
  Python exits (threads joined, atexit run, streams flushed: 120 when stdout's flush fails);
- the server and the waiters ignore SIGINT (Ctrl-C at a terminal reaches the whole process group): the
  child gets back the handler the imports installed;
- the waiter tells the caller the child's pid at once and its exit status when it ends, and reaps it
  once the caller has that (until then it is a zombie, its pid taken, as a Popen child is).

`Forked` answers as much of `subprocess.Popen` as the tests use (pid, poll, wait, communicate, kill,
send_signal, returncode). Known differences from a fresh interpreter, none of which a test here reads:
the child's parent is the waiter, not the test process; /proc/PID/environ and /proc/PID/cmdline (so
`ps` and `pgrep -f`) show the server's (os.environ is the one asked for, and what the child starts
gets it); sys.path[0] is the checkout, not the working directory; the hash seed (PYTHONHASHSEED unset)
is the server's, the same in every child, where each fresh interpreter draws its own; resource limits,
nice value and CPU affinity are the server's (those of the test process when the server started).

What stays a fresh interpreter (the caller's choice, `fresh=True`, or automatic): an environment whose
PYTHON* or locale variables differ from the server's (they decide the interpreter's start: encoding,
flags), or TYPER_USE_RICH (read once, at `import typer`); a caller that ignores other signals than the
server started with (a child inherits ignored signals); DO_NOT_TRACK set to allow Prefect's telemetry
(its `import prefect` then acts: a notice, files under PREFECT_HOME); a different `sys.executable`; and
whatever a test means to check about a fresh start (import faults, the console script).
tests/integration/test_forkserver.py compares forked answers with fresh ones, byte for byte, and
tests/integration/test_forkserver_adversarial.py the process semantics subprocess gives.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
# What decides how an interpreter starts (stream encoding, flags, hash seed), and what the server's imports
# read once from its environment and keep (typer.core.HAS_RICH: Rich help and error panels or Click's): a
# request whose values differ from the server's gets a fresh interpreter instead.
_START_VARIABLES = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TYPER_USE_RICH")
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


# Python ignores these at its start whatever it inherited (and subprocess gives them back their default).
_SET_BY_PYTHON = frozenset({signal.SIGPIPE, signal.SIGXFSZ})


def _start_state(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in _START_VARIABLES}


def _ignored_signals() -> frozenset[int]:
    """The signals this process ignores: a child it starts ignores them too (an ignored signal stays
    ignored across fork and exec; `nohup`, a shell's `cmd &`), and the CLI keeps SIGINT ignored then."""
    ignored = set()
    for sig in signal.valid_signals():
        with contextlib.suppress(ValueError, OSError):
            if sig not in _SET_BY_PYTHON and signal.getsignal(sig) == signal.SIG_IGN:
                ignored.add(int(sig))
    return frozenset(ignored)


def _prefect_import_acts(env: Mapping[str, str]) -> bool:
    """Whether `import prefect` itself does something in this environment (its SDK telemetry: a
    first-run notice on a terminal, files under PREFECT_HOME, events sent), which the server's one import,
    telemetry off, did not; upkeep/telemetry.py sets DO_NOT_TRACK=1 unless the operator set it."""
    return env.get("DO_NOT_TRACK", "1").lower() not in ("1", "true", "yes")


def _umask() -> int:
    """This process's umask, read without setting it (os.umask would, for every thread, for a moment)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # communicate()'s feeder and readers, and what they read: kept for a call after a timeout
        self._communication: tuple[list[threading.Thread], list[Any], list[Any]] | None = None

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
            code, cpu = data.split()
            self.cpu_seconds = float(cpu)  # the child's own (and its waited-for children's not)
            self.returncode = int(code)
            self._status.close()  # the waiter now reaps the child: its pid is free
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

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """As Popen's: the input written while the output is read, both within `timeout`; a child
        that ends without reading all of its input is no error; after TimeoutExpired, a call again
        returns all of the output (the first call's input stands)."""
        if self._communication is None:
            self._communication = self._start_communication(input)
        threads, out, err = self._communication
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return (out[0] if out else None), (err[0] if err else None)

    def _start_communication(self, input: Any) -> tuple[list[threading.Thread], list[Any], list[Any]]:
        out: list[Any] = []
        err: list[Any] = []
        stdin = self.stdin

        def feed() -> None:
            assert stdin is not None
            with contextlib.suppress(BrokenPipeError):  # the child ended without reading it all
                if input:
                    stdin.write(input)
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

        targets: list[Any] = [feed] if stdin is not None else []
        targets += [
            lambda s=s, into=into: into.append(s.read())
            for s, into in ((self.stdout, out), (self.stderr, err))
            if s is not None
        ]
        threads = [threading.Thread(target=target, daemon=True) for target in targets]
        for thread in threads:
            thread.start()
        return threads, out, err

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # ended (and reaped by its waiter) meanwhile
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None:
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
        self.wait()


class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UPKEEP_", "PREFECT_"))}
        self.start_state = _start_state(env)
        self.ignored = _ignored_signals()  # the server inherits them, and so its children
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

    def died(self) -> bool:
        """Whether the server has ended (waiting a moment for a kill to take effect)."""
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return True

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


def _open(spec: Any, target: int, pipe_for: str) -> tuple[int, Any]:
    """(the fd to give the child as `target`, the caller's end or None) for a Popen-style stdio
    argument; None: the caller's own `target`, as Popen inherits it."""
    if spec is None:
        try:
            return os.dup(target), None
        except OSError:  # closed here: nothing to inherit
            return os.open(os.devnull, os.O_RDWR), None
    if spec == subprocess.DEVNULL:
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
    if cwd is not None:  # what Popen raises, here and with nothing started (a relative cwd is from here)
        cwd = os.path.abspath(cwd)
        if not stat.S_ISDIR(os.stat(cwd).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), cwd)
    server = None if fresh or _prefect_import_acts(env) else _the_server()
    if server is None or _start_state(env) != server.start_state or _ignored_signals() != server.ignored:
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
    try:
        for target, spec, direction in (
            (0, stdin, "child reads"),
            (1, stdout, "child writes"),
            (2, stderr, "child writes"),
        ):
            if spec == subprocess.STDOUT:
                fds.append(-1)
                ends.append(None)
                continue
            fd, end = _open(spec, target, direction)
            fds.append(fd)
            ends.append(end)
        if fds[2] == -1:
            fds[2] = os.dup(fds[1])
        request = json.dumps(
            {
                "args": list(args),
                "env": dict(env),
                "cwd": str(cwd if cwd is not None else os.getcwd()),
                "umask": _umask(),
                "setsid": start_new_session,
                "script": script if console_script else None,
            }
        ).encode()
        status_ours, pid = _ask(server, request, fds)
    except BaseException:
        for end in ends:
            if end is not None:
                os.close(end)
        raise
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
    streams: list[Any] = []
    for end, mode in zip(ends, ("w", "r", "r"), strict=True):
        if end is None:
            streams.append(None)
        elif text:
            streams.append(open(end, mode, encoding="utf-8", errors="strict"))  # noqa: SIM115 - the caller closes
        else:
            streams.append(open(end, mode + "b"))  # noqa: SIM115 - the caller closes
    return Forked(argv, pid, status_ours, *streams)


def _ask(server: _Server, request: bytes, fds: list[int]) -> tuple[socket.socket, int]:
    """Send the call; (the socket its waiter answers on, the child's pid). A server found dead (killed,
    say, and not yet seen so when the call began) is started anew and asked again: with no pid back,
    it started nothing."""
    for attempt in (1, 2):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                with server.lock:
                    socket.send_fds(
                        server.sock, [len(request).to_bytes(8, "big") + request], [*fds, theirs.fileno()]
                    )
            finally:
                theirs.close()
            return ours, int(_recv_line(ours))
        except (OSError, RuntimeError):
            ours.close()
            if attempt == 2 or not server.died():
                raise
            server = _the_server()
    raise AssertionError("unreachable")


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
_sigint: dict[str, Any] = {}  # "child": the SIGINT handler the server's imports left (upkeep.cli's)
_unhandled_keyboard_interrupt = {"yes": False}


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
    # Ctrl-C at the terminal signals the whole process group, the server and its waiters too: they let
    # the test process and the children answer it. A child gets back what the imports installed.
    _sigint["child"] = signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # the child's until it has its handler
    pid = os.fork()
    if pid == 0:
        status.close()
        _become_upkeep(request, stdio)  # never returns
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # ignored here
    for each in stdio:
        os.close(each)
    with contextlib.suppress(OSError):
        status.sendall(f"{pid}\n".encode())
    # As a Popen child: once ended, a zombie (its pid taken, kill(pid, 0) finds it) until the caller has
    # collected its exit status (and closed the socket, or is gone itself).
    ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert ended is not None  # None only with WNOHANG
    code = ended.si_status if ended.si_code == os.CLD_EXITED else -ended.si_status
    with contextlib.suppress(OSError):
        status.sendall(f"{code} {_cpu_seconds(pid):.3f}".encode())
        status.recv(1)
    os.waitpid(pid, 0)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU of an ended, not yet reaped, process (utime and stime in its stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _become_upkeep(request: dict[str, Any], stdio: list[int]) -> None:
    """The child: `python -m upkeep ARGS` from here on, as a fresh interpreter would run it."""
    code = 1
    try:
        signal.signal(signal.SIGINT, _sigint.get("child", signal.default_int_handler))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.umask(request["umask"])
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
    server's were made for its own streams; CPython's create_stdio): the buffer io.open gives the fd
    (none for stdout and stderr with PYTHONUNBUFFERED), stdout line-buffered only on a terminal, stderr
    always, newlines untranslated, names and modes as Python's own (they show in its messages)."""
    import io

    encoding, errors = sys.stdout.encoding, sys.stdout.errors or "strict"
    unbuffered = bool(
        os.environ.get("PYTHONUNBUFFERED")
    )  # as the server's and the child's (a PYTHON* variable)

    def stream(fd: int, name: str, write: bool, errors: str) -> Any:
        raw_only = write and unbuffered
        buffer: Any = open(fd, "wb" if write else "rb", buffering=0 if raw_only else -1, closefd=False)  # noqa: SIM115
        raw = buffer if raw_only else buffer.raw
        raw.name = name
        text: Any = io.TextIOWrapper(
            buffer,
            encoding=encoding,
            errors=errors,
            newline="\n",
            line_buffering=not unbuffered and (raw.isatty() or fd == 2),
            write_through=unbuffered,
        )
        text.mode = "w" if write else "r"
        return text

    sys.stdin = stream(0, "<stdin>", False, errors)
    sys.stdout = stream(1, "<stdout>", True, errors)
    sys.stderr = stream(2, "<stderr>", True, "backslashreplace")
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
    """What `python -m upkeep` runs (runpy._run_module_as_main, in a __main__ of its own), and what the
    interpreter makes of an exception that leaves it: an exit code, or Python's traceback (its own
    frames, not ours) and exit 1 (a KeyboardInterrupt: SIGINT, at the end)."""
    import runpy
    import types

    sys.modules["__main__"] = types.ModuleType("__main__")
    sys.argv = ["-m", *args]  # runpy puts the module's file first, as `python -m` does
    return _exit_status(lambda: runpy._run_module_as_main("upkeep", alter_argv=True))  # type: ignore[attr-defined]


def _exit_status(run: Any) -> int:
    """The exit code of `run()` as the interpreter makes it: SystemExit's code, else 0, or 1 (and
    Python's report) for an exception nothing caught."""
    try:
        run()
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException as exc:
        _uncaught(exc)
        return 1
    return 0


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _uncaught(exc: BaseException) -> None:
    """Python's report of an exception nothing caught: sys.excepthook, from the first frame not ours."""
    traceback = exc.__traceback__
    while traceback is not None and traceback.tb_frame.f_code.co_filename == __file__:
        traceback = traceback.tb_next
    with contextlib.suppress(BaseException):
        sys.excepthook(type(exc), exc, traceback)
    if isinstance(exc, KeyboardInterrupt):
        _unhandled_keyboard_interrupt["yes"] = True


def _run_script(script: str, args: list[str]) -> int:
    """What the venv's `upkeep` script does, run as Python runs a script: its code in a __main__ of its
    own, its path as argv[0] (and in a traceback)."""
    import types

    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__cached__ = None  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    sys.argv = [script, *args]
    code = compile(Path(script).read_bytes(), script, "exec")
    return _exit_status(lambda: exec(code, main.__dict__))


def _shutdown() -> bool:
    """Python's own exit (Py_FinalizeEx): non-daemon threads joined, atexit handlers run, the standard
    streams flushed; False when a flush failed (Python says so for stdout, and exits 120)."""
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    flushed = True
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except Exception as exc:
            flushed = False
            if stream is sys.stdout:  # PyErr_WriteUnraisable(stdout)
                import traceback

                with contextlib.suppress(BaseException):
                    message = "".join(traceback.format_exception_only(type(exc), exc))
                    sys.stderr.write(f"Exception ignored in: {stream!r}\n{message}")
                    sys.stderr.flush()
    return flushed


def _exit_as_python(code: int) -> int:
    status = code & 0xFF if _shutdown() else 120
    if _unhandled_keyboard_interrupt["yes"]:  # Python's exit_sigint()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return status
