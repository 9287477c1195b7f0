"""adv46: `upkeep request` (no --now) commits the run and its customer's notice before it reads the brake
and writes its answer. adv43 made a Ctrl-C in the brake's read end that read only; a second Ctrl-C (an
impatient SRE presses it twice), or the first one landing as the answer is written, still answered
"error: aborted", exit 130, with the update planned and its notice queued all the same: the next
`upkeep request` then said "already has an active update". The interrupt is put where Python puts a
SIGINT: a KeyboardInterrupt raised in the main thread, here as the answer is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import no_traceback, upkeep_here


@pytest.mark.parametrize("as_json", [False, True], ids=["line", "json"])
def test_ctrl_c_as_a_scheduled_requests_answer_is_written_says_the_update_is_scheduled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_json: bool
) -> None:
    import upkeep.requests
    from tests.integration.test_calendar_cli import INVENTORY

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(INVENTORY)
    home = tmp_path / "home"
    assert upkeep_here(home, "inventory", "import", str(fleet)).returncode == 0

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(upkeep.requests, "_show_scheduled", interrupted)
    args = ["request", "acme-c1", "--to", "9.9.0", "--source", "customer", *(["--json"] if as_json else [])]
    done = upkeep_here(home, *args)

    no_traceback(done)
    assert done.returncode == 130, done.stdout + done.stderr
    said = json.loads(done.stdout)["error"] if as_json else done.stderr
    assert "update-1" in said and "scheduled" in said, done.stdout + done.stderr
    assert len(said.strip().splitlines()) == 1, said
    monkeypatch.undo()
    shown = upkeep_here(home, "show", "1")
    assert shown.returncode == 0 and "planned" in shown.stdout, shown.stdout + shown.stderr
