"""Settings: UPKEEP_* environment variables, then an optional TOML file, then defaults.

Built on demand by `load_settings()`, never at import time, so tests and the lab can point a process at
another home, database or file server without import-order tricks.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


def default_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "upkeep"


# Role and distribution mailboxes, refused as portal users (who must be people): RFC 2142's and the
# usual ones. The setting portal_role_addresses replaces the list; empty refuses none.
ROLE_ADDRESSES = (
    "abuse,admin,administrator,all,billing,contact,do-not-reply,donotreply,everyone,help,helpdesk,"
    "hostmaster,info,mailer-daemon,marketing,no-reply,noc,noreply,postmaster,root,sales,security,"
    "support,team,webmaster"
)


def _port_of(parts: SplitResult) -> int | None:
    """The URL's port, -1 when it names none, None when it is no port (not a number from 0 to 65535:
    urlsplit raises only when asked, and its message quotes the value)."""
    try:
        port = parts.port
    except ValueError:
        return None
    return -1 if port is None else port


class Settings(BaseSettings):
    # allow_inf_nan=False: `inf` passed every lower bound (UPKEEP_RUN_LEASE_SECONDS=inf: each update an
    # 'unexpected OverflowError', a timedelta of infinity), and `nan` every bound at all (adv48).
    model_config = SettingsConfigDict(
        env_prefix="UPKEEP_", extra="forbid", validate_default=True, allow_inf_nan=False
    )

    home: Path = Field(default_factory=default_home, description="state directory")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite in the home dir")

    fileserver_url: str = "https://127.0.0.1:8443"
    fileserver_user: str = "upkeep"
    fileserver_password: SecretStr = SecretStr("")
    fileserver_ca: Path | None = Field(None, description="CA bundle the file server's cert must chain to")
    fileserver_allow_http: bool = Field(False, description="allow plain http:// (lab/dev only)")

    smtp_host: str = Field("", description="empty: write .eml files to the outbox dir instead of sending")
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    mail_from: str = "Upkeep <upkeep@localhost>"
    sre_email: str = "sre@localhost"
    oncall_escalate_minutes: float = Field(
        15.0, gt=0, description="an unacknowledged on-call page escalates one level after this many minutes"
    )
    alert_urls: str = Field(
        "", description="comma-separated Apprise URLs that receive every SRE alert (besides sre_email)"
    )
    support_contact: str = Field("support@localhost", description="shown to customers in every notice")
    escalation_manager: str = Field(
        "SRE Manager <sre-manager@localhost>",
        description="the Escalation Manager (SRE Manager role) assigned to escalated cases: 'Name <email>'",
    )
    escalation_update_cadence: str = Field(
        "P0=1h,P1=4h,P2=24h,P3=72h",
        description="how often an escalated case's stakeholders get an update, per priority; missed: the "
        "manager is alerted",
    )
    cluster_limit: str = Field(
        "", description="Prefect global concurrency limit bounding clusters upgraded at once; empty: none"
    )
    prefect_answer_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="how long the CLI's pre-checks (update, resume, request --now, update --check) wait "
        "for the Prefect API (its health, the cluster limit) before refusing; with PREFECT_API_URL set",
    )
    per_node_minutes: float = Field(10.0, gt=0, description="estimated minutes to upgrade one node")
    tunnel_wait_minutes: float = Field(
        15.0,
        ge=0,
        le=1440,
        description="at a window's start, wait up to this long (within the window) for a customer's "
        "closed support tunnel before carrying the update over to the next window; 0: do not wait",
    )
    run_lease_seconds: float = Field(
        300.0,
        ge=30,
        description="lease of a running run, renewed every tenth; when it runs out, a dispatcher takes over",
    )
    on_worker: bool = Field(
        False,
        description="update, request --now and resume hand the run to a Prefect worker (as --on-worker); "
        "--here runs it in the calling process",
    )
    start_lease_seconds: float = Field(
        600.0, ge=30, description="lease of a run handed to a deployment, until a worker starts its flow"
    )
    outbox_dir: Path | None = None

    portal_url: str = Field(
        "http://127.0.0.1:8600", description="where customers reach the portal: the base of every link to it"
    )
    portal_secret: SecretStr = Field(
        SecretStr(""), description="signs portal links; empty: <home>/portal.key, generated once (0600)"
    )
    portal_role_addresses: str = Field(
        ROLE_ADDRESSES,
        description="local parts refused as portal users (role or distribution addresses), comma-separated; "
        "empty: none",
    )
    portal_trusted_proxies: str = Field(
        "",
        description="reverse proxies whose X-Forwarded-For/-Proto the portal believes (IPs or CIDRs, "
        "comma-separated); empty: none",
    )
    portal_link_minutes: int = Field(15, ge=1, le=1440, description="a sign-in link expires after this")
    portal_session_hours: float = Field(8.0, gt=0, le=720, description="a portal session ends after this")

    known_hosts: Path | None = Field(None, description="known_hosts used to verify every SSH host key")
    ssh_key: Path | None = Field(None, description="private key for SSH logins")
    # Above 0: a 0 s health wait failed every node after its upgrade; 0 s is non-blocking to Paramiko (adv48).
    ssh_connect_timeout: float = Field(10.0, gt=0)
    ssh_command_timeout: float = Field(600.0, gt=0)
    health_timeout: float = Field(120.0, gt=0)

    @field_validator("*", mode="before")
    @classmethod
    def _number_or_switch_as_typed(cls, value: Any, info: ValidationInfo) -> Any:
        """A TOML `true` is a Python bool, which pydantic takes for the int 1 (and 1.0): `smtp_port = true`
        was port 1, `prefect_answer_seconds = true` a 1 s wait; and 1 or 0 for a switch was true or false.
        Refused (the environment's values are strings, read as before)."""
        kind = cls.model_fields[info.field_name].annotation if info.field_name else None
        if kind in (int, float) and isinstance(value, bool):
            raise PydanticCustomError("number_not_bool", "expected a number, not true or false")
        if kind is bool and isinstance(value, int | float) and not isinstance(value, bool):
            raise PydanticCustomError("bool_not_number", "expected true or false, not a number")
        return value

    @field_validator("fileserver_url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        # Never the value itself: it may carry basic-auth userinfo or a token; host and port do not.
        parts = urlsplit(value)
        # A password holding an unencoded '/', '?' or '#' ends the authority there: 'bob:PASSWORD' reads
        # as host and port, the rest of it lands in the path, query or fragment. Such a URL is refused,
        # and its authority not shown (urlsplit's host would be part of the password).
        split_ok = _port_of(parts) is not None and "@" not in parts.path + parts.query + parts.fragment
        host = parts.netloc.rpartition("@")[2] if split_ok else "(not shown)"
        shown = f"{parts.scheme}://{host}" if parts.scheme else "no scheme"
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"fileserver_url ({shown}) must start with https://")
        if not split_ok:
            raise ValueError(
                f"fileserver_url ({shown}) must be https://HOST[:PORT][/PATH]: a port is a number, and "
                "a '/', '?', '#' or '@' in a user or password is percent-encoded"
            )
        return value.rstrip("/")

    @field_validator("portal_url")
    @classmethod
    def _portal_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if (
            parts.scheme not in ("https", "http")
            or not parts.hostname
            or parts.username
            or parts.query
            or _port_of(parts) in (None, 0)  # not a port, or 0 (none to serve on; none given is -1)
        ):
            raise ValueError("portal_url must be http(s)://HOST[:PORT][/PATH], without user or query")
        return value.rstrip("/")

    @field_validator("portal_trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        """IP addresses or networks only, normalised to 'a,b'. uvicorn's forwarded_allow_ips keeps an
        entry it cannot parse as a literal host name no peer address equals (a typo silently trusts
        nobody) and '*' trusts every client (anyone resets the per-client limit with a header)."""
        import ipaddress

        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry == "*":
                raise ValueError("'*' would trust every client; list the reverse proxies' addresses")
            try:
                ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)"
                ) from None
        return ",".join(entries)

    @field_validator("escalation_update_cadence")
    @classmethod
    def _cadence(cls, value: str) -> str:
        from scheduling.escalation import parse_cadence

        parse_cadence(value)  # SchedulingError (a ValueError) naming the part
        return value

    @field_validator("cluster_limit")
    @classmethod
    def _limit_name(cls, value: str) -> str:
        if "\0" in value:  # adv46: no shell word or command argument holds it (bash's $'a\x00b' is 'a')
            raise ValueError("a Prefect limit's name cannot hold a NUL")
        try:  # an undecodable byte of the variable (a lone surrogate): its read blamed the API (adv46)
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("not UTF-8: a Prefect limit's name is text") from None
        return value

    @field_validator("escalation_manager")
    @classmethod
    def _manager(cls, value: str) -> str:
        from email.utils import parseaddr

        if "@" not in parseaddr(value)[1]:
            raise ValueError(f"escalation_manager {value!r}: expected 'Name <email>'")
        return value

    @field_validator("alert_urls")
    @classmethod
    def _apprise_urls(cls, value: str) -> str:
        from tasks.alerts import AppriseChannel, parse_alert_urls

        for url in parse_alert_urls(value):
            AppriseChannel(url)  # ValueError naming the URL (secrets masked)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    # Derived locations: one place decides where state lives.
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'upkeep.db'}"

    def database_named(self) -> str:
        """The database as a message names it: where its URL came from, password hidden
        ('UPKEEP_DATABASE_URL=...', or 'database_url = ... in FILE'), or the home's SQLite file."""
        url = self.resolved_database_url()
        return source_of("database_url", mask_url(url)) if self.database_url else f"database {url}"

    def resolved_outbox_dir(self) -> Path:
        return self.outbox_dir or self.home / "outbox"

    def resolved_known_hosts(self) -> Path:
        return self.known_hosts or self.home / "known_hosts"

    def resolved_ssh_key(self) -> Path:
        return self.ssh_key or self.home / "id_ed25519"

    def role_addresses(self) -> frozenset[str]:
        """portal_role_addresses as lower-case local parts ('support', 'noreply', ...)."""
        parts = (part.strip().lower().rstrip("@") for part in self.portal_role_addresses.split(","))
        return frozenset(part for part in parts if part)

    def resolved_portal_secret(self) -> bytes:
        """UPKEEP_PORTAL_SECRET, else the key in <home>/portal.key (made on first use, owner-only)."""
        if secret := self.portal_secret.get_secret_value():
            if len(secret.strip()) < 32:  # as the key file: a short key lets anyone guess it from one link
                raise SettingsError(
                    "UPKEEP_PORTAL_SECRET: expected at least 32 characters (a random string, e.g. from "
                    "`openssl rand -base64 48`), or leave it empty to use <home>/portal.key"
                )
            return secret.encode()
        path = self.home / "portal.key"
        if not path.exists():
            import secrets

            self.home.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_urlsafe(48))
        key = path.read_text().strip()
        if len(key) < 32:
            raise SettingsError(f"{path}: the portal key is too short; delete the file to make one")
        return key.encode()

    def work_dir(self) -> Path:
        return self.home / "work"

    def public_dict(self) -> dict[str, Any]:
        """Settings for display: secrets masked, paths resolved."""
        data = self.model_dump(mode="json")
        for key, value in data.items():
            if isinstance(getattr(self, key), SecretStr):
                data[key] = "**********" if value else ""
        data["database_url"] = mask_url(self.resolved_database_url())
        parts = urlsplit(self.fileserver_url)  # userinfo or a query token: not shown
        data["fileserver_url"] = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
        if self.alert_urls:
            from tasks.alerts import AppriseChannel, parse_alert_urls

            data["alert_urls"] = ",".join(AppriseChannel(u).name for u in parse_alert_urls(self.alert_urls))
        return data


def _spelled(variable: str) -> str | None:
    """The environment's key that sets `variable` as pydantic-settings reads it: in any case
    (upkeep_smtp_port), the last of several spellings winning."""
    spellings = [key for key in os.environ if key.upper() == variable]
    return spellings[-1] if spellings else None


def _config_variable() -> tuple[str, str] | None:
    """UPKEEP_CONFIG (the TOML file's path) as spelled, and its value: in any case, as pydantic-settings
    reads every other UPKEEP_ variable (upkeep_config was ignored while upkeep_smtp_port was read).
    Spellings that name different files are refused: which one wins would be the environment's order.
    One set empty names no file (as UPKEEP_CONFIG= always did)."""
    spellings = {key: value for key, value in os.environ.items() if key.upper() == "UPKEEP_CONFIG" and value}
    if len(set(spellings.values())) > 1:
        named = " and ".join(f"{key}={printable(value)}" for key, value in sorted(spellings.items()))
        raise SettingsError(f"{named} name different settings files; set one of them")
    spelled = _spelled("UPKEEP_CONFIG")
    if spelled not in spellings:
        spelled = next(iter(sorted(spellings)), None)
    return (spelled, spellings[spelled]) if spelled else None


def printable(value: str) -> str:
    """A value fit for one line of a terminal (an environment variable's, a URL): control characters
    (a newline, an escape sequence) as \\n, \\x1b."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode() for char in value)


def config_file() -> Path:
    explicit = _config_variable()
    if explicit and explicit[1]:
        return Path(explicit[1])
    spelled = _spelled("UPKEEP_HOME")  # the home as pydantic-settings reads it
    home = os.environ[spelled] if spelled else None
    return (Path(home) if home else default_home()) / "upkeep.toml"


class _TomlSource(PydanticBaseSettingsSource):
    """Optional TOML file (UPKEEP_CONFIG in any case, else <home>/upkeep.toml); unknown keys are errors."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = config_file()
        if not path.is_file():
            explicit = _config_variable()
            if explicit and explicit[1]:
                if path.is_dir():
                    what = "a directory, not a file"
                elif path.exists():
                    what = "not a regular file (a FIFO or a device)"
                else:
                    what = "no such file"
                raise SettingsError(f"{explicit[0]}={printable(str(path))}: {what}")
            return {}
        try:
            raw = path.read_bytes()
        except OSError as exc:  # permissions, an I/O error: the operator's to fix, not a crash
            raise SettingsError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
        try:
            text = raw.decode("utf-8")  # TOML is UTF-8, whatever the locale
        except UnicodeDecodeError as exc:
            where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
            raise SettingsError(f"{path}: not UTF-8 text ({where}); a TOML file is UTF-8") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: {exc}") from exc
        except RecursionError:  # tomllib (3.11) recurses per nested array or table, without a limit
            raise SettingsError(f"{path}: nested too deeply to read as TOML") from None
        unknown = sorted(set(data) - set(Settings.model_fields))
        if unknown:
            raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        return data


class SettingsError(ValueError):
    """Configuration that cannot be used, naming the file or variable it came from."""


def load_settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_source_of(err['loc'], overrides)}: {err['msg']} ({_echoed(err['loc'], err.get('input'))})"
            for err in exc.errors()
        )
        raise SettingsError(problems) from None


def _echoed(loc: tuple[Any, ...], value: Any) -> str:
    """'got VALUE' for a field in ECHOED or a TOML boolean (which carries no secret; shown as written,
    `true`/`false`), else 'value not shown'."""
    if isinstance(value, bool):
        return f"got {str(value).lower()}"
    return f"got {value!r}" if str(loc[0]) in ECHOED else "value not shown"


def _source_of(loc: tuple[Any, ...], overrides: dict[str, Any]) -> str:
    """Where a refused value came from, as the operator would look for it: the environment variable
    (which wins over the file), else the key in the TOML file, else (a default, or a value the caller
    passed) the variable that would set it."""
    name, path = _origin("_".join(str(p) for p in loc), overrides)
    return f"{name} in {path}" if path else name


def source_of(field: str, shown: str) -> str:
    """A setting refused after loading (a database URL that cannot be opened), named where it came from
    with its value as `shown` (masked where need be): 'UPKEEP_X=shown', or 'x = shown in PATH'."""
    name, path = _origin(field, {})
    return f"{name} = {shown} in {path}" if path else f"{name}={shown}"


def _origin(field: str, overrides: dict[str, Any]) -> tuple[str, Path | None]:
    """(the variable as spelled, None) or (the key, the TOML file that set it)."""
    variable = f"UPKEEP_{field.upper()}"
    if field in overrides:
        return variable, None
    if spelled := _spelled(variable):  # named as spelled: that is the one the operator set
        return spelled, None
    path = config_file()
    with contextlib.suppress(OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        if field in tomllib.loads(path.read_bytes().decode("utf-8")):
            return field, path
    return variable, None


# Settings whose refused value is echoed back: numbers, switches, paths and names that cannot carry a
# secret. Any other field (passwords, URLs with userinfo or tokens, a field added later) fails closed.
ECHOED = frozenset(
    {
        "home",
        "fileserver_user",
        "fileserver_ca",
        "fileserver_allow_http",
        "smtp_host",
        "smtp_port",
        "smtp_user",
        "smtp_starttls",
        "mail_from",
        "sre_email",
        "support_contact",
        "cluster_limit",
        "prefect_answer_seconds",
        "per_node_minutes",
        "tunnel_wait_minutes",
        "run_lease_seconds",
        "start_lease_seconds",
        "on_worker",
        "outbox_dir",
        "known_hosts",
        "ssh_key",
        "ssh_connect_timeout",
        "ssh_command_timeout",
        "health_timeout",
        "portal_link_minutes",
        "portal_session_hours",
        "portal_role_addresses",
        "portal_trusted_proxies",
    }
)


UNPARSEABLE = "<unparseable, hidden>"
_SECRET_QUERY = ("password", "passwd", "pwd", "secret", "token", "key")


def mask_url(url: str) -> str:
    """A database URL fit to show: its password and any password-like query value hidden. Fails
    closed: a URL that cannot be read whole is not shown at all."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if "@" in (parsed.host or ""):  # an unencoded @ in the password: the rest of it reads as host
            return UNPARSEABLE
        query = {
            key: ("***" if any(word in key.lower() for word in _SECRET_QUERY) else value)
            for key, value in parsed.query.items()
        }
        return parsed.set(query=query).render_as_string(hide_password=True)
    except Exception:
        return UNPARSEABLE
