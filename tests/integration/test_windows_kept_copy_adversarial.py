"""Adversarial pass adv41 on the copy kept between windows (h-loop), on the real lab's agent over SSH:
the node's earlier copy replaced between the windows by a directory of the same name, by a symlink to
other bytes, and by a symlink to the same bytes kept elsewhere. The record is only where to look: the
node's own `stage` (it reads the whole file against the release's checksum) decides, and whatever is
not the package is copied again. Scenario and helpers of test_windows.py's carry-over test."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from flows.dispatch import dispatch
from flows.steps import KEPT
from inventory.db import session_scope
from inventory.models import NodeStep, RunState
from tests.integration.conftest import nodes_of
from tests.integration.test_windows import NODE, THU, TUE, _planned, _run, _ticking, _upgrades, _windows

pytestmark = [pytest.mark.lab, pytest.mark.prefect]


def test_a_kept_copy_replaced_by_a_directory_or_a_symlink_is_judged_by_the_node_s_checksum(
    lab: Any, fresh_cluster: str, lab_runtime_any_db: Any, tmp_path: Path
) -> None:
    runtime = lab_runtime_any_db
    _windows(runtime.engine, fresh_cluster, (["tue"], 15), (["wed"], 5), (["thu"], 40))
    runtime.per_node_estimate = NODE
    run_id = _planned(runtime.engine, fresh_cluster, TUE, TUE + timedelta(minutes=15))
    runtime.clock = _ticking(lab, fresh_cluster, TUE, NODE)
    assert dispatch(max_running=1)["started"] == [run_id]
    assert _upgrades(lab, fresh_cluster) == [1, 0, 0]

    hosts = [node["hostname"] for node in nodes_of(lab, fresh_cluster)]
    first, second, third = (lab.node_dir(host) / "incoming" for host in hosts)
    # node 1: a directory where the copy was; node 2: a symlink to other bytes; node 3: a symlink to the
    # same bytes moved out of incoming/
    [copy] = first.iterdir()
    copy.unlink()
    copy.mkdir()
    [copy] = second.iterdir()
    other = tmp_path / "other.tar.gz"
    other.write_bytes(b"not the package")
    copy.unlink()
    copy.symlink_to(other)
    [copy] = third.iterdir()
    moved = tmp_path / "moved.tar.gz"
    shutil.move(copy, moved)
    copy.symlink_to(moved)

    runtime.clock = _ticking(lab, fresh_cluster, THU, NODE, already=1)
    assert dispatch(max_running=1)["started"] == [run_id]

    assert _upgrades(lab, fresh_cluster) == [1, 1, 1]
    assert _run(runtime.engine, run_id).state == RunState.succeeded
    with session_scope(runtime.engine) as session:
        query = select(NodeStep.output_tail).where(NodeStep.run_id == run_id, NodeStep.step == "distribute")
        thursday = list(session.exec(query.order_by(col(NodeStep.id))))[3:]
    assert len(thursday) == 3, thursday
    assert sum(KEPT in output for output in thursday) == 1, thursday  # node 3's: the right bytes
    assert sum("is not usable" in output for output in thursday) == 2, thursday  # nodes 1 and 2
    assert len(list(first.iterdir())) == 2 and len(list(second.iterdir())) == 2  # a fresh copy beside
    assert len(list(third.iterdir())) == 1
