"""CacheManager: cached calls with fallback to the direct queries.

The guide's promise is "cache failures automatically fall back to direct
queries". Here that means: if the cached SQL function fails for any reason
other than the database being unreachable (function missing, permission
revoked, lock or statement timeout, a broken cache table), or returns data that
is not what the direct function returns (a JSON array of objects), the same
data comes from the direct function, one WARNING is logged with the reason, and
the fallback is recorded per cache so the dashboard and the health check show it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg

from cachelib.config import Settings, settings
from cachelib.db import Database, get_database, is_connection_failure, unavailable_error
from cachelib.errors import InvalidInput

log = logging.getLogger("cachelib.manager")


@dataclass(frozen=True)
class CachedFunction:
    """How one cache is called: its cached function, its direct twin, its id parameter."""

    cache_name: str
    cached_sql: str
    direct_sql: str
    id_label: str


CACHED_FUNCTIONS = {
    "expert_sessions": CachedFunction(
        "expert_sessions",
        "SELECT public.get_expert_sessions_with_stats_cached(%s::bigint, %s::interval)::text",
        "SELECT public.get_expert_sessions_with_stats(%s::bigint)::text",
        "expert_id",
    ),
    "product_performance": CachedFunction(
        "product_performance",
        "SELECT public.get_product_performance_cached(%s::bigint, %s::interval)::text",
        "SELECT public.get_product_performance(%s::bigint)::text",
        "product_id",
    ),
}
MAX_ID = 2**63 - 1


def _check_id(label: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise InvalidInput(f"{label} must be a positive whole number or None for all, got {value!r}")
    return value


class CacheManager:
    """Serves the cached functions; safe to share between threads."""

    def __init__(self, database: Database | None = None, config: Settings | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.database = database or get_database()
        self.config = config or settings()
        # The demo traffic generator replays history: it moves the SQL clock per call.
        self.clock = clock
        self._fallbacks: Counter[str] = Counter()
        self._lock = threading.Lock()

    def expert_sessions(self, expert_id: int | None = None) -> list[dict]:
        """Per-expert session statistics (all experts when expert_id is None)."""
        return self.call("expert_sessions", expert_id)

    def product_performance(self, product_id: int | None = None) -> list[dict]:
        """Per-product sales analytics (all products when product_id is None)."""
        return self.call("product_performance", product_id)

    def fallback_counts(self) -> dict[str, int]:
        """Fallbacks this process made, per cache (also recorded in the database when possible)."""
        with self._lock:
            return dict(self._fallbacks)

    def call(self, cache_name: str, ident: int | None = None) -> list[dict]:
        """Call one cache by name; raises InvalidInput or DatabaseUnavailable."""
        function = CACHED_FUNCTIONS.get(cache_name)
        if function is None:
            raise InvalidInput(f"unknown cache {cache_name!r}; known: {', '.join(sorted(CACHED_FUNCTIONS))}")
        ident = _check_id(function.id_label, ident)
        if not self.config.cache_enabled:
            return self._run(function.direct_sql, (ident,))
        duration = f"{self.config.duration_for(cache_name).seconds} seconds"
        try:
            text = self._execute(function.cached_sql, (ident, duration))
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) and is_connection_failure(exc):
                raise unavailable_error(self.database.url, exc) from None
            if getattr(exc, "sqlstate", "") == "22023":
                raise InvalidInput(exc.diag.message_primary or str(exc)) from None
            return self._fall_back(function, ident, _reason(exc))
        try:
            data = orjson.loads(text) if text is not None else None
        except orjson.JSONDecodeError as exc:  # valid for jsonb, not for us (a number beyond a double)
            return self._fall_back(function, ident, f"malformed cache data: unreadable JSON ({exc})"[:200])
        problem = _shape_problem(data)
        if problem:
            return self._fall_back(function, ident, f"malformed cache data: expected a JSON array of objects, "
                                                    f"got {problem}")
        return data

    def _fall_back(self, function: CachedFunction, ident: int | None, reason: str) -> list[dict]:
        log.warning("cache %s failed, serving the direct query instead: %s", function.cache_name, reason)
        with self._lock:
            self._fallbacks[function.cache_name] += 1
        self._record_fallback(function.cache_name, reason)
        return self._run(function.direct_sql, (ident,))

    def _record_fallback(self, cache_name: str, reason: str) -> None:
        try:
            self._execute("SELECT public.record_cache_fallback(%s, %s)", (cache_name, reason))
        except psycopg.Error as exc:
            # The cache's bookkeeping may be what is broken; the in-process count still has it.
            log.warning("could not record the fallback in the database: %s", _reason(exc))

    def _run(self, sql: str, params: tuple) -> list[dict]:
        text = self._execute(sql, params)
        return orjson.loads(text) if text is not None else []

    def _execute(self, sql: str, params: tuple):
        with self.database.connection() as conn:
            if self.clock is None:
                return conn.execute(sql, params).fetchone()[0]
            with conn.transaction():
                conn.execute("SELECT set_config('cachelib.now', %s, true)", (self.clock().isoformat(),))
                return conn.execute(sql, params).fetchone()[0]


_JSON_KINDS = ((type(None), "null"), (bool, "a boolean"), (int, "a number"), (float, "a number"),
               (str, "a string"), (dict, "an object"), (list, "an array"))


def _kind(value: Any) -> str:
    return next(name for kind, name in _JSON_KINDS if isinstance(value, kind))


def _shape_problem(data: Any) -> str | None:
    """None when ``data`` is a list of JSON objects (what every direct function returns), else what it is."""
    if not isinstance(data, list):
        return _kind(data) if data is not None else "null"
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            return f"an array holding {_kind(item)} at index {index}"
    return None


def _reason(exc: psycopg.Error) -> str:
    state = getattr(exc, "sqlstate", None) or "?"
    message = (exc.diag.message_primary if getattr(exc, "diag", None) else None) or str(exc)
    return f"{type(exc).__name__} [{state}]: {message.strip().splitlines()[0]}"[:200]
