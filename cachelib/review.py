"""The monthly review: one month's figures, each computed for that month from history kept for it.

The Monthly Review page, ``python -m cachelib review`` and the CSV and HTML
reports all build one ``MonthlyReview`` here, so they cannot disagree. Where
the figures come from:

* calls, hit rates and load reduction: the hourly statistics (cache_stats_hourly);
* top entries by time saved: the per-key daily history (key_activity_daily);
* invalidations: keys invalidated by writes per day (invalidations_daily plus the
  log rows not yet pruned) and admin actions from the audit log;
* cleanups: the cleanup log; recommendations: the health history recorded by each
  cleanup and health check in the month (never today's checks for a past month).

Months are UTC calendar months, clipped to the deployment and to now.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from cachelib import charts, queries
from cachelib.config import Settings, settings
from cachelib.db import Database, get_database
from cachelib.errors import InvalidInput
from cachelib.maintenance import SEVERITY

MAX_MONTHS = 120
TOP_KEYS = 10
DAILY_COLUMNS = ["day", "cache_name", "calls", "hits", "misses", "fallbacks", "hit_rate", "compute_ms_spent",
                 "compute_ms_saved", "load_reduction", "keys_invalidated"]


# --- which month ------------------------------------------------------------------------------

def month_start(day: date) -> date:
    return date(day.year, day.month, 1)


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def months(deployed_at: datetime, now: datetime) -> list[date]:
    """The months that can be reviewed, newest first: from the deployment's month to the current one."""
    first, last = month_start(deployed_at.astimezone(UTC).date()), month_start(now.astimezone(UTC).date())
    found, current = [], first
    while current <= last:
        found.append(current)
        current = next_month(current)
    return found[::-1][:MAX_MONTHS]


def default_month(deployed_at: datetime, now: datetime) -> date:
    """The last full month, or the current month when the deployment has none yet."""
    current = month_start(now.astimezone(UTC).date())
    previous = month_start(current - timedelta(days=1))
    return previous if previous >= month_start(deployed_at.astimezone(UTC).date()) else current


def parse_month(text: str) -> date:
    """'2026-11' -> date(2026, 11, 1); InvalidInput otherwise."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m").date()
    except (ValueError, AttributeError):
        raise InvalidInput(f"month must look like 2026-11, got {text!r}") from None


@dataclass(frozen=True)
class Period:
    """A reviewed month, clipped: ``start`` is the later of the month's start and the deployment,
    ``end`` the earlier of the next month's start and now."""

    month: date
    start: datetime
    end: datetime
    partial: bool        # the month is not over yet
    from_deployment: bool  # the deployment happened during the month

    @property
    def title(self) -> str:
        note = " (so far)" if self.partial else ""
        return f"{self.month:%B %Y}{note}"

    @property
    def span(self) -> str:
        """'Nov 1-Nov 30' (the days of the clipped period, both included)."""
        first, last = self.days[0], self.days[-1]
        return f"{first:%b} {first.day}" if first == last else f"{first:%b} {first.day}-{last:%b} {last.day}"

    @property
    def days(self) -> list[date]:
        first, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def period(month: date, deployed_at: datetime, now: datetime) -> Period:
    month = month_start(month)
    month_begin = datetime.combine(month, time.min, UTC)
    month_end = datetime.combine(next_month(month), time.min, UTC)
    deployed_at, now = deployed_at.astimezone(UTC), now.astimezone(UTC)
    if month_end <= deployed_at or month_begin > now:
        raise InvalidInput(f"{month:%B %Y} is outside the deployment (deployed {deployed_at:%Y-%m-%d}, "
                           f"today {now:%Y-%m-%d})")
    return Period(month, max(month_begin, deployed_at), min(month_end, now), now < month_end,
                  deployed_at > month_begin)


# --- the review -------------------------------------------------------------------------------

@dataclass
class MonthlyReview:
    period: Period
    deployed_at: datetime
    demo_data: bool
    targets: pd.DataFrame        # target, cache, window, window_start, window_end, measured, goal, result
    daily: pd.DataFrame          # DAILY_COLUMNS, one row per cache and day of the period
    top_keys: pd.DataFrame       # cache_name, cache_key, hits, misses, calls, compute_ms_saved, days_active
    events: pd.DataFrame         # at, kind, label, detail: what happened (admin actions, cleanups by hand)
    cleanups: dict = field(default_factory=dict)
    health: pd.DataFrame = field(default_factory=pd.DataFrame)  # per check: see health_summary()

    @property
    def per_cache(self) -> pd.DataFrame:
        """The month per cache, summed from the daily rows: cache_name, keys_invalidated, fallbacks, calls."""
        columns = ["cache_name", "keys_invalidated", "fallbacks", "calls"]
        if self.daily.empty:
            return pd.DataFrame(columns=columns)
        return self.daily.groupby("cache_name", as_index=False)[columns[1:]].sum()

    @property
    def health_runs(self) -> int:
        """How many health snapshots the month recorded (each records every check once)."""
        return int(self.health["runs"].max()) if not self.health.empty else 0


def build(month: date | None = None, database: Database | None = None,
          config: Settings | None = None) -> MonthlyReview:
    """The review of ``month`` (default: the last full month)."""
    config = config or settings()
    database = database or get_database()
    info = queries.deployment(database, config)
    month = month or default_month(info.deployed_at, info.now)
    span = period(month, info.deployed_at, info.now)
    # The month's reads side by side (each on its own pooled connection): the time of the slowest,
    # after one roll-up, so that they all count the same events.
    queries.rollup(database)
    with ThreadPoolExecutor(max_workers=6) as pool:
        reads = {"targets": pool.submit(target_rows, span, info.deployed_at, database, config),
                 "daily": pool.submit(daily_rows, span, database),
                 "top_keys": pool.submit(top_keys, span, database),
                 "events": pool.submit(queries.events, span.start, span.end, database=database),
                 "cleanups": pool.submit(cleanup_summary, span, database),
                 "health": pool.submit(queries.health_history, span.start, span.end, database=database)}
        read = {name: future.result() for name, future in reads.items()}
    return MonthlyReview(period=span, deployed_at=info.deployed_at, demo_data=info.demo_data,
                         targets=read["targets"], daily=read["daily"], top_keys=read["top_keys"],
                         events=read["events"], cleanups=read["cleanups"], health=health_summary(read["health"]))


def target_rows(span: Period, deployed_at: datetime, database: Database, config: Settings) -> pd.DataFrame:
    """Every target with the window it is measured over, named next to the figure.

    The month itself is measured against the steady-state (Month 1) targets; each
    deployment milestone window that overlaps the month is measured over its own
    window, as on every other page (queries.target_status)."""
    rows = []
    month_totals = queries.period_totals(span.start, span.end, database)
    for target in queries.targets(config):
        if target.milestone != "Month 1":
            continue
        value = queries.measure(month_totals, target)
        rows.append(_target_row(target, f"{span.month:%B %Y}{' so far' if span.partial else ''} "
                                        f"({span.span})", span.start, span.end, value, target.met(value)))
    status = queries.target_status(as_of=span.end, database=database, config=config)
    by_name = {(t.milestone, t.label, t.cache_name or "all caches"): t for t in queries.targets(config)}
    for row in status.itertuples():
        start, end = row.window_start.astimezone(UTC), row.window_end.astimezone(UTC)
        if not (start < span.end and end > span.start):
            continue
        target = by_name[(row.milestone, row.target, row.cache_name)]
        window = charts.window_label(f"{row.milestone} window", start, end)
        if span.end < end:
            window += f", measured to {span.end:%b} {span.end.day}"
        measured = None if pd.isna(row.measured) else float(row.measured)
        rows.append(_target_row(target, window, start, end, measured, row.met if row.state != "no data" else None))
    return pd.DataFrame(rows, columns=["target", "cache", "window", "window_start", "window_end", "measured", "goal",
                                       "result"])


def _target_row(target: queries.Target, window: str, start: datetime, end: datetime, value: float | None,
                met: bool | None) -> dict:
    result = "no data" if met is None or pd.isna(met) else ("pass" if met else "fail")
    return {"target": target.name, "cache": target.cache_name or "all caches", "window": window,
            "window_start": start, "window_end": end, "measured": value, "goal": target.goal, "result": result}


# Keys invalidated by writes per UTC day and cache in [start, end) (end_day: the day after the last):
# the daily counts cleanup kept when it pruned the log, plus the log rows not pruned yet. Whole-cache
# rows (no colon; pruning's markers among them) are not keys. The review's daily rows and GET /metrics'
# invalidation counter (cachelib.alerts) both count with it.
INVALIDATED_SQL = """
  SELECT day, cache_name, sum(n)::bigint AS keys_invalidated FROM (
    SELECT day, cache_name, keys_invalidated AS n FROM cache_private.invalidations_daily
    WHERE day >= (%(start)s::timestamptz AT TIME ZONE 'UTC')::date AND day < %(end_day)s
    UNION ALL
    SELECT (noted_at AT TIME ZONE 'UTC')::date, cache_name, count(*) FROM cache_private.invalidations
    WHERE noted_at >= %(start)s AND noted_at < %(end)s AND strpos(cache_key, ':') > 0
    GROUP BY 1, 2) parts
  GROUP BY 1, 2"""

DAILY_SQL = f"""
WITH stats AS (
  SELECT (s.bucket AT TIME ZONE 'UTC')::date AS day, s.cache_name,
         sum(s.hits)::bigint AS hits, sum(s.misses)::bigint AS misses, sum(s.fallbacks)::bigint AS fallbacks,
         sum(s.compute_ms_spent) AS compute_ms_spent, sum(s.compute_ms_saved) AS compute_ms_saved
  FROM cache_private.cache_stats_hourly s
  WHERE s.bucket >= date_trunc('hour', %(start)s::timestamptz, 'UTC') AND s.bucket < %(end)s
  GROUP BY 1, 2
), invalidated AS ({INVALIDATED_SQL}
)
SELECT d.day::date AS day, c.cache_name,
       COALESCE(s.hits, 0) + COALESCE(s.misses, 0) + COALESCE(s.fallbacks, 0) AS calls,
       COALESCE(s.hits, 0) AS hits, COALESCE(s.misses, 0) AS misses, COALESCE(s.fallbacks, 0) AS fallbacks,
       -- the same expressions as cache_private.window_stats, per day
       round(100.0 * s.hits / NULLIF(s.hits + s.misses + s.fallbacks, 0), 2) AS hit_rate,
       COALESCE(s.compute_ms_spent, 0) AS compute_ms_spent, COALESCE(s.compute_ms_saved, 0) AS compute_ms_saved,
       round((100.0 * s.compute_ms_saved / NULLIF(s.compute_ms_saved + s.compute_ms_spent, 0))::numeric, 2)
         AS load_reduction,
       COALESCE(i.keys_invalidated, 0) AS keys_invalidated
FROM generate_series((%(start)s::timestamptz AT TIME ZONE 'UTC')::date, %(end_day)s - 1, interval '1 day') d(day)
CROSS JOIN cache_private.caches c
LEFT JOIN stats s ON s.day = d.day::date AND s.cache_name = c.cache_name
LEFT JOIN invalidated i ON i.day = d.day::date AND i.cache_name = c.cache_name
ORDER BY 1, 2
"""


def daily_rows(span: Period, database: Database) -> pd.DataFrame:
    """One row per cache and UTC day of the period (days without calls included, as zeros)."""
    end_day = (span.end - timedelta(microseconds=1)).date() + timedelta(days=1)
    frame = queries._frame(DAILY_SQL, {"start": span.start, "end": span.end, "end_day": end_day}, database,
                           rollup=True)
    return frame[DAILY_COLUMNS] if not frame.empty else pd.DataFrame(columns=DAILY_COLUMNS)


TOP_KEYS_SQL = """
SELECT cache_name, cache_key, sum(hits)::bigint AS hits, sum(misses)::bigint AS misses,
       sum(hits + misses + fallbacks)::bigint AS calls, sum(compute_ms_saved) AS compute_ms_saved,
       count(*) AS days_active
FROM cache_private.key_activity_daily
WHERE day >= %s AND day < %s AND cache_key <> '(other keys)'
GROUP BY 1, 2
ORDER BY compute_ms_saved DESC, hits DESC, cache_key
LIMIT %s
"""


def top_keys(span: Period, database: Database, limit: int = TOP_KEYS) -> pd.DataFrame:
    """The keys that saved the most query time in the period (from the per-key daily history)."""
    end_day = (span.end - timedelta(microseconds=1)).date() + timedelta(days=1)
    return queries._frame(TOP_KEYS_SQL, (span.start.date(), end_day, limit), database, rollup=True)


CLEANUP_SQL = """
SELECT count(*) AS cleanups, COALESCE(sum(entries_removed), 0) AS entries_removed,
       COALESCE(sum(entries_evicted), 0) AS entries_evicted, COALESCE(sum(never_hit_removed), 0) AS never_hit_removed,
       COALESCE(sum(bytes_freed), 0) AS bytes_freed, count(*) FILTER (WHERE triggered_by ~ %s) AS by_hand
FROM public.cache_cleanup_log WHERE cleanup_time >= %s AND cleanup_time < %s
"""


def cleanup_summary(span: Period, database: Database) -> dict:
    row = queries._frame(CLEANUP_SQL, (queries.MANUAL_CLEANUP, span.start, span.end), database).iloc[0]
    return {name: int(row[name]) for name in row.index}


def health_summary(history: pd.DataFrame) -> pd.DataFrame:
    """Per check over the month: worst status, how often it was not ok, and the latest result.

    Columns: check_name, worst, not_ok, runs, last_status, last_value, recommendation (the latest
    recommendation given while the check was at its worst)."""
    columns = ["check_name", "worst", "not_ok", "runs", "last_status", "last_value", "recommendation"]
    if history.empty:
        return pd.DataFrame(columns=columns)
    # One pass in plain Python: a few thousand records, where a pandas pass per check cost the page 30 ms.
    ordered = history.sort_values("recorded_at")
    checks: dict[str, dict] = {}
    columns_as_lists = (ordered[c].tolist() for c in ("check_name", "status", "value", "recommendation"))
    for check, status, value, recommendation in zip(*columns_as_lists, strict=True):
        rank = SEVERITY.get(status, 0)
        summary = checks.setdefault(check, {"check_name": check, "rank": rank, "not_ok": 0, "runs": 0})
        if rank >= summary["rank"]:  # the latest record at the check's worst
            summary.update(rank=rank, worst=status, recommendation=recommendation)
        summary.update(not_ok=summary["not_ok"] + (rank > 0), runs=summary["runs"] + 1, last_status=status,
                       last_value=value)
    frame = pd.DataFrame([checks[check] for check in sorted(checks)], columns=columns)
    order = frame["worst"].map(SEVERITY).fillna(0)
    return frame.assign(_o=-order).sort_values(["_o", "check_name"]).drop(columns="_o").reset_index(drop=True)


# --- the figures the review states ------------------------------------------------------------

def calls(review: MonthlyReview) -> int:
    return int(review.daily["calls"].sum()) if not review.daily.empty else 0


def month_load_reduction(review: MonthlyReview) -> float | None:
    return queries.load_reduction(review.daily) if not review.daily.empty else None


def to_csv(review: MonthlyReview) -> str:
    """The daily rows per cache of the month, for a spreadsheet."""
    frame = review.daily.copy()
    frame.insert(0, "month", f"{review.period.month:%Y-%m}")
    return frame.to_csv(index=False)


def to_dict(review: MonthlyReview) -> dict:
    """The review as plain JSON-ready data (the API's and the CLI's --json answer)."""
    from cachelib.jsonsafe import plain

    def records(frame: pd.DataFrame) -> list[dict]:
        return [plain(row) for row in frame.to_dict(orient="records")]

    span = review.period
    return {
        "month": f"{span.month:%Y-%m}", "title": span.title, "period_start": span.start.isoformat(),
        "period_end": span.end.isoformat(), "partial": span.partial, "demo_data": review.demo_data,
        "calls": calls(review), "load_reduction": month_load_reduction(review),
        "targets": records(review.targets), "daily": records(review.daily), "top_keys": records(review.top_keys),
        "invalidations": records(review.per_cache[["cache_name", "keys_invalidated"]]),
        "fallbacks": records(review.per_cache[["cache_name", "fallbacks", "calls"]]),
        "cleanups": review.cleanups, "events": records(review.events),
        "health": records(review.health), "health_snapshots": review.health_runs,
    }
