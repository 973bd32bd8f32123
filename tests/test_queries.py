"""The data layer: documented columns, validation at the edge, targets against the movable clock."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import psycopg
import pytest

from cachelib import queries
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.errors import InvalidInput
from cachelib.manager import CacheManager

COLUMNS = {
    "overview": ["cache_name", "entries", "live_entries", "expired_entries", "entries_with_hits", "avg_hits",
                 "total_bytes", "hit_rate_today", "hit_rate_7d", "hit_rate_30d", "load_reduction_30d", "calls_30d",
                 "fallbacks_7d", "last_cleanup_at"],
    "guide_overview": ["total_entries", "hit_entries", "avg_hits", "expired_entries"],
    "top_entries": ["cache_key", "cache_name", "hit_count", "size_bytes", "created_at", "expires_at", "age_seconds",
                    "expires_in_seconds", "compute_ms", "time_saved_ms", "last_hit_at"],
    "hit_rate_series": ["bucket", "cache_name", "hits", "misses", "fallbacks", "hit_rate", "avg_hit_ms",
                        "avg_miss_ms"],
    "load_reduction_series": ["bucket", "compute_ms_spent", "compute_ms_saved", "load_reduction"],
    "cleanup_log": ["id", "cleanup_time", "entries_removed", "entries_evicted", "never_hit_removed", "bytes_freed",
                    "duration_ms", "triggered_by", "details"],
    "cleanup_stats": ["day", "cleanups", "entries_removed", "entries_evicted", "never_hit_removed", "bytes_freed",
                      "avg_duration_ms"],
    "health": ["check_name", "value", "status", "recommendation"],
    "size_distribution": ["size_class", "lower_bytes", "entries", "total_bytes"],
    "fallback_usage": ["day", "cache_name", "fallbacks", "calls"],
    "fallback_reasons": ["cache_name", "reason", "occurrences", "last_at"],
    "audit_log": ["at", "actor", "actor_role", "action", "parameters", "outcome", "result", "duration_ms"],
}


@pytest.fixture(scope="module")
def database(db_url):
    database = Database(db_url)
    manager = CacheManager(database)
    for _ in range(3):
        manager.expert_sessions()
        manager.product_performance(1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT cleanup_expired_cache()")
    return database


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_each_function_returns_its_documented_columns(database, name):
    frame = getattr(queries, name)(database=database)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == COLUMNS[name]


def test_values_reflect_the_traffic(database):
    overview = queries.overview(database).set_index("cache_name")
    assert overview.loc["expert_sessions", "entries"] == 1
    assert overview.loc["expert_sessions", "hit_rate_today"] == pytest.approx(66.67)
    guide = queries.guide_overview(database).iloc[0]
    assert guide.total_entries == 2 and guide.hit_entries == 2 and float(guide.avg_hits) == 2.0
    top = queries.top_entries(10, "saved", database=database)
    assert set(top.cache_key) == {"expert_sessions:all", "product_performance:1"}
    assert (top.time_saved_ms == top.hit_count * top.compute_ms).all()
    series = queries.hit_rate_series(1, "hour", database=database)
    assert series.hits.sum() == 4 and series.misses.sum() == 2
    assert queries.cleanup_log(5, database).iloc[0].entries_removed >= 0


def test_search_is_literal_not_a_pattern(database):
    assert queries.top_entries(search="%", database=database).empty
    assert queries.top_entries(search="_", database=database).cache_key.tolist()  # keys contain "_"
    assert queries.top_entries(search="ALL", database=database).cache_key.tolist() == ["expert_sessions:all"]
    assert queries.top_entries(search="'; DROP TABLE query_cache; --", database=database).empty


@pytest.mark.parametrize("call", [
    lambda db: queries.top_entries(0, database=db),
    lambda db: queries.top_entries(order_by="random()", database=db),
    lambda db: queries.top_entries(cache="nope", database=db),
    lambda db: queries.hit_rate_series(0, database=db),
    lambda db: queries.hit_rate_series(7, "minute", database=db),
    lambda db: queries.load_reduction_series(4000, database=db),
    lambda db: queries.cleanup_stats(-1, database=db),
    lambda db: queries.fallback_usage(0, database=db),
    lambda db: queries.cleanup_log(0, database=db),
    lambda db: queries.audit_log(10**6, database=db),
])
def test_bad_parameters_raise_invalid_input(database, call):
    with pytest.raises(InvalidInput):
        call(database)


def test_target_status_over_the_windows(db_url):
    database = Database(db_url)
    deployed = datetime(2026, 1, 1, tzinfo=UTC)
    config = Settings.from_env({"CACHE_DEPLOYED_AT": deployed.isoformat()})
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Day 2: sessions 3 of 4 hit (75%); analytics 1 of 2 (50%). Day 10: both all hits.
        conn.execute("""INSERT INTO cache_private.cache_stats_hourly
                        (cache_name, bucket, hits, misses, compute_ms_spent, compute_ms_saved) VALUES
                        ('expert_sessions', '2026-01-02 10:00+00', 3, 1, 10, 30),
                        ('product_performance', '2026-01-02 10:00+00', 1, 1, 10, 10),
                        ('expert_sessions', '2026-01-10 10:00+00', 9, 0, 0, 90),
                        ('product_performance', '2026-01-10 10:00+00', 9, 0, 0, 90)""")
    during_week1 = queries.target_status(deployed + timedelta(days=3), database, config)
    assert list(during_week1.state) == ["in progress", "in progress", "not started", "not started", "not started"]
    after_month1 = queries.target_status(deployed + timedelta(days=40), database, config).set_index(
        ["milestone", "cache_name"])
    assert after_month1.loc[("Week 1", "expert_sessions"), "measured"] == 75.0
    assert after_month1.loc[("Week 1", "expert_sessions"), "state"] == "met"
    assert after_month1.loc[("Week 1", "product_performance"), "state"] == "missed"
    assert after_month1.loc[("Month 1", "product_performance"), "state"] == "met"
    assert after_month1.loc[("Month 1", "all caches"), "measured"] == 100.0


def test_series_cut_utc_days_whatever_the_databases_time_zone(pg18):
    """With the database's default TimeZone at UTC+5:30 (hours cut at :30 UTC, days at 18:30 UTC) the series
    still come in UTC hours and days: the daily rows are the hourly rows summed by UTC day."""
    url = pg18.fresh_database("series_time_zone")
    with psycopg.connect(url, autocommit=True) as owner:
        owner.execute(f"ALTER DATABASE {owner.info.dbname} SET TimeZone = 'Asia/Kolkata'")
        # Six days of hourly statistics for two caches, different in every hour.
        owner.execute("""
            INSERT INTO cache_private.cache_stats_hourly
              (cache_name, bucket, hits, misses, fallbacks, hit_ms_total, miss_ms_total, compute_ms_spent,
               compute_ms_saved)
            SELECT c, date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - h * interval '1 hour',
                   h % 17 + 1, h % 5, h % 3, h * 0.5, h * 2.0, h * 3.5, h * 7.25
            FROM unnest(ARRAY['expert_sessions', 'product_performance']) c, generate_series(1, 144) h
            ON CONFLICT (cache_name, bucket) DO NOTHING""")
    database = Database(url)
    try:
        hourly = queries.hit_rate_series(7, "hour", database=database)
        daily = queries.hit_rate_series(7, "day", database=database)
        load_hourly = queries.load_reduction_series(7, "hour", database=database)
        load_daily = queries.load_reduction_series(7, "day", database=database)
    finally:
        database.close()
    assert all(moment.minute == 0 for moment in hourly["bucket"])
    assert all(moment.astimezone(UTC).hour == 0 for moment in daily["bucket"])

    def by_utc_day(frame, columns, keys):
        days = pd.to_datetime(frame["bucket"], utc=True).dt.floor("D")
        return frame.assign(bucket=days).groupby(["bucket", *keys], as_index=False)[columns].sum()

    summed = by_utc_day(hourly, ["hits", "misses", "fallbacks"], ["cache_name"])
    assert summed.to_dict("records") == daily.assign(bucket=pd.to_datetime(daily["bucket"], utc=True))[
        ["bucket", "cache_name", "hits", "misses", "fallbacks"]].to_dict("records")
    spent = by_utc_day(load_hourly, ["compute_ms_spent"], [])
    assert [round(v, 6) for v in spent["compute_ms_spent"]] == \
           [round(float(v), 6) for v in load_daily["compute_ms_spent"]]
