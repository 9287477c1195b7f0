"""adv46: the held line's `prefect gcl update NAME` hint, copied from the SRE's terminal into bash, names
the very limit, whatever characters its name holds (a real Prefect limit, real bash): shell_word wrote
a C1 control, a no-break space or a soft hyphen (U+0080-U+00A0, U+00AD) as bash's `\\xHH`, which bash
reads as that one byte, not the character's UTF-8: the command named another (missing) limit. And
`\\uHHHH` is read back only in a UTF-8 locale: under LC_ALL=C bash keeps it as the six characters."""

from __future__ import annotations

import re
import shutil
import subprocess
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from tests.support.update_world import World


@pytest.mark.parametrize(
    "tail",
    ["\x85", "\xa0", "\xad", "\x9b2J", "\u202eevil", "a\u200db", "\ufeff"],
    ids=["NEL", "no-break-space", "soft-hyphen", "C1-CSI", "RTL-override", "ZWJ", "BOM"],
)
@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_the_held_lines_hint_names_the_limit_in_bash(
    prefect_world: World, capsys: pytest.CaptureFixture[str], tail: str, locale: str
) -> None:
    world = prefect_world
    limit = f"clusters-{uuid4().hex[:8]}{tail}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=0))
    world.runtime.cluster_limit = limit

    world.request(now_run=False, as_json=False)

    said = capsys.readouterr().out
    assert "the fleet is held" in said, said
    assert said.strip().isprintable(), repr(said)  # nothing invisible or direction-changing left raw
    found = re.search(r"prefect gcl update (\S+) --limit", said)
    assert found is not None, said
    bash = shutil.which("bash")
    assert bash is not None
    read = subprocess.run(
        [bash, "-c", f"printf %s {found.group(1)}"],
        capture_output=True,
        env={"LC_ALL": locale, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert read.stdout == limit.encode(), (found.group(1), read.stdout)
