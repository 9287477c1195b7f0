"""A Prefect API that answers /health (and /admin/version) but errors on the cluster limit's read: a 5xx, or
an answer that is no limit at all. `prefect_answers` passes; the limit's read (upkeep/updates.py
`cluster_limit_grants`) read that as "the API is away" and let the update go on, and the run then failed
on the limit as "a bug in Upkeep". The commands that start a run refuse in one line naming the API
(masked) and what failed, nothing written; a scheduled `upkeep request` plans with a warning, as when the
API does not answer at all.

Real child processes (`python -m upkeep`, forked) against a real HTTP listener on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_prefect_api_silent import _prefect_api, _upkeep, home  # noqa: F401
from tests.support.cli import database, upkeep_here

ANSWERS = {"5xx": b"500 Internal Server Error", "garbage": b"200 OK"}


@pytest.fixture(params=sorted(ANSWERS))
def erring_on_the_limit(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """/api/health and /api/admin/version as Prefect answers them; every other path that status and
    {"detail": "Not Found"} (with 200: no limit, garbage). Yields (the kind, its /api URL)."""
    with _prefect_api(answers_health=True, others=ANSWERS[request.param]) as url:
        yield request.param, url


def _credentialed(url: str) -> str:
    """`url` with a proxy's basic auth in its userinfo (a query would change the paths Prefect asks)."""
    return url.replace("http://", "http://bob:hunter2@")


@pytest.mark.parametrize(
    "args",
    [
        ["update", "acme-c1", "--to", "9.9.0"],
        [
            *("request", "acme-c1", "--to", "9.9.0", "--source", "customer", "--now"),
            *("--override-window", "--reason", "now"),
        ],
    ],
    ids=["update", "request-now"],
)
def test_a_limit_read_that_errors_is_refused_in_one_line_naming_the_api(
    erring_on_the_limit: tuple[str, str],
    home: Path,  # noqa: F811
    args: list[str],
) -> None:
    kind, url = erring_on_the_limit
    before = database(home)
    code, out, err = _upkeep(home, _credentialed(url), *args, UPKEEP_CLUSTER_LIMIT="clusters")

    assert code == 1, out + err
    assert len(err.strip().splitlines()) == 1, err
    assert "bug in Upkeep" not in err, err
    assert "UPKEEP_CLUSTER_LIMIT 'clusters'" in err, err
    assert f"the Prefect API ({url})" in err, err
    if kind == "5xx":
        assert "500" in err, err
    else:  # what is missing, said as the doctor says it; not pydantic's page squeezed onto a line (adv48)
        assert "something that is not a limit (name: Field required)" in err, err
        assert "For further information" not in err and "input_value" not in err, err
    assert "hunter2" not in err, err
    assert "nothing was started or changed" in err, err
    assert database(home) == before  # no run written


def test_a_scheduled_request_plans_with_a_warning_naming_the_api_when_the_limit_read_errors(
    erring_on_the_limit: tuple[str, str], tmp_path: Path
) -> None:
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    fleet_home = tmp_path / "home"
    assert upkeep_here(fleet_home, "inventory", "import", str(fleet)).returncode == 0
    _kind, url = erring_on_the_limit
    code, out, err = _upkeep(
        fleet_home,
        _credentialed(url),
        *("request", "acme-c1", "--to", "9.9.0", "--source", "customer", "--json"),
        UPKEEP_CLUSTER_LIMIT="clusters",
    )

    assert code == 0, out + err
    answer = json.loads(out)
    assert answer["state"] == "planned" and answer["cluster_limit"]["held"] is None, answer
    assert err.startswith("warning: whether the fleet is held could not be checked"), err
    assert len(err.strip().splitlines()) == 1, err
    assert f"the Prefect API ({url})" in err, err
    assert "hunter2" not in err, err
