"""CacheManager: cached calls, and the fallback to direct queries on every kind of cache failure."""

import logging
import threading

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cachelib.config import Settings
from cachelib.db import Database
from cachelib.errors import DatabaseUnavailable, InvalidInput
from cachelib.manager import CacheManager

FAST = {"CACHE_LOCK_TIMEOUT": "1s", "CACHE_CONNECT_TIMEOUT": "2s", "CACHE_STATEMENT_TIMEOUT": "10s"}


@pytest.fixture
def fresh_url(pg18, request):
    return pg18.fresh_database(request.node.name[:40])


def manager_for(url, **env):
    config = Settings.from_env({**FAST, **env})
    return CacheManager(Database(url, config), config)


def direct(url, function, ident=None):
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT public.{function}(%s)", (ident,)).fetchone()[0]


def fallbacks_recorded(url):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT cache_private.rollup_stats()")
        return conn.execute("SELECT COALESCE(sum(fallbacks), 0) FROM cache_private.cache_stats_hourly").fetchone()[0]


def health_of_fallbacks(url):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT status FROM public.analyze_cache_health() WHERE check_name = 'fallbacks'"
                            ).fetchone()[0]


def cache_rows(url):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL").fetchone()[0]


def test_cached_calls_return_the_direct_data_and_hit_the_second_time(fresh_url):
    manager = manager_for(fresh_url)
    assert manager.expert_sessions() == direct(fresh_url, "get_expert_sessions_with_stats")
    assert manager.expert_sessions(3) == direct(fresh_url, "get_expert_sessions_with_stats", 3)
    assert manager.product_performance() == direct(fresh_url, "get_product_performance")
    assert manager.product_performance(2) == direct(fresh_url, "get_product_performance", 2)
    manager.expert_sessions()
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        hits = conn.execute("SELECT hit_count FROM public.get_top_cache_entries(10, 'hits') "
                            "WHERE cache_key = 'expert_sessions:all'").fetchone()[0]
    assert hits == 1
    assert manager.fallback_counts() == {}


def test_durations_come_from_the_settings(fresh_url):
    manager_for(fresh_url, CACHE_EXPERT_SESSIONS_DURATION="1h30m").expert_sessions(4)
    with psycopg.connect(fresh_url) as conn:
        ttl = conn.execute("SELECT ttl FROM public.query_cache WHERE cache_key = 'expert_sessions:4'").fetchone()[0]
    assert ttl.total_seconds() == 5400


@pytest.mark.parametrize("bad", [0, -1, "3", 2.5, True, 2**63])
def test_bad_ids_are_refused_before_the_database(fresh_url, bad):
    with pytest.raises(InvalidInput):
        manager_for(fresh_url).expert_sessions(bad)


def _drop_cached_function(conn):
    conn.execute("DROP FUNCTION public.get_expert_sessions_with_stats_cached(bigint, interval)")


def _break_cache_table(conn):
    conn.execute("ALTER TABLE public.query_cache RENAME TO query_cache_broken")


def _revoke_grant(conn):
    # The application connects as an ordinary signed-in role here (see the fixture below).
    conn.execute("REVOKE EXECUTE ON FUNCTION public.get_expert_sessions_with_stats_cached(bigint, interval) "
                 "FROM authenticated")


@pytest.mark.parametrize("breakage", [_drop_cached_function, _break_cache_table, _revoke_grant])
def test_a_broken_cache_falls_back_to_the_direct_query(fresh_url, breakage, caplog):
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app_user') THEN "
                     "CREATE ROLE app_user LOGIN IN ROLE authenticated; END IF; END $$")
        breakage(conn)
    parts = conninfo_to_dict(fresh_url)
    app_url = make_conninfo(**{**parts, "user": "app_user"}) if breakage is _revoke_grant else fresh_url
    manager = manager_for(app_url)
    expected = direct(fresh_url, "get_expert_sessions_with_stats", 5)
    with caplog.at_level(logging.WARNING, logger="cachelib.manager"):
        assert manager.expert_sessions(5) == expected
    warnings = [r for r in caplog.records if r.name == "cachelib.manager" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "expert_sessions" in warnings[0].getMessage()
    assert manager.fallback_counts() == {"expert_sessions": 1}
    if breakage is not _break_cache_table:  # with the table gone the statistics survive elsewhere
        assert fallbacks_recorded(fresh_url) == 1
        assert health_of_fallbacks(fresh_url) == "warning"


def test_a_locked_cache_table_falls_back_instead_of_waiting(fresh_url):
    manager = manager_for(fresh_url)
    expected = direct(fresh_url, "get_product_performance")
    with psycopg.connect(fresh_url) as locker:
        locker.execute("LOCK TABLE public.query_cache IN ACCESS EXCLUSIVE MODE")
        assert manager.product_performance() == expected
        locker.rollback()
    assert manager.fallback_counts() == {"product_performance": 1}
    assert fallbacks_recorded(fresh_url) == 1
    assert health_of_fallbacks(fresh_url) == "warning"


def test_a_key_held_by_an_idle_transaction_is_computed_without_the_cache(fresh_url):
    """Another transaction holds the key (it computed it and sits idle): the manager waits at most
    compute_lock_timeout_ms, then gets the right data computed for it alone. No error, no fallback."""
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.settings SET value = '300' WHERE name = 'compute_lock_timeout_ms'")
    manager = manager_for(fresh_url)
    expected = direct(fresh_url, "get_expert_sessions_with_stats", 7)
    with psycopg.connect(fresh_url) as holder:
        holder.execute("SELECT public.get_expert_sessions_with_stats_cached(7, '1 microsecond')")  # holds the key
        assert manager.expert_sessions(7) == expected
        holder.rollback()
    assert manager.fallback_counts() == {}


def test_cache_disabled_goes_straight_to_the_direct_query(fresh_url):
    manager = manager_for(fresh_url, CACHE_ENABLED="false")
    assert manager.product_performance() == direct(fresh_url, "get_product_performance")
    assert cache_rows(fresh_url) == 0
    assert manager.fallback_counts() == {}


def test_an_unreachable_database_raises_promptly():
    manager = manager_for("postgresql://postgres@127.0.0.1:9/nothing")
    with pytest.raises(DatabaseUnavailable) as err:
        manager.expert_sessions()
    assert "cannot reach the database" in str(err.value)


def test_threads_share_one_manager(fresh_url):
    manager = manager_for(fresh_url)
    expected = direct(fresh_url, "get_expert_sessions_with_stats")
    errors, results = [], []

    def worker():
        try:
            for _ in range(20):
                results.append(manager.expert_sessions() == expected)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 160 and all(results)


# --- wrong-shaped data in the cache ---------------------------------------------------------------


@pytest.mark.parametrize("bad, got", [
    ("null", "got null"),
    ('{"expert_id": 5}', "got an object"),
    ('"cached text"', "got a string"),
    ("42", "got a number"),
    ("true", "got a boolean"),
    ('[{"expert_id": 5}, "x"]', "got an array holding a string at index 1"),
    ("[[1, 2]]", "got an array holding an array at index 0"),
    ('[{"expert_id": 1e400}]', "unreadable JSON"),
])
def test_wrong_shaped_cache_data_falls_back_to_the_direct_query(fresh_url, bad, got, caplog):
    manager = manager_for(fresh_url)
    expected = direct(fresh_url, "get_expert_sessions_with_stats", 5)
    assert manager.expert_sessions(5) == expected  # a real miss stores the entry
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        changed = conn.execute("UPDATE public.query_cache SET data = %s::jsonb WHERE cache_key = 'expert_sessions:5'",
                               (bad,)).rowcount
        assert changed == 1
        served = conn.execute("SELECT public.get_expert_sessions_with_stats_cached(5, '5 minutes')::text"
                              ).fetchone()[0]
        assert served != str(expected)  # the cache really hands out the bad data ...
    with caplog.at_level(logging.WARNING, logger="cachelib.manager"):
        assert manager.expert_sessions(5) == expected  # ... and the manager serves the direct result instead
    warnings = [r.getMessage() for r in caplog.records if r.name == "cachelib.manager" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "malformed cache data" in warnings[0] and got in warnings[0]
    assert manager.fallback_counts() == {"expert_sessions": 1}
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        reasons = [r[0] for r in conn.execute("SELECT reason FROM cache_private.cache_events WHERE kind = 'fallback'")]
        assert len(reasons) == 1 and reasons[0].startswith("malformed cache data") and got in reasons[0]
        usage = conn.execute("SELECT COALESCE(sum(fallbacks), 0) FROM public.get_cache_fallback_usage(1) "
                             "WHERE cache_name = 'expert_sessions'").fetchone()[0]
    assert usage == 1
    assert health_of_fallbacks(fresh_url) == "warning"


def test_an_empty_array_and_the_product_cache_are_fine(fresh_url):
    manager = manager_for(fresh_url)
    assert manager.product_performance(2) == direct(fresh_url, "get_product_performance", 2)
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("UPDATE public.query_cache SET data = '[]' WHERE cache_key = 'product_performance:2'")
    assert manager.product_performance(2) == []  # an empty result is a valid result
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        conn.execute("UPDATE public.query_cache SET data = '{}' WHERE cache_key = 'product_performance:2'")
    assert manager.product_performance(2) == direct(fresh_url, "get_product_performance", 2)
    assert manager.fallback_counts() == {"product_performance": 1}
