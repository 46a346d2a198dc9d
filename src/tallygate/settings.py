"""Every environment variable, parsed and validated in one place.

The names come from the deployment guide (the public contract); see docs/contracts.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, unquote

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
# as the Anthropic SDKs take it: without /v1 (the Messages API is {base}/v1/messages)
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # Cloud Run's HTTP/1 request cap
# uploads to /v1/files are streamed to the upstream, never held whole: OpenAI's own cap is 512 MB
DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024

TENANT_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message says which and why."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _amount(env: Mapping[str, str], name: str, what: str) -> Decimal | None:
    """A non-negative exact decimal (`what` says its unit in the error); unset: None."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise SettingsError(f"{name} must be non-negative ({what}), got {raw!r}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


@dataclass(frozen=True)
class PostgresSettings:
    """libpq connection parameters; `conninfo` is handed to psycopg as is."""

    conninfo: str = field(repr=False)  # holds the password
    sslmode: str
    description: str  # host/db without the password, for log lines
    secrets: tuple[str, ...] = field(default=(), repr=False)  # the password, as given and decoded


@dataclass(frozen=True)
class Settings:
    port: int = 8080
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str = DEFAULT_ANTHROPIC_BASE_URL
    gateway_token: str | None = field(default=None, repr=False)
    master_key: str | None = field(default=None, repr=False)
    default_tenant: str | None = None
    config_file: str | None = None
    prices_file: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    first_byte_timeout: float | None = None  # None: the read timeout covers the wait for headers
    retries: int = 2
    retry_backoff: float = 0.25
    retry_max_backoff: float = 4.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    batch_poll_interval: float = 60.0  # seconds between the poller's looks at unfinished batches
    postgres: PostgresSettings | None = None
    sqlite_path: str = "tallygate.db"
    ledger: str = "on"  # "off": no ledger rows (the log line and the metrics only)
    ledger_mode: str = "async"
    sync_commit_timeout: float = 5.0
    ledger_batch_size: int = 100
    ledger_flush_interval: float = 0.02
    ledger_buffer_limit: int = 100_000
    ledger_pool_max: int = 5
    ledger_retention_days: int | None = None  # TALLYGATE_LEDGER_RETENTION: whole days of rows kept (None: all)
    auto_migrate: bool = True
    shutdown_grace: float = 8.0
    google_cloud_project: str | None = None
    redis_url: str | None = field(default=None, repr=False)
    limits_on_redis_down: str = "closed"  # closed: 503; open: admit uncounted
    limits_on_db_down: str = "closed"  # tenants/keys never loaded, or a budget's spend unreadable
    db_timeout: float = 2.0  # seconds an admin call, /v1/usage or a budget start waits for the database
    metrics_mode: str = "auth"
    keys_refresh: float = 2.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_tenant_cap: int = 100
    default_max_output_tokens: int = 32768
    default_context_tokens: int = 1_000_000
    unpriced_reserve_mtok: Decimal | None = None
    credit_low_usd: Decimal | None = None  # credit_low below this balance (None: 10% of the last top-up)
    sse_max_event_bytes: int = 8 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 75.0
    # the web console (/ui): the key its session cookies are signed with (None: derived from the
    # master key, see console/sessions.py) and how long a sign-in lasts
    console_secret: str | None = field(default=None, repr=False)
    console_session_ttl: float = 8 * 3600.0
    # failed console sign-ins allowed a minute, from one client address and from all (then 429)
    console_sign_in_failures_per_ip: int = 10
    console_sign_in_failures_total: int = 100
    # where `tallygate reconcile` keeps its runs for the console (reconcile/runs.py)
    reconcile_dir: str | None = None
    # secrets from the environment beyond the fields above (PGPASSWORD, the passwords in
    # DATABASE_URL and REDIS_URL, PROXY_*_TOKEN / PROXY_*_KEY)
    other_secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in any output (the log formatter scrubs them)."""
        found = [
            self.openai_api_key,
            self.anthropic_api_key,
            self.gateway_token,
            self.master_key,
            self.console_secret,
            *self.other_secrets,
        ]
        if self.postgres is not None:
            found.extend(self.postgres.secrets)
        return tuple(dict.fromkeys(s for s in found if s))


def _url_password(url: str) -> tuple[str, ...]:
    """The password in a `scheme://user:password@host...` URL, as written and decoded
    (the userinfo ends at the last '@': passwords are often not percent-encoded)."""
    _, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return ()
    _, colon, password = rest[:at].partition(":")
    if not colon or not password:
        return ()
    return tuple(dict.fromkeys((password, unquote(password))))


_URL_NOT_SHOWN = "(its value is not shown: it may hold the password)"
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}")


def _database_url_params(url: str) -> dict[str, object]:
    """libpq parameters from DATABASE_URL without handing the URL to libpq, whose errors
    quote it (password and all): `postgres://` or `postgresql://`, SQLAlchemy's
    `postgresql+driver://`, or a libpq `key=value` string. A password may contain
    unencoded `/`, `@`, `:` or `?` (the userinfo ends at the last '@'); a `%` not followed
    by two hex digits is taken as it is. An error names the part that is wrong, never a
    value."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        from psycopg.conninfo import conninfo_to_dict

        try:
            return dict(conninfo_to_dict(url))
        except Exception:
            raise SettingsError(
                f"DATABASE_URL is neither a postgresql:// URL nor a libpq key=value string {_URL_NOT_SHOWN}"
            ) from None
    base = scheme.lower().split("+", 1)[0]
    if base not in ("postgres", "postgresql"):
        shown = repr(scheme) if _SCHEME_RE.fullmatch(scheme) else "another scheme"
        raise SettingsError(f"DATABASE_URL must start with postgresql:// or postgres:// (it starts with {shown})")
    params: dict[str, object] = {}
    at = rest.rfind("@")
    if at >= 0:
        user, colon, password = rest[:at].partition(":")
        if user:
            params["user"] = unquote(user)
        if colon:
            params["password"] = unquote(password)
        rest = rest[at + 1 :]
    rest, _, query = rest.partition("?")
    hosts, _, dbname = rest.partition("/")
    if dbname:
        params["dbname"] = unquote(dbname)
    names, ports = [], []
    for item in hosts.split(",") if hosts else []:
        if item.startswith("["):  # [IPv6]:port
            name, bracket, port = item[1:].partition("]")
            if not bracket or (port and not port.startswith(":")):
                raise SettingsError(f"DATABASE_URL: a bracketed IPv6 host is not closed {_URL_NOT_SHOWN}")
            port = port[1:]
        else:
            name, _, port = item.partition(":")
        if port and not port.isdigit():
            raise SettingsError(f"DATABASE_URL: the port is not a number {_URL_NOT_SHOWN}")
        names.append(unquote(name))
        ports.append(port)
    if any(names):
        params["host"] = ",".join(names)
    if any(ports):
        params["port"] = ",".join(p or "5432" for p in ports)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if not re.fullmatch(r"[a-z_]{1,40}", key):
            raise SettingsError(f"DATABASE_URL: a query parameter name is not a libpq option {_URL_NOT_SHOWN}")
        params[key] = value
    return params


def postgres_from_env(env: Mapping[str, str]) -> PostgresSettings | None:
    """Postgres settings from DATABASE_URL or PG* variables; None means use SQLite.

    The guide's `PGSSL=require|disable` is honoured (libpq ignores it, so it is
    translated to sslmode); `PGSSLMODE` wins when both are set.
    """
    url = env.get("DATABASE_URL", "").strip()
    host = env.get("PGHOST", "").strip()
    if not url and not host:
        return None
    sslmode = env.get("PGSSLMODE", "").strip()
    if not sslmode:
        pgssl = env.get("PGSSL", "require").strip().lower() or "require"
        if pgssl not in ("require", "disable", "prefer", "allow", "verify-ca", "verify-full"):
            raise SettingsError(f"PGSSL must be require or disable, got {pgssl!r}")
        sslmode = pgssl
    params: dict[str, object] = _database_url_params(url) if url else {}
    for var, key in (
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGUSER", "user"),
        ("PGPASSWORD", "password"),
        ("PGDATABASE", "dbname"),
    ):
        value = env.get(var, "").strip()
        if value and key not in params:
            params[key] = value
    params.setdefault("port", "5432")
    host_value = str(params.get("host", ""))
    # Unix sockets (Cloud SQL's /cloudsql/PROJECT:REGION:INSTANCE) carry no TLS.
    if host_value.startswith("/") and "sslmode" not in params and not env.get("PGSSLMODE"):
        sslmode = "disable" if sslmode == "require" else sslmode
    params.setdefault("sslmode", sslmode)
    params.setdefault("application_name", "tallygate")
    params.setdefault("connect_timeout", "5")
    description = f"{host_value or 'localhost'}:{params.get('port')}/{params.get('dbname', '')}"
    secrets = [str(params["password"])] if params.get("password") else []
    secrets.extend(_url_password(url))
    return PostgresSettings(
        conninfo=make_conninfo(params),
        sslmode=str(params["sslmode"]),
        description=description,
        secrets=tuple(dict.fromkeys(secrets)),
    )


def make_conninfo(params: Mapping[str, object]) -> str:
    """libpq keyword/value string (`key='value' ...`, quotes and backslashes escaped),
    built here so start-up needs no psycopg import when PG* variables are used."""

    def quote(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(value)}" for key, value in params.items() if value is not None)


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    default_tenant = env.get("TALLYGATE_DEFAULT_TENANT") or None
    if default_tenant and not TENANT_RE.fullmatch(default_tenant):
        raise SettingsError("TALLYGATE_DEFAULT_TENANT must be 1-128 characters of [A-Za-z0-9._:@-]")
    base_url = (env.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise SettingsError(f"OPENAI_BASE_URL must start with http:// or https://, got {base_url!r}")
    anthropic_url = (env.get("ANTHROPIC_BASE_URL") or DEFAULT_ANTHROPIC_BASE_URL).rstrip("/")
    if not anthropic_url.startswith(("http://", "https://")):
        raise SettingsError(f"ANTHROPIC_BASE_URL must start with http:// or https://, got {anthropic_url!r}")
    return Settings(
        port=_int(env, "PORT", 8080),
        openai_api_key=env.get("OPENAI_API_KEY") or None,
        openai_base_url=base_url,
        anthropic_api_key=env.get("ANTHROPIC_API_KEY") or None,
        anthropic_base_url=anthropic_url,
        gateway_token=env.get("PROXY_GATEWAY_TOKEN") or None,
        master_key=env.get("PROXY_MASTER_KEY") or None,
        default_tenant=default_tenant,
        config_file=env.get("TALLYGATE_CONFIG") or None,
        prices_file=env.get("TALLYGATE_PRICES_FILE") or None,
        connect_timeout=_float(env, "TALLYGATE_CONNECT_TIMEOUT", 10.0),
        read_timeout=_float(env, "TALLYGATE_READ_TIMEOUT", 600.0),
        first_byte_timeout=_float(env, "TALLYGATE_FIRST_BYTE_TIMEOUT", 0.0) or None,
        retries=_int(env, "TALLYGATE_RETRIES", 2, minimum=0),
        retry_backoff=_float(env, "TALLYGATE_RETRY_BACKOFF", 0.25),
        retry_max_backoff=_float(env, "TALLYGATE_RETRY_MAX_BACKOFF", 4.0),
        max_body_bytes=_int(env, "TALLYGATE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        max_file_bytes=_int(env, "TALLYGATE_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES),
        batch_poll_interval=_float(env, "TALLYGATE_BATCH_POLL_INTERVAL", 60.0),
        postgres=postgres_from_env(env),
        sqlite_path=env.get("TALLYGATE_SQLITE_PATH") or "tallygate.db",
        ledger=_choice(env, "TALLYGATE_LEDGER", "on", ("on", "off")),
        ledger_mode=_choice(env, "TALLYGATE_LEDGER_MODE", "async", ("async", "sync")),
        sync_commit_timeout=_float(env, "TALLYGATE_SYNC_COMMIT_TIMEOUT", 5.0),
        ledger_batch_size=_int(env, "TALLYGATE_LEDGER_BATCH_SIZE", 100),
        ledger_flush_interval=_float(env, "TALLYGATE_LEDGER_FLUSH_INTERVAL", 0.02),
        ledger_buffer_limit=_int(env, "TALLYGATE_LEDGER_BUFFER_LIMIT", 100_000),
        ledger_pool_max=_int(env, "TALLYGATE_PG_POOL_MAX", 5),
        ledger_retention_days=_retention_days(env, "TALLYGATE_LEDGER_RETENTION"),
        auto_migrate=_bool(env, "TALLYGATE_AUTO_MIGRATE", True),
        shutdown_grace=_float(env, "TALLYGATE_SHUTDOWN_GRACE", 8.0),
        google_cloud_project=env.get("GOOGLE_CLOUD_PROJECT") or None,
        redis_url=env.get("REDIS_URL") or None,
        limits_on_redis_down=_choice(env, "TALLYGATE_LIMITS_ON_REDIS_DOWN", "closed", ("closed", "open")),
        limits_on_db_down=_choice(env, "TALLYGATE_LIMITS_ON_DB_DOWN", "closed", ("closed", "open")),
        db_timeout=_float(env, "TALLYGATE_DB_TIMEOUT", 2.0),
        keys_refresh=_float(env, "TALLYGATE_KEYS_REFRESH", 2.0),
        metrics_port=_int(env, "TALLYGATE_METRICS_PORT", 0, minimum=0) or None,
        metrics_host=env.get("TALLYGATE_METRICS_HOST") or "127.0.0.1",
        metrics_mode=_choice(env, "TALLYGATE_METRICS", "auth", ("auth", "public", "off")),
        metrics_tenant_cap=_int(env, "TALLYGATE_METRICS_TENANT_CAP", 100),
        default_max_output_tokens=_int(env, "TALLYGATE_DEFAULT_MAX_OUTPUT_TOKENS", 32768),
        default_context_tokens=_int(env, "TALLYGATE_DEFAULT_CONTEXT_TOKENS", 1_000_000),
        unpriced_reserve_mtok=_amount(env, "TALLYGATE_UNPRICED_RESERVE_MTOK", "a price in USD per million tokens"),
        credit_low_usd=_amount(env, "TALLYGATE_CREDIT_LOW_USD", "an amount in USD"),
        sse_max_event_bytes=_int(env, "TALLYGATE_SSE_MAX_EVENT_BYTES", 8 * 1024 * 1024, minimum=1024),
        max_header_bytes=_int(env, "TALLYGATE_MAX_HEADER_BYTES", 64 * 1024, minimum=1024),
        max_headers=_int(env, "TALLYGATE_MAX_HEADERS", 100, minimum=10),
        header_timeout=_float(env, "TALLYGATE_HEADER_TIMEOUT", 10.0),
        body_timeout=_float(env, "TALLYGATE_BODY_TIMEOUT", 30.0),
        keep_alive_timeout=_float(env, "TALLYGATE_KEEP_ALIVE_TIMEOUT", 75.0),
        console_secret=_console_secret(env),
        console_session_ttl=_float(env, "TALLYGATE_CONSOLE_SESSION_TTL", 8 * 3600.0),
        console_sign_in_failures_per_ip=_int(env, "TALLYGATE_CONSOLE_SIGN_IN_FAILURES_PER_IP", 10, minimum=1),
        console_sign_in_failures_total=_int(env, "TALLYGATE_CONSOLE_SIGN_IN_FAILURES_TOTAL", 100, minimum=1),
        reconcile_dir=(env.get("TALLYGATE_RECONCILE_DIR") or "").strip() or None,
        other_secrets=_env_secrets(env),
    )


def _console_secret(env: Mapping[str, str]) -> str | None:
    value = env.get("TALLYGATE_CONSOLE_SECRET") or None
    if value is not None and len(value) < 32:
        raise SettingsError("TALLYGATE_CONSOLE_SECRET must be at least 32 characters (e.g. `openssl rand -hex 32`)")
    return value


def _retention_days(env: Mapping[str, str], name: str) -> int | None:
    """`400d`, `57w` or a number of days; unset, empty or `forever`: keep every row.
    Whole days, since retention drops whole daily partitions."""
    text = env.get(name, "").strip().lower()
    if not text or text == "forever":
        return None
    m = re.fullmatch(r"(\d+)\s*([dw]?)", text)
    days = int(m.group(1)) * (7 if m.group(2) == "w" else 1) if m else 0
    if days < 1:
        raise SettingsError(f"{name} must be a number of days such as 400d (or 57w, or forever), got {text!r}")
    return days


def _env_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    found = [env.get("PGPASSWORD", "")]
    found.extend(_url_password(env.get("DATABASE_URL", "").strip()))
    found.extend(_url_password(env.get("REDIS_URL", "").strip()))
    found.extend(env.get(name, "").strip() for name in ("STRIPE_API_KEY", "OPENMETER_API_KEY"))  # billing exports
    found.extend(
        value
        for name, value in env.items()
        if name.startswith("PROXY_") and name.endswith(("_TOKEN", "_KEY", "_SECRET", "_PASSWORD"))
    )
    return tuple(dict.fromkeys(s for s in found if s))
