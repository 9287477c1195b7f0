"""adv46: UPKEEP_CLUSTER_LIMIT / upkeep.toml's cluster_limit with a NUL (TOML's "\\u0000"; no environment
variable can hold one). No shell word holds a NUL: the copyable `prefect gcl create $'clu\\x00sters'`
hint made bash pass `clu`, another limit, and `upkeep settings` wrote the NUL raw onto the terminal.
Refused as any bad setting is: one line naming the value and the file, nothing else said."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import no_traceback, upkeep_here


def test_a_cluster_limit_with_a_nul_is_refused_in_one_line_naming_the_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "upkeep.toml").write_text('cluster_limit = "clu\\u0000sters"\n')

    done = upkeep_here(home, "settings")

    no_traceback(done)
    assert done.returncode != 0, done.stdout
    assert "\x00" not in done.stdout + done.stderr, repr(done.stdout + done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "cluster_limit" in done.stderr and "upkeep.toml" in done.stderr, done.stderr


def test_a_cluster_limit_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    """An undecodable byte in UPKEEP_CLUSTER_LIMIT (os.environ hands it over as a lone surrogate) reached
    the limit read, which blamed the API: 'the Prefect API did not answer ('utf-8' codec can't encode
    ...)' - and no Prefect limit can have that name."""
    home = tmp_path / "home"
    home.mkdir()

    done = upkeep_here(home, "settings", UPKEEP_CLUSTER_LIMIT="clusters\udcff")

    no_traceback(done)
    assert done.returncode != 0, done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "UPKEEP_CLUSTER_LIMIT" in done.stderr and "UTF-8" in done.stderr, done.stderr


def test_upkeep_settings_shows_a_hostile_limit_name_and_contact_on_one_plain_line_each(
    tmp_path: Path,
) -> None:
    """`upkeep settings` printed the values as they are: a limit name with ESC sequences (a window title,
    a cleared screen) or a right-to-left override went raw onto the SRE's terminal, a contact with a
    newline split its line in two. Shown with control characters escaped, as the refusals show them."""
    home = tmp_path / "home"
    home.mkdir()
    limit = "cl\x1b]0;owned\x07\x1b[2J\u202ex"

    done = upkeep_here(
        home, "settings", UPKEEP_CLUSTER_LIMIT=limit, UPKEEP_SUPPORT_CONTACT="desk\nforged = 1"
    )

    no_traceback(done)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line.isprintable() for line in lines), [line for line in lines if not line.isprintable()]
    assert "cluster_limit = cl\\x1b]0;owned\\x07\\x1b[2J\\u202ex" in lines, done.stdout
    assert "support_contact = desk\\nforged = 1" in lines, done.stdout
