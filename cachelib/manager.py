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
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import psycopg

from cachelib import catalog
from cachelib.catalog import Cache
from cachelib.config import Settings, settings
from cachelib.db import Database, get_database, get_read_database, set_clock, translated, translated_errors
from cachelib.errors import DatabaseUnavailable, InvalidInput

log = logging.getLogger("cachelib.manager")


# How long a process trusts its copy of the catalog: a cache registered or removed elsewhere is seen
# within this long, and a call costs no catalog read.
CATALOG_TTL_SECONDS = 5.0
INTEGER_TYPES = {"smallint": 2**15 - 1, "integer": 2**31 - 1, "bigint": 2**63 - 1}


def _check_key(cache: Cache, value: Any) -> Any:
    """The key argument, checked for its type: ids are positive whole numbers, uuids UUIDs; None means all."""
    if value is None:
        return None
    if cache.key_type is None:
        raise InvalidInput(f"cache {cache.name} takes no key, got {value!r}")
    if cache.key_type == "uuid":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise InvalidInput(f"{cache.key_label} must be a UUID or None for all, got {value!r}") from None
    largest = INTEGER_TYPES.get(cache.key_type, 2**63 - 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= largest:
        raise InvalidInput(f"{cache.key_label} must be a positive whole number or None for all, got {value!r}")
    return value


def calls(cache: Cache, key: Any, duration: str) -> tuple[tuple[str, tuple], tuple[str, tuple]]:
    """The cached call and the direct call of ``cache``, each as (SQL, parameters). The function
    names come from the owner's catalog, which only the owner's registration writes."""
    if cache.key_type is None:
        return ((f"SELECT {cache.wrapper_name}(p_cache_duration => %s::interval)::text", (duration,)),
                (f"SELECT {cache.function_name}()::text", ()))
    return ((f"SELECT {cache.wrapper_name}(%s::{cache.key_type}, %s::interval)::text", (key, duration)),
            (f"SELECT {cache.function_name}(%s::{cache.key_type})::text", (key,)))


# Reads a replica served are forwarded to the primary in batches of at most this many, at least this
# often while calls come in; at most FORWARD_BACKLOG wait when the primary cannot take them.
FORWARD_BATCH = 500
FORWARD_SECONDS = 1.0
FORWARD_BACKLOG = 10_000


class CacheManager:
    """Serves the cached functions; safe to share between threads.

    With a ``read_database`` (a hot standby; by default DATABASE_READ_URL when no ``database`` is given)
    the cached calls run there: hits are served, misses computed and not stored, and each read the
    standby could not count is forwarded to ``database``, the primary (``flush_replica_reads``)."""

    def __init__(self, database: Database | None = None, config: Settings | None = None,
                 clock: Callable[[], datetime] | None = None, read_database: Database | None = None):
        self.config = config or settings()
        if database is None and read_database is None and self.config.database_read_url:
            read_database = get_read_database(self.config)
        self.database = database or get_database()
        self.reads = read_database or self.database
        self._uncounted: list[str] = []
        self._uncounted_dropped = 0
        self._forwarded_at = time.monotonic()
        # The demo traffic generator replays history: it moves the SQL clock per call.
        self.clock = clock
        self._fallbacks: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._catalog: list[Cache] = []
        self._catalog_read_at = -CATALOG_TTL_SECONDS

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

    def caches(self) -> list[Cache]:
        """The catalog, read at most every CATALOG_TTL_SECONDS; raises DatabaseUnavailable."""
        with self._lock:
            if time.monotonic() - self._catalog_read_at < CATALOG_TTL_SECONDS and self._catalog:
                return self._catalog
        known = catalog.caches(self.database)
        with self._lock:
            self._catalog, self._catalog_read_at = known, time.monotonic()
        return known

    def call(self, cache_name: str, ident: Any = None) -> Any:
        """Call one cache by name with its key (None: all); raises InvalidInput or DatabaseUnavailable."""
        known = self.caches()
        if cache_name not in {c.name for c in known}:
            known = self._reread_catalog()  # registered a moment ago by another process?
        cache = catalog.find(cache_name, known)
        if not cache.callable:
            raise InvalidInput(f"cache {cache_name} was wired by hand: call its own function")
        ident = _check_key(cache, ident)
        duration = f"{catalog.duration_in_effect(cache, self.config)[0].seconds} seconds"
        (cached_sql, cached_params), direct = calls(cache, ident, duration)
        if not self.config.cache_enabled:
            return self._run(*direct)
        try:
            text = self._cached_call(cached_sql, cached_params)
        except psycopg.Error as exc:
            ours = translated(exc, self.reads.url)
            if isinstance(ours, InvalidInput | DatabaseUnavailable):  # a fallback cannot help with these
                raise ours from None
            return self._fall_back(cache, direct, _reason(exc))
        try:
            data = orjson.loads(text) if text is not None else None
        except orjson.JSONDecodeError as exc:  # valid for jsonb, not for us (a number beyond a double)
            return self._fall_back(cache, direct, f"malformed cache data: unreadable JSON ({exc})"[:200])
        # The guide's functions return an array of objects, so anything else in their cache is damage.
        # A registered function may return any JSON: there the database's jsonb is all we can check.
        problem = _shape_problem(data) if cache.builtin else None
        if problem:
            return self._fall_back(cache, direct, f"malformed cache data: expected a JSON array of objects, "
                                                  f"got {problem}")
        return data

    def _reread_catalog(self) -> list[Cache]:
        with self._lock:
            self._catalog_read_at = -CATALOG_TTL_SECONDS
        return self.caches()

    def _fall_back(self, cache: Cache, direct: tuple[str, tuple], reason: str) -> Any:
        log.warning("cache %s failed, serving the direct query instead: %s", cache.name, reason)
        with self._lock:
            self._fallbacks[cache.name] += 1
        self._record_fallback(cache.name, reason)
        return self._run(*direct)

    def _record_fallback(self, cache_name: str, reason: str) -> None:
        try:
            self._execute("SELECT public.record_cache_fallback(%s, %s)", (cache_name, reason))
        except psycopg.Error as exc:
            # The cache's bookkeeping may be what is broken; the in-process count still has it.
            log.warning("could not record the fallback in the database: %s", _reason(exc))

    def _run(self, sql: str, params: tuple) -> Any:
        """A direct query, where the reads go."""
        with translated_errors(self.reads.url):
            text = self._execute(sql, params, self.reads)
        return orjson.loads(text) if text is not None else []

    def _cached_call(self, sql: str, params: tuple) -> str | None:
        if self.reads is self.database:
            return self._execute(sql, params, self.database)
        # The read the standby could not count is in cachelib.uncounted by the end of the call; OFFSET 0
        # makes the call run before the setting is read.
        text, note = self._execute(f"SELECT t.v, pg_catalog.current_setting('cachelib.uncounted', true) "
                                   f"FROM ({sql} OFFSET 0) AS t(v)", params, self.reads, whole_row=True)
        if note:
            self._forward_later(note)
        return text

    def _execute(self, sql: str, params: tuple, database: Database | None = None, whole_row: bool = False):
        with (database or self.database).connection() as conn:
            if self.clock is None:
                row = conn.execute(sql, params).fetchone()
            else:
                with conn.transaction():
                    set_clock(conn, self.clock())
                    row = conn.execute(sql, params).fetchone()
        return row if whole_row else row[0]

    # --- reads a replica served, counted on the primary ------------------------------------

    def _forward_later(self, note: str) -> None:
        with self._lock:
            self._uncounted.append(note)
            if len(self._uncounted) > FORWARD_BACKLOG:  # the primary has been refusing them for a while
                del self._uncounted[0]
                self._uncounted_dropped += 1
            due = (len(self._uncounted) >= FORWARD_BATCH
                   or time.monotonic() - self._forwarded_at >= FORWARD_SECONDS)
        if due:
            self.flush_replica_reads()

    def flush_replica_reads(self) -> int:
        """Forward the reads the replica served and could not count to the primary; returns how many.
        A primary that refuses keeps them waiting for the next try (at most FORWARD_BACKLOG). Call it
        before the process ends: what is still waiting then is not counted."""
        forwarded = 0
        while True:
            with self._lock:
                batch, self._uncounted = self._uncounted[:FORWARD_BATCH], self._uncounted[FORWARD_BATCH:]
                self._forwarded_at = time.monotonic()
            if not batch:
                return forwarded
            try:
                self._execute("SELECT public.record_replica_reads(%s::jsonb)", ("[" + ",".join(batch) + "]",))
            except (psycopg.Error, DatabaseUnavailable) as exc:
                with self._lock:
                    self._uncounted[:0] = batch
                log.warning("could not count %d reads of the replica on the primary (kept for the next try): %s",
                            len(batch), _reason(exc) if isinstance(exc, psycopg.Error) else exc)
                return forwarded
            forwarded += len(batch)

    def replica_reads_waiting(self) -> tuple[int, int]:
        """(reads waiting to be forwarded, reads dropped because the primary refused too many)."""
        with self._lock:
            return len(self._uncounted), self._uncounted_dropped


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
