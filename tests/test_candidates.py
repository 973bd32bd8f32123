"""python -m cachelib candidates: expensive repeated reads from pg_stat_statements, minus what is cached.

Runs on our own PostgreSQL 15 with pg_stat_statements preloaded (see test_schedule for the
server), and checks the message for each way pg_stat_statements can be missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from cachelib import actions, candidates, demo
from cachelib.config import PROJECT_ROOT, Settings
from cachelib.db import Database
from cachelib.errors import InvalidInput
from cachelib.maintenance import Actor
from tests.servers import login_url, pg15_unavailable_reason, start_pg15

EXPENSIVE = ("SELECT e.specialty, count(*) AS sessions, avg(s.duration_minutes) AS minutes "
             "FROM public.expert_sessions s JOIN public.experts e ON e.id = s.expert_id "
             "WHERE s.started_at > now() - make_interval(days => %s) GROUP BY e.specialty")
CHEAP = "SELECT name FROM public.products WHERE id = %s"
ADMIN = Actor("candidates-admin", "admin", "cli")


@pytest.fixture(scope="module")
def statements_server():
    reason = pg15_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = start_pg15({"shared_preload_libraries": "'pg_stat_statements'"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def traffic_url(statements_server):
    """A migrated demo database with pg_stat_statements and some read traffic, cached and not."""
    url = statements_server.create_database("candidates")
    demo.load(url, "small")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
        for days in (30, 60, 90, 120, 365):
            conn.execute(EXPENSIVE, (days,))
        for product_id in range(1, 11):
            conn.execute(CHEAP, (product_id,))
        for _ in range(3):
            conn.execute("SELECT public.get_expert_sessions_with_stats_cached(NULL, '5 minutes')")
            conn.execute("SELECT public.get_expert_sessions_with_stats(1)")
            conn.execute("SELECT count(*) FROM public.query_cache")
            conn.execute("SELECT * FROM public.analyze_cache_health()")
            conn.execute("UPDATE public.experts SET name = name WHERE id = 1")
        conn.execute("SELECT e.name FROM public.experts e ORDER BY e.id LIMIT 1")  # once: not repeated
        # A function registered as a cache: neither it nor its wrapper is a candidate any more.
        conn.execute("""CREATE FUNCTION public.get_order_tally(p_product_id bigint) RETURNS jsonb LANGUAGE sql
                        STABLE SET search_path = public, pg_temp AS $$
                        SELECT jsonb_build_array(count(*)) FROM orders WHERE product_id = p_product_id $$""")
        conn.execute("SELECT cache_private.register_cache('public.get_order_tally', ARRAY['public.orders:product_id'],"
                     " '1 hour')")
        for product_id in (1, 2, 1, 2):
            conn.execute("SELECT public.get_order_tally_cached(%s, '1 hour')", (product_id,))
            conn.execute("SELECT public.get_order_tally(%s)", (product_id,))
    return url


@pytest.fixture(scope="module")
def traffic_database(traffic_url):
    database = Database(traffic_url, Settings.from_env({}))
    yield database
    database.close()


def find(url: str, **options) -> candidates.CandidatesReport:
    """The candidates report of ``url``, through a pool of its own that is closed after."""
    database = Database(url, Settings.from_env({}))
    try:
        return candidates.find_candidates(database, **options)
    finally:
        database.close()


def run_cli(*args, url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachelib", *args], capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": url}, timeout=120, cwd=PROJECT_ROOT)


def test_lists_uncached_repeated_reads_and_leaves_out_what_is_cached(traffic_url):
    report = find(traffic_url, limit=50, min_mean_ms=0)
    assert report.available and report.stats_since is not None
    queries = [c.query for c in report.candidates]
    assert any("GROUP BY e.specialty" in q for q in queries), queries
    assert any("FROM public.products WHERE id = $1" in q for q in queries), queries
    joined = "\n".join(queries)
    for cached_or_own in ("_cached(", "get_expert_sessions_with_stats(", "get_order_tally(", "query_cache",
                          "analyze_cache_health",
                          "UPDATE", "pg_stat_statements", "ORDER BY e.id LIMIT"):
        assert cached_or_own not in joined, cached_or_own
    expensive = next(c for c in report.candidates if "GROUP BY e.specialty" in c.query)
    assert expensive.calls == 5 and expensive.rows == 5 * expensive.rows_per_call
    assert [c.total_ms for c in report.candidates] == sorted((c.total_ms for c in report.candidates), reverse=True)
    assert all(c.share_pct is not None and 0 <= c.share_pct <= 100 for c in report.candidates)


def test_thresholds_and_limit(traffic_url, traffic_database):
    database = traffic_database
    assert len(candidates.find_candidates(database, limit=1, min_mean_ms=0).candidates) == 1
    assert all(c.calls >= 6 for c in candidates.find_candidates(database, min_calls=6, min_mean_ms=0).candidates)
    nothing = candidates.find_candidates(database, min_mean_ms=1e9)
    assert nothing.available and nothing.candidates == [] and "nothing worth caching yet" in nothing.message


def test_cli_text_and_json(traffic_url):
    text = run_cli("candidates", "--min-mean-ms", "0", "--limit", "5", url=traffic_url)
    assert text.returncode == 0, text.stderr
    assert "most expensive repeated read queries not yet cached" in text.stdout
    assert "calls" in text.stdout and "SELECT e.specialty, count(*) AS sessions" in text.stdout
    body = json.loads(run_cli("candidates", "--min-mean-ms", "0", "--json", url=traffic_url).stdout)
    assert body["available"] is True and any("GROUP BY e.specialty" in c["query"] for c in body["candidates"])


def test_loaded_but_not_created_says_create_extension(statements_server):
    url = statements_server.create_database("candidates_no_ext", migrated=False)
    report = find(url)
    assert not report.available and "CREATE EXTENSION pg_stat_statements;" in report.how_to_enable
    cli = run_cli("candidates", url=url)
    assert cli.returncode == 1
    assert "cannot list caching candidates: pg_stat_statements is loaded but not created" in cli.stdout


def test_not_preloaded_says_shared_preload_libraries(pg15):
    url = pg15.fresh_database("candidates_not_loaded")
    report = find(url)
    assert not report.available and "shared_preload_libraries" in report.how_to_enable
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")  # created, but the library is not loaded
    report = find(url)
    assert not report.available and "restart PostgreSQL" in report.how_to_enable


def test_not_installed_on_the_server(db_url):
    report = find(db_url)
    assert not report.available and "pg_stat_statements is not installed on this PostgreSQL server" in report.message
    assert "contrib" in report.how_to_enable


def test_a_candidate_the_owner_ran_becomes_a_cache_in_one_action(traffic_url, traffic_database):
    database = traffic_database
    report = candidates.find_candidates(database, limit=50, min_mean_ms=0)
    expensive = next(c for c in report.candidates if "GROUP BY e.specialty" in c.query)
    assert expensive.by_owner
    result = actions.run(database, ADMIN, "cache_from_candidate",
                         {"queryid": expensive.queryid, "function": "sessions_by_specialty", "duration": "20m"})
    assert result.ok and result.details["cache"] == "sessions_by_specialty"
    assert {s["table"] for s in result.details["sources"]} == {"public.expert_sessions", "public.experts"}
    with psycopg.connect(traffic_url, autocommit=True) as conn:
        grants = dict(conn.execute("""
            SELECT r, has_function_privilege(r, 'public.sessions_by_specialty(integer)', 'EXECUTE')
            FROM unnest(ARRAY['anon', 'authenticated', 'cache_admin']) r""").fetchall())
        assert grants == {"anon": False, "authenticated": True, "cache_admin": True}
        cached = conn.execute("SELECT public.sessions_by_specialty_cached(90)").fetchone()[0]
        direct = conn.execute("SELECT public.sessions_by_specialty(90)").fetchone()[0]
        assert cached == direct and {row["specialty"] for row in direct}
        # Its sources invalidate it as a whole: a new session shows at once.
        before = sum(row["sessions"] for row in cached)
        conn.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                     "VALUES (1, now(), 30, 'completed')")
        after = conn.execute("SELECT public.sessions_by_specialty_cached(90)").fetchone()[0]
        assert sum(row["sessions"] for row in after) == before + 1
    listed = [c.query for c in candidates.find_candidates(database, limit=50, min_mean_ms=0).candidates]
    assert not any("GROUP BY e.specialty" in q for q in listed)  # cached now


def test_a_query_someone_else_ran_is_never_wrapped(traffic_url, traffic_database):
    database = traffic_database
    with psycopg.connect(traffic_url, autocommit=True) as owner:
        owner.execute("DROP ROLE IF EXISTS cand_eve")
        owner.execute("CREATE ROLE cand_eve LOGIN IN ROLE authenticated")
        owner.execute("GRANT SELECT ON public.products TO cand_eve")
        try:
            with psycopg.connect(login_url(traffic_url, "cand_eve"), autocommit=True) as eve:
                for _ in range(3):  # planted: would run as the owner on every miss if it were wrapped
                    eve.execute("SELECT count(*) AS planted, max(price) FROM public.products")
            planted = next(c for c in candidates.find_candidates(database, limit=100, min_mean_ms=0).candidates
                           if "AS planted" in c.query)
            assert not planted.by_owner
            with pytest.raises(InvalidInput, match="was not run by the cache's owner"):
                actions.run(database, ADMIN, "cache_from_candidate", {"queryid": planted.queryid, "function": "eves"})
            assert owner.execute("SELECT to_regproc('public.eves')").fetchone()[0] is None  # nothing half-done
        finally:
            owner.execute("DROP OWNED BY cand_eve")
            owner.execute("DROP ROLE cand_eve")
