"""The real `upkeep` command line, run as a subprocess against a SQLite database in a temporary home:
what an SRE types and reads, including how it refuses bad input (one clear message, exit 1, nothing
written, no traceback).

Each subprocess costs over a second of imports, so one imported home is shared by the tests that only
read it or must leave it unchanged. PostgreSQL is not driven from here: the CLI selects a database by
URL alone, and the per-test PostgreSQL schemas are not; importing into PostgreSQL and reading the same
inventory back is covered by test_inventory_db.py on both databases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from inventory.importer import InventoryError, load_inventory
from tests.support.cli import database, no_traceback, upkeep

SHA = "cd" * 32

# Every field written out, so that what `inventory show --json` returns is exactly this file, parsed.
GOOD = f"""\
customers:
  - name: acme
    timezone: America/New_York
    contacts:
      - {{email: ops@acme.example, name: Acme Ops, role: primary}}
    clusters:
      - name: acme-c1
        kind: software
        version: 9.8.0
        profile: standard
        ring: broad
        access: {{type: direct}}
        nodes:
          - {{hostname: acme-c1-n1, address: 127.0.0.1, port: 40001, user: root}}
          - {{hostname: acme-c1-n2, address: 127.0.0.1, port: 40002, user: root}}
      - name: acme-c2
        kind: cloud
        version: 9.9.0
        profile: large
        ring: canary
        access: {{type: jump, host: jump.acme.example, port: 2222, user: upkeep}}
        nodes:
          - {{hostname: acme-c2-n1, address: "fd00::12", port: 22, user: upkeep}}
  - name: umbrella
    timezone: Australia/Lord_Howe
    contacts: []
    clusters:
      - name: umbrella-c1
        kind: cloud
        version: 9.8.0
        profile: standard
        ring: early
        access: {{type: direct}}
        nodes:
          - {{hostname: u1-n1, address: 10.0.0.7, port: 22, user: upkeep}}
releases:
  - version: 9.9.0
    package: releases/upkeep-product-9.9.0.tar.gz
    sha256: {SHA}
    from: [9.8.0]
    deadline: null
"""

# Five problems on five lines; the good cluster in between must not be written either.
BAD = f"""\
customers:
  - name: acme
    timezone: Mars/Olympus
    clusters:
      - name: acme-c1
        kind: metal
        version: 9.8.0
        access: {{type: direct}}
        nodes:
          - {{hostname: acme-c1-n1, address: 127.0.0.1, port: 70000}}
      - name: acme-c9
        kind: cloud
        version: 9.9.0
        access: {{type: direct}}
        nodes: [{{hostname: acme-c9-n1}}]
releases:
  - version: 9.9
    package: ../outside.tar.gz
    sha256: {SHA}
    from: [9.8.0]
"""


@pytest.fixture(scope="module")
def imported_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose database holds GOOD, imported through the CLI. Tests using it must not change it."""
    root = tmp_path_factory.mktemp("cli")
    good = root / "good.yaml"
    good.write_text(GOOD)
    home = root / "home"
    result = upkeep(home, "inventory", "import", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"imported {good}: "), result.stdout
    no_traceback(result)
    assert database(home)[0], "the import created no database"
    return home


def test_show_json_returns_the_imported_file(imported_home: Path) -> None:
    result = upkeep(imported_home, "inventory", "show", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == yaml.safe_load(GOOD)


def test_bad_file_lists_every_problem_and_writes_nothing(imported_home: Path) -> None:
    bad = imported_home.parent / "bad.yaml"
    bad.write_text(BAD)
    with pytest.raises(InventoryError) as info:
        load_inventory(bad)
    expected = [f"{bad}:{problem.line}: {problem.message}" for problem in info.value.errors]
    assert len({problem.line for problem in info.value.errors}) >= 5, expected
    before = database(imported_home)

    result = upkeep(imported_home, "inventory", "import", str(bad))

    assert result.returncode == 1, (result.stdout, result.stderr)
    no_traceback(result)
    assert result.stdout == ""
    # One problem a line, each whole ("error: " may lead the first); none wrapped, none extra.
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines()]
    assert lines == expected, result.stderr
    assert lines[0].startswith(f"{bad}:3: customer: timezone: 'Mars/Olympus' is not")
    assert database(imported_home) == before


def test_missing_file_is_one_clear_line(imported_home: Path) -> None:
    missing = Path("/nonexistent.yaml")
    assert not missing.exists()
    before = database(imported_home)
    result = upkeep(imported_home, "inventory", "import", str(missing))
    assert result.returncode == 1
    no_traceback(result)
    assert result.stdout == ""
    assert result.stderr == f"error: {missing}: cannot read the file: No such file or directory\n"
    assert database(imported_home) == before


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("bad", ["name", "content"])
def test_a_file_whose_name_or_content_is_not_utf8_is_one_line_and_nothing_imported(
    imported_home: Path, bad: str, as_json: bool
) -> None:
    """Raw bytes in the file's name (an `os.fsencode` name, a Latin-1 file system) were "unexpected
    UnicodeEncodeError ... a bug in Upkeep" from the audit's INSERT, after the whole import had run."""
    import os

    good = GOOD.replace("acme-c1-n1", "renamed-n1")  # would change the database if it were imported
    if bad == "name":
        source = imported_home.parent / os.fsdecode(b"inventory-\xff.yaml")
        source.write_text(good, encoding="utf-8")
        expected = (
            f"{imported_home.parent}/inventory-\\xff.yaml: the file's name is not UTF-8 (byte 0xff); "
            "rename the file to import it"
        )
    else:
        source = imported_home.parent / "latin-1.yaml"
        source.write_bytes(good.replace("Acme Ops", "Acme Op\u00e9rations").encode("latin-1"))
        expected = f"{source}:5: not UTF-8 text (byte 0xe9 at column 48)"
    before = database(imported_home)

    result = upkeep(imported_home, "inventory", "import", *(["--json"] if as_json else []), str(source))

    assert result.returncode == 1, (result.stdout, result.stderr)
    if as_json:
        assert (json.loads(result.stdout), result.stderr) == ({"error": expected, "exit": 1}, "")
    else:
        assert (result.stdout, result.stderr) == ("", f"error: {expected}\n")
    assert database(imported_home) == before


def test_unknown_run_is_refused(imported_home: Path) -> None:
    result = upkeep(imported_home, "show", "999")
    assert result.returncode == 1
    no_traceback(result)
    assert "no update 999" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_settings_json_masks_the_file_server_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = upkeep(home, "settings", "--json", UPKEEP_FILESERVER_PASSWORD="MARKER-xyz")
    assert result.returncode == 0, result.stderr
    assert "MARKER" not in result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["fileserver_password"] == "**********"  # set, and masked
    assert data["home"] == str(home)  # the environment given is the one in force


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_an_output_that_cannot_hold_unicode_gets_the_answer_not_a_bug_report(
    tmp_path: Path, encoding: str
) -> None:
    """A terminal or pipe set to ASCII (PYTHONIOENCODING, an old locale): the table comes with what the
    encoding cannot hold replaced, and --json stays lossless (escaped), never "unexpected
    UnicodeEncodeError ... a bug in Upkeep"."""
    inventory = tmp_path / "good.yaml"
    inventory.write_text(GOOD.replace("Acme Ops", "Zoë Ops → Łódź"), encoding="utf-8")
    home = tmp_path / "home"
    assert upkeep(home, "inventory", "import", str(inventory)).returncode == 0

    table = upkeep(home, "inventory", "show", PYTHONIOENCODING=encoding)
    assert (table.returncode, table.stderr) == (0, ""), table.stderr
    table.stdout.encode(encoding)  # nothing it cannot hold
    assert "acme-c1-n2" in table.stdout and "releases: 9.9.0" in table.stdout

    as_json = upkeep(home, "inventory", "show", "--json", PYTHONIOENCODING=encoding)
    assert (as_json.returncode, as_json.stderr) == (0, ""), as_json.stderr
    as_json.stdout.encode("ascii")
    assert json.loads(as_json.stdout) == yaml.safe_load(inventory.read_text(encoding="utf-8"))


def _bytes_of(home: Path, *args: str, **env: str) -> tuple[int, bytes, bytes]:
    """`upkeep ARGS` as bytes: what a pipe to `jq` gets, before any decoding."""
    from tests.support import forkserver
    from tests.support.cli import home_env

    proc = forkserver.popen(args, env=home_env(home, **env), cwd=home.parent, text=False)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


# A home (or an argument) whose name is not UTF-8: Python hands it over as a lone surrogate ("\udcff"),
# which no encoding holds as text. The default locale's stdout writes it back as the raw byte, a strict
# one (PYTHONIOENCODING=utf-8) cannot write it at all.
@pytest.mark.parametrize("encoding", ["", "utf-8", "ascii"])
def test_json_of_a_value_that_is_not_utf8_is_valid_utf8_json_and_lossless(
    tmp_path: Path, encoding: str
) -> None:
    home = tmp_path / "h\udcff"
    code, out, err = _bytes_of(home, "settings", "--json", PYTHONIOENCODING=encoding)
    assert (code, err) == (0, b""), err
    assert json.loads(out.decode("utf-8"))["home"] == str(home)


def test_a_table_of_a_value_that_is_not_utf8_on_a_strict_utf8_output_is_the_answer(tmp_path: Path) -> None:
    home = tmp_path / "h\udcff"
    code, out, err = _bytes_of(home, "settings", PYTHONIOENCODING="utf-8")
    assert (code, err) == (0, b""), err
    # `upkeep settings` escapes what a terminal cannot show as it is (adv46: a limit name's ESC was
    # written raw): the undecodable byte is shown as its escape, which any output encoding can write.
    assert f"home = {tmp_path}/h\\udcff\n".encode() in out, out


@pytest.mark.parametrize("encoding", ["", "utf-8", "ascii"])
def test_a_json_refusal_naming_an_argument_that_is_not_utf8_is_one_lossless_object(
    tmp_path: Path, encoding: str
) -> None:
    missing = tmp_path / "\udcffnope.yaml"
    code, out, err = _bytes_of(
        tmp_path / "home", "inventory", "import", "--json", str(missing), PYTHONIOENCODING=encoding
    )
    assert (code, err) == (1, b""), err
    assert json.loads(out.decode("utf-8")) == {
        "error": f"{missing}: cannot read the file: No such file or directory",
        "exit": 1,
    }


@pytest.mark.parametrize("args", ["settings --json", "inventory schema"])
def test_json_to_a_closed_stdout_is_one_line_on_stderr_not_a_traceback(tmp_path: Path, args: str) -> None:
    """`upkeep ... --json >&-` (a script's mistake), and the schema, a plain JSON print: Python starts
    with sys.stdout None; not SIGPIPE, since no reader ever was."""
    import subprocess
    import sys

    from tests.support.cli import home_env

    done = subprocess.run(
        ["sh", "-c", f'exec "$0" -m upkeep {args} >&-', sys.executable],
        env=home_env(tmp_path / "home"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (
        1,
        "error: standard output is closed: nowhere to write the answer\n",
    )


# "[/]" (a closing tag with nothing to close) spans two directories: "x[" and "]y".
@pytest.mark.parametrize("name", ["x[bold]y", "x[/]y"])
def test_settings_shows_a_value_that_looks_like_rich_markup_as_it_is(tmp_path: Path, name: str) -> None:
    home = tmp_path / name
    home.parent.mkdir(exist_ok=True)
    result = upkeep(home, "settings")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert f"home = {home}\n" in result.stdout, result.stdout


def test_a_utf8_settings_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """TOML is UTF-8 by definition; an old locale (LC_ALL=C, UTF-8 mode off) reads files as ASCII."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "upkeep.toml").write_text('mail_from = "Zoë Ops <ops@acme.example>"\n', encoding="utf-8")
    result = upkeep(home, "settings", "--json", LC_ALL="C", PYTHONUTF8="0")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert json.loads(result.stdout)["mail_from"] == "Zoë Ops <ops@acme.example>"


def test_a_settings_file_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "upkeep.toml").write_bytes('mail_from = "Zoë"\n'.encode("latin-1"))
    result = upkeep(home, "settings")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {home / 'upkeep.toml'}: not UTF-8 text (byte 0xeb at offset 15); a TOML file is UTF-8\n"
    )


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"x\nerror: all good\x1b[2J.yaml", "x\\nerror: all good\\x1b[2J.yaml"),  # exists, valid
        (b"gone\x1b]0;owned\x07.yaml", "gone\\x1b]0;owned\\x07.yaml"),  # missing: "cannot read"
    ],
    ids=["newline-escape", "osc-missing"],
)
def test_a_file_name_with_control_characters_is_shown_escaped_on_one_line(
    imported_home: Path, raw: bytes, shown: str
) -> None:
    """A name holding a newline or a terminal escape was written raw into the error: two lines, the
    second looking like Upkeep's own, or the terminal cleared/retitled by a file's name."""
    import os

    if raw.startswith(b"x\n"):
        (imported_home.parent / os.fsdecode(raw)).write_text("customers: [\n", encoding="utf-8")
        problem = ":2: YAML syntax"
    else:
        problem = ": cannot read the file: No such file or directory"
    before = database(imported_home)

    result = upkeep(imported_home, "inventory", "import", str(imported_home.parent / os.fsdecode(raw)))

    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {imported_home.parent}/{shown}{problem}"), line
    assert database(imported_home) == before


def test_a_directory_that_is_not_utf8_is_named_as_the_path_not_the_file(imported_home: Path) -> None:
    import os

    folder = imported_home.parent / os.fsdecode(b"dir-\xfe")
    folder.mkdir()
    (folder / "inventory.yaml").write_text(GOOD, encoding="utf-8")

    result = upkeep(imported_home, "inventory", "import", str(folder / "inventory.yaml"))

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: {imported_home.parent}/dir-\\xfe/inventory.yaml: the file's path is not UTF-8 (byte 0xfe); "
        "rename it to import the file\n"
    )


def test_a_file_name_with_control_characters_is_escaped_in_the_import_report_too(imported_home: Path) -> None:
    source = imported_home.parent / "same\n\x1b[2Jagain.yaml"
    source.write_text(GOOD, encoding="utf-8")

    result = upkeep(imported_home, "inventory", "import", str(source))

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"imported {imported_home.parent}/same\\n\\x1b[2Jagain.yaml: "), (
        result.stdout
    )
    assert "\x1b" not in result.stdout  # (Rich wraps the report at 80 columns: at a space, not in a name)
