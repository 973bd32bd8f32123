"""Settings from the environment, parsed once, validated and typed.

Every setting is declared once in ``SETTINGS`` (name, default, meaning); the
README's configuration table and ``python -m cachelib config`` are checked
against that list, so a setting cannot exist without documentation.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from cachelib.errors import ConfigError

_SOURCE_ROOT = Path(__file__).resolve().parent.parent
# A non-editable install (pip install .) puts the dashboard, its pages, the migrations and the
# Streamlit config here (pyproject.toml, data-files); a checkout has them next to cachelib/.
INSTALLED_APP = Path(sys.prefix) / "share" / "pgcache-admin"
IS_CHECKOUT = (_SOURCE_ROOT / "sql" / "migrations").is_dir()
# Where dashboard.py, pages/, sql/migrations/ and .streamlit/ are.
PROJECT_ROOT = _SOURCE_ROOT if IS_CHECKOUT or not INSTALLED_APP.is_dir() else INSTALLED_APP

DURATION_FORMS = "a number followed by s, m, h or d, optionally combined: 90s, 5m, 1h, 1h30m, 2d"
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Duration:
    """A positive span of time written the way the guide writes it ("5m", "1h30m")."""

    text: str
    seconds: int

    @classmethod
    def parse(cls, text: str, *, setting: str = "duration") -> Duration:
        """Parse ``text``; raises ConfigError naming the setting, the value and the accepted forms."""
        cleaned = text.strip().lower()
        parts = _DURATION_PART.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ConfigError(f"{setting}={text!r} is not a duration; use {DURATION_FORMS}")
        units = [u for _, u in parts]
        if len(set(units)) != len(units) or units != sorted(units, key="dhms".index):
            raise ConfigError(f"{setting}={text!r} repeats or misorders units; use {DURATION_FORMS}")
        seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
        if seconds <= 0:
            raise ConfigError(f"{setting}={text!r} must be longer than zero; use {DURATION_FORMS}")
        if seconds > 366 * 86400:
            raise ConfigError(f"{setting}={text!r} is longer than a year; caches that long are a mistake")
        return cls(cleaned, seconds)

    @property
    def timedelta(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        return self.text


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
TRUSTED_PROXIES_FORMS = "comma-separated IP addresses or CIDR networks, e.g. 10.0.0.5,192.168.0.0/24,fd00::/8"


def ip_address_of(text: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 address as IPv4), or None when it is not one."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class TrustedProxies:
    """The reverse proxies whose X-Forwarded-For is believed (TRUSTED_PROXIES); empty: none."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str | None, *, setting: str = "TRUSTED_PROXIES") -> TrustedProxies:
        """Parse ``text``; raises ConfigError naming the setting, the bad entry and the accepted forms."""
        networks = []
        for entry in (text or "").split(","):
            entry = entry.strip()
            if not entry:
                continue
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"{setting}={text!r}: {entry!r} is not an IP address or network; "
                                  f"use {TRUSTED_PROXIES_FORMS}") from None
            if network.prefixlen == 0:
                raise ConfigError(f"{setting}={text!r}: {entry!r} would trust every address, so any client could "
                                  f"choose its own address; list your proxies: {TRUSTED_PROXIES_FORMS}")
            networks.append(network)
        return cls(tuple(networks))

    def __contains__(self, address: object) -> bool:
        ip = ip_address_of(address) if isinstance(address, str) else address
        return ip is not None and any(ip in network for network in self.networks
                                      if network.version == ip.version)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ",".join(str(n) for n in self.networks)


@dataclass(frozen=True)
class Setting:
    """One environment variable as the docs and ``python -m cachelib config`` show it."""

    name: str
    default: str | None
    meaning: str
    secret: bool = False  # a SecretStr: shown as "(set)", never its value


DEMO_TRAFFIC_MODES = ("auto", "on", "off")
POOL_MODES = ("session", "transaction")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Targets:
    """The guide's success targets, as percentages."""

    week1_sessions: float
    week1_analytics: float
    month1_sessions: float
    month1_analytics: float
    load_reduction: float


def _path(text: str) -> Path:
    """A path setting: relative paths are under the checkout, or, installed, under the working directory
    (the installed app's folder is the environment's, not the place for a database)."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else (_SOURCE_ROOT if IS_CHECKOUT else Path.cwd()) / path


def _database_url(text: str | None, name: str = "DATABASE_URL") -> str | None:
    if text is None:
        return None
    expected = "expected postgresql://user:password@host:5432/dbname"
    if not re.match(r"^postgres(ql)?://", text) and "=" not in text:
        raise ConfigError(f"{name} is not a PostgreSQL connection string; {expected}")
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(text)
    except ProgrammingError:
        raise ConfigError(f"{name} is malformed; {expected}") from None
    ports = str(parts.get("port", "5432")).split(",")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in ports):
        raise ConfigError(f"{name} has an invalid port {parts.get('port')!r}; {expected}")
    return text


def parse_boolean(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={text!r} is not a yes/no value; use true or false")


def _choice(name: str, text: str, choices: tuple[str, ...]) -> str:
    lowered = text.lower()
    if lowered not in choices:
        raise ConfigError(f"{name}={text!r} is not one of {', '.join(choices)}")
    return lowered


def _percent(name: str, text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a percentage; use a number from 0 to 100") from None
    if not 0 <= value <= 100:
        raise ConfigError(f"{name}={text!r} is outside 0..100")
    return value


def _integer(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number; use {low}..{high}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={text!r} is outside {low}..{high}")
    return value


def _timestamp(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{name}={text!r} is not an ISO date or date-time, e.g. 2026-11-01 or 2026-11-01T09:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def env(name: str, default: str | None, meaning: str, parse: Callable[[str, str | None], Any]) -> Any:
    """Declare a setting: its variable, its default as written in the environment, what it means, and how
    its text becomes a value (``parse(name, text)``, raising ConfigError that names the variable)."""
    return Field(default=default, validation_alias=name, description=meaning, validate_default=True,
                 json_schema_extra={"env": name, "default_text": default, "parse": parse})


def _duration(name: str, text: str) -> Duration:
    return Duration.parse(text, setting=name)


def _secret(name: str, text: str | None) -> SecretStr | None:
    return None if text is None else SecretStr(text)


def _range(low: int, high: int) -> Callable[[str, str], int]:
    return lambda name, text: _integer(name, text, low, high)


class Settings(BaseModel):
    """Every setting, declared once: the environment variable, its default, its meaning and its parser.

    Secrets are SecretStr (DATABASE_URL can hold a password): no repr, log line or error shows them;
    ``.get_secret_value()`` where they are used. Built from the environment (or any mapping) by
    ``from_env``, which also records whether each value came from the environment or the default."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, populate_by_name=True)

    database_url: SecretStr | None = env("DATABASE_URL", None, "PostgreSQL 15+ connection URI. Unset: use the "
                                         "embedded server.", lambda n, t: _secret(n, _database_url(t)))
    database_read_url: SecretStr | None = env("DATABASE_READ_URL", None, "A read replica (hot standby) of "
                                              "DATABASE_URL. Set: the dashboard's and API's reads and cached calls "
                                              "go there; actions, audit and throttles stay on DATABASE_URL.",
                                              lambda n, t: _secret(n, _database_url(t, n)))
    pool_mode: str = env("DATABASE_POOL_MODE", "session", "session: DATABASE_URL is a server or a session-mode "
                         "pooler. transaction: a transaction-mode pooler (PgBouncer, Supavisor port 6543); timeouts "
                         "are then set in each transaction and no statement is prepared.",
                         lambda n, t: _choice(n, t, POOL_MODES))
    data_dir: Path = env("CACHELIB_DATA_DIR", ".data/pg", "Data directory of the embedded PostgreSQL server.",
                         lambda n, t: _path(t))
    expert_sessions_duration: Duration = env("CACHE_EXPERT_SESSIONS_DURATION", "5m",
                                             "How long expert-session statistics stay cached.", _duration)
    analytics_duration: Duration = env("CACHE_ANALYTICS_DURATION", "15m", "How long product analytics stay cached.",
                                       _duration)
    default_duration: Duration = env("CACHE_DEFAULT_DURATION", "10m", "Duration of a cache registered without one "
                                     "of its own (cache add without --duration).", _duration)
    cache_enabled: bool = env("CACHE_ENABLED", "true", "false: every call goes straight to the direct query (the "
                              "guide's kill switch).", parse_boolean)
    deployed_at: datetime | None = env("CACHE_DEPLOYED_AT", None, "Deployment start (ISO date/time) from which "
                                       "Week 1 and Month 1 count. Unset: the time the first migration ran.", _timestamp)
    target_week1_sessions: float = env("CACHE_TARGET_WEEK1_SESSIONS", "50", "Week 1 target: expert-sessions hit "
                                       "rate above this percentage.", _percent)
    target_week1_analytics: float = env("CACHE_TARGET_WEEK1_ANALYTICS", "70", "Week 1 target: analytics hit rate "
                                        "above this percentage.", _percent)
    target_month1_sessions: float = env("CACHE_TARGET_MONTH1_SESSIONS", "70", "Month 1 target: expert-sessions hit "
                                        "rate above this percentage.", _percent)
    target_month1_analytics: float = env("CACHE_TARGET_MONTH1_ANALYTICS", "85", "Month 1 target: analytics hit "
                                         "rate above this percentage.", _percent)
    target_load_reduction: float = env("CACHE_TARGET_LOAD_REDUCTION", "40", "Month 1 target: share of query time "
                                       "avoided, at least this %.", _percent)
    connect_timeout: Duration = env("CACHE_CONNECT_TIMEOUT", "5s", "Give up connecting to the database after this "
                                    "long.", _duration)
    statement_timeout: Duration = env("CACHE_STATEMENT_TIMEOUT", "30s", "Cancel any single statement after this "
                                      "long.", _duration)
    lock_timeout: Duration = env("CACHE_LOCK_TIMEOUT", "3s", "Give up waiting for a row or table lock after this "
                                 "long (then fall back).", _duration)
    pool_size: int = env("CACHE_POOL_SIZE", "8", "Largest number of pooled database connections per process.",
                         _range(1, 100))
    auth_file: Path = env("DASHBOARD_AUTH_FILE", ".data/auth.yaml", "Dashboard credentials (bcrypt hashes); created "
                          "on first start.", lambda n, t: _path(t))
    cookie_key: SecretStr | None = env("DASHBOARD_COOKIE_KEY", None, "Secret that signs login cookies. Unset: a "
                                       "random key kept in .data/.", _secret)
    admin_password: SecretStr | None = env("DASHBOARD_ADMIN_PASSWORD", None, "Password for the 'admin' user when "
                                           "the credentials file is created.", _secret)
    viewer_password: SecretStr | None = env("DASHBOARD_VIEWER_PASSWORD", None, "Password for the 'viewer' user "
                                            "when the credentials file is created.", _secret)
    refresh_seconds: int = env("DASHBOARD_REFRESH_SECONDS", "10", "Default live-refresh interval of dashboard "
                               "metrics.", _range(2, 3600))
    demo_traffic: str = env("CACHE_DEMO_TRAFFIC", "auto", "Light live demo traffic from the dashboard's process. "
                            "auto: only on the embedded server holding the demo data; on: also with DATABASE_URL, "
                            "still only over demo rows; off: never.", lambda n, t: _choice(n, t, DEMO_TRAFFIC_MODES))
    port: int = env("PORT", "8501", "Port the dashboard listens on (make run).", _range(1, 65535))
    api_metrics_require_key: bool = env("API_METRICS_REQUIRE_KEY", "false", "true: GET /metrics (Prometheus) "
                                        "needs an API key too.", parse_boolean)
    api_report_seconds: int = env("API_REPORT_SECONDS", "5", "Seconds the API serves one metrics report (GET "
                                  "/api/admin/cache/metrics) to every caller before computing it again; its "
                                  "generated_at says when it was made. 0: compute it for every request.",
                                  _range(0, 300))
    trusted_proxies: TrustedProxies = env("TRUSTED_PROXIES", None, "Reverse proxies (IPs/CIDRs, comma-separated) "
                                          "whose X-Forwarded-For names the client for the API and the dashboard. "
                                          "Unset: the connecting address is the client.",
                                          lambda n, t: TrustedProxies.parse(t, setting=n))
    alert_webhook_url: SecretStr | None = env("CACHE_ALERT_WEBHOOK_URL", None, "Slack-compatible incoming webhook "
                                              "told when the overall health status changes (python -m cachelib "
                                              "alerts notify). Unset: no notifications.", _secret)
    sources: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)

    @field_validator("*", mode="before")
    @classmethod
    def _parse(cls, value: Any, info: ValidationInfo) -> Any:
        extra = cls.model_fields[info.field_name].json_schema_extra
        if not extra or not (value is None or isinstance(value, str)):
            return value  # not a setting (sources), or already a value (a test passing one)
        return extra["parse"](extra["env"], value)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raises ConfigError naming the first bad one."""
        environ = os.environ if environ is None else environ
        given = {s.name: environ[s.name].strip() for s in SETTINGS if (environ.get(s.name) or "").strip()}
        sources = {s.name: "environment" if s.name in given else "default" for s in SETTINGS}
        return cls.model_validate({**given, "sources": sources})

    @property
    def targets(self) -> Targets:
        return Targets(self.target_week1_sessions, self.target_week1_analytics, self.target_month1_sessions,
                       self.target_month1_analytics, self.target_load_reduction)

    def secret(self, name: str) -> str | None:
        """The plain text of a secret setting (database_url, cookie_key, admin_password, viewer_password)."""
        value = getattr(self, name)
        return None if value is None else value.get_secret_value()

    def duration_from(self, setting: str) -> Duration:
        """The duration a duration setting holds (the catalog says which setting feeds which cache)."""
        durations = {"CACHE_EXPERT_SESSIONS_DURATION": self.expert_sessions_duration,
                     "CACHE_ANALYTICS_DURATION": self.analytics_duration,
                     "CACHE_DEFAULT_DURATION": self.default_duration}
        if setting not in durations:
            raise ConfigError(f"{setting} is not a duration setting; known: {', '.join(durations)}")
        return durations[setting]


# The single list of settings, in the order the docs show them: read off the declarations above.
SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.json_schema_extra["env"], f.json_schema_extra["default_text"], f.description,
            secret=SecretStr in typing.get_args(f.annotation))
    for f in Settings.model_fields.values() if f.json_schema_extra)


_cached: Settings | None = None


def settings() -> Settings:
    """The process-wide settings, parsed on first use."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached
