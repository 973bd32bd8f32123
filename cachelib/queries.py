"""The read side: small functions that return DataFrames, one SQL query each.

Everything aggregates in PostgreSQL (the public read functions of
0008_read_functions.sql); a page never pulls cache rows to count them.
Bad parameters raise InvalidInput; an unreachable database DatabaseUnavailable.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from psycopg.types.numeric import FloatLoader

from cachelib import catalog
from cachelib.config import Settings, settings
from cachelib.db import Database, get_database, translated_errors
from cachelib.errors import InvalidInput

ORDER_BY_CHOICES = ("hits", "size", "age", "expires", "compute", "saved", "key")
BUCKETS = ("hour", "day", "week")
# Rolls the pending statistics up, where this session may (the owner's, on the primary); else nothing.
TRY_ROLLUP = "SELECT cache_private.try_rollup()"


def _frame(sql: str, params: tuple = (), database: Database | None = None, rollup: bool = False,
           in_utc: bool = False) -> pd.DataFrame:
    """The rows of ``sql`` as a frame; ``in_utc``: read with the session's TimeZone set to UTC for this
    transaction, so that the functions' date_trunc cuts UTC hours, days and weeks (as the dashboard shows
    them), whatever the database's or role's default time zone."""
    database = database or get_database()
    with translated_errors(database.url), database.connection() as conn, \
            (conn.transaction() if in_utc else contextlib.nullcontext()):
        if in_utc:
            conn.execute("SELECT pg_catalog.set_config('TimeZone', 'UTC', true)")
        if rollup:
            conn.execute(TRY_ROLLUP)
        cursor = conn.cursor()
        # Percentages and averages arrive as numeric; charts and tables want floats.
        cursor.adapters.register_loader("numeric", FloatLoader)
        cursor.execute(sql, params)
        columns = [c.name for c in cursor.description]
        return pd.DataFrame(cursor.fetchall(), columns=columns)


def rollup(database: Database | None = None) -> None:
    """Roll the pending statistics up once, committed, before reads that run side by side. Each of those
    reads rolls up first, and two roll-ups at once split the pending events between them (SKIP LOCKED):
    a read could show figures without the events another read had claimed and not yet committed (the
    overview's "Entries with hits" at 0 while 8 entries had hits). After this, their roll-ups find
    nothing to do and write nothing. A session that may not roll up (not the owner's, or read-only on a
    replica) is left as it is."""
    database = database or get_database()
    with translated_errors(database.url), database.connection() as conn:
        conn.execute(TRY_ROLLUP)


def overview(database: Database | None = None) -> pd.DataFrame:
    """One row per cache: cache_name, entries, live_entries, expired_entries, entries_with_hits, avg_hits,
    total_bytes, hit_rate_today, hit_rate_7d, hit_rate_30d, load_reduction_30d, calls_30d, fallbacks_7d,
    last_cleanup_at."""
    return _frame("SELECT * FROM public.get_cache_metrics_overview()", database=database)


def cache_names(database: Database | None = None) -> list[str]:
    """The caches of the catalog, by name, the guide's first (cheap: no scan of the entries)."""
    return catalog.names(database or get_database())


def cache_catalog(database: Database | None = None) -> list[dict[str, Any]]:
    """The catalog for the pages: see cachelib.catalog.listing."""
    return catalog.listing(settings(), database or get_database())


def cacheable_functions(database: Database | None = None) -> list[dict[str, Any]]:
    """Functions an admin could register as caches, with suggested sources (cachelib.catalog)."""
    return catalog.cacheable_functions(database or get_database())


def caching_candidates(database: Database | None = None):
    """The caching candidates report (cachelib.candidates): expensive repeated reads not cached yet."""
    from cachelib import candidates

    return candidates.find_candidates(database or get_database(), limit=20)


def guide_overview(database: Database | None = None) -> pd.DataFrame:
    """The guide's "Cache performance overview": total_entries, hit_entries, avg_hits, expired_entries, for the
    entries holding data, from the counts the database maintains (the guide's query scans every row)."""
    return _frame("""
        SELECT COALESCE(sum(s.entries), 0)::bigint AS total_entries,
               COALESCE(sum(s.entries_with_hits), 0)::bigint AS hit_entries,
               COALESCE(round(sum(s.hits)::numeric / NULLIF(sum(s.entries), 0), 2), 0) AS avg_hits,
               COALESCE(sum(s.expired_entries), 0)::bigint AS expired_entries
        FROM cache_private.entry_summary(cache_private.cache_now()) s""", database=database, rollup=True)


def top_entries(limit: int = 50, order_by: str = "hits", cache: str | None = None, search: str | None = None,
                database: Database | None = None) -> pd.DataFrame:
    """Entries with cache_key, cache_name, hit_count, size_bytes, created_at, expires_at, age_seconds,
    expires_in_seconds, compute_ms, time_saved_ms, last_hit_at."""
    if order_by not in ORDER_BY_CHOICES:
        raise InvalidInput(f"order_by must be one of {', '.join(ORDER_BY_CHOICES)}; got {order_by!r}")
    search = search or None
    if search is not None and "\x00" in search:
        raise InvalidInput("search must not contain NUL characters")
    return _frame("SELECT * FROM public.get_top_cache_entries(%s, %s, %s, %s)",
                  (limit, order_by, cache, search), database)


def hit_rate_series(days: int = 30, bucket: str = "day", cache: str | None = None,
                    database: Database | None = None) -> pd.DataFrame:
    """Per UTC bucket and cache: bucket, cache_name, hits, misses, fallbacks, hit_rate (%), avg_hit_ms,
    avg_miss_ms."""
    return _frame("SELECT * FROM public.get_cache_hit_rate_series(%s, %s, %s)", (days, bucket, cache), database,
                  in_utc=True)


def load_reduction_series(days: int = 30, bucket: str = "day", database: Database | None = None) -> pd.DataFrame:
    """Per UTC bucket: bucket, compute_ms_spent, compute_ms_saved, load_reduction (%)."""
    return _frame("SELECT * FROM public.get_cache_load_reduction_series(%s, %s)", (days, bucket), database,
                  in_utc=True)


def cleanup_log(limit: int = 50, database: Database | None = None) -> pd.DataFrame:
    """The newest cleanup log rows: id, cleanup_time, entries_removed, entries_evicted, never_hit_removed,
    bytes_freed, duration_ms, triggered_by, details."""
    if not isinstance(limit, int) or not 1 <= limit <= 10000:
        raise InvalidInput(f"limit must be from 1 to 10000, got {limit!r}")
    return _frame("SELECT * FROM public.cache_cleanup_log ORDER BY cleanup_time DESC, id DESC LIMIT %s",
                  (limit,), database)


def cleanup_stats(days: int = 7, database: Database | None = None) -> pd.DataFrame:
    """Per UTC day: day, cleanups, entries_removed, entries_evicted, never_hit_removed, bytes_freed,
    avg_duration_ms."""
    return _frame("SELECT * FROM public.get_cache_cleanup_stats(%s)", (days,), database)


def health(database: Database | None = None) -> pd.DataFrame:
    """analyze_cache_health(): check_name, value, status (ok/warning/critical), recommendation."""
    return _frame("SELECT * FROM public.analyze_cache_health()", database=database)


def size_distribution(database: Database | None = None) -> pd.DataFrame:
    """Per size class: size_class, lower_bytes, entries, total_bytes."""
    return _frame("SELECT * FROM public.get_cache_size_distribution()", database=database)


def fallback_usage(days: int = 7, database: Database | None = None) -> pd.DataFrame:
    """Per UTC day and cache: day, cache_name, fallbacks, calls."""
    return _frame("SELECT * FROM public.get_cache_fallback_usage(%s)", (days,), database)


def fallback_reasons(database: Database | None = None) -> pd.DataFrame:
    """Why fallbacks happened: cache_name, reason, occurrences, last_at (newest first)."""
    return _frame("SELECT * FROM cache_private.fallback_reasons ORDER BY last_at DESC LIMIT 50",
                  database=database, rollup=True)


def lifetime_totals(database: Database | None = None) -> pd.DataFrame:
    """Per cache since it was first counted: cache_name, hits, misses, fallbacks, counting_since. Never lowered
    by the statistics retention (0021): what Prometheus counters need."""
    return _frame("SELECT cache_name, hits, misses, fallbacks, counting_since "
                  "FROM cache_private.cache_lifetime_totals ORDER BY cache_name", database=database, rollup=True)


def audit_log(limit: int = 100, database: Database | None = None) -> pd.DataFrame:
    """Maintenance actions, newest first: at, actor, actor_role, action, parameters, outcome, result,
    duration_ms."""
    if not isinstance(limit, int) or not 1 <= limit <= 10000:
        raise InvalidInput(f"limit must be from 1 to 10000, got {limit!r}")
    return _frame("""SELECT at, actor, actor_role, action, parameters, outcome, result, duration_ms
                     FROM cache_private.maintenance_audit ORDER BY at DESC, id DESC LIMIT %s""", (limit,), database)


@dataclass(frozen=True)
class Deployment:
    deployed_at: datetime
    source: str
    demo_data: bool
    now: datetime


def deployment(database: Database | None = None, config: Settings | None = None) -> Deployment:
    """When the cache was deployed (CACHE_DEPLOYED_AT or the first migration) and whether data is demo data."""
    config = config or settings()
    frame = _frame("""SELECT cache_private.setting('deployed_at')::timestamptz AS deployed_at,
                             cache_private.setting('demo_data')::boolean AS demo_data,
                             cache_private.cache_now() AS now""", database=database)
    row = frame.iloc[0]
    if config.deployed_at is not None:
        return Deployment(config.deployed_at, "CACHE_DEPLOYED_AT", bool(row.demo_data), row.now.to_pydatetime())
    source = "start of the demo traffic replay" if row.demo_data else "first migration"
    return Deployment(row.deployed_at.to_pydatetime(), source, bool(row.demo_data), row.now.to_pydatetime())


# Week 1 is the first seven days after deployment; Month 1 is days 8 to 30, the
# first month once the warm-up week is over (its targets are steady-state ones).
WINDOWS = {"Week 1": (timedelta(days=0), timedelta(days=7)), "Month 1": (timedelta(days=7), timedelta(days=30))}


@dataclass(frozen=True)
class Target:
    """One of the guide's targets: its one definition, used by every page, the API and the CLI."""

    milestone: str          # the window it belongs to: "Week 1" or "Month 1"
    label: str              # "Sessions hit rate above"
    cache_name: str | None  # None: all caches together
    metric: str             # "hit_rate" (must exceed the goal) or "load_reduction" (at least the goal)
    goal: float

    @property
    def name(self) -> str:
        return f"{self.label} {self.goal:g}%"

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.goal if self.metric == "load_reduction" else value > self.goal


def targets(config: Settings | None = None) -> list[Target]:
    """The guide's Week 1 and Month 1 targets, with the goals from the settings."""
    t = (config or settings()).targets
    return [
        Target("Week 1", "Sessions hit rate above", "expert_sessions", "hit_rate", t.week1_sessions),
        Target("Week 1", "Analytics hit rate above", "product_performance", "hit_rate", t.week1_analytics),
        Target("Month 1", "Sessions hit rate above", "expert_sessions", "hit_rate", t.month1_sessions),
        Target("Month 1", "Analytics hit rate above", "product_performance", "hit_rate", t.month1_analytics),
        Target("Month 1", "Database load reduction at least", None, "load_reduction", t.load_reduction),
    ]


def target_status(as_of: datetime | None = None, database: Database | None = None,
                  config: Settings | None = None) -> pd.DataFrame:
    """Each Week 1 / Month 1 target: milestone, target, cache_name, window_start, window_end, measured, goal,
    state (met / missed / in progress / not started / no data), met (True/False/None)."""
    config = config or settings()
    database = database or get_database()
    info = deployment(database, config)
    as_of = as_of or info.now
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    measured = {name: period_totals(info.deployed_at + start, min(info.deployed_at + end, as_of), database)
                for name, (start, end) in WINDOWS.items()}
    rows = []
    for target in targets(config):
        start, end = (info.deployed_at + offset for offset in WINDOWS[target.milestone])
        value = measure(measured[target.milestone], target)
        state, met = _judge(target, value, as_of, start, end)
        rows.append({"milestone": target.milestone, "target": target.label,
                     "cache_name": target.cache_name or "all caches",
                     "window_start": start, "window_end": end, "measured": value, "goal": target.goal,
                     "state": state, "met": met})
    return pd.DataFrame(rows)


def period_totals(start: datetime, end: datetime, database: Database | None = None) -> pd.DataFrame:
    """Per registered cache over [start, end): cache_name, hits, misses, fallbacks, hit_rate,
    compute_ms_spent, compute_ms_saved, load_reduction (empty when the period is empty).

    Statistics are kept per UTC hour: the hour in which ``start`` falls belongs to the period."""
    if end <= start:
        return pd.DataFrame()
    start = start.replace(minute=0, second=0, microsecond=0)
    return _frame("SELECT * FROM cache_private.window_stats(%s, %s)", (start, end), database, rollup=True)


def measure(totals: pd.DataFrame, target: Target) -> float | None:
    """The value of ``target``'s metric in ``totals`` (from period_totals), or None without calls."""
    if totals.empty:
        return None
    if target.metric == "hit_rate":
        # A lookup by name, not a filter of the frame: a page measures every target on every run.
        rate = dict(zip(totals["cache_name"], totals["hit_rate"], strict=True)).get(target.cache_name)
        return None if rate is None or pd.isna(rate) else float(rate)
    return load_reduction(totals)


def load_reduction(totals: pd.DataFrame) -> float | None:
    """Overall load reduction (%) over rows with compute_ms_saved and compute_ms_spent: the share of
    query time the cache avoided. None when nothing was computed or saved."""
    if totals.empty:
        return None
    return reduction(float(totals.compute_ms_saved.sum()), float(totals.compute_ms_spent.sum()))


def reduction(saved_ms: float, spent_ms: float) -> float | None:
    """The load-reduction rule (%): query time the cache avoided as a share of the time the direct query
    would have taken; None when nothing was computed or saved. (SQL's window_stats writes the same.)"""
    total = float(saved_ms) + float(spent_ms)
    return round(100.0 * float(saved_ms) / total, 2) if total > 0 else None


def _judge(target: Target, value: float | None, as_of: datetime, start: datetime,
           end: datetime) -> tuple[str, bool | None]:
    if as_of < start:
        return "not started", None
    if value is None:
        return "no data", None
    met = target.met(value)
    if as_of < end:
        return "in progress", met
    return ("met" if met else "missed"), met


# Cleanups run from the dashboard or the API are someone's decision; any other (pg_cron, the CLI
# from cron, the demo's cron) is the schedule. Optimize's own cleanup is reported as the optimize.
MANUAL_CLEANUP = r" \((dashboard|api)\)$"


def events(start: datetime, end: datetime, database: Database | None = None) -> pd.DataFrame:
    """What happened to the cache in [start, end), for chart annotations: at, kind, label, detail, ordered by at.

    kind is deployment, emergency_clear, invalidate, optimize, duration_change (an audited action whose
    name mentions a duration), cleanup (run from the dashboard or the API) or scheduled_cleanup (any
    other cleanup: pg_cron, the CLI from cron). Only actions that succeeded."""
    start, end = (moment if moment.tzinfo else moment.replace(tzinfo=UTC) for moment in (start, end))  # naive: UTC
    if end <= start:
        return pd.DataFrame(columns=["at", "kind", "label", "detail"])
    database = database or get_database()
    frame = _frame("""
        SELECT a.at, CASE WHEN a.action IN ('emergency_clear', 'invalidate', 'optimize') THEN a.action
                          ELSE 'duration_change' END AS kind,
               a.action, a.actor, a.parameters, a.result
        FROM cache_private.maintenance_audit a
        WHERE a.outcome = 'ok' AND a.at >= %(start)s AND a.at < %(end)s
          AND (a.action IN ('emergency_clear', 'invalidate', 'optimize') OR a.action LIKE '%%duration%%')
        UNION ALL
        SELECT l.cleanup_time, CASE WHEN l.triggered_by ~ %(manual)s THEN 'cleanup' ELSE 'scheduled_cleanup' END,
               'cleanup', l.triggered_by, '{}'::jsonb,
               jsonb_build_object('entries_removed', l.entries_removed, 'entries_evicted', l.entries_evicted,
                                  'bytes_freed', l.bytes_freed)
        FROM public.cache_cleanup_log l
        WHERE l.cleanup_time >= %(start)s AND l.cleanup_time < %(end)s
          AND l.triggered_by NOT LIKE 'optimize_cache by %%'
        ORDER BY 1""", {"start": start, "end": end, "manual": MANUAL_CLEANUP}, database)
    rows = [_event_row(row) for row in frame.itertuples(index=False)]
    info = deployment(database)
    deployed = info.deployed_at if info.deployed_at.tzinfo else info.deployed_at.replace(tzinfo=UTC)
    if start <= deployed < end:
        rows.append({"at": deployed, "kind": "deployment", "label": "Deployed",
                     "detail": f"cache deployed ({info.source})"})
    result = pd.DataFrame(rows, columns=["at", "kind", "label", "detail"])
    if not result.empty:
        result["at"] = pd.to_datetime(result["at"], utc=True)
        result = result.sort_values("at", kind="stable").reset_index(drop=True)
    return result


def _event_row(row) -> dict:
    params, result = row.parameters or {}, row.result or {}
    by = f"by {row.actor}"
    if row.kind == "emergency_clear":
        label, detail = "Emergency clear", f"{by}: {result.get('entries_deleted', '?')} entries deleted"
    elif row.kind == "invalidate":
        what = f"cache {params['cache']}" if "cache" in params else f"key {params.get('key', '?')}"
        label, detail = f"Invalidated {what}", f"{by}: {result.get('entries_invalidated', '?')} entries"
    elif row.kind == "optimize":
        removed = sum(int(result.get(k) or 0) for k in ("expired_removed", "evicted", "unprofitable_removed"))
        label, detail = "Optimize", f"{by}: {removed} entries removed"
    elif row.kind == "duration_change":
        label, detail = "Duration changed", f"{by}: {row.action} {params}"
    else:
        label = "Cleanup" if row.kind == "cleanup" else "Scheduled cleanup"
        detail = (f"{by}: {result.get('entries_removed', 0)} expired removed, {result.get('entries_evicted', 0)} "
                  f"evicted, {result.get('bytes_freed', 0):,} bytes freed")
    return {"at": row.at, "kind": row.kind, "label": label, "detail": detail}


def health_history(start: datetime, end: datetime, database: Database | None = None) -> pd.DataFrame:
    """Recorded health checks with start <= recorded_at < end, oldest first: recorded_at, source ('cleanup' or
    'health check'), check_name, status, value, recommendation (cache_private.health_history, 0016)."""
    return _frame("""SELECT recorded_at, source, check_name, status, value, recommendation
                     FROM cache_private.health_history
                     WHERE recorded_at >= %s AND recorded_at < %s
                     ORDER BY recorded_at, id""", (start, end), database)


# One key: its row. A cache or all of them: the live entries of the summary the database maintains
# (0022, 0023), without reading every entry.
_KEY_IMPACT = """
    SELECT count(*) AS entries, COALESCE(sum(size_bytes), 0) AS bytes, COALESCE(sum(compute_ms), 0) AS compute_ms
    FROM public.query_cache
    WHERE cache_key = %(key)s AND data IS NOT NULL AND expires_at > cache_private.cache_now()"""
_CACHE_IMPACT = """
    SELECT COALESCE(sum(live_entries), 0) AS entries, COALESCE(sum(live_bytes), 0) AS bytes,
           COALESCE(sum(live_compute_ms), 0) AS compute_ms
    FROM cache_private.entry_summary(cache_private.cache_now())
    WHERE %(cache)s::text IS NULL OR cache_name = %(cache)s"""


def clear_impact(cache: str | None = None, key: str | None = None, database: Database | None = None) -> dict:
    """What invalidating ``cache`` or ``key`` (or, with neither, an emergency clear) would lose: the live
    entries (holding data, not expired) as {"entries", "bytes", "compute_ms"}, compute_ms being the time
    it took to compute them, which the next calls spend again."""
    if cache is not None and key is not None:
        raise InvalidInput("give at most one of cache or key")
    for name, value in (("cache", cache), ("key", key)):
        if value is not None and ("\x00" in value or not 1 <= len(value) <= 1000):
            raise InvalidInput(f"{name} must be 1 to 1000 characters without NUL characters")
    row = _frame(_KEY_IMPACT if key is not None else _CACHE_IMPACT, {"cache": cache, "key": key}, database).iloc[0]
    return {"entries": int(row["entries"]), "bytes": int(row["bytes"]), "compute_ms": float(row["compute_ms"])}
