"""A scheduled `upkeep request` (no --now) plans the update once.

`request_update` planned it (release, path, nodes) in the transaction that writes the run, then
`schedule_update` planned it again inside that same transaction from the cluster's *name*: the same
reads twice for one request (the plan is the heaviest read of the command), and two plans where one is
the run's. On PostgreSQL (READ COMMITTED, a snapshot per statement) the second one can see what an
import committed after the first (a node added or removed: the slot sized for another node count than
the plan the CLI holds). `request --now` already plans once in its writing transaction (d944bac); the
scheduled path now hands its plan to `schedule_update` (`plan=`), which plans only when given none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import no_traceback, upkeep_here


def test_a_scheduled_request_plans_the_update_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.plan
    import flows.schedule
    import upkeep.requests
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0

    plans: list[tuple[str, str]] = []
    real = flows.plan.plan_update

    def counted(cluster: str, to_version: str, **kwargs: Any) -> flows.plan.UpdatePlan:
        plans.append((cluster, to_version))
        return real(cluster, to_version, **kwargs)

    monkeypatch.setattr(upkeep.requests, "plan_update", counted)
    monkeypatch.setattr(flows.schedule, "plan_update", counted)
    done = upkeep_here(home, "request", "acme-c1", "--to", "9.9.0", "--source", "customer")

    no_traceback(done)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "update-1 scheduled" in done.stdout, done.stdout
    assert len(plans) == 1, plans
