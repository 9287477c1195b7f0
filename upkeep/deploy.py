"""`upkeep deploy` and `upkeep live on|off`: deploying Upkeep to a Prefect server, and switching its
schedules, without the traps of the raw Prefect commands (docs/deploying.md steps 4, 7, 8).

prefect.yaml's schedules take `active` from the server's variable `upkeep_schedules_active`. Prefect
reads it loosely (pydantic's lax bool: "no", 0, "yes" are booleans to it) and leaves JSON null out, which
creates new schedules ACTIVE; `variable set ... false --overwrite` followed by a deploy switches a live
installation off without a word; going live or stopping takes two commands in the right order. So:

- `upkeep deploy` reads the variable as the doctor does (upkeep/prefect_server.py `schedules_intent`) and
  deploys only when it is JSON true or false and agrees with the dispatch schedule (a deploy would
  otherwise switch every schedule); on an empty server it creates the work pool and the variable
  (false) first. It hands `prefect deploy` a copy of prefect.yaml with the value it checked written in,
  so Prefect cannot read a value another SRE set in between (the time of check is the time of use);
  such a change is found after the deploy, said, and exits 1.
- `upkeep live on|off` sets the variable and every Upkeep schedule. `on` sets the variable first, then
  resumes; `off` pauses first, then sets the variable: killed between the two halves, either leaves
  the schedules paused (nothing runs) with the variable true, which the doctor names ("the next
  `prefect deploy` switches every schedule ON") and `upkeep deploy` refuses; running it again finishes.
- Two SREs at once (adv54): every command acts on what it read, so `live off` could pause nothing and
  set false after another's `live on` (or a live `upkeep deploy`) resumed: the dispatcher running with
  the variable false. So whoever makes a schedule ACTIVE reads the variable after and pauses again if it
  is no longer true, and `live off` reads the schedules after setting false and pauses what is ACTIVE:
  of two such writers one always sees the other's write, and off wins (nothing runs).

Every refusal is one line naming the value and where it came from, and nothing is deployed or changed.
`prefect deploy` failing is Prefect's error without its traceback (`prefect_error`) and that line, which
says what Prefect had deployed when it stopped (read back from the server: it deploys prefect.yaml's
deployments in order and stops at the first that fails). A 404 for the work pool is "no pool" only as
Prefect answers it (upkeep/prefect_server.py `work_pool`): a reverse proxy's is refused, not a pool
created behind it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import prefect_api
from upkeep.console import CliError
from upkeep.doctor import CHECKOUT, Check, deployments_line
from upkeep.prefect_server import (
    ENTRYPOINTS,
    POOL,
    SCHEDULES_VARIABLE,
    ScheduleIntent,
    answer_errors,
    answer_problem,
    deployments_filtered,
    dispatch_live,
    expected_deployments,
    one_line,
    prefect_api_client,
    schedules_intent,
    unreachable_prefect_api,
    upkeep_deployments,
    without_credentials,
    work_pool,
)

TEMPLATE = '"{{ prefect.variables.' + SCHEDULES_VARIABLE + ' }}"'  # prefect.yaml's `active:` value
DEPLOY_TIMEOUT = 600.0  # seconds for `prefect deploy --all` (5-20 s measured; a hung server is said)
NOT_DEPLOYED = "nothing was deployed"
NOT_CHANGED = "nothing was changed"


@dataclass
class Installation:
    """What the Prefect server holds of Upkeep: its deployments (prefect.yaml's names), the variable as
    `prefect deploy` would read it, and whether the work pool exists."""

    api: str  # PREFECT_API_URL as shown
    intent: ScheduleIntent
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    pool: bool = False
    pool_type: str = ""  # the work pool's type, when it exists

    @property
    def live(self) -> bool | None:
        """Whether the dispatcher runs by itself; None when it is not deployed."""
        dispatch = self.deployments.get("dispatch")
        return None if dispatch is None else dispatch_live(dispatch)

    def where(self) -> str:
        return f"on the Prefect server (PREFECT_API_URL {self.api})"


def _api(nothing: str) -> str:
    """PREFECT_API_URL, once it is known to answer as Prefect's API; else a refusal."""
    problem = unreachable_prefect_api()
    if problem:
        raise CliError(f"{problem}; {nothing}")
    from prefect.settings import PREFECT_API_URL

    api = str(PREFECT_API_URL.value() or "")
    if not api:
        raise CliError(
            "PREFECT_API_URL is not set (neither in the environment nor in the Prefect profile): Prefect "
            "would use a temporary local server that vanishes with the command; export "
            f"PREFECT_API_URL=http://PREFECT_HOST:4200/api; {nothing}"
        )
    return api


def read_installation(http: Any, api: str, nothing: str) -> Installation:
    shown = prefect_api.shown(api)
    try:
        intent = schedules_intent(http)
        mine = upkeep_deployments(http)
        pool = work_pool(http)  # a proxy's 404 is no "no pool": one would be created behind it
    except answer_errors() as exc:
        raise CliError(f"the Prefect API ({shown}) {answer_problem(exc)}; {nothing}") from None
    if intent.unread:
        raise CliError(
            f"{SCHEDULES_VARIABLE} could not be read on the Prefect server (PREFECT_API_URL {shown}: "
            f"{intent.unread}): what a deploy does to the schedules is unknown; {nothing}"
        )
    pool_type = "" if pool is None else str(pool["type"])
    return Installation(
        api=shown, intent=intent, deployments=mine, pool=pool is not None, pool_type=pool_type
    )


def _value_problem(found: Installation) -> str:
    """Why the variable's value is no plain true/false, and what Prefect would make of it."""
    intent = found.intent
    if intent.active is None and intent.deploys:
        does = "Prefect leaves null out and creates new schedules ACTIVE"
    elif not intent.deploys:
        does = "`prefect deploy` would refuse the scheduled deployments"
    else:
        does = f"Prefect's lax reading takes it for {str(intent.active).lower()}"
    return f"{SCHEDULES_VARIABLE} is {intent.shown} {found.where()}, not JSON true or false ({does})"


def _checked_value(found: Installation) -> bool | None:
    """The variable's value a deploy may use, None for a first deploy on a server without Upkeep;
    otherwise a refusal naming it."""
    intent = found.intent
    if intent.missing:
        if not found.deployments:
            return None
        live = found.live
        state, to, cmd = ("ACTIVE", "true", "on") if live else ("paused", "false", "off")
        raise CliError(
            f"{SCHEDULES_VARIABLE} is not set {found.where()}, which holds Upkeep's deployments (deployed "
            f"before the variable existed); the dispatch schedule is {state}: record that first with "
            f"`upkeep live {cmd}` (or `prefect variable set {SCHEDULES_VARIABLE} {to}`); {NOT_DEPLOYED}"
        )
    if intent.exact is None:
        raise CliError(
            f"{_value_problem(found)}: set it with `upkeep live on` or `upkeep live off`; {NOT_DEPLOYED}"
        )
    live = found.live
    if live is not None and live is not intent.exact:
        if live:
            raise CliError(
                f"{SCHEDULES_VARIABLE} is false {found.where()} but the dispatch schedule is ACTIVE: this "
                "deploy would switch every schedule OFF; to stop on purpose `upkeep live off`, to stay live "
                f"`upkeep live on`; {NOT_DEPLOYED}"
            )
        raise CliError(
            f"{SCHEDULES_VARIABLE} is true {found.where()} but the dispatch schedule is paused: this deploy "
            "would switch every schedule ON; to go live `upkeep live on`, to stay paused `upkeep live off`; "
            f"{NOT_DEPLOYED}"
        )
    return intent.exact


def _prefect_env(api: str) -> dict[str, str]:
    """This environment for `prefect`, on the server checked, without UPKEEP_CHECKOUT: set while
    deploying, its path is baked into every deployment's pull step (docs/deploying.md step 4)."""
    env = {k: v for k, v in os.environ.items() if k.upper() != "UPKEEP_CHECKOUT"}
    env["PREFECT_API_URL"] = api
    env["COLUMNS"] = "1000"  # Rich wraps at 80 without a terminal: a URL cut in two escapes scrubbing
    return env


def _prefect_command() -> list[str]:
    script = Path(sys.executable).with_name("prefect")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "prefect"]


def _run_prefect(
    api: str, *args: str, what: str, nothing: str | Callable[[], str]
) -> subprocess.CompletedProcess[str]:
    """`prefect ARGS` on the server checked; exited other than 0: a refusal quoting Prefect's error, after
    the lines of it before its last (`prefect_error`) on stderr, and `nothing` (or what it reads back:
    what the failed command left behind)."""
    try:
        done = subprocess.run(
            [*_prefect_command(), "--no-prompt", *args],
            cwd=CHECKOUT,
            env=_prefect_env(api),
            capture_output=True,
            text=True,
            timeout=DEPLOY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        left = nothing() if callable(nothing) else nothing
        raise CliError(f"`prefect {what}` took over {DEPLOY_TIMEOUT:g} s and was stopped; {left}") from None
    if done.returncode != 0:
        from upkeep.console import err_console, json_mode

        said = prefect_error(done.stdout, done.stderr, api)
        if not json_mode() and len(said) > 1:
            err_console.print("\n".join(said[:-1]), markup=False, highlight=False, soft_wrap=True)
        last = one_line(said[-1] if said else "no output", 200)
        left = nothing() if callable(nothing) else nothing
        raise CliError(f"`prefect {what}` exited {done.returncode}: {last}; {left}")
    return done


ERROR_LINES = 5  # of Prefect's error, at most: the last (in the refusal's line) and those before it
_TRACEBACK = "Traceback (most recent call last)"
_CHAINED = ("The above exception was the direct cause", "During handling of the above exception")
_MODULE_PATH = re.compile(r"^(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*(?::|$))")  # prefect.x.Error: -> Error:
_BOX = "│╭╮╰╯─┃━┏┓┗┛╷╵ "  # Rich's panels around Prefect's messages


def prefect_error(stdout: str, stderr: str, api: str) -> list[str]:
    """What `prefect` said went wrong, as lines an operator reads (adv54's echo was its last 30 lines,
    Prefect's Python traceback among them): each traceback cut to its exception's line with the module
    path dropped ("DeploymentApplyError: denied by proxy"), chained ones in order, and what Prefect
    printed after; with no traceback, its last lines. Rich's box drawing trimmed, blank lines left out,
    PREFECT_API_URL's credentials masked (adv54: Prefect's errors quote the request's URL, userinfo and
    all), and PREFECT_API_KEY's and PREFECT_API_AUTH_STRING's (adv61: a proxy's refusal quotes them);
    at most ERROR_LINES."""
    errors: list[str] = []  # exception lines, and what came after the last traceback
    plain: list[str] = []  # every line outside a traceback
    for stream in (stdout, stderr):
        inside = False
        for raw in stream.splitlines():
            stripped = raw.strip(_BOX)
            if _TRACEBACK in raw:  # Python's, or Rich's ("╭─ Traceback (most recent call last) ─╮")
                inside = True
                continue
            if inside and (raw[:1] in (" ", "\t", "│", "╰") or not stripped):
                continue  # a frame, its code, carets; Rich's box
            if not stripped or stripped.startswith(_CHAINED):
                continue
            line = prefect_api.scrubbed(without_credentials(stripped, api), api)
            if inside:
                inside = False
                errors.append(_MODULE_PATH.sub("", line))
            elif errors:
                errors.append(line)
            plain.append(line)
    said = [line for line in errors if line != "An exception occurred."] if errors else plain
    return said[-ERROR_LINES:]


def _deployed_so_far(http: Any, before: Installation) -> str:
    """After a failed `prefect deploy`: which of prefect.yaml's deployments it made (new on the server, or
    updated since `before` was read) and which not, read back from the server. Prefect deploys them one
    by one in prefect.yaml's order and stops at the first that fails: the others are missing, or as
    they were before."""
    try:
        now = upkeep_deployments(http)
    except answer_errors() as exc:
        return f"what it deployed could not be read back ({answer_problem(exc)}): see `upkeep doctor`"
    was = before.deployments
    made = [
        name
        for name in expected_deployments()
        if name in now and (name not in was or now[name].get("updated") != was[name].get("updated"))
    ]
    if not made:
        return NOT_DEPLOYED
    left = [name for name in expected_deployments() if name not in made]
    return (
        f"deployed: {', '.join(made)}; not deployed: {', '.join(left) or 'none'} (as the server has them "
        "now); run `upkeep deploy` again once Prefect's error is mended"
    )


def _off_wins_after_failure(http: Any, api: str, refused: CliError) -> None:
    """After a live deploy (`active: true` rendered) that failed or was stopped half-way: if the variable
    is no longer JSON true (`upkeep live off` ran meanwhile), the schedules Prefect wrote ACTIVE before it
    stopped are paused again (adv61: the refusal skipped the re-check a deploy that ends makes, and the
    dispatcher ran with the variable false); the refusal then says so."""
    unread: tuple[type[Exception], ...] = (CliError, *answer_errors())
    repaused: list[str] = []
    try:
        if schedules_intent(http).exact is True:
            return
        _set_schedules(http, read_installation(http, api, "-"), False, repaused)
    except unread as exc:
        why = str(exc).removesuffix("; -") if isinstance(exc, CliError) else answer_problem(exc)
        refused.args = (
            f"{refused}; {SCHEDULES_VARIABLE} may have changed while deploying and the schedules could not "
            f"be read back ({why}): run `upkeep live off` or `upkeep live on`",
        )
        return
    if repaused:
        refused.args = (
            f"{refused}; {SCHEDULES_VARIABLE} changed while deploying (`upkeep live off`?): paused again: "
            f"{', '.join(repaused)} (nothing runs)",
        )


def _create_variable(http: Any, api: str, value: bool, nothing: str) -> None:
    """The variable created (not overwritten): another SRE's value, set in between, is not replaced."""
    reply = http.post("variables/", json={"name": SCHEDULES_VARIABLE, "value": value})
    if reply.status_code == 409 and schedules_intent(http).exact is value:
        return  # another SRE's first deploy, at the same time, made the same choice (adv54)
    shown = prefect_api.shown(api)
    if reply.status_code == 409:
        raise CliError(
            f"{SCHEDULES_VARIABLE} was set on the Prefect server (PREFECT_API_URL {shown}) by someone "
            f"else just now; run the command again to read it; {nothing}"
        )
    try:
        reply.raise_for_status()
    except answer_errors() as exc:
        raise CliError(f"the Prefect API ({shown}) {answer_problem(exc)}; {nothing}") from None


def _pool_type(http: Any) -> str:
    """The work pool's type as the server answers it now; '' when it cannot be read."""
    try:
        pool = work_pool(http)
    except answer_errors():
        return ""
    return "" if pool is None else str(pool["type"])


def _rendered_prefect_yaml(value: bool, directory: Path) -> Path:
    """prefect.yaml with `value` in place of the variable: what `prefect deploy` would have read."""
    text = (CHECKOUT / "prefect.yaml").read_text()
    if TEMPLATE not in text:
        raise CliError(
            f"{CHECKOUT / 'prefect.yaml'} has no schedule reading {SCHEDULES_VARIABLE} ({TEMPLATE}); "
            f"{NOT_DEPLOYED}"
        )
    path = directory / "prefect.yaml"
    path.write_text(text.replace(TEMPLATE, "true" if value else "false"))
    return path


@dataclass
class Outcome:
    """What a command did and what the server says after it; `problem`: why it exits 1."""

    data: dict[str, Any]
    said: str
    line: Check
    problem: str = ""


def deploy() -> Outcome:
    if not (CHECKOUT / "prefect.yaml").is_file():  # an installed copy, not a checkout
        raise CliError(
            f"no prefect.yaml in {CHECKOUT}: run `upkeep deploy` from a checkout of Upkeep; {NOT_DEPLOYED}"
        )
    api = _api(NOT_DEPLOYED)
    with prefect_api_client(api) as http:
        before = read_installation(http, api, NOT_DEPLOYED)
        value = _checked_value(before)
        if before.pool and before.pool_type != "process":
            raise CliError(
                f"the work pool {POOL} {before.where()} is of type {one_line(before.pool_type, 60)!r}, not "
                f"'process': the workers of docs/deploying.md (`prefect worker start --pool {POOL}`) would "
                f"never run Upkeep's flows; remove or rename that pool, then `upkeep deploy`; {NOT_DEPLOYED}"
            )
        first = value is None
        if not before.pool:  # on a first deploy; a pool deleted since is made anew (as prefect.yaml names it)
            try:
                _run_prefect(
                    api,
                    "work-pool",
                    "create",
                    POOL,
                    "--type",
                    "process",
                    what="work-pool create",
                    nothing=NOT_DEPLOYED,
                )
            except CliError:  # 'already exists': another SRE's first deploy at the same time (adv54)
                if _pool_type(http) != "process":
                    raise
        if value is None:  # an empty server: paused until `upkeep live on` (step 7)
            _create_variable(http, api, False, NOT_DEPLOYED)
            value = False
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="upkeep-deploy-") as tmp:
            rendered = _rendered_prefect_yaml(value, Path(tmp))
            try:
                _run_prefect(
                    api,
                    "deploy",
                    "--all",
                    "--prefect-file",
                    str(rendered),
                    what="deploy --all",
                    nothing=lambda: _deployed_so_far(http, before),
                )
            except CliError as refused:
                if value:  # it may have written schedules ACTIVE after a `live off`: off wins here too
                    _off_wins_after_failure(http, api, refused)
                raise
        seconds = round(time.monotonic() - started, 1)
        after = read_installation(http, api, "the deploy ran")
        repaused: list[str] = []
        if value and after.intent.exact is not True:  # `live off` while deploying ACTIVE: off wins
            _set_schedules(http, after, False, repaused)
            after = read_installation(http, api, "the deploy ran; " + ", ".join(repaused or ["nothing"]))
        line = deployments_line(http, api)
    shown = "true" if value else "false"
    data = {
        "api": before.api,
        "first": first,
        "deployed": sorted(after.deployments),
        "schedules_active": value,
        "seconds": seconds,
        "deployments": line.as_dict(),
    }
    said = (
        f"deployed {len(after.deployments)} deployment(s) to {before.api} in {seconds:g} s, schedules "
        f"{'ACTIVE' if value else 'paused'} ({SCHEDULES_VARIABLE} {shown}"
        + (", set now: a first deploy" if first else "")
        + ")"
    )
    problem = ""
    if after.intent.exact is not value:
        problem = (
            f"{SCHEDULES_VARIABLE} changed from {shown} to {after.intent.shown} {after.where()} while "
            "deploying (another SRE, or `upkeep live`?): the schedules were deployed "
            f"{'ACTIVE' if value else 'paused'}"
            + (" and paused again (nothing runs)" if repaused else "")
            + "; settle it with `upkeep live on` or `upkeep live off`"
        )
    elif after.live is not value:
        problem = (
            f"after the deploy the dispatch schedule is {'ACTIVE' if after.live else 'paused'} but "
            f"{SCHEDULES_VARIABLE} is {shown} {after.where()} (changed while deploying?): settle it with "
            "`upkeep live on` or `upkeep live off`"
        )
    data["problem"] = problem
    return Outcome(data, said, line, problem)


def switch(on: bool) -> Outcome:
    """`upkeep live on|off`: the variable and every schedule of Upkeep's deployments, in the order that
    leaves nothing running if it is killed half-way (see the module's docstring); what is already as
    asked is left alone."""
    nothing = NOT_CHANGED
    api = _api(nothing)
    with prefect_api_client(api) as http:
        found = read_installation(http, api, nothing)
        if on and not found.deployments:
            raise CliError(
                f"no Upkeep deployment {found.where()}: nothing to switch on; deploy first with "
                f"`upkeep deploy` (it deploys paused); {nothing}"
            )
        changed: list[str] = []
        try:
            if on:
                _set_variable(http, found, True, changed)
                _set_schedules(http, found, True, changed)
                if schedules_intent(http).exact is not True:  # `live off` set it meanwhile: off wins
                    _set_schedules(http, read_installation(http, api, nothing), False, changed)
            else:
                _set_schedules(http, found, False, changed)
                _set_variable(http, found, False, changed)
                # what another SRE's `live on` or `upkeep deploy` resumed since `found` was read
                _set_schedules(http, read_installation(http, api, nothing), False, changed)
                # Upkeep's flows deployed under a name prefect.yaml no longer has (adv54): off is off
                strays = Installation(api=found.api, intent=found.intent, deployments=_strays(http))
                _set_schedules(http, strays, False, changed)
        except answer_errors() as exc:
            done = f" after changing {', '.join(changed)}" if changed else ""
            raise CliError(
                f"the Prefect API ({found.api}) {answer_problem(exc)}{done}; run `upkeep live "
                f"{'on' if on else 'off'}` again once it answers"
            ) from None
        after = read_installation(http, api, "changed: " + (", ".join(changed) or "nothing"))
        line = deployments_line(http, api)
    shown = "ACTIVE" if on else "paused"
    said = f"Upkeep's schedules {shown}, {SCHEDULES_VARIABLE} {str(on).lower()} {found.where()}" + (
        f" (changed: {', '.join(changed)})" if changed else " (already so: nothing changed)"
    )
    problem = ""
    if after.intent.exact is not on or (after.live is not None and after.live is not on):
        problem = (
            f"after `upkeep live {'on' if on else 'off'}` {SCHEDULES_VARIABLE} is {after.intent.shown} and "
            f"the dispatch schedule {'ACTIVE' if after.live else 'paused'} (another SRE at the same time?): "
            "run it again"
        )
    data = {
        "api": found.api,
        "live": on,
        "changed": changed,
        "deployments": line.as_dict(),
        "problem": problem,
    }
    return Outcome(data, said, line, problem)


def _strays(http: Any) -> dict[str, dict[str, Any]]:
    """Deployments of Upkeep's flows (by entrypoint) that prefect.yaml does not name: renamed or removed
    since they were deployed, still on the server with their schedules. `live off` pauses them too;
    `live on` leaves them paused (it switches on only what prefect.yaml names)."""
    names = set(expected_deployments())
    found: dict[str, dict[str, Any]] = {}
    for deployment in deployments_filtered(http, {}, "id", "schedules"):
        entrypoint = str(deployment.get("entrypoint") or "")
        if entrypoint.startswith(ENTRYPOINTS) and deployment["name"] not in names:
            found[f"{deployment['name']} (not in prefect.yaml)"] = deployment
    return found


def _set_variable(http: Any, found: Installation, value: bool, changed: list[str]) -> None:
    intent = found.intent
    if intent.exact is value:
        return
    if intent.missing:
        reply = http.post("variables/", json={"name": SCHEDULES_VARIABLE, "value": value})
    else:
        reply = http.patch(f"variables/name/{SCHEDULES_VARIABLE}", json={"value": value})
    reply.raise_for_status()
    changed.append(f"{SCHEDULES_VARIABLE} {intent.shown} -> {str(value).lower()}")


def _set_schedules(http: Any, found: Installation, active: bool, changed: list[str]) -> None:
    for name, deployment in sorted(found.deployments.items()):
        for schedule in deployment.get("schedules") or []:
            if schedule.get("active") is not active:
                http.patch(
                    f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": active}
                ).raise_for_status()
                changed.append(f"{name} schedule {'resumed' if active else 'paused'}")
        if active and deployment.get("paused") and deployment.get("schedules"):
            # paused with the UI's toggle: its schedules do nothing until the deployment is resumed
            http.post(f"deployments/{deployment['id']}/resume_deployment").raise_for_status()
            changed.append(f"{name} deployment resumed")
