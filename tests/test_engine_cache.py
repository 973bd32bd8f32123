"""The cache engine in SQL: hits and misses, expiry, statistics, maintenance, invalidation.

Every test runs on PostgreSQL 18 and 15 (``pg_url``). Tests in this module share
one database, so each starts from an empty cache (``c`` fixture) and moves the
SQL clock (``SET cachelib.now``) to its own hour or day when statistics matter.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.servers import flush_fast_hits

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True
TOKEN = "EMERGENCY_CLEAR_CONFIRMED"
SETTINGS = ("max_entries", "max_total_bytes", "stats_retention_days", "compute_lock_timeout_ms")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def set_clock(conn, when: datetime | None) -> None:
    conn.execute("SELECT set_config('cachelib.now', %s, false)", [when.isoformat() if when else ""])


def reset_engine(conn) -> None:
    flush_fast_hits(conn)
    conn.execute("""
        DELETE FROM public.query_cache;
        DELETE FROM cache_private.cache_events;
        DELETE FROM cache_private.cache_stats_hourly;
        DELETE FROM cache_private.fallback_reasons;
        DELETE FROM public.cache_cleanup_log;
        DELETE FROM cache_private.maintenance_audit;
    """)


@pytest.fixture(scope="module")
def original_settings(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return dict(rows(conn, "SELECT name, value FROM cache_private.settings WHERE name = ANY(%s)", [list(SETTINGS)]))


@pytest.fixture
def c(pg_url, original_settings):
    """An autocommit superuser connection to an empty cache, clock real, session time zone UTC."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for name, value in original_settings.items():
            conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = %s", [value, name])
        reset_engine(conn)
        yield conn
        for name, value in original_settings.items():
            conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = %s", [value, name])


CACHED = {
    "expert": ("get_expert_sessions_with_stats_cached", "get_expert_sessions_with_stats", "expert_sessions"),
    "product": ("get_product_performance_cached", "get_product_performance", "product_performance"),
}


def key_of(kind: str, ident) -> str:
    return f"{CACHED[kind][2]}:{'all' if ident is None else ident}"


def event_counts(conn, key: str) -> dict[str, int]:
    flush_fast_hits(conn)
    return dict(rows(conn, "SELECT kind, sum(weight) FROM cache_private.cache_events WHERE cache_key = %s "
                           "GROUP BY kind", [key]))


def call(conn, kind: str, ident, duration: str = "5 minutes"):
    """Call a cached function; returns (data, 'hit' or 'miss') judged by the event it appended."""
    key = key_of(kind, ident)
    before = event_counts(conn, key)
    data = val(conn, f"SELECT public.{CACHED[kind][0]}(%s::bigint, %s::interval)", [ident, duration])
    after = event_counts(conn, key)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in ("hit", "miss")}
    assert delta in ({"hit": 1, "miss": 0}, {"hit": 0, "miss": 1}), delta
    return data, "hit" if delta["hit"] else "miss"


def direct(conn, kind: str, ident):
    return val(conn, f"SELECT public.{CACHED[kind][1]}(%s::bigint)", [ident])


def put(conn, key, *, created, expires, cache="expert_sessions", data=None, hits=0, compute_ms=10.0,
        size=None, ttl=timedelta(hours=1), last_hit=None):
    """A cache row written directly (tombstone when data is the string 'tombstone')."""
    payload = None if data == "tombstone" else Jsonb(data if data is not None else [{"key": key}])
    conn.execute("""
        INSERT INTO public.query_cache
          (cache_key, cache_name, data, expires_at, hit_count, created_at, ttl, size_bytes, compute_ms, last_hit_at)
        VALUES (%(key)s, %(cache)s, %(data)s, %(expires)s, %(hits)s, %(created)s, %(ttl)s,
                COALESCE(%(size)s, pg_column_size(%(data)s::jsonb), 0), %(compute)s, %(last_hit)s)
    """, {"key": key, "cache": cache, "data": payload, "expires": expires, "hits": hits, "created": created,
          "ttl": ttl, "size": size, "compute": compute_ms, "last_hit": last_hit})


def entry(conn, key: str, *, rolled_up: bool = True):
    """One row of query_cache as the dashboard sees it: after a roll-up, which marks what writers made stale."""
    if rolled_up:
        conn.execute("SELECT cache_private.rollup_stats()")
    # psycopg cannot load -infinity as a datetime: tombstones show expires_at None and tombstone True.
    cur = conn.execute("""
        SELECT cache_key, cache_name, data, CASE WHEN isfinite(expires_at) THEN expires_at END AS expires_at,
               expires_at = '-infinity' AS tombstone, hit_count, created_at, last_hit_at, ttl, size_bytes,
               compute_ms, invalidation_count, invalidated_at, last_lifetime
        FROM public.query_cache WHERE cache_key = %s""", [key])
    row = cur.fetchone()
    return None if row is None else dict(zip([d.name for d in cur.description], row, strict=True))


def live_keys(conn) -> list[str]:
    conn.execute("SELECT cache_private.rollup_stats()")  # marks what writers made stale, as the dashboard's reads do
    return [r[0] for r in rows(conn, "SELECT cache_key FROM public.query_cache WHERE data IS NOT NULL ORDER BY 1")]


# --- hits, misses, expiry -------------------------------------------------------------------------

@pytest.mark.parametrize("kind,ident", [("expert", None), ("expert", 3), ("product", None), ("product", 7)])
def test_second_call_is_a_hit_with_the_direct_data(c, kind, ident):
    first, how_first = call(c, kind, ident)
    second, how_second = call(c, kind, ident)
    assert (how_first, how_second) == ("miss", "hit")
    assert first == second == direct(c, kind, ident)
    assert len(first) == (1 if ident else {"expert": 40, "product": 60}[kind])
    row = entry(c, key_of(kind, ident))
    assert row["cache_name"] == CACHED[kind][2]
    assert row["ttl"] == timedelta(minutes=5)
    assert row["expires_at"] - row["created_at"] == timedelta(minutes=5)
    assert row["size_bytes"] > 0 and row["compute_ms"] > 0


@pytest.mark.parametrize("kind", ["expert", "product"])
def test_nonexistent_id_gives_an_empty_array_and_is_cached(c, kind):
    assert call(c, kind, 987654) == ([], "miss")
    assert call(c, kind, 987654) == ([], "hit")
    assert direct(c, kind, 987654) == []


def test_default_durations(c):
    val(c, "SELECT public.get_expert_sessions_with_stats_cached(2)")
    val(c, "SELECT public.get_product_performance_cached(2)")
    assert entry(c, "expert_sessions:2")["ttl"] == timedelta(minutes=5)
    assert entry(c, "product_performance:2")["ttl"] == timedelta(minutes=15)


def test_entry_expires_after_its_duration_on_the_movable_clock(c):
    t0 = at("2030-01-01 10:00")
    set_clock(c, t0)
    assert call(c, "expert", 2)[1] == "miss"
    assert entry(c, "expert_sessions:2")["created_at"] == t0
    assert entry(c, "expert_sessions:2")["expires_at"] == t0 + timedelta(minutes=5)
    set_clock(c, t0 + timedelta(minutes=4, seconds=59))
    assert call(c, "expert", 2)[1] == "hit"
    set_clock(c, t0 + timedelta(minutes=5))  # expires_at is exclusive
    data, how = call(c, "expert", 2)
    assert how == "miss" and data == direct(c, "expert", 2)
    assert entry(c, "expert_sessions:2")["created_at"] == t0 + timedelta(minutes=5)
    set_clock(c, None)
    # Back on the real clock (years before 2030) the entry is live again: only the clock decides.
    assert call(c, "expert", 2)[1] == "hit"


def test_caller_asking_for_fresher_data_than_stored_gets_a_recompute(c):
    t0 = at("2030-01-02 10:00")
    set_clock(c, t0)
    call(c, "product", 4, "10 minutes")
    set_clock(c, t0 + timedelta(minutes=3))
    assert call(c, "product", 4, "10 minutes")[1] == "hit"
    assert call(c, "product", 4, "5 minutes")[1] == "hit"  # 3 minutes old is fresh enough for 5 minutes
    data, how = call(c, "product", 4, "1 minute")  # 3 minutes old is too old for 1 minute
    assert how == "miss" and data == direct(c, "product", 4)
    row = entry(c, "product_performance:4")
    assert row["created_at"] == t0 + timedelta(minutes=3) and row["ttl"] == timedelta(minutes=1)
    assert call(c, "product", 4, "10 minutes")[1] == "hit"


# --- statistics ------------------------------------------------------------------------------------

def test_hit_count_is_exact_after_a_rollup(c):
    set_clock(c, at("2030-01-03 08:00"))
    call(c, "expert", 6, "1 hour")
    for _ in range(7):
        assert call(c, "expert", 6, "1 hour")[1] == "hit"
    assert entry(c, "expert_sessions:6", rolled_up=False)["hit_count"] == 0  # not rolled up yet
    assert val(c, "SELECT cache_private.rollup_stats()") == 8
    assert entry(c, "expert_sessions:6")["hit_count"] == 7
    assert entry(c, "expert_sessions:6")["last_hit_at"] == at("2030-01-03 08:00")
    assert val(c, "SELECT cache_private.rollup_stats()") == 0  # nothing counted twice
    for _ in range(3):
        call(c, "expert", 6, "1 hour")
    # Any read function rolls up first.
    overview = {r[0]: r for r in rows(c, "SELECT * FROM public.get_cache_metrics_overview()")}
    assert entry(c, "expert_sessions:6")["hit_count"] == 10
    assert overview["expert_sessions"][5] == 10  # avg_hits over the one entry
    top = rows(c, "SELECT cache_key, hit_count FROM public.get_top_cache_entries(5)")
    assert top == [("expert_sessions:6", 10)]


def test_hits_of_a_previous_lifetime_do_not_count_for_the_new_value(c):
    set_clock(c, at("2030-01-03 09:00"))
    call(c, "expert", 8, "1 hour")
    call(c, "expert", 8, "1 hour")
    call(c, "expert", 8, "1 hour")
    set_clock(c, at("2030-01-03 09:30"))
    assert val(c, "SELECT public.invalidate_cache(NULL, 'expert_sessions:8')") == 1
    call(c, "expert", 8, "1 hour")  # recomputed: a new lifetime
    call(c, "expert", 8, "1 hour")
    val(c, "SELECT cache_private.rollup_stats()")
    assert entry(c, "expert_sessions:8")["hit_count"] == 1
    stats = rows(c, "SELECT hits, misses FROM cache_private.cache_stats_hourly WHERE cache_name = 'expert_sessions'")
    assert stats == [(3, 2)]  # the hourly statistics keep every call


def test_statistics_land_in_hourly_buckets(c):
    set_clock(c, at("2030-02-03 10:15"))
    call(c, "expert", 4, "1 day")
    for _ in range(3):
        call(c, "expert", 4, "1 day")
    set_clock(c, at("2030-02-03 11:20"))
    call(c, "expert", 4, "1 day")
    assert val(c, "SELECT cache_private.rollup_stats()") == 5
    compute_ms = entry(c, "expert_sessions:4")["compute_ms"]
    stats = rows(c, """
        SELECT bucket, hits, misses, fallbacks, compute_ms_spent, compute_ms_saved, hit_ms_total, miss_ms_total
        FROM cache_private.cache_stats_hourly WHERE cache_name = 'expert_sessions' ORDER BY bucket""")
    assert [r[:4] for r in stats] == [(at("2030-02-03 10:00"), 3, 1, 0), (at("2030-02-03 11:00"), 1, 0, 0)]
    assert stats[0][4] == compute_ms and stats[1][4] == 0  # spent: the one miss
    assert stats[0][5] == pytest.approx(3 * compute_ms) and stats[1][5] == pytest.approx(compute_ms)  # saved per hit
    assert stats[0][6] > 0 and stats[0][7] >= stats[0][4]  # a miss's elapsed time includes its computation
    # A second roll-up adds into the same buckets.
    call(c, "expert", 4, "1 day")
    val(c, "SELECT cache_private.rollup_stats()")
    assert val(c, "SELECT hits FROM cache_private.cache_stats_hourly WHERE bucket = %s",
               [at("2030-02-03 11:00")]) == 2


def test_hourly_buckets_are_utc_hours_whatever_the_session_time_zone(c):
    """India is UTC+05:30: a session there must still fill the same hourly buckets."""
    c.execute("SET TimeZone = 'Asia/Kolkata'")
    set_clock(c, at("2030-02-04 10:10"))
    call(c, "expert", 4, "1 day")
    call(c, "expert", 4, "1 day")
    val(c, "SELECT cache_private.rollup_stats()")
    c.execute("SET TimeZone = 'UTC'")
    set_clock(c, at("2030-02-04 10:50"))
    call(c, "expert", 4, "1 day")
    val(c, "SELECT cache_private.rollup_stats()")
    assert rows(c, "SELECT bucket, hits, misses FROM cache_private.cache_stats_hourly") == [
        (at("2030-02-04 10:00"), 2, 1)]


def test_hit_rate_and_load_reduction_series(c):
    set_clock(c, at("2030-02-05 10:05"))
    call(c, "expert", 1, "1 day")
    call(c, "expert", 1, "1 day")
    call(c, "expert", 1, "1 day")
    call(c, "product", 1, "1 day")
    call(c, "product", 1, "1 day")
    set_clock(c, at("2030-02-05 11:05"))
    call(c, "expert", 2, "1 day")
    call(c, "expert", 1, "1 day")
    call(c, "product", 1, "1 day")

    hourly = rows(c, "SELECT bucket, cache_name, hits, misses, fallbacks, hit_rate, avg_hit_ms IS NOT NULL, "
                     "avg_miss_ms IS NOT NULL FROM public.get_cache_hit_rate_series(1, 'hour')")
    assert hourly == [
        (at("2030-02-05 10:00"), "expert_sessions", 2, 1, 0, Decimal("66.67"), True, True),
        (at("2030-02-05 10:00"), "product_performance", 1, 1, 0, 50, True, True),
        (at("2030-02-05 11:00"), "expert_sessions", 1, 1, 0, 50, True, True),
        (at("2030-02-05 11:00"), "product_performance", 1, 0, 0, 100, True, False),
    ]
    daily = rows(c, "SELECT bucket, cache_name, hits, misses, hit_rate "
                    "FROM public.get_cache_hit_rate_series(7, 'day', 'expert_sessions')")
    assert daily == [(at("2030-02-05 00:00"), "expert_sessions", 3, 2, 60)]
    weekly = rows(c, "SELECT bucket, hits, misses FROM public.get_cache_hit_rate_series(30, 'week')")
    assert [(r[1], r[2]) for r in weekly] == [(3, 2), (2, 1)] and weekly[0][0] == at("2030-02-04 00:00")  # Monday

    spent, saved = rows(c, "SELECT sum(compute_ms_spent), sum(compute_ms_saved) "
                           "FROM cache_private.cache_stats_hourly")[0]
    load = rows(c, "SELECT * FROM public.get_cache_load_reduction_series(1, 'day')")
    assert len(load) == 1
    bucket, load_spent, load_saved, reduction = load[0]
    assert bucket == at("2030-02-05 00:00")
    assert load_spent == pytest.approx(spent) and load_saved == pytest.approx(saved)
    assert float(reduction) == pytest.approx(100 * saved / (saved + spent), abs=0.01)
    assert len(rows(c, "SELECT * FROM public.get_cache_load_reduction_series(1, 'hour')")) == 2
    # Outside the window: nothing.
    set_clock(c, at("2030-03-05 11:05"))
    assert rows(c, "SELECT * FROM public.get_cache_hit_rate_series(1, 'hour')") == []
    assert rows(c, "SELECT * FROM public.get_cache_load_reduction_series(1, 'day')") == []


# --- read functions --------------------------------------------------------------------------------

def _top_fixture(c):
    t0 = at("2030-03-01 12:00")
    set_clock(c, t0)
    spec = [  # key, hits, compute_ms, size, created (minutes before t0), expires (minutes after t0)
        ("top:a", 5, 2.0, 300, 50, 10),
        ("top:b", 5, 1.0, 900, 10, 50),
        ("top:c", 0, 9.0, 100, 30, 5),
        ("top:d", 2, 5.0, 900, 40, 40),
        ("top:e", 1, 20.0, 50, 20, 20),
    ]
    for key, hits, compute, size, created, expires in spec:
        put(c, key, hits=hits, compute_ms=compute, size=size, created=t0 - timedelta(minutes=created),
            expires=t0 + timedelta(minutes=expires))
    put(c, "top:tombstone", data="tombstone", created=t0, expires="-infinity")
    put(c, "top:product", cache="product_performance", hits=9, created=t0, expires=t0 + timedelta(hours=1))
    return t0


@pytest.mark.parametrize("order_by", ["hits", "size", "age", "expires", "compute", "saved", "key"])
def test_top_cache_entries_order_by_each_allowed_value(c, order_by):
    _top_fixture(c)
    got = rows(c, "SELECT * FROM public.get_top_cache_entries(100, %s, 'expert_sessions')", [order_by])
    sort_key = {
        "hits": lambda r: (-r[2], r[0]),
        "size": lambda r: (-r[3], r[0]),
        "age": lambda r: (r[4], r[0]),
        "expires": lambda r: (r[5], r[0]),
        "compute": lambda r: (-r[8], r[0]),
        "saved": lambda r: (-r[2] * r[8], r[0]),
        "key": lambda r: r[0],
    }[order_by]
    assert [r[0] for r in got] == [r[0] for r in sorted(got, key=sort_key)]
    assert {r[0] for r in got} == {"top:a", "top:b", "top:c", "top:d", "top:e"}  # no tombstone, no other cache
    limited = rows(c, "SELECT cache_key FROM public.get_top_cache_entries(2, %s, 'expert_sessions')", [order_by])
    assert [r[0] for r in limited] == [r[0] for r in got[:2]]


def test_top_cache_entries_columns(c):
    t0 = _top_fixture(c)
    got = {r[0]: r for r in rows(c, "SELECT * FROM public.get_top_cache_entries()")}
    assert set(got) == {"top:a", "top:b", "top:c", "top:d", "top:e", "top:product"}
    key, cache, hits, size, created, expires, age_s, expires_in_s, compute, saved, last_hit = got["top:d"]
    assert (cache, hits, size, compute) == ("expert_sessions", 2, 900, 5.0)
    assert created == t0 - timedelta(minutes=40) and age_s == 2400 and expires_in_s == 2400
    assert saved == 10.0 and last_hit is None
    assert [r[0] for r in rows(c, "SELECT cache_key FROM public.get_top_cache_entries(1)")] == ["top:product"]


def test_top_cache_entries_search_treats_percent_and_underscore_literally(c):
    t0 = at("2030-03-02 12:00")
    for key in ["lit:a%b", "lit:a_b", "lit:axb", "lit:aXXb", "lit:A%B-upper", "lit:100%"]:
        put(c, key, created=t0, expires=t0 + timedelta(days=3650))

    def search(text):
        return sorted(r[0] for r in rows(c, "SELECT cache_key FROM public.get_top_cache_entries(100, 'key', NULL, %s)",
                                         [text]))  # sorted here: 'key' order follows the database collation

    assert search("a%b") == ["lit:A%B-upper", "lit:a%b"]  # case-insensitive, % is a percent sign
    assert search("a_b") == ["lit:a_b"]
    assert search("%") == ["lit:100%", "lit:A%B-upper", "lit:a%b"]
    assert search("_") == ["lit:a_b"]
    assert search("LIT:AX") == ["lit:aXXb", "lit:axb"]
    assert search("") == search("lit:")  # an empty search matches everything
    assert search("'; DROP TABLE public.query_cache; --") == []
    assert val(c, "SELECT count(*) FROM public.query_cache") == 6


def test_size_distribution(c):
    t0 = at("2030-03-03 12:00")
    for key, size in [("s:1", 10), ("s:2", 1023), ("s:3", 1024), ("s:4", 50_000), ("s:5", 2_000_000),
                      ("s:6", 20_000_000)]:
        put(c, key, size=size, created=t0, expires=t0 + timedelta(hours=1))
    put(c, "s:dead", data="tombstone", size=0, created=t0, expires=t0)
    dist = rows(c, "SELECT * FROM public.get_cache_size_distribution()")
    assert dist == [
        ("under 1 KB", 0, 2, 1033),
        ("1-10 KB", 1024, 1, 1024),
        ("10-100 KB", 10240, 1, 50_000),
        ("100 KB-1 MB", 102400, 0, 0),
        ("1-10 MB", 1048576, 1, 2_000_000),
        ("over 10 MB", 10485760, 1, 20_000_000),
    ]
    reset_engine(c)
    assert [r[2] for r in rows(c, "SELECT * FROM public.get_cache_size_distribution()")] == [0] * 6


def test_metrics_overview(c):
    t0 = at("2030-04-05 12:00")
    set_clock(c, t0)
    call(c, "expert", 1)
    call(c, "expert", 1)
    call(c, "expert", 1)
    call(c, "expert", 2)
    cur = c.execute("SELECT * FROM public.get_cache_metrics_overview()")
    names = [d.name for d in cur.description]
    overview = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    assert list(overview) == ["expert_sessions", "product_performance"]
    e = overview["expert_sessions"]
    sizes = val(c, "SELECT sum(size_bytes) FROM public.query_cache WHERE cache_name = 'expert_sessions'")
    assert (e["entries"], e["live_entries"], e["expired_entries"], e["entries_with_hits"]) == (2, 2, 0, 1)
    assert e["avg_hits"] == 1 and e["total_bytes"] == sizes
    assert e["hit_rate_today"] == e["hit_rate_7d"] == e["hit_rate_30d"] == 50
    assert e["calls_30d"] == 4 and e["fallbacks_7d"] == 0 and e["last_cleanup_at"] is None
    assert 0 < e["load_reduction_30d"] < 100
    p = overview["product_performance"]
    assert (p["entries"], p["calls_30d"], p["hit_rate_today"], p["total_bytes"]) == (0, 0, None, 0)

    set_clock(c, t0 + timedelta(minutes=10))  # both entries expired (5 minutes)
    e = dict(zip(names, rows(c, "SELECT * FROM public.get_cache_metrics_overview()")[0], strict=True))
    assert (e["entries"], e["live_entries"], e["expired_entries"]) == (2, 0, 2)
    val(c, "SELECT public.cleanup_expired_cache()")
    e = dict(zip(names, rows(c, "SELECT * FROM public.get_cache_metrics_overview()")[0], strict=True))
    assert e["entries"] == 0 and e["last_cleanup_at"] == t0 + timedelta(minutes=10)
    set_clock(c, t0 + timedelta(days=1, hours=1))  # a new day: nothing today, still in 7 days
    e = dict(zip(names, rows(c, "SELECT * FROM public.get_cache_metrics_overview()")[0], strict=True))
    assert e["hit_rate_today"] is None and e["hit_rate_7d"] == 50


def test_fallbacks_are_recorded_and_reported(c):
    t0 = at("2030-03-04 09:00")
    set_clock(c, t0)
    c.execute("SELECT public.record_cache_fallback('product_performance', 'timeout')")
    c.execute("SELECT public.record_cache_fallback('product_performance', 'timeout')")
    c.execute("SELECT public.record_cache_fallback('product_performance', 'permission denied')")
    c.execute("SELECT public.record_cache_fallback('expert_sessions', NULL)")
    c.execute("SELECT public.record_cache_fallback('expert_sessions', %s)", ["x" * 500])
    call(c, "product", 2)
    usage = rows(c, "SELECT * FROM public.get_cache_fallback_usage(1)")
    assert usage == [(date(2030, 3, 4), "expert_sessions", 2, 2), (date(2030, 3, 4), "product_performance", 3, 4)]
    reasons = rows(c, "SELECT cache_name, reason, occurrences FROM cache_private.fallback_reasons ORDER BY 1, 2")
    assert reasons == [("expert_sessions", "unknown", 1), ("expert_sessions", "x" * 200, 1),
                       ("product_performance", "permission denied", 1), ("product_performance", "timeout", 2)]
    hourly = rows(c, "SELECT cache_name, hits, misses, fallbacks, compute_ms_spent > 0 "
                     "FROM cache_private.cache_stats_hourly ORDER BY 1")
    assert hourly == [("expert_sessions", 0, 0, 2, False), ("product_performance", 0, 1, 3, True)]
    overview = {r[0]: r for r in rows(c, "SELECT cache_name, fallbacks_7d, hit_rate_today "
                                         "FROM public.get_cache_metrics_overview()")}
    assert overview["product_performance"][1:] == (3, 0)  # fallbacks count as calls that were not hits
    health = {r[0]: r for r in rows(c, "SELECT * FROM public.analyze_cache_health()")}
    assert health["fallbacks"][1].startswith("5 in 24 h") and health["fallbacks"][2] == "warning"
    assert rows(c, "SELECT * FROM public.get_cache_fallback_usage(1)") == usage  # idempotent read


# --- cleanup and the size bound --------------------------------------------------------------------

def test_cleanup_removes_expired_rows_and_writes_the_log(c):
    t0 = at("2030-05-05 10:00")
    set_clock(c, t0)
    call(c, "expert", 1, "1 minute")
    call(c, "expert", 2, "10 minutes")
    call(c, "expert", 3, "1 minute")
    call(c, "expert", 3, "1 minute")  # a hit: not "never hit"
    c.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:2')")  # a tombstone
    call(c, "expert", 4, "1 hour")
    val(c, "SELECT cache_private.rollup_stats()")
    doomed_bytes = val(c, "SELECT sum(size_bytes) FROM public.query_cache WHERE cache_key IN "
                          "('expert_sessions:1', 'expert_sessions:3')")
    set_clock(c, t0 + timedelta(minutes=2))
    c.execute("SELECT set_config('cachelib.actor', 'nightly-job', false)")
    assert val(c, "SELECT public.cleanup_expired_cache()") == 3
    assert [r[0] for r in rows(c, "SELECT cache_key FROM public.query_cache")] == ["expert_sessions:4"]
    log = rows(c, "SELECT cleanup_time, entries_removed, entries_evicted, never_hit_removed, bytes_freed, "
                  "duration_ms >= 0, triggered_by, details FROM public.cache_cleanup_log")
    assert len(log) == 1
    cleanup_time, removed, evicted, never_hit, freed, duration_ok, by, details = log[0]
    assert (cleanup_time, removed, evicted, never_hit, freed, duration_ok, by) == (
        t0 + timedelta(minutes=2), 3, 0, 1, doomed_bytes, True, "nightly-job")
    assert details["eviction_reason"] is None and details["expired_bytes"] == doomed_bytes
    # Nothing left to do: a second cleanup removes nothing but is still logged.
    assert val(c, "SELECT public.cleanup_expired_cache()") == 0
    assert val(c, "SELECT count(*) FROM public.cache_cleanup_log") == 2


def test_cleanup_stats_per_utc_day(c):
    set_clock(c, at("2030-05-05 23:59"))
    put(c, "x:1", created=at("2030-05-05 10:00"), expires=at("2030-05-05 11:00"), size=100)
    put(c, "x:2", created=at("2030-05-05 10:00"), expires=at("2030-05-05 11:00"), size=50)
    val(c, "SELECT public.cleanup_expired_cache()")
    set_clock(c, at("2030-05-06 00:01"))
    val(c, "SELECT public.cleanup_expired_cache()")
    stats = rows(c, "SELECT day, cleanups, entries_removed, entries_evicted, never_hit_removed, bytes_freed, "
                    "avg_duration_ms IS NOT NULL FROM public.get_cache_cleanup_stats(3)")
    assert stats == [
        (date(2030, 5, 4), 0, 0, 0, 0, 0, False),
        (date(2030, 5, 5), 1, 2, 0, 2, 150, True),
        (date(2030, 5, 6), 1, 0, 0, 0, 0, True),
    ]
    assert len(rows(c, "SELECT * FROM public.get_cache_cleanup_stats()")) == 7
    assert len(rows(c, "SELECT * FROM public.get_cache_cleanup_stats(3650)")) == 3650


def test_size_bound_evicts_least_useful_entries_beyond_max_entries(c):
    t0 = at("2030-05-07 10:00")
    set_clock(c, t0)
    for i in range(8):  # usefulness = hits * compute_ms: entry i has i hits
        put(c, f"bound:{i}", hits=i, compute_ms=10.0, created=t0, expires=t0 + timedelta(hours=1))
    put(c, "bound:expired", created=t0 - timedelta(hours=2), expires=t0 - timedelta(hours=1))
    put(c, "bound:tombstone", data="tombstone", created=t0, expires="-infinity")
    c.execute("UPDATE cache_private.settings SET value = '5' WHERE name = 'max_entries'")
    evicted_bytes = val(c, "SELECT sum(size_bytes) FROM public.query_cache WHERE cache_key IN "
                           "('bound:0', 'bound:1', 'bound:2')")
    assert val(c, "SELECT public.cleanup_expired_cache()") == 5
    assert live_keys(c) == ["bound:3", "bound:4", "bound:5", "bound:6", "bound:7"]
    removed, evicted, details = rows(
        c, "SELECT entries_removed, entries_evicted, details FROM public.cache_cleanup_log")[0]
    assert (removed, evicted) == (2, 3)
    assert details["eviction_reason"] == "entry count above max_entries"
    assert details["max_entries"] == 5 and details["evicted_bytes"] == evicted_bytes
    # Within the bound now: the next cleanup evicts nothing.
    assert val(c, "SELECT public.cleanup_expired_cache()") == 0


def test_size_bound_with_many_cached_calls(c):
    """Every store keeps the bound (0022): at 5 entries, less a headroom of 2 for stores committing at
    once, each store beyond 3 evicts the least useful other entry; nothing is left for the cleanup."""
    c.execute("UPDATE cache_private.settings SET value = '5' WHERE name = 'max_entries'")
    call(c, "expert", 1, "1 hour")
    for _ in range(3):
        call(c, "expert", 1, "1 hour")  # hits: the most useful entry
    for expert_id in range(2, 13):
        call(c, "expert", expert_id, "1 hour")
        assert len(live_keys(c)) <= 3
    keys = live_keys(c)
    assert len(keys) == 3 and {"expert_sessions:1", "expert_sessions:12"} <= set(keys)  # hit, and just stored
    assert val(c, "SELECT public.cleanup_expired_cache()") == 0
    evicted, reason = rows(c, "SELECT entries_evicted, details->>'eviction_reason' FROM public.cache_cleanup_log")[0]
    assert (evicted, reason) == (0, None)
    health = {r[0]: r for r in rows(c, "SELECT * FROM public.analyze_cache_health()")}
    assert health["size_bound"][1].startswith("3 entries") and health["size_bound"][2] == "ok"


def test_cleanup_evicts_rows_written_around_the_engine_down_to_the_bound(c):
    t0 = at("2030-05-09 10:00")
    set_clock(c, t0)
    for i in range(12):
        put(c, f"direct:{i:02d}", hits=1 if i == 3 else 0, compute_ms=1.0, created=t0 + timedelta(seconds=i),
            expires=t0 + timedelta(hours=1))
    c.execute("UPDATE cache_private.settings SET value = '5' WHERE name = 'max_entries'")
    assert val(c, "SELECT public.cleanup_expired_cache()") == 7
    # Least useful first: no time saved, then the oldest; the one with a hit survives.
    assert live_keys(c) == ["direct:03", "direct:08", "direct:09", "direct:10", "direct:11"]
    evicted, reason = rows(c, "SELECT entries_evicted, details->>'eviction_reason' FROM public.cache_cleanup_log "
                              "ORDER BY id DESC LIMIT 1")[0]
    assert (evicted, reason) == (7, "entry count above max_entries")


def test_size_bound_evicts_beyond_max_total_bytes(c):
    t0 = at("2030-05-08 10:00")
    set_clock(c, t0)
    for i in range(6):
        put(c, f"bytes:{i}", hits=i, compute_ms=1.0, size=1000, created=t0, expires=t0 + timedelta(hours=1))
    c.execute("UPDATE cache_private.settings SET value = '3500' WHERE name = 'max_total_bytes'")
    health = {r[0]: r for r in rows(c, "SELECT * FROM public.analyze_cache_health()")}
    assert health["size_bound"][2] == "warning"
    assert val(c, "SELECT public.cleanup_expired_cache()") == 3
    assert live_keys(c) == ["bytes:3", "bytes:4", "bytes:5"]
    evicted, freed, details = rows(c, "SELECT entries_evicted, bytes_freed, details FROM public.cache_cleanup_log")[0]
    assert (evicted, freed) == (3, 3000)
    assert details["eviction_reason"] == "total size above max_total_bytes" and details["max_total_bytes"] == 3500


# --- optimize, invalidate, emergency clear, audit -------------------------------------------------

def test_optimize_cache_returns_what_it_did(c):
    t0 = at("2030-06-01 12:00")
    set_clock(c, t0)
    c.execute("SELECT set_config('cachelib.actor', 'tester', false)")
    hour = timedelta(hours=1)
    put(c, "opt:cheap", compute_ms=0.5, size=100, created=t0 - timedelta(minutes=1), expires=t0 + hour, ttl=hour)
    put(c, "opt:unused-half-life", compute_ms=50, size=200, created=t0 - timedelta(minutes=40),
        expires=t0 + timedelta(minutes=20), ttl=hour)
    put(c, "opt:fresh-unused", compute_ms=50, size=300, created=t0 - timedelta(minutes=10),
        expires=t0 + timedelta(minutes=50), ttl=hour)
    put(c, "opt:used-cheap", hits=5, compute_ms=0.5, size=400, created=t0 - timedelta(minutes=50),
        expires=t0 + timedelta(minutes=10), ttl=hour)
    put(c, "opt:expired", compute_ms=50, size=500, created=t0 - 2 * hour, expires=t0 - hour, ttl=hour)
    put(c, "opt:tombstone", data="tombstone", size=0, created=t0, expires="-infinity")
    result = val(c, "SELECT public.optimize_cache()")
    log_id = result.pop("cleanup_log_id")
    assert result == {"expired_removed": 2, "evicted": 0, "unprofitable_removed": 2, "bytes_freed": 800,
                      "statistics_refreshed": True}
    assert live_keys(c) == ["opt:fresh-unused", "opt:used-cheap"]
    log = rows(c, "SELECT entries_removed, triggered_by FROM public.cache_cleanup_log WHERE id = %s", [log_id])
    assert log == [(2, "optimize_cache by tester")]


def test_invalidate_cache_by_name(c):
    for ident in (None, 1, 2):
        call(c, "expert", ident)
    call(c, "product", 1)
    c.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:2')")  # already a tombstone: not counted again
    assert val(c, "SELECT public.invalidate_cache('expert_sessions')") == 2
    assert live_keys(c) == ["product_performance:1"]
    tomb = entry(c, "expert_sessions:1")
    assert tomb["data"] is None and tomb["tombstone"]
    assert tomb["invalidation_count"] == 1 and tomb["invalidated_at"] is not None
    assert tomb["size_bytes"] == 0 and tomb["last_lifetime"] is not None
    assert call(c, "expert", 1)[1] == "miss"
    assert call(c, "product", 1)[1] == "hit"
    assert val(c, "SELECT public.invalidate_cache('product_performance')") == 1
    assert val(c, "SELECT public.invalidate_cache('product_performance')") == 0


def test_invalidate_cache_by_key(c):
    call(c, "expert", 5)
    call(c, "expert", 6)
    assert val(c, "SELECT public.invalidate_cache(p_cache_key => 'expert_sessions:5')") == 1
    assert live_keys(c) == ["expert_sessions:6"]
    assert call(c, "expert", 5)[1] == "miss"
    assert call(c, "expert", 6)[1] == "hit"
    # A key nobody cached: nothing marked and no row added.
    assert val(c, "SELECT public.invalidate_cache(NULL, 'expert_sessions:999')") == 0
    assert entry(c, "expert_sessions:999") is None
    assert val(c, "SELECT public.invalidate_cache(NULL, %s)", ["k" * 1000]) == 0


def test_emergency_clear_with_the_right_token_deletes_everything(c):
    call(c, "expert", 1)
    call(c, "product", 1)
    c.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:1')")
    assert val(c, "SELECT public.emergency_clear_cache(%s)", [TOKEN]) == 2
    assert val(c, "SELECT count(*) FROM public.query_cache") == 0
    assert call(c, "expert", 1)[1] == "miss"


@pytest.mark.parametrize("token", [None, "", "emergency_clear_confirmed", TOKEN + " ", "yes"])
def test_emergency_clear_with_a_wrong_token_is_refused_and_changes_nothing(c, token):
    call(c, "expert", 1)
    call(c, "product", 1)
    audit_before = val(c, "SELECT count(*) FROM cache_private.maintenance_audit")
    with pytest.raises(psycopg.Error) as err:
        c.execute("SELECT public.emergency_clear_cache(%s)", [token])
    assert err.value.sqlstate == "22023" and "EMERGENCY_CLEAR_CONFIRMED" in str(err.value)
    assert val(c, "SELECT count(*) FROM public.query_cache") == 2
    assert val(c, "SELECT count(*) FROM cache_private.maintenance_audit") == audit_before


def test_maintenance_actions_write_audit_rows_with_the_actor(c):
    t0 = at("2030-06-02 08:00")
    set_clock(c, t0)
    call(c, "expert", 1)
    call(c, "expert", 2)
    c.execute("SELECT set_config('cachelib.actor', 'alice@example.com', false)")
    c.execute("SELECT set_config('cachelib.actor_role', 'admin', false)")
    c.execute("SELECT public.cleanup_expired_cache()")
    c.execute("SELECT public.optimize_cache()")  # may drop the entries as too cheap to keep (< 1 ms)
    live = len(live_keys(c))
    c.execute("SELECT public.invalidate_cache('expert_sessions')")
    c.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:1')")
    rows_left = val(c, "SELECT count(*) FROM public.query_cache")
    with pytest.raises(psycopg.Error):
        c.execute("SELECT public.invalidate_cache('no_such_cache')")  # refused: rolled back, no row
    with pytest.raises(psycopg.Error):
        c.execute("SELECT public.emergency_clear_cache('nope')")
    c.execute("SELECT public.emergency_clear_cache(%s)", [TOKEN])
    audit = rows(c, "SELECT at, actor, actor_role, action, parameters, outcome, result, duration_ms >= 0 "
                    "FROM cache_private.maintenance_audit ORDER BY id")
    assert [r[3] for r in audit] == ["cleanup", "optimize", "invalidate", "invalidate", "emergency_clear"]
    assert {(r[0], r[1], r[2], r[5], r[7]) for r in audit} == {(t0, "alice@example.com", "admin", "ok", True)}
    assert audit[0][6]["entries_removed"] == 0 and "cleanup_log_id" in audit[0][6]
    assert audit[1][6]["statistics_refreshed"] is True
    assert audit[2][4] == {"cache": "expert_sessions"} and audit[2][6] == {"entries_invalidated": live}
    assert audit[3][4] == {"key": "expert_sessions:1"}
    assert audit[3][6] == {"entries_invalidated": 0}  # already stale (or gone): nothing holding data to mark
    assert audit[4][6] == {"entries_deleted": rows_left, "rows_in_use_left_for_cleanup": 0}
    # Without cachelib.actor the database user is recorded, with the role "sql".
    c.execute("RESET cachelib.actor")
    c.execute("RESET cachelib.actor_role")
    c.execute("SELECT public.cleanup_expired_cache()")
    last = rows(c, "SELECT actor, actor_role FROM cache_private.maintenance_audit ORDER BY id DESC LIMIT 1")[0]
    assert last == (val(c, "SELECT session_user::text"), "sql")
    assert rows(c, "SELECT triggered_by FROM public.cache_cleanup_log ORDER BY id")[0] == ("alice@example.com",)


def test_health_check_reports_expired_entries(c):
    t0 = at("2030-06-03 08:00")
    set_clock(c, t0)
    for expert_id in range(1, 5):
        call(c, "expert", expert_id, "1 minute")
    set_clock(c, t0 + timedelta(minutes=5))
    health = {r[0]: r for r in rows(c, "SELECT * FROM public.analyze_cache_health()")}
    # 4 entries are too few to judge a share (docs/health.md); tests/test_health_signal.py judges 100.
    assert health["expired_entries"][1].startswith("4 of 4 entries (100.0%) expired; fewer than 100 entries, "
                                                   "not judged")
    assert health["expired_entries"][2] == "ok"
    assert health["last_cleanup"][2] == "critical"
    assert {r[2] for r in health.values()} <= {"ok", "warning", "critical"}
    assert all(r[3] for r in health.values())
    c.execute("SELECT public.cleanup_expired_cache()")
    health = {r[0]: r for r in rows(c, "SELECT * FROM public.analyze_cache_health()")}
    assert health["expired_entries"][2] == "ok" and health["last_cleanup"][2] == "ok"


# --- invalidation triggers -------------------------------------------------------------------------

def add_session(conn, expert_id: int) -> None:
    conn.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, rating, status) "
                 "VALUES (%s, now(), 30, 4.5, 'completed')", [expert_id])


def test_writing_a_session_invalidates_exactly_that_expert_and_all(c):
    t0 = at("2030-07-01 10:00")
    set_clock(c, t0)
    before, _ = call(c, "expert", 3, "1 hour")
    call(c, "expert", 5, "1 hour")
    all_before, _ = call(c, "expert", None, "1 hour")
    call(c, "product", 3, "1 hour")
    set_clock(c, t0 + timedelta(minutes=10))
    add_session(c, 3)
    for key in ("expert_sessions:3", "expert_sessions:all"):
        row = entry(c, key)
        assert row["data"] is None and row["invalidation_count"] == 1
        assert row["invalidated_at"] == t0 + timedelta(minutes=10) and row["last_lifetime"] == timedelta(minutes=10)
    assert live_keys(c) == ["expert_sessions:5", "product_performance:3"]
    after, how = call(c, "expert", 3, "1 hour")
    assert how == "miss" and after == direct(c, "expert", 3)
    assert after[0]["session_count"] == before[0]["session_count"] + 1
    assert call(c, "expert", 5, "1 hour")[1] == "hit"
    assert call(c, "product", 3, "1 hour")[1] == "hit"
    all_after, how = call(c, "expert", None, "1 hour")
    assert how == "miss" and all_after == direct(c, "expert", None) and all_after != all_before
    assert entry(c, "expert_sessions:3")["invalidation_count"] == 1  # history kept across the recompute


def test_a_key_never_cached_leaves_no_tombstone_behind(c):
    call(c, "expert", 9)
    add_session(c, 7)  # expert_sessions:7 and :all were never cached
    assert entry(c, "expert_sessions:7") is None and entry(c, "expert_sessions:all") is None
    assert live_keys(c) == ["expert_sessions:9"]
    # In one transaction with a cached key: the cached one is marked, the other leaves nothing.
    with c.transaction():
        c.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                  "VALUES (9, now(), 15, 'scheduled'), (11, now(), 15, 'scheduled')")
    assert entry(c, "expert_sessions:9")["data"] is None
    assert [r[0] for r in rows(c, "SELECT cache_key FROM public.query_cache")] == ["expert_sessions:9"]


def test_update_and_delete_invalidate_old_and_new_ids(c):
    add_session(c, 12)
    session_id = val(c, "SELECT max(id) FROM public.expert_sessions WHERE expert_id = 12")
    for ident in (12, 13, 14, None):
        call(c, "expert", ident)
    c.execute("UPDATE public.expert_sessions SET expert_id = 13 WHERE id = %s", [session_id])
    assert live_keys(c) == ["expert_sessions:14"]
    for ident in (12, 13, None):
        assert call(c, "expert", ident) == (direct(c, "expert", ident), "miss")
    c.execute("DELETE FROM public.expert_sessions WHERE id = %s", [session_id])
    assert live_keys(c) == ["expert_sessions:12", "expert_sessions:14"]
    c.execute("UPDATE public.experts SET name = name WHERE id = 14")  # the experts table keys by its id
    assert live_keys(c) == ["expert_sessions:12"]


def test_orders_invalidate_product_performance(c):
    for ident in (2, 3):
        call(c, "product", ident)
    call(c, "expert", 2)
    before = direct(c, "product", 2)[0]
    c.execute("INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at) VALUES (2, 3, 10, now())")
    assert live_keys(c) == ["expert_sessions:2", "product_performance:3"]
    data, how = call(c, "product", 2)
    assert how == "miss" and data[0]["order_count"] == before["order_count"] + 1 and data[0]["units_sold"] == \
        before["units_sold"] + 3


def test_truncate_invalidates_the_whole_cache(c):
    for ident in (None, 1, 2):
        call(c, "product", ident)
    call(c, "expert", 1)
    with c.transaction():  # rolled back: keep the demo orders
        c.execute("TRUNCATE public.orders")
        c.execute("SELECT cache_private.rollup_stats()")  # the roll-up marks what the truncate made stale
        keys = rows(c, "SELECT cache_key, data IS NULL FROM public.query_cache ORDER BY 1")
        assert keys == [("expert_sessions:1", False), ("product_performance:1", True),
                        ("product_performance:2", True), ("product_performance:all", True)]
        raise psycopg.Rollback()
    assert len(live_keys(c)) == 4


# --- the hit path's quick proof and the precise rule (cache_private.entry_is_current) ------------

def test_an_entry_the_quick_proof_cannot_clear_is_still_served_when_current(c, pg_url):
    """The hit path first asks whether every invalidation of the key is older than the oldest
    transaction the entry's snapshot could not see. An open transaction holds that bound back, so a
    write that committed before the computation still fails the quick proof: the precise rule then
    serves the entry (a hit, not a recomputation)."""
    with psycopg.connect(pg_url) as blocker:
        blocker.execute("SELECT pg_current_xact_id()")  # an old transaction, open the whole time
        add_session(c, 21)  # committed before the computation below, but newer than the blocker
        first, how = call(c, "expert", 21, "1 hour")
        assert how == "miss"
        quick = val(c, """SELECT NOT EXISTS (SELECT 1 FROM cache_private.invalidations i
                                              WHERE i.cache_key = q.cache_key AND i.writer_xid >= q.computed_xmin)
                          FROM public.query_cache q WHERE q.cache_key = 'expert_sessions:21'""")
        precise = val(c, """SELECT cache_private.entry_is_current(q.cache_name, q.cache_key, q.computed_snapshot)
                            FROM public.query_cache q WHERE q.cache_key = 'expert_sessions:21'""")
        assert (quick, precise) == (False, True)
        assert call(c, "expert", 21, "1 hour") == (first, "hit")
        add_session(c, 21)  # and once a writer commits after it, neither rule serves it
        second, how = call(c, "expert", 21, "1 hour")
        assert how == "miss" and second[0]["session_count"] == first[0]["session_count"] + 1
        blocker.rollback()


def test_the_quick_proof_never_clears_an_entry_the_precise_rule_rejects(c, pg_url):
    """After a mixed workload with an old transaction open part of the time, every entry the hit path
    would serve without the precise rule is also current by it."""
    with psycopg.connect(pg_url) as blocker:
        for round_ in range(3):
            if round_ == 1:
                blocker.execute("SELECT pg_current_xact_id()")
            for ident in (None, 1, 2, 3, 4):
                call(c, "expert", ident, "1 hour")
                call(c, "product", ident, "1 hour")
            add_session(c, 1 + round_)
            c.execute("INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at) "
                      "VALUES (%s, 1, 10, now())", [2 + round_])
            if round_ == 1:
                c.execute("SELECT public.cleanup_expired_cache()")  # prunes, leaves the horizon marker
        blocker.rollback()
    verdicts = rows(c, """
        SELECT q.cache_key,
               NOT EXISTS (SELECT 1 FROM cache_private.invalidations i
                           WHERE i.cache_key = q.cache_key AND i.writer_xid >= q.computed_xmin)
               AND NOT EXISTS (SELECT 1 FROM cache_private.invalidations i
                               WHERE i.cache_key = q.cache_name AND i.writer_xid >= q.computed_xmin) AS quick,
               cache_private.entry_is_current(q.cache_name, q.cache_key, q.computed_snapshot) AS precise
        FROM public.query_cache q WHERE q.data IS NOT NULL""")
    assert len(verdicts) >= 8
    assert [key for key, quick, precise in verdicts if quick and not precise] == []
    assert any(quick for _, quick, _ in verdicts) and any(not precise for _, _, precise in verdicts)


def test_a_failed_computation_leaves_nothing_behind(c):
    with pytest.raises(psycopg.Error) as err:
        c.execute("SELECT public.get_expert_sessions_with_stats_cached(-1, '5 minutes')")
    assert err.value.sqlstate == "22023" and "p_expert_id" in str(err.value)
    assert val(c, "SELECT count(*) FROM public.query_cache") == 0
    assert val(c, "SELECT count(*) FROM cache_private.cache_events") == 0


def test_an_idle_rollup_writes_nothing(c):
    """Every admin read rolls up first. With nothing pending that must not write (a write takes a transaction
    id and waits for the disk on every read); with work pending it still does it: events rolled up, the sweep
    after an invalidation, the history's compaction once the hour has passed."""
    def written_by(*statements) -> bool:
        with c.transaction():
            for statement in statements:
                c.execute(statement)
            return val(c, "SELECT pg_current_xact_id_if_assigned()") is not None

    reads = ("SELECT cache_private.try_rollup()", "SELECT count(*) FROM public.get_top_cache_entries(50)",
             "SELECT count(*) FROM public.get_cache_metrics_overview()")
    call(c, "expert", 1)
    call(c, "expert", 1)
    assert written_by("SELECT cache_private.try_rollup()")  # the miss and the hit are rolled up
    assert not written_by(*reads)
    add_session(c, 1)  # an invalidation since the sweep's mark
    assert written_by("SELECT cache_private.try_rollup()")
    assert not written_by(*reads)
    compacted = val(c, "SELECT at FROM cache_private.history_state WHERE name = 'history_compacted'")
    later = compacted + timedelta(hours=2)
    set_clock(c, later)
    try:
        assert written_by("SELECT cache_private.try_rollup()")
        assert val(c, "SELECT at FROM cache_private.history_state WHERE name = 'history_compacted'") == later
        assert not written_by(*reads)
    finally:
        set_clock(c, None)
