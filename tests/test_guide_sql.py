"""Every SQL statement of the deployment guide, exactly as the guide writes it."""

import psycopg
import pytest

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True

GUIDE_ROUTINE_LISTING = """
SELECT routine_name, routine_type
FROM information_schema.routines
WHERE routine_schema = 'public'
  AND routine_name LIKE '%cache%'
ORDER BY routine_name;
"""

GUIDE_OVERVIEW = """
SELECT
  COUNT(*) as total_entries,
  COUNT(CASE WHEN hit_count > 0 THEN 1 END) as hit_entries,
  ROUND(AVG(hit_count), 2) as avg_hits,
  COUNT(CASE WHEN expires_at <= NOW() THEN 1 END) as expired_entries
FROM query_cache;
"""


@pytest.fixture
def guide_conn(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def test_step1_lists_exactly_15_cache_functions(guide_conn):
    rows = guide_conn.execute(GUIDE_ROUTINE_LISTING).fetchall()
    assert len(rows) == 15
    assert all(kind == "FUNCTION" for _, kind in rows)
    names = {name for name, _ in rows}
    assert {"get_expert_sessions_with_stats_cached", "get_product_performance_cached", "cleanup_expired_cache",
            "analyze_cache_health", "get_cache_cleanup_stats"} <= names


def test_step2_cached_functions_return_the_direct_data(guide_conn):
    sessions = guide_conn.execute("SELECT get_expert_sessions_with_stats_cached(NULL, '5 minutes');").fetchone()[0]
    direct = guide_conn.execute("SELECT get_expert_sessions_with_stats(NULL)").fetchone()[0]
    assert sessions == direct and len(sessions) == 40
    assert {"expert_id", "session_count", "completed_count", "average_rating", "total_minutes",
            "last_session_at"} <= set(sessions[0])
    products = guide_conn.execute("SELECT get_product_performance_cached(NULL, '15 minutes');").fetchone()[0]
    assert products == guide_conn.execute("SELECT get_product_performance(NULL)").fetchone()[0]
    assert {"product_id", "units_sold", "revenue", "order_count", "revenue_30d", "last_order_at"} <= set(products[0])


def test_step2_health_and_cleanup(guide_conn):
    health = guide_conn.execute("SELECT * FROM analyze_cache_health();").fetchall()
    columns = [c.name for c in guide_conn.execute("SELECT * FROM analyze_cache_health();").description]
    assert columns == ["check_name", "value", "status", "recommendation"]
    assert {row[2] for row in health} <= {"ok", "warning", "critical"}
    assert all(row[3] for row in health)
    removed = guide_conn.execute("SELECT cleanup_expired_cache();").fetchone()[0]
    assert removed >= 0


def test_monitoring_queries(guide_conn):
    guide_conn.execute("SELECT get_expert_sessions_with_stats_cached(NULL, '5 minutes')")
    guide_conn.execute("SELECT get_expert_sessions_with_stats_cached(NULL, '5 minutes')")
    guide_conn.execute("SELECT cleanup_expired_cache();")
    stats = guide_conn.execute("SELECT * FROM get_cache_cleanup_stats(7);").fetchall()
    assert len(stats) == 7 and stats[-1][1] >= 1
    guide_conn.execute("SELECT * FROM analyze_cache_health();")  # rolls up the hit just made
    total, hit_entries, avg_hits, expired = guide_conn.execute(GUIDE_OVERVIEW).fetchone()
    assert total >= 1 and hit_entries >= 1 and avg_hits > 0 and expired == 0
    log = guide_conn.execute("SELECT * FROM cache_cleanup_log ORDER BY cleanup_time DESC LIMIT 10;").fetchall()
    assert 1 <= len(log) <= 10
