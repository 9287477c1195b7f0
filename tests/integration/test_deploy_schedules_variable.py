"""adv47: the doctor's word against what `prefect deploy` really does with `upkeep_schedules_active`, on a
real Prefect server (one per module).

Split from test_deploy_schedules.py (the deploy cycle itself, and the doctor on real installations), which
shares its fixtures and helpers with this module: under `make test`'s `--dist loadfile` a module is the
unit a worker runs, and the two halves together were the suite's longest module by far (each value's
check and each real deploy here, ~13 `prefect deploy`s, besides that file's ~9 and its CLI calls).
Each module has its own server, so the halves run side by side on two workers; no test reads what a test
of the other module did.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import httpx
import pytest

from tests.integration import test_deploy_schedules as schedules
from tests.integration.prefect_server import PREFECT, REPO_ROOT, PrefectServer
from tests.integration.prefect_server import deployments as _deployments
from tests.integration.prefect_server import doctor_line as _doctor_line
from tests.integration.prefect_server import set_variable as _set_variable
from tests.integration.test_deploy_schedules import _actives, _deploy_env, _restore

# test_deploy_schedules.py's fixtures, bound here so that pytest finds them for this module's tests: `server`
# is module-scoped, so this module starts a server of its own
server, api, installed = schedules.server, schedules.api, schedules.installed

pytestmark = [pytest.mark.prefect_server, pytest.mark.postgres]


# -- adv47: the doctor's word against what `prefect deploy` really does with the variable -------------
# Prefect validates `active` with pydantic's lax bool ("no", "off", 0, "TRUE" are booleans to it), leaves
# `active` out when the variable holds JSON null (the schedule is then created ACTIVE, and kept as it is
# on a redeploy), and refuses the deployment for anything else. Values are set through the API, with
# their JSON type, as `prefect variable set NAME VALUE` stores them (it JSON-parses VALUE first).
#
# Proved in two halves, so that not every value pays a real deploy (5-20 s each):
# - every value in VALUES: the doctor's prediction equals what Prefect's own `prefect deploy` code makes
#   of prefect.yaml's dispatch schedule with that variable (`_prefect_reading`: Prefect's variable
#   templating, its schedule construction and its DeploymentScheduleCreate/Update validation, run in
#   this process against the real server), for a first deploy and for a redeploy on a live and on a
#   paused installation;
# - one value of each reading Prefect has (CLASSES), for real: `prefect deploy` does what the doctor
#   said, on a first deploy and on a redeploy from each starting state. A value whose reading is not in
#   CLASSES fails the first half, so no reading goes without its real deploy.
UNSET = "<unset>"  # no variable at all: Prefect templates the placeholder to ""
VALUES = [
    False,
    "no",
    0,
    "off",
    "0",
    "f",
    "",
    True,
    1,
    "yes",
    "TRUE",
    "on",
    1.0,
    None,
    2,
    0.5,
    "maybe",
    UNSET,
]
# Prefect's reading (first deploy, redeploy) -> the value that is deployed for real
CLASSES: dict[tuple[str, str], Any] = {
    ("paused", "paused"): "off",
    ("ACTIVE", "ACTIVE"): 1,
    ("ACTIVE", "kept"): None,
    ("refused", "refused"): "maybe",
}
STARTS = ["live", "paused"]


def _deploy_dispatch(server: PrefectServer, http: httpx.Client) -> str:
    """`prefect deploy --name dispatch`: "refused", or the dispatch schedule's state after it."""
    done = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--name", "dispatch"],
        cwd=REPO_ROOT,
        env=_deploy_env(server),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    dispatch = _deployments(http).get("dispatch")
    if done.returncode != 0:
        return "refused"
    assert dispatch is not None, done.stdout
    return "ACTIVE" if _actives(dispatch) == [True] else "paused"


def _prefect_reading(server: PrefectServer) -> tuple[str, str]:
    """What Prefect's own `prefect deploy` code makes of prefect.yaml's dispatch schedule with the variable
    as the server now holds it, as (first deploy, redeploy): the placeholder resolved by Prefect's
    `resolve_variables` (the deploy command's call, reading the server), the schedule built by the deploy
    command's `_construct_schedules`, then validated as `RunnerDeployment.apply` does: a new deployment's
    schedule by DeploymentScheduleCreate, an existing one's by DeploymentScheduleUpdate, sent without
    unset fields. Each is "refused", "ACTIVE" or "paused"; a redeploy that leaves `active` out is "kept"."""
    import asyncio

    import yaml
    from prefect.cli.deploy._schedules import _construct_schedules
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentScheduleUpdate
    from prefect.utilities.templating import resolve_variables
    from pydantic import ValidationError
    from rich.console import Console

    config = next(
        d
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
        if d["name"] == "dispatch"
    )

    async def resolved() -> dict[str, Any]:
        async with PrefectClient(server.api_url) as client:
            answer: dict[str, Any] = await resolve_variables(config, client=client)
            return answer

    [schedule] = _construct_schedules(
        asyncio.run(resolved()), {}, console=Console(), is_interactive=lambda: False
    )
    try:
        first = "ACTIVE" if DeploymentScheduleCreate(**schedule).active else "paused"
    except ValidationError:
        first = "refused"
    try:
        sent = DeploymentScheduleUpdate(**schedule).model_dump(mode="json", exclude_unset=True)
    except ValidationError:
        return first, "refused"
    return first, "kept" if "active" not in sent else "ACTIVE" if sent["active"] else "paused"


def _first_deploy_prediction(detail: str) -> str | None:
    """What the doctor's line says a first `prefect deploy` does to the schedules (None: it does not say)."""
    return next(
        (
            outcome
            for phrase, outcome in [
                ("`prefect deploy` fails on the scheduled deployments", "refused"),
                ("`prefect deploy` creates the schedules paused", "paused"),
                ("`prefect deploy` creates the schedules ACTIVE", "ACTIVE"),
            ]
            if phrase in detail
        ),
        None,
    )


def _next_deploy_prediction(detail: str, before: str) -> str:
    """What the doctor's line says the next `prefect deploy` does to a dispatch schedule now `before`."""
    if "the next `prefect deploy` fails on the scheduled deployments" in detail:
        return "refused"
    if "the next `prefect deploy` switches every schedule OFF" in detail:
        return "paused"
    if "the next `prefect deploy` switches every schedule ON" in detail:
        return "ACTIVE"
    return before


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_before_the_first_deploy_the_doctor_reads_the_variable_as_prefect_deploy_does(
    server: PrefectServer, api: httpx.Client, value: Any
) -> None:
    """Nothing deployed yet: the `deployments` line says what `prefect deploy` will create, read as Prefect's
    own deploy code reads the variable (before adv47 it said only "missing", and read "no"/0/null as values
    the deploy refuses); and Prefect's reading is one a real deploy below is made of."""
    _set_variable(api, value)
    reading = _prefect_reading(server)
    assert reading in CLASSES, f"{value!r}: Prefect reads it as {reading}, a reading no test deploys for real"
    check = _doctor_line(api)
    assert _first_deploy_prediction(check.detail) == reading[0], check.detail


@pytest.mark.parametrize(("reading", "value"), CLASSES.items(), ids=repr)
def test_before_the_first_deploy_the_doctor_says_what_the_variable_will_make_of_the_schedules(
    server: PrefectServer, api: httpx.Client, reading: tuple[str, str], value: Any
) -> None:
    """The first deploy, for real, once for each reading Prefect has: it does what the doctor said."""
    _set_variable(api, value)
    assert _prefect_reading(server) == reading
    check = _doctor_line(api)
    predicted = _first_deploy_prediction(check.detail)
    assert predicted is not None, check.detail
    assert _deploy_dispatch(server, api) == predicted, check.detail


@pytest.mark.parametrize(("start", "value"), [(s, v) for s in STARTS for v in VALUES], ids=repr)
def test_on_an_installation_the_doctor_reads_the_variable_as_a_redeploy_does(
    server: PrefectServer, installed: httpx.Client, start: str, value: Any
) -> None:
    """Dispatcher deployed, live or paused, then the variable changed by hand: the `deployments` line names
    what Prefect's deploy code makes of the next deploy (before adv47: "no"/0 on a live dispatcher was
    "fails" where the deploy switched it off; an odd value on a paused one was "ok" where the deploy
    fails; null was "fails" where the deploy keeps the schedule)."""
    before = _restore(installed, start)
    _set_variable(installed, value)
    reading = _prefect_reading(server)
    check = _doctor_line(installed)
    assert _next_deploy_prediction(check.detail, before) == (
        before if reading[1] == "kept" else reading[1]
    ), check.detail
    if value is None:  # kept for now, but a deployment made anew would be created ACTIVE
        assert check.status == "warn", check.detail
    # ok exactly when the next deploy leaves the dispatcher as it is (null aside: warned above)
    assert check.status == ("ok" if reading[1] == before else "warn"), (check.status, check.detail)
    if check.status == "warn":
        # the fix, done as written, makes the next deploy leave the dispatcher as it is: never the
        # variable that would switch a live dispatcher off (or a paused one on)
        # (its first `upkeep live on|off`: it records the variable true/false with the schedules)
        written = re.findall(r"upkeep live (on|off)\b", check.fix)
        assert written, check.fix
        _set_variable(installed, written[0] == "on")
        assert _prefect_reading(server)[1] in (before, "kept"), check.fix


@pytest.mark.parametrize(("start", "value"), [(s, v) for s in STARTS for v in CLASSES.values()], ids=repr)
def test_the_doctor_says_what_the_next_deploy_will_do_to_the_dispatch_schedule(
    server: PrefectServer, installed: httpx.Client, start: str, value: Any
) -> None:
    """The next deploy, for real, from each starting state once for each reading Prefect has: it does what
    the doctor's `deployments` line said; refused, it leaves the schedule as it was."""
    before = _restore(installed, start)
    _set_variable(installed, value)
    check = _doctor_line(installed)
    predicted = _next_deploy_prediction(check.detail, before)
    assert _deploy_dispatch(server, installed) == predicted, check.detail
    if predicted == "refused":
        assert _state(installed) == before  # refused: the schedule is left as it was
    if value is None:  # kept for now, but a deployment made anew would be created ACTIVE
        assert check.status == "warn", check.detail


def _state(http: httpx.Client) -> str:
    return "ACTIVE" if _actives(_deployments(http)["dispatch"]) == [True] else "paused"
