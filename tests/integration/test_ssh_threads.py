"""One Fabric Config shared by every SSH connection, in many threads at once (the dispatcher's K
clusters, a cluster's nodes in parallel).

Invoke rebuilds a Config in place on every write to it (merge(): an empty dict, then refilled), so a
thread reading it meanwhile finds no keys at all. Fabric's Connection.__init__ wrote to the Config
it was given (`inline_ssh_env`): building one Connection broke the reads of every other thread.

The race itself is a Python-level one (no network needed to lose it): the first test loses it with
Connection objects alone, the switch interval shortened so threads interleave inside merge() often.
The second uses real threads against real lab sshd nodes (connect, command, SFTP both ways) and checks
the cause directly: nothing a connection does, from creation to close, writes to the shared Config.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from invoke.config import Config as InvokeConfig

from tasks.ssh import FabricRunner, SshSettings, SshTarget


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads switch every 0.1 ms instead of 5 ms: a short race window is hit often, not once a week."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.fixture
def config_writes(monkeypatch: pytest.MonkeyPatch) -> Callable[[SshSettings], list[str]]:
    """Records every rebuild (merge) of the given settings' Config, from whichever thread."""

    def watch(settings: SshSettings) -> list[str]:
        writes: list[str] = []
        real_merge = InvokeConfig.merge

        def merge(self: InvokeConfig) -> None:
            if self is settings.config:
                writes.append(threading.current_thread().name)
            real_merge(self)

        monkeypatch.setattr(InvokeConfig, "merge", merge)
        return writes

    return watch


def _in_threads(count: int, work: Callable[[int], None]) -> list[str]:
    errors: list[str] = []

    def guarded(index: int) -> None:
        try:
            work(index)
        except Exception as exc:  # every failure is the finding; none may pass unseen
            errors.append(f"thread {index}: {type(exc).__name__}: {str(exc).splitlines()[0]}")

    threads = [threading.Thread(target=guarded, args=(i,), name=f"ssh-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_connections_built_in_many_threads_all_read_a_whole_config(
    tmp_path: Path, busy_switching: None, config_writes: Callable[[SshSettings], list[str]]
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    settings = SshSettings(known_hosts=known_hosts, key_path=tmp_path / "id_ed25519")
    writes = config_writes(settings)

    def build(index: int) -> None:
        for n in range(300):
            runner = FabricRunner(SshTarget(f"node-{index}-{n}", "127.0.0.1", 2200 + n, "upkeep"), settings)
            # What Fabric reads from the Config later: at open() and at run().
            conn = runner._conn
            assert conn.authentication.strategy_class is None
            assert conn.config.runners.remote is not None

    errors = _in_threads(4, build)
    assert errors == []
    assert writes == []


@pytest.mark.lab
def test_connections_used_in_many_threads_against_real_nodes_never_write_the_shared_config(
    lab: Any, tmp_path: Path, busy_switching: None, config_writes: Callable[[SshSettings], list[str]]
) -> None:
    overrides = lab.settings_overrides()
    settings = SshSettings(known_hosts=Path(overrides["known_hosts"]), key_path=Path(overrides["ssh_key"]))
    writes = config_writes(settings)
    nodes = lab.status()["nodes"][-3:]  # only read from and written to incoming/: no upgrade touched
    payload = tmp_path / "payload"
    payload.write_bytes(b"shared config probe\n" * 100)

    def use(index: int) -> None:
        node = nodes[index % len(nodes)]
        target = SshTarget(node["hostname"], node["address"], node["port"], node["user"])
        for n in range(4):
            remote = f"{node['node_dir']}/incoming/config-probe-{index}-{n}"
            with FabricRunner(target, settings).open() as runner:
                result = runner.run(["upkeep-agent", "version"], timeout=30)
                assert result.ok and result.stdout.strip() == node["version"], result.tail()
                runner.put(payload, remote)
                back = tmp_path / f"back-{index}-{n}"
                runner.get(remote, back)
                assert back.read_bytes() == payload.read_bytes()
            Path(remote).unlink()  # the lab is local: its node directories are ours to tidy

    errors = _in_threads(6, use)
    assert errors == []
    assert writes == []


@pytest.mark.lab
def test_a_command_runs_when_the_process_already_holds_more_than_1024_descriptors(lab: Any) -> None:
    """W4 of `make bench` (200 clusters in flight, 1,026 descriptors in the dispatcher) failed 4 clusters
    with "filedescriptor out of range in select()": the wait for a command's output used select(), which
    takes no descriptor above 1023. Here the process holds over 1,024 descriptors before connecting, so
    the channel's own descriptor is above that bound too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 1200
    if hard != resource.RLIM_INFINITY and hard < needed + 64:
        pytest.fail(f"this host allows only {hard} open files; the test needs {needed + 64}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed + 64), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(needed)]
    try:
        assert max(held) > 1024
        overrides = lab.settings_overrides()
        settings = SshSettings(
            known_hosts=Path(overrides["known_hosts"]), key_path=Path(overrides["ssh_key"])
        )
        node = lab.status()["nodes"][-1]
        target = SshTarget(node["hostname"], node["address"], node["port"], node["user"])
        with FabricRunner(target, settings).open() as runner:
            result = runner.run(["upkeep-agent", "version"], timeout=30)
        assert result.ok and result.stdout.strip() == node["version"], result.tail()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
