"""The health signal (0016): minimum samples before a share warns, readable values, the health history
written by every cleanup and every health check action and pruned by retention, and a dashboard
verify that leaves entries and statistics as they were.

Every test runs on PostgreSQL 18 and 15 (``pg_url``); they share one database, so each starts from
an empty cache and moves the SQL clock (``SET cachelib.now``, honoured for the owner) where time matters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cachelib import actions, queries
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.errors import InvalidInput
from cachelib.maintenance import Actor, Maintenance
from cachelib.manager import CacheManager

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True

ADMIN = Actor("alice", "admin", "test")
T0 = datetime(2031, 1, 10, 12, 0, tzinfo=UTC)
CHECKS = ("expired_entries", "largest_entries", "last_cleanup", "cleanup_schedule", "table_bloat",
          "never_hit_before_expiry", "invalidated_early", "fallbacks", "size_bound")
HISTORY_COLUMNS = ["recorded_at", "source", "check_name", "status", "value", "recommendation"]


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def set_clock(conn, when: datetime | None) -> None:
    conn.execute("SELECT set_config('cachelib.now', %s, false)", [when.isoformat() if when else ""])


def health(conn) -> dict[str, tuple[str, str, str]]:
    """check_name -> (value, status, recommendation)."""
    return {r[0]: (r[1], r[2], r[3]) for r in conn.execute("SELECT * FROM public.analyze_cache_health()")}


def put_many(conn, count: int, prefix: str, *, expires: datetime | str, hits: int = 0, data: bool = True,
             invalidated_at: datetime | None = None, lifetime: str | None = None) -> None:
    """``count`` entries written directly (tombstones with data=False)."""
    conn.execute("""
        INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, hit_count, created_at, ttl,
                                        size_bytes, compute_ms, invalidated_at, last_lifetime)
        SELECT %(prefix)s || ':' || i, 'expert_sessions', CASE WHEN %(data)s THEN '[{"k": 1}]'::jsonb END,
               %(expires)s::timestamptz, %(hits)s::bigint, %(created)s::timestamptz, interval '1 hour',
               CASE WHEN %(data)s THEN 100 ELSE 0 END, 2.5, %(invalidated_at)s::timestamptz, %(lifetime)s::interval
        FROM generate_series(1, %(count)s) AS i""",
                 {"prefix": prefix, "data": data, "expires": expires, "hits": hits, "created": T0 - timedelta(hours=4),
                  "invalidated_at": invalidated_at, "lifetime": lifetime, "count": count})


@pytest.fixture(scope="module")
def original_retention(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return val(conn, "SELECT value FROM cache_private.settings WHERE name = 'health_history_days'")


@pytest.fixture
def c(pg_url, original_retention):
    """An autocommit owner connection to an empty cache and an empty health history, clock at T0."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("""
            DELETE FROM public.query_cache;
            DELETE FROM cache_private.cache_events;
            DELETE FROM cache_private.cache_stats_hourly;
            DELETE FROM cache_private.fallback_reasons;
            DELETE FROM public.cache_cleanup_log;
            DELETE FROM cache_private.health_history;
        """)
        set_clock(conn, T0)
        yield conn
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'health_history_days'",
                     [original_retention])


# --- minimum samples -----------------------------------------------------------------------------------

def test_a_tiny_cache_with_most_entries_expired_is_not_judged(c):
    put_many(c, 1, "live", expires=T0 + timedelta(hours=1))
    put_many(c, 2, "old", expires=T0 - timedelta(hours=3))
    value, status, recommendation = health(c)["expired_entries"]
    assert status == "ok"
    assert value == ("2 of 3 entries (66.7%) expired; fewer than 100 entries, not judged; "
                     "0 invalidated keys awaiting cleanup")
    assert "Too few entries" in recommendation
    never_hit = health(c)["never_hit_before_expiry"]
    assert never_hit[1] == "ok" and never_hit[0].endswith("fewer than 100 expired entries, not judged")


def test_from_the_minimum_sample_on_the_same_share_is_judged(c):
    put_many(c, 33, "live", expires=T0 + timedelta(hours=1))
    put_many(c, 66, "old", expires=T0 - timedelta(hours=3))
    assert health(c)["expired_entries"][1] == "ok"  # 99 entries: one short of the sample
    put_many(c, 1, "more", expires=T0 + timedelta(hours=1))  # 100 entries, 66 % expired 3 hours ago
    value, status, recommendation = health(c)["expired_entries"]
    assert status == "warning", value  # missed by the hourly cleanups of the last 2 hours
    assert value.startswith("66 of 100 entries (66.0%) expired, 66 (66.0%) more than 2 hours ago, "
                            "0 (0.0%) more than 24 hours ago; ")
    assert "schedule it hourly" in recommendation
    # Expired for more than a day: a day of cleanups missed them.
    c.execute("UPDATE public.query_cache SET expires_at = %s WHERE cache_key LIKE 'old:%%'",
              [T0 - timedelta(hours=25)])
    assert health(c)["expired_entries"][1] == "critical"
    # The same share that expired minutes ago is ordinary expiry, waiting for the next hourly cleanup.
    c.execute("UPDATE public.query_cache SET expires_at = %s WHERE cache_key LIKE 'old:%%'",
              [T0 - timedelta(minutes=10)])
    value, status, _ = health(c)["expired_entries"]
    assert status == "ok" and "66 of 100 entries (66.0%) expired, 0 (0.0%) more than 2 hours ago" in value
    # A fifth expired hours ago is still within the threshold; a quarter is not.
    c.execute("UPDATE public.query_cache SET expires_at = %s WHERE cache_key IN "
              "(SELECT cache_key FROM public.query_cache WHERE cache_key LIKE 'old:%%' ORDER BY cache_key LIMIT 20)",
              [T0 - timedelta(hours=3)])
    assert health(c)["expired_entries"][1] == "ok"
    c.execute("UPDATE public.query_cache SET expires_at = %s WHERE cache_key IN "
              "(SELECT cache_key FROM public.query_cache WHERE cache_key LIKE 'old:%%' ORDER BY cache_key LIMIT 25)",
              [T0 - timedelta(hours=3)])
    assert health(c)["expired_entries"][1] == "warning"


def test_never_hit_before_expiry_needs_100_expired_entries(c):
    put_many(c, 99, "unused", expires=T0 - timedelta(minutes=5))
    value, status, _ = health(c)["never_hit_before_expiry"]
    assert status == "ok" and value.startswith("99 of 99 expired entries (100.0%) never hit; fewer than 100")
    put_many(c, 1, "unused-too", expires=T0 - timedelta(minutes=5))
    put_many(c, 20, "used", expires=T0 - timedelta(minutes=5), hits=3)
    value, status, recommendation = health(c)["never_hit_before_expiry"]
    assert status == "warning" and value == "100 of 120 expired entries (83.3%) never hit"
    assert "lengthen the duration" in recommendation


def test_invalidated_early_needs_100_invalidated_keys(c):
    put_many(c, 20, "early", expires="-infinity", data=False, invalidated_at=T0 - timedelta(hours=1),
             lifetime="5 minutes")
    value, status, _ = health(c)["invalidated_early"]
    assert status == "ok" and value.startswith("20 of 20 keys invalidated in 24 h (100.0%)")
    assert value.endswith("fewer than 100 keys, not judged")
    put_many(c, 80, "early-too", expires="-infinity", data=False, invalidated_at=T0 - timedelta(hours=1),
             lifetime="5 minutes")
    put_many(c, 20, "late", expires="-infinity", data=False, invalidated_at=T0 - timedelta(hours=1),
             lifetime="50 minutes")
    value, status, _ = health(c)["invalidated_early"]
    assert status == "warning" and value.startswith("100 of 120 keys invalidated in 24 h (83.3%)")
    assert "invalidated keys awaiting cleanup" in health(c)["expired_entries"][0]


def test_hit_rate_needs_100_calls_in_7_days(c):
    c.execute("INSERT INTO cache_private.cache_stats_hourly (cache_name, bucket, hits, misses) "
              "VALUES ('expert_sessions', %s, 10, 40)", [T0 - timedelta(hours=1)])
    value, status, _ = health(c)["hit_rate:expert_sessions"]
    assert status == "ok" and value == "50 calls in 7 days; fewer than 100 calls, not judged"
    c.execute("INSERT INTO cache_private.cache_stats_hourly (cache_name, bucket, hits, misses) "
              "VALUES ('expert_sessions', %s, 10, 1140)", [T0 - timedelta(hours=2)])
    value, status, recommendation = health(c)["hit_rate:expert_sessions"]
    assert status == "critical" and value == "1.67% of 1,200 calls (7 days)"
    assert "CACHE_EXPERT_SESSIONS_DURATION" in recommendation


def test_values_read_plainly(c):
    checks = health(c)
    assert set(CHECKS) | {"hit_rate:expert_sessions", "hit_rate:product_performance"} == set(checks)
    bloat, status, _ = checks["table_bloat"]
    assert re.fullmatch(r"[\d,]+ dead rows( \([\d.]+% of [\d,]+ rows\))?(; judged from 1,000 dead rows)?", bloat), bloat
    if "judged from" in bloat:
        assert status == "ok"
    assert checks["last_cleanup"][0] == "never" and checks["last_cleanup"][1] == "critical"
    c.execute("SELECT public.cleanup_expired_cache()")
    set_clock(c, T0 + timedelta(hours=3))
    assert health(c)["last_cleanup"][0] == "2031-01-10 12:00 UTC (3 h ago)"
    # The same text whatever the caller's TimeZone.
    c.execute("SET TimeZone = 'Pacific/Auckland'")
    assert health(c)["last_cleanup"][0] == "2031-01-10 12:00 UTC (3 h ago)"
    c.execute("SET TimeZone = 'UTC'")


def test_the_public_functions_stay_the_same_15(c):
    names = [r[0] for r in c.execute("SELECT routine_name FROM information_schema.routines "
                                     "WHERE routine_schema = 'public' AND routine_name LIKE '%cache%'")]
    assert len(names) == 15 and "analyze_cache_health" in names


# --- the history ---------------------------------------------------------------------------------------

def history(conn, source: str | None = None) -> list[tuple]:
    return conn.execute("SELECT recorded_at, source, check_name, status, value FROM cache_private.health_history "
                        "WHERE %(source)s::text IS NULL OR source = %(source)s ORDER BY id",
                        {"source": source}).fetchall()


def test_every_cleanup_records_the_checks_it_found(c):
    count = len(health(c))
    c.execute("SELECT public.cleanup_expired_cache()")
    rows = history(c)
    assert len(rows) == count
    assert {r[0] for r in rows} == {T0} and {r[1] for r in rows} == {"cleanup"}
    found = {r[2]: r[3:] for r in rows}
    assert found["last_cleanup"] == ("critical", "never")  # before this cleanup, none had run
    set_clock(c, T0 + timedelta(hours=1))
    c.execute("SELECT public.optimize_cache()")  # optimize cleans up too
    rows = history(c)
    assert len(rows) == 2 * count
    assert [r[3] for r in rows if r[2] == "last_cleanup"] == ["critical", "ok"]
    assert [r[0] for r in rows][count:] == [T0 + timedelta(hours=1)] * count


def test_the_health_check_action_records_what_it_returns(pg_url, c):
    database = Database(pg_url, Settings.from_env({}))
    try:
        result = Maintenance(database).health_check(ADMIN)
    finally:
        database.close()
    rows = history(c, "health check")
    returned = [(r["check_name"], r["status"], r["value"]) for r in result.details["checks"]]
    assert [(r[2], r[3], r[4]) for r in rows] == returned
    assert len(returned) == len(health(c)) and len({r[0] for r in rows}) == 1
    assert history(c, "cleanup") == []


def test_retention_prunes_old_history(c):
    c.execute("SELECT public.cleanup_expired_cache()")
    count = len(history(c))
    set_clock(c, T0 + timedelta(days=399))
    c.execute("SELECT public.cleanup_expired_cache()")
    assert len(history(c)) == 2 * count
    set_clock(c, T0 + timedelta(days=401))
    c.execute("SELECT public.cleanup_expired_cache()")
    times = {r[0] for r in history(c)}
    assert times == {T0 + timedelta(days=399), T0 + timedelta(days=401)}
    pruned = val(c, "SELECT details->>'health_history_pruned' FROM public.cache_cleanup_log ORDER BY id DESC LIMIT 1")
    assert int(pruned) == count
    # The retention is a setting.
    c.execute("UPDATE cache_private.settings SET value = '1' WHERE name = 'health_history_days'")
    set_clock(c, T0 + timedelta(days=401, hours=1))
    c.execute("SELECT public.cleanup_expired_cache()")
    assert {r[0] for r in history(c)} == {T0 + timedelta(days=401), T0 + timedelta(days=401, hours=1)}


def test_the_history_read_returns_the_window_in_order(pg_url, c):
    for hours in (0, 1, 2):
        set_clock(c, T0 + timedelta(hours=hours))
        c.execute("SELECT public.cleanup_expired_cache()")
    database = Database(pg_url, Settings.from_env({}))
    try:
        frame = queries.health_history(T0 + timedelta(hours=1), T0 + timedelta(hours=2), database=database)
        empty = queries.health_history(T0 + timedelta(days=9), T0 + timedelta(days=10), database=database)
    finally:
        database.close()
    assert list(frame.columns) == HISTORY_COLUMNS and list(empty.columns) == HISTORY_COLUMNS
    assert empty.empty
    assert set(frame["recorded_at"]) == {T0 + timedelta(hours=1)}  # start included, end excluded
    assert list(frame["check_name"]) == [r[0] for r in c.execute("SELECT check_name FROM cache_private.health_history "
                                                                 "WHERE recorded_at = %s ORDER BY id",
                                                                 [T0 + timedelta(hours=1)])]


def test_only_the_owner_reaches_the_history(c):
    for role in ("anon", "authenticated", "cache_admin", "service_role"):
        for sql in ("SELECT * FROM cache_private.health_history", "SELECT * FROM cache_private.record_health('x')"):
            c.execute(f"SET ROLE {role}")
            try:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    c.execute(sql)
            finally:
                c.execute("RESET ROLE")
    assert val(c, "SELECT relrowsecurity FROM pg_class WHERE oid = 'cache_private.health_history'::regclass")
    # Reading the checks writes no history, whoever reads them.
    c.execute("SET ROLE authenticated")
    try:
        c.execute("SELECT * FROM public.analyze_cache_health()").fetchall()
    finally:
        c.execute("RESET ROLE")
    health(c)
    assert history(c) == []


# --- impact of destructive actions -----------------------------------------------------------------------

def test_clear_impact_counts_the_live_entries_an_action_would_lose(pg_url, c):
    set_clock(c, None)
    now = datetime.now(UTC)
    put_many(c, 3, "expert_sessions", expires=now + timedelta(hours=1))
    put_many(c, 2, "gone", expires=now - timedelta(hours=1))  # expired: nothing left to lose
    c.execute("INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at, size_bytes, "
              "compute_ms) VALUES ('product_performance:all', 'product_performance', '[]', %s, %s, 1000, 40)",
              [now + timedelta(hours=1), now])
    database = Database(pg_url, Settings.from_env({}))
    try:
        everything = queries.clear_impact(database=database)
        sessions = queries.clear_impact(cache="expert_sessions", database=database)
        one = queries.clear_impact(key="product_performance:all", database=database)
        none = queries.clear_impact(key="no-such-key", database=database)
        for bad in ({"cache": "a", "key": "b"}, {"key": ""}, {"key": "x\x00"}, {"cache": "x" * 1001}):
            with pytest.raises(InvalidInput):
                queries.clear_impact(database=database, **bad)
    finally:
        database.close()
    assert everything == {"entries": 4, "bytes": 1300, "compute_ms": 47.5}
    assert sessions == {"entries": 3, "bytes": 300, "compute_ms": 7.5}
    assert one == {"entries": 1, "bytes": 1000, "compute_ms": 40.0}
    assert none == {"entries": 0, "bytes": 0, "compute_ms": 0.0}


# --- verify from the dashboard ---------------------------------------------------------------------------

FINGERPRINT = """
    SELECT (SELECT count(*) || ':' || COALESCE(md5(string_agg(q::text, '|' ORDER BY q::text)), '')
            FROM public.query_cache q),
           (SELECT count(*) || ':' || COALESCE(md5(string_agg(e::text, '|' ORDER BY e::text)), '')
            FROM cache_private.cache_events e),
           (SELECT count(*) || ':' || COALESCE(md5(string_agg(s::text, '|' ORDER BY s::text)), '')
            FROM cache_private.cache_stats_hourly s)"""


def test_verify_from_the_dashboard_leaves_entries_and_statistics_as_they_were(pg_url, c):
    set_clock(c, None)
    database = Database(pg_url, Settings.from_env({}))
    try:
        manager = CacheManager(database, Settings.from_env({}))
        manager.expert_sessions(1)
        manager.expert_sessions(1)  # a hit waiting in the event log to be rolled up
        c.execute("SELECT cache_private.rollup_stats()")
        manager.product_performance(2)
        before = c.execute(FINGERPRINT).fetchone()
        assert val(c, "SELECT count(*) FROM cache_private.cache_events") > 0  # not rolled up yet
        assert val(c, "SELECT count(*) FROM public.query_cache WHERE cache_key LIKE '%:all'") == 0
        audits = val(c, "SELECT count(*) FROM cache_private.maintenance_audit WHERE action = 'verify'")
        result = actions.verify_deployment(Maintenance(database), ADMIN)
        checks = {check["name"]: check for check in result.details["checks"]}
        # It still checks what it says: each cached function answers twice, the second time from the cache.
        for cache in ("expert_sessions", "product_performance"):
            check = checks[f"cached call: {cache}"]
            assert check["status"] == "pass" and "first call a miss, second call a hit" in check["detail"], check
        assert checks["health analysis"]["status"] == "pass"
        assert c.execute(FINGERPRINT).fetchone() == before
        # The :all entries the checks stored were rolled back, so a second run computes them again.
        again = actions.verify_deployment(Maintenance(database), ADMIN)
        second = {check["name"]: check for check in again.details["checks"]}
        assert "first call a miss" in second["cached call: expert_sessions"]["detail"]
        assert c.execute(FINGERPRINT).fetchone() == before
    finally:
        database.close()
    # The one row written: the audit of the action itself.
    assert val(c, "SELECT count(*) FROM cache_private.maintenance_audit WHERE action = 'verify'") == audits + 2


def test_a_new_deployment_is_not_critical_before_its_first_cleanup(c):
    """No cleanup has run: last_cleanup is judged from the deployment (ok for a day, warning after, critical
    after three); cleanup_schedule warns from the start, as no schedule has shown itself yet."""
    deployed = val(c, "SELECT value FROM cache_private.settings WHERE name = 'deployed_at'")
    c.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (T0.isoformat(),))
    try:
        for hours, expected in ((2, "ok"), (30, "warning"), (80, "critical")):
            set_clock(c, T0 + timedelta(hours=hours))
            checks = health(c)
            assert checks["last_cleanup"][:2] == ("never", expected), (hours, checks["last_cleanup"])
            assert checks["cleanup_schedule"][1] == "warning"  # nothing shows a schedule exists yet
        set_clock(c, T0 + timedelta(hours=2))
        assert "No cleanup yet" in health(c)["last_cleanup"][2]
    finally:
        c.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (deployed,))
