"""`upkeep doctor`'s look at UPKEEP_CLUSTER_LIMIT on a real Prefect server: a limit a run could never take
a slot of (missing, at 0) is found by the doctor, not by the first update of a night, which fails before
its first node; a disabled one bounds nothing."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate

from upkeep.doctor import Check, Findings, check_prefect
from upkeep.settings import load_settings

pytestmark = [pytest.mark.prefect]


def _limit_check(tmp_path: Path, name: str) -> Check:
    found = Findings(settings=load_settings(home=tmp_path, cluster_limit=name))
    [check] = [check for check in check_prefect(found) if check.name == "cluster limit"]
    return check


@pytest.mark.parametrize(
    ("size", "active", "status", "said"),
    [
        (2, True, "ok", "2 clusters at once (0 in use now)"),
        (0, True, "fail", "the Prefect limit allows 0 clusters at once; no update starts"),
        (2, False, "warn", "the Prefect limit (2) is disabled: Prefect grants every ask"),
    ],
    ids=["usable", "zero", "disabled"],
)
def test_the_doctor_says_whether_runs_can_take_a_slot_of_the_cluster_limit(
    prefect_harness: None, tmp_path: Path, size: int, active: bool, status: str, said: str
) -> None:
    name = f"clusters-{uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=max(size, 1)))
        if size < 1 or not active:  # as an operator would, after the limit was made
            client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=size, active=active)
            )

    check = _limit_check(tmp_path, name)

    assert check.status == status, check
    assert check.detail.startswith(f"UPKEEP_CLUSTER_LIMIT '{name}': {said}"), check.detail
    assert status == "ok" or name in check.fix


def test_the_doctor_fails_a_cluster_limit_that_names_no_prefect_limit(
    prefect_harness: None, tmp_path: Path
) -> None:
    check = _limit_check(tmp_path, "no-such-limit\x1b[2J")

    assert check.status == "fail"
    assert check.detail.startswith(
        "UPKEEP_CLUSTER_LIMIT 'no-such-limit\\x1b[2J': no Prefect global concurrency limit has that name"
    ), check.detail
    # The hint is one shell word the SRE can copy, with the ESC spelled out: shlex.quote left it raw,
    # and `upkeep doctor` printed it onto the terminal as a control sequence (adv43).
    assert "prefect gcl create $'no-such-limit\\x1b[2J' --limit N" in check.fix, check.fix
    assert check.fix.isprintable(), repr(check.fix)
