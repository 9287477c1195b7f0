"""The one way tests build a lab: `running_lab(root, ...)` starts it, ties it to this test process (a
watchdog stops it if the process dies, even by kill -9) and stops it at the end; `take_cluster(lab)`
hands out a cluster no earlier test of this process has touched.

The session labs that hand out clusters (`Growing`) hold what the test modules this process has run
so far ask for, not the whole suite: each is started sized for the module that first needs it, and
before the first test of every later module (`entering`) it gets clusters added until the module's
tests find one untouched cluster each. Sized up front for every collected test, each pytest-xdist worker
started ~140 clusters (~420 sshd) although it runs only a share of the files. A module gets all its
clusters before its first test, so what a module-scoped fixture imports from the inventory (e.g. a
CLI home) already holds every cluster the module's tests take.

A lab is a few hundred sshd daemons; they daemonize, so they outlive the process that started them. The
watchdog (`python -m tests.support.labs ROOT`) is a process of its own session that reads a pipe from
the test process: when that process is gone, for whatever reason, the pipe reads end-of-file and the
watchdog stops the lab's daemons (and with them the agents running under their sessions).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_taken: dict[str, set[str]] = {}  # lab root -> clusters handed out or set aside


@contextlib.contextmanager
def running_lab(root: Path, **up: Any) -> Iterator[Any]:
    """`Lab(root).up(**up)`, guarded by a watchdog, stopped when the block ends."""
    from upkeep.lab import Lab

    lab = Lab(root)
    with guarded(lab):
        lab.up(**up)
        yield lab


@contextlib.contextmanager
def guarded(lab: Any) -> Iterator[Any]:
    """Stop `lab` when the block ends, or when this process dies before it does."""
    watchdog = watch(lab.root)
    try:
        yield lab
    finally:
        try:
            lab.down()
        finally:
            assert watchdog.stdin is not None
            watchdog.stdin.close()  # the watchdog finds nothing left running and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(timeout=30)


def watch(root: Path) -> subprocess.Popen[bytes]:
    """Start the watchdog of the lab at `root`; it acts once this process's end of its pipe closes."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.labs", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2],
        start_new_session=True,  # a kill of pytest's process group must not take the watchdog with it
    )


def _clusters(lab: Any) -> list[str]:
    return list(dict.fromkeys(node["cluster"] for node in lab.status()["nodes"]))


def _free(lab: Any) -> list[str]:
    """The clusters of `lab` take_cluster may still hand out: never touched by a test of this process,
    in order, and never the last one. Tests use the last cluster as one no test upgrades (a run planned
    there that a tick must leave alone, SFTP traffic, hostile input on its last node), so it is never
    handed out; a lab that grows sets it aside for good (`Growing`)."""
    used = _taken.setdefault(str(lab.root), set())
    return [cluster for cluster in _clusters(lab)[:-1] if cluster not in used]


def take_cluster(lab: Any) -> str:
    """A cluster of `lab` that no earlier test of this process has touched."""
    free = _free(lab)
    if not free:
        failed = next((g.failed for g in _growing.values() if g.lab.root == lab.root and g.failed), None)
        if failed:  # the cause, not "give it more": no constant to raise, the growth itself failed
            pytest.fail(f"no untouched cluster left: {failed}", pytrace=False)
        pytest.fail(f"the lab at {lab.root} has no untouched cluster left; give it more")
    _taken[str(lab.root)].add(free[0])
    return free[0]


def untouched(lab: Any) -> int:
    """How many clusters of `lab` take_cluster may still hand out."""
    return len(_free(lab))


def clusters_needed(items: list[pytest.Item], *fixtures: str, spare: int = 2) -> int:
    """How many clusters `items` take: one for each of `fixtures` a test asks for, plus a spare or two."""
    return spare + sum(fixture in getattr(item, "fixturenames", ()) for item in items for fixture in fixtures)


# -- session labs sized by the modules that run ----------------------------------------------------------
_module: list[pytest.Item] = []  # the items of the module whose tests run now
_growing: dict[str, Growing] = {}  # fixture name -> that session lab, once started


class Growing:
    """A session lab that hands out clusters to the tests that ask for one of `fixtures`."""

    def __init__(self, name: str, fixtures: tuple[str, ...], lab: Any, spare: int) -> None:
        self.name, self.fixtures, self.lab, self.spare = name, fixtures, lab, spare
        self.failed: str | None = None  # why the last growth failed, for the tests left without a cluster

    def provide_for(self, items: list[pytest.Item]) -> str | None:
        """Add clusters until each of `items` that asks for one finds an untouched one. The last cluster
        so far is set aside first: earlier tests may have used it as the one nobody upgrades. A failed
        growth (add_clusters' LabError: an sshd that did not start) is one line, returned and kept."""
        from upkeep.lab import LabError

        self.failed = None
        missing = clusters_needed(items, *self.fixtures, spare=0) - untouched(self.lab)
        if missing > 0:
            _taken.setdefault(str(self.lab.root), set()).add(_clusters(self.lab)[-1])
            try:
                self.lab.add_clusters(missing + self.spare)
            except LabError as exc:
                first = (str(exc).splitlines() or [type(exc).__name__])[0]
                module = items[0].path.name if items else "?"
                short = f"{missing} clusters short"
                self.failed = f"the session lab {self.name!r} could not grow for {module} ({short}): {first}"
        return self.failed


@contextlib.contextmanager
def growing_lab(
    name: str, fixtures: tuple[str, ...], root: Path, minimum: int = 0, **up: Any
) -> Iterator[Any]:
    """The session lab `name`: started with a cluster for each test of the running module that asks for
    one of `fixtures` (plus two spare, at least `minimum`), grown for each later module (`entering`)."""
    spare = 2
    clusters = max(minimum, clusters_needed(_module, *fixtures, spare=spare))
    with running_lab(root, clusters=clusters, **up) as lab:
        _growing[name] = Growing(name, fixtures, lab, spare)
        try:
            yield lab
        finally:
            del _growing[name]


def entering(item: pytest.Item) -> None:
    """Before `item`'s set-up: when it is the first of its module here, the labs already running grow
    to hold what this module's tests take."""
    if _module and _module[0].path == item.path:
        return
    _module[:] = [other for other in item.session.items if other.path == item.path]
    failed = [why for growing in list(_growing.values()) if (why := growing.provide_for(_module))]
    if failed:  # this test errors with the cause; the module's later tests that find no cluster say it too
        pytest.fail("; ".join(failed), pytrace=False)


def nodes_of(lab: Any, cluster: str) -> list[dict[str, Any]]:
    return [node for node in lab.status()["nodes"] if node["cluster"] == cluster]


def _watchdog(root: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal: pytest tears down itself
    with contextlib.suppress(OSError):
        while os.read(0, 4096):
            pass
    from upkeep.lab import Lab

    Lab(root).down()


if __name__ == "__main__":
    _watchdog(sys.argv[1])
