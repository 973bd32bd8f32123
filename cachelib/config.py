"""Settings from the environment, parsed once, validated and typed.

Every setting is declared once in ``SETTINGS`` (name, default, meaning); the
README's configuration table and ``python -m cachelib config`` are checked
against that list, so a setting cannot exist without documentation.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cachelib.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

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
    name: str
    default: str | None
    meaning: str


# The single list of settings. Order is the order shown in docs.
SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", None, "PostgreSQL 15+ connection URI. Unset: use the embedded server."),
    Setting("CACHELIB_DATA_DIR", ".data/pg", "Data directory of the embedded PostgreSQL server."),
    Setting("CACHE_EXPERT_SESSIONS_DURATION", "5m", "How long expert-session statistics stay cached."),
    Setting("CACHE_ANALYTICS_DURATION", "15m", "How long product analytics stay cached."),
    Setting("CACHE_DEFAULT_DURATION", "10m",
            "Duration of a cache registered without one of its own (cache add without --duration)."),
    Setting("CACHE_ENABLED", "true", "false: every call goes straight to the direct query (the guide's kill switch)."),
    Setting("CACHE_DEPLOYED_AT", None, "Deployment start (ISO date/time) from which Week 1 and Month 1 count. "
            "Unset: the time the first migration ran."),
    Setting("CACHE_TARGET_WEEK1_SESSIONS", "50", "Week 1 target: expert-sessions hit rate above this percentage."),
    Setting("CACHE_TARGET_WEEK1_ANALYTICS", "70", "Week 1 target: analytics hit rate above this percentage."),
    Setting("CACHE_TARGET_MONTH1_SESSIONS", "70", "Month 1 target: expert-sessions hit rate above this percentage."),
    Setting("CACHE_TARGET_MONTH1_ANALYTICS", "85", "Month 1 target: analytics hit rate above this percentage."),
    Setting("CACHE_TARGET_LOAD_REDUCTION", "40", "Month 1 target: share of query time avoided, at least this %."),
    Setting("CACHE_CONNECT_TIMEOUT", "5s", "Give up connecting to the database after this long."),
    Setting("CACHE_STATEMENT_TIMEOUT", "30s", "Cancel any single statement after this long."),
    Setting("CACHE_LOCK_TIMEOUT", "3s", "Give up waiting for a row or table lock after this long (then fall back)."),
    Setting("CACHE_POOL_SIZE", "8", "Largest number of pooled database connections per process."),
    Setting("DASHBOARD_AUTH_FILE", ".data/auth.yaml", "Dashboard credentials (bcrypt hashes); created on first start."),
    Setting("DASHBOARD_COOKIE_KEY", None, "Secret that signs login cookies. Unset: a random key kept in .data/."),
    Setting("DASHBOARD_ADMIN_PASSWORD", None, "Password for the 'admin' user when the credentials file is created."),
    Setting("DASHBOARD_VIEWER_PASSWORD", None, "Password for the 'viewer' user when the credentials file is created."),
    Setting("DASHBOARD_REFRESH_SECONDS", "10", "Default live-refresh interval of dashboard metrics."),
    Setting("CACHE_DEMO_TRAFFIC", "auto", "Light live demo traffic from the dashboard's process. auto: only on "
            "the embedded server holding the demo data; on: also with DATABASE_URL, still only over demo rows; "
            "off: never."),
    Setting("PORT", "8501", "Port the dashboard listens on (make run)."),
    Setting("API_METRICS_REQUIRE_KEY", "false", "true: GET /metrics (Prometheus) needs an API key too."),
    Setting("TRUSTED_PROXIES", None, "Reverse proxies (IPs/CIDRs, comma-separated) whose X-Forwarded-For names the "
            "client for the API and the dashboard. Unset: the connecting address is the client."),
)
_DEFAULTS = {s.name: s.default for s in SETTINGS}

DEMO_TRAFFIC_MODES = ("auto", "on", "off")
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


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    data_dir: Path
    expert_sessions_duration: Duration
    analytics_duration: Duration
    default_duration: Duration
    cache_enabled: bool
    deployed_at: datetime | None
    targets: Targets
    connect_timeout: Duration
    statement_timeout: Duration
    lock_timeout: Duration
    pool_size: int
    auth_file: Path
    cookie_key: str | None
    admin_password: str | None = field(repr=False, default=None)
    viewer_password: str | None = field(repr=False, default=None)
    refresh_seconds: int = 10
    demo_traffic: str = "auto"
    api_metrics_require_key: bool = False
    trusted_proxies: TrustedProxies = TrustedProxies()
    sources: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raises ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ

        def raw(name: str) -> str | None:
            value = env.get(name)
            if value is None or value.strip() == "":
                return _DEFAULTS[name]
            return value.strip()

        sources = {s.name: ("environment" if env.get(s.name, "").strip() else "default") for s in SETTINGS}
        return cls(
            database_url=_database_url(raw("DATABASE_URL")),
            data_dir=_path(raw("CACHELIB_DATA_DIR")),
            expert_sessions_duration=Duration.parse(raw("CACHE_EXPERT_SESSIONS_DURATION"),
                                                    setting="CACHE_EXPERT_SESSIONS_DURATION"),
            analytics_duration=Duration.parse(raw("CACHE_ANALYTICS_DURATION"), setting="CACHE_ANALYTICS_DURATION"),
            default_duration=Duration.parse(raw("CACHE_DEFAULT_DURATION"), setting="CACHE_DEFAULT_DURATION"),
            cache_enabled=parse_boolean("CACHE_ENABLED", raw("CACHE_ENABLED")),
            deployed_at=_timestamp("CACHE_DEPLOYED_AT", raw("CACHE_DEPLOYED_AT")),
            targets=Targets(
                week1_sessions=_percent("CACHE_TARGET_WEEK1_SESSIONS", raw("CACHE_TARGET_WEEK1_SESSIONS")),
                week1_analytics=_percent("CACHE_TARGET_WEEK1_ANALYTICS", raw("CACHE_TARGET_WEEK1_ANALYTICS")),
                month1_sessions=_percent("CACHE_TARGET_MONTH1_SESSIONS", raw("CACHE_TARGET_MONTH1_SESSIONS")),
                month1_analytics=_percent("CACHE_TARGET_MONTH1_ANALYTICS", raw("CACHE_TARGET_MONTH1_ANALYTICS")),
                load_reduction=_percent("CACHE_TARGET_LOAD_REDUCTION", raw("CACHE_TARGET_LOAD_REDUCTION")),
            ),
            connect_timeout=Duration.parse(raw("CACHE_CONNECT_TIMEOUT"), setting="CACHE_CONNECT_TIMEOUT"),
            statement_timeout=Duration.parse(raw("CACHE_STATEMENT_TIMEOUT"), setting="CACHE_STATEMENT_TIMEOUT"),
            lock_timeout=Duration.parse(raw("CACHE_LOCK_TIMEOUT"), setting="CACHE_LOCK_TIMEOUT"),
            pool_size=_integer("CACHE_POOL_SIZE", raw("CACHE_POOL_SIZE"), 1, 100),
            auth_file=_path(raw("DASHBOARD_AUTH_FILE")),
            cookie_key=raw("DASHBOARD_COOKIE_KEY"),
            admin_password=raw("DASHBOARD_ADMIN_PASSWORD"),
            viewer_password=raw("DASHBOARD_VIEWER_PASSWORD"),
            refresh_seconds=_integer("DASHBOARD_REFRESH_SECONDS", raw("DASHBOARD_REFRESH_SECONDS"), 2, 3600),
            demo_traffic=_choice("CACHE_DEMO_TRAFFIC", raw("CACHE_DEMO_TRAFFIC"), DEMO_TRAFFIC_MODES),
            api_metrics_require_key=parse_boolean("API_METRICS_REQUIRE_KEY", raw("API_METRICS_REQUIRE_KEY")),
            trusted_proxies=TrustedProxies.parse(raw("TRUSTED_PROXIES")),
            sources=sources,
        )

    def duration_from(self, setting: str) -> Duration:
        """The duration a duration setting holds (the catalog says which setting feeds which cache)."""
        durations = {"CACHE_EXPERT_SESSIONS_DURATION": self.expert_sessions_duration,
                     "CACHE_ANALYTICS_DURATION": self.analytics_duration,
                     "CACHE_DEFAULT_DURATION": self.default_duration}
        if setting not in durations:
            raise ConfigError(f"{setting} is not a duration setting; known: {', '.join(durations)}")
        return durations[setting]


def _path(text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def _database_url(text: str | None) -> str | None:
    if text is None:
        return None
    expected = "expected postgresql://user:password@host:5432/dbname"
    if not re.match(r"^postgres(ql)?://", text) and "=" not in text:
        raise ConfigError(f"DATABASE_URL is not a PostgreSQL connection string; {expected}")
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(text)
    except ProgrammingError:
        raise ConfigError(f"DATABASE_URL is malformed; {expected}") from None
    ports = str(parts.get("port", "5432")).split(",")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in ports):
        raise ConfigError(f"DATABASE_URL has an invalid port {parts.get('port')!r}; {expected}")
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


_cached: Settings | None = None


def settings() -> Settings:
    """The process-wide settings, parsed on first use."""
    global _cached
    if _cached is None:
        _cached = Settings.from_env()
    return _cached
