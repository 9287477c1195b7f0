from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from upkeep.settings import SettingsError, load_settings


def _config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    """An upkeep.toml holding `text`, named by UPKEEP_CONFIG."""
    config = tmp_path / "upkeep.toml"
    config.write_text(text, encoding="utf-8")
    monkeypatch.setenv("UPKEEP_CONFIG", str(config))
    return config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("UPKEEP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("UPKEEP_HOME", str(tmp_path / "home"))


def test_defaults_live_under_the_home_dir(tmp_path: Path):
    settings = load_settings()
    assert settings.resolved_database_url() == f"sqlite:///{tmp_path / 'home' / 'upkeep.db'}"
    assert settings.resolved_outbox_dir() == tmp_path / "home" / "outbox"


def test_env_vars_override_the_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _config_file(tmp_path, monkeypatch, 'fileserver_url = "https://files.example:8443"\nsmtp_port = 2525\n')
    monkeypatch.setenv("UPKEEP_SMTP_PORT", "587")
    settings = load_settings()
    assert settings.fileserver_url == "https://files.example:8443"
    assert settings.smtp_port == 587


def test_postgres_by_one_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UPKEEP_DATABASE_URL", "postgresql+psycopg://postgres:hunter2@127.0.0.1/test")
    settings = load_settings()
    assert settings.resolved_database_url().startswith("postgresql+psycopg://")
    assert "hunter2" not in json.dumps(settings.public_dict())


def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UPKEEP_FILESERVER_PASSWORD", "MARKER-fs-secret")
    monkeypatch.setenv("UPKEEP_SMTP_PASSWORD", "MARKER-smtp-secret")
    settings = load_settings()
    shown = json.dumps(settings.public_dict()) + repr(settings) + str(settings)
    assert "MARKER" not in shown
    assert settings.fileserver_password.get_secret_value() == "MARKER-fs-secret"


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("UPKEEP_SMTP_PORT", "lots", "UPKEEP_SMTP_PORT"),
        ("UPKEEP_FILESERVER_URL", "ftp://files", "ftp://files"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_unknown_keys_in_the_file_are_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _config_file(tmp_path, monkeypatch, "fileserver_ulr = 'x'\n")
    with pytest.raises(SettingsError, match=r"upkeep.toml: unknown setting\(s\) fileserver_ulr"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "value"),
    [
        # a token in a well-formed Apprise URL next to a malformed one
        ("UPKEEP_ALERT_URLS", "slack://TOKENA/MARKER-b/MARKER-c,notascheme//MARKER-token"),
        ("UPKEEP_ALERT_URLS", "MARKER-token-without-a-scheme"),
        # basic-auth userinfo and a query token in a file-server URL with the wrong scheme
        ("UPKEEP_FILESERVER_URL", "ftp://bob:MARKER-pw@files.example/?token=MARKER-q"),
        # a password holding an unencoded '/', '#' or '?': urlsplit ends the authority there, and reads
        # 'bob:MARKER' as host and port; with the right scheme the URL was accepted, and `upkeep
        # settings` and the doctor (its port, in a ValueError) showed the password
        ("UPKEEP_FILESERVER_URL", "ftp://bob:MARKER/pw@files.example"),
        ("UPKEEP_FILESERVER_URL", "https://bob:MARKER/pw@files.example"),
        ("UPKEEP_FILESERVER_URL", "https://bob:MARKER#pw@files.example"),
        ("UPKEEP_FILESERVER_URL", "http://bob:MARKER?pw@files.example"),
        ("UPKEEP_FILESERVER_URL", "https://files.example:MARKER"),  # a port that is not one
        # a database URL pydantic refuses (not a string): from the TOML file below
    ],
)
def test_a_refused_value_that_can_carry_a_secret_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert env in message  # still names the variable
    assert "MARKER" not in message, message


def test_a_refused_database_url_from_the_file_is_not_echoed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    config = _config_file(tmp_path, monkeypatch, 'database_url = ["postgresql://u:MARKER-pw@127.0.0.1/db"]\n')
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value).startswith(f"database_url in {config}: ")  # where to look: the file
    assert "MARKER" not in str(refused.value)


def test_a_refused_value_is_named_where_it_came_from_the_file_or_the_variable_that_overrides_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, monkeypatch, 'smtp_port = "lots"\n')
    monkeypatch.delenv("UPKEEP_SMTP_PORT", raising=False)
    with pytest.raises(SettingsError) as from_file:
        load_settings()
    assert str(from_file.value) == (
        f"smtp_port in {config}: Input should be a valid integer, unable to parse string as an integer "
        "(got 'lots')"
    )
    monkeypatch.setenv("UPKEEP_SMTP_PORT", "many")  # the environment wins over the file: its value is refused
    with pytest.raises(SettingsError, match=r"^UPKEEP_SMTP_PORT: .*\(got 'many'\)$"):
        load_settings()


def test_a_refused_value_from_a_variable_spelled_in_lower_case_names_it_as_spelled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pydantic-settings reads UPKEEP_* variables in any case: the operator looks for the one they set."""
    import os

    for key in list(os.environ):
        if key.upper().startswith("UPKEEP_") and key != "UPKEEP_HOME":
            monkeypatch.delenv(key)
    _config_file(tmp_path, monkeypatch, "smtp_port = 2525\n")
    monkeypatch.setenv("upkeep_smtp_port", "lots")  # wins over the file, as UPKEEP_SMTP_PORT would
    with pytest.raises(SettingsError, match=r"^upkeep_smtp_port: .*\(got 'lots'\)$"):
        load_settings()


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/proc/self/mem", "cannot read it"),  # a regular file whose read fails (EIO), even for root
        ("DEEP", "nested too deeply"),  # tomllib recurses per bracket: RecursionError, not a decode error
        ("DIR", "a directory, not a file"),
    ],
)
def test_a_config_file_that_cannot_be_read_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: str, problem: str
) -> None:
    if path == "DEEP":
        deep = tmp_path / "upkeep.toml"
        deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
        path = str(deep)
    elif path == "DIR":
        path = str(tmp_path)
    elif not Path(path).is_file():  # pragma: no cover - not Linux
        pytest.skip("no /proc/self/mem")
    monkeypatch.setenv("UPKEEP_CONFIG", path)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert path in message and problem in message, message
    assert "\n" not in message


def test_a_refused_harmless_value_is_still_echoed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("UPKEEP_SMTP_PORT", "lots")
    with pytest.raises(SettingsError, match=r"UPKEEP_SMTP_PORT: .*\(got 'lots'\)"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:PASSWORD@127.0.0.1:notaport/db", "<unparseable, hidden>"),
        ("not a url at all PASSWORD", "<unparseable, hidden>"),
        # an unencoded @ in the password: read as user:pa@ host ssPASSWORD@127.0.0.1
        ("postgresql+psycopg://u:pa@ssPASSWORD@127.0.0.1:5432/db", "<unparseable, hidden>"),
        ("postgresql+psycopg://u:PASSWORD@127.0.0.1:5432/db", "postgresql+psycopg://u:***@127.0.0.1:5432/db"),
        (
            "postgresql+psycopg://u@h/db?password=PASSWORD&sslmode=require",
            "postgresql+psycopg://u@h/db?password=%2A%2A%2A&sslmode=require",
        ),
    ],
)
def test_database_url_masking_fails_closed(url: str, shown: str) -> None:
    from upkeep.settings import mask_url

    assert mask_url(url) == shown
    assert "PASSWORD" not in mask_url(url)


@pytest.mark.parametrize(
    "value, needle",
    [
        ("10.0.0.1/8", "10.0.0.1/8"),  # host bits set: uvicorn took it as a literal name, trusting nobody
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("proxy.internal", "proxy.internal"),  # a name: never matched against the peer's address
        ("127.0.0.1 ; ::1", "127.0.0.1 ; ::1"),
        ("*", "'*'"),  # trusts every client: anyone resets the per-client limit with a header
        ("127.0.0.1,*", "'*'"),
    ],
)
def test_trusted_proxies_must_be_addresses_or_networks(
    monkeypatch: pytest.MonkeyPatch, value: str, needle: str
) -> None:
    """UPKEEP_PORTAL_TRUSTED_PROXIES goes to uvicorn's forwarded_allow_ips, which silently keeps any entry
    it cannot parse as a literal host name that no peer address ever equals (and '*' trusts everyone):
    a typo left X-Forwarded-For ignored (every customer behind the proxy one client for the sign-in
    limit), '*' let any client spoof it. Refused at start, one line naming the setting and the entry."""
    monkeypatch.setenv("UPKEEP_PORTAL_TRUSTED_PROXIES", value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "UPKEEP_PORTAL_TRUSTED_PROXIES" in message and needle in message and "\n" not in message


def test_trusted_proxies_take_addresses_networks_and_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPKEEP_PORTAL_TRUSTED_PROXIES", " 127.0.0.1, 10.0.0.0/8 ,::1,fd00::/8,")
    assert load_settings().portal_trusted_proxies == "127.0.0.1,10.0.0.0/8,::1,fd00::/8"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:notaport", "http://127.0.0.1:99999", "https://portal.example:-1"]
)
def test_a_portal_url_whose_port_is_no_port_is_refused_when_read(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Accepted, it failed only where the port is used: `demo --keep` at its very end (its lab left up)
    with "unexpected ValueError ... this is a bug", `demo` printing a sign-in link that cannot open."""
    monkeypatch.setenv("UPKEEP_PORTAL_URL", url)
    with pytest.raises(SettingsError, match=r"UPKEEP_PORTAL_URL: .*portal_url must be"):
        load_settings()


def test_a_database_url_from_the_file_that_is_no_url_is_named_in_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Refused when the database is opened (not by pydantic): still named where it came from."""
    from upkeep.database import open_database

    config = _config_file(tmp_path, monkeypatch, 'database_url = "no-url-at-all"\n')
    with pytest.raises(SettingsError) as refused:
        open_database(load_settings())
    assert str(refused.value).startswith(f"database_url = <unparseable, hidden> in {config}: not a database")
    monkeypatch.setenv("upkeep_database_url", "still-no-url")  # the variable wins: named as set
    with pytest.raises(SettingsError, match=r"^upkeep_database_url=<unparseable, hidden>: not a database"):
        open_database(load_settings())


def test_a_home_set_in_lower_case_is_where_the_file_is_read_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """pydantic-settings takes upkeep_home as the home: its upkeep.toml is the one read (and named)."""
    monkeypatch.delenv("UPKEEP_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # the default home: no file there
    home = tmp_path / "lower"
    home.mkdir()
    (home / "upkeep.toml").write_text('smtp_port = "lots"\n', encoding="utf-8")
    monkeypatch.setenv("upkeep_home", str(home))
    with pytest.raises(SettingsError, match=rf"^smtp_port in {re.escape(str(home / 'upkeep.toml'))}: "):
        load_settings()


def test_the_doctor_and_db_upgrade_name_a_database_url_from_the_file_in_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.support.cli import upkeep_here
    from upkeep.doctor import Findings, check_database

    config = _config_file(tmp_path, monkeypatch, 'database_url = "no database url at all"\n')
    [check] = check_database(Findings(settings=load_settings()))
    assert (
        check.status == "fail"
        and f"in {config}" in check.detail
        and "UPKEEP_DATABASE_URL" not in check.detail
    )

    home = tmp_path / "home"
    upgraded = upkeep_here(home, "db", "upgrade", UPKEEP_CONFIG=str(config))
    [line] = upgraded.stderr.splitlines()
    assert upgraded.returncode == 1 and f"in {config}" in line and "UPKEEP_DATABASE_URL" not in line, line


def test_the_config_file_named_in_lower_case_is_read_like_every_other_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """upkeep_smtp_port is read (pydantic-settings, any case), so upkeep_config is too: it was ignored."""
    config = _config_file(tmp_path, monkeypatch, "smtp_port = 2525\n")
    monkeypatch.delenv("UPKEEP_CONFIG")
    monkeypatch.setenv("upkeep_config", str(config))
    assert load_settings().smtp_port == 2525

    config.unlink()  # and named as spelled when it is refused
    with pytest.raises(SettingsError, match=rf"^upkeep_config={re.escape(str(config))}: no such file$"):
        load_settings()


def test_the_config_file_named_twice_differently_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _config_file(tmp_path, monkeypatch, "smtp_port = 2525\n")
    other = tmp_path / "other.toml"
    other.write_text("smtp_port = 2526\n", encoding="utf-8")
    monkeypatch.setenv("upkeep_config", str(other))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        f"UPKEEP_CONFIG={config} and upkeep_config={other} name different settings files; set one of them"
    )

    monkeypatch.setenv("upkeep_config", str(config))  # the same file twice is no conflict
    assert load_settings().smtp_port == 2525


@pytest.mark.parametrize("empty", ["UPKEEP_CONFIG", "upkeep_config"])
def test_a_config_spelling_set_empty_names_no_file_and_is_no_conflict(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty: str
) -> None:
    """UPKEEP_CONFIG= (empty) names no file, as before the lower case was read: with upkeep_config set
    it was refused as 'name different settings files', which one of them does not."""
    config = _config_file(tmp_path, monkeypatch, "smtp_port = 2525\n")
    monkeypatch.delenv("UPKEEP_CONFIG")
    monkeypatch.setenv("UPKEEP_CONFIG" if empty == "upkeep_config" else "upkeep_config", str(config))
    monkeypatch.setenv(empty, "")
    assert load_settings().smtp_port == 2525


def test_a_config_path_with_control_characters_is_refused_on_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The values were written raw: a newline split the line, an escape sequence reached the terminal."""
    config = _config_file(tmp_path, monkeypatch, "smtp_port = 2525\n")
    hostile = f"{tmp_path}/x\n\x1b[2Jerror: fine"
    monkeypatch.setenv("upkeep_config", hostile)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == (
        f"UPKEEP_CONFIG={config} and upkeep_config={tmp_path}/x\\n\\x1b[2Jerror: fine name different "
        "settings files; set one of them"
    )

    monkeypatch.delenv("UPKEEP_CONFIG")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == f"upkeep_config={tmp_path}/x\\n\\x1b[2Jerror: fine: no such file"


def test_a_config_path_that_is_a_fifo_is_not_called_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """upkeep_config=<a FIFO> (a process substitution, <(...)) was refused as 'no such file'."""
    import os

    fifo = tmp_path / "settings.fifo"
    os.mkfifo(fifo)
    monkeypatch.delenv("UPKEEP_CONFIG", raising=False)
    monkeypatch.setenv("upkeep_config", str(fifo))
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value) == f"upkeep_config={fifo}: not a regular file (a FIFO or a device)"


def _fields_of(*kinds: type) -> list[str]:
    from upkeep.settings import Settings

    return sorted(name for name, field in Settings.model_fields.items() if field.annotation in kinds)


@pytest.mark.parametrize("value", ["true", "false"])
@pytest.mark.parametrize("key", _fields_of(int, float))
def test_a_toml_boolean_for_a_number_is_refused_naming_the_key_the_value_and_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, value: str
) -> None:
    """A TOML `true` is a Python bool, which is an int: `smtp_port = true` was port 1, `per_node_minutes =
    true` one minute, `prefect_answer_seconds = true` a 1 s wait, and nothing said so."""
    config = _config_file(tmp_path, monkeypatch, f"{key} = {value}\n")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    said = str(refused.value)
    assert said.startswith(f"{key} in {config}: "), said
    assert f"(got {value})" in said and "number" in said and "\n" not in said, said


@pytest.mark.parametrize("key", _fields_of(bool))
def test_a_toml_number_for_a_switch_is_refused_naming_the_key_the_value_and_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str
) -> None:
    """The other way round: `on_worker = 1` read as true (and 0 as false)."""
    config = _config_file(tmp_path, monkeypatch, f"{key} = 1\n")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    said = str(refused.value)
    assert said.startswith(f"{key} in {config}: "), said
    assert "(got 1)" in said and "true or false" in said, said


def test_numbers_and_switches_from_the_environment_are_read_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPKEEP_SMTP_PORT", "2525")
    monkeypatch.setenv("UPKEEP_PER_NODE_MINUTES", "1.5")
    monkeypatch.setenv("UPKEEP_ON_WORKER", "true")
    settings = load_settings()
    assert (settings.smtp_port, settings.per_node_minutes, settings.on_worker) == (2525, 1.5, True)


def test_upkeep_settings_refuses_a_toml_boolean_for_a_number_in_one_line(tmp_path: Path) -> None:
    from tests.support.cli import no_traceback, upkeep_here

    home = tmp_path / "cli-home"
    home.mkdir()
    (home / "upkeep.toml").write_text("portal_link_minutes = true\n", encoding="utf-8")
    done = upkeep_here(home, "settings")

    no_traceback(done)
    assert done.returncode != 0, done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"portal_link_minutes in {home / 'upkeep.toml'}" in done.stderr and "(got true)" in done.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", _fields_of(float))
def test_a_number_setting_that_is_no_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, key: str, value: str
) -> None:
    """`nan`, `inf` (TOML and the environment both spell them): UPKEEP_RUN_LEASE_SECONDS=inf passed its
    ge=30 and every update ended in 'unexpected OverflowError' (timedelta of infinity); a nan timeout
    passed every bound (each comparison false) to Paramiko's settimeout (adv48)."""
    variable = f"UPKEEP_{key.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    said = str(refused.value)
    assert said.startswith(f"{variable}: "), said
    assert "\n" not in said, said


@pytest.mark.parametrize("value", ["0", "-1"])
@pytest.mark.parametrize("key", ["ssh_connect_timeout", "ssh_command_timeout", "health_timeout"])
def test_a_timeout_of_zero_or_less_is_refused(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    """A timeout of 0 or less has no bound at all: a health wait of 0 s fails every node's check at once
    after its upgrade, an SSH command with 0 s is non-blocking in Paramiko (adv48)."""
    variable = f"UPKEEP_{key.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert str(refused.value).startswith(f"{variable}: "), refused.value
