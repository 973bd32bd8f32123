"""The optional C hit path (ext/pgcache_hit, migration 0026) against its promises.

The engine's own suites (attacks, staleness, concurrency) run once more with it enabled
(ALSO_ON_FAST_HITS). Here: what is particular to it. Every hit it serves is counted exactly
(concurrent callers, a slot table that overflows, a drain that aborts, several databases on one
server sharing its shared memory); nobody but the engine's owner can call it, even when granted
it by mistake; enabling and disabling rewrite the wrappers and lose no hit.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg
import pytest

from cachelib import fasthits
from tests.servers import login_url

KEY = "expert_sessions:3"
CALL = "SELECT public.get_expert_sessions_with_stats_cached(3, '1 hour')"


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


@pytest.fixture(scope="module")
def url(pg18_fast) -> str:
    return pg18_fast.fresh_database("fast_hits")


@pytest.fixture
def owner(url):
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def hit_count(conn, key=KEY) -> int:
    conn.execute("SELECT cache_private.rollup_stats()")
    return val(conn, "SELECT hit_count FROM public.query_cache WHERE cache_key = %s", [key])


def counted_in_memory(conn) -> int:
    """Hits waiting in shared memory for this database (drained and put back: the transaction aborts)."""
    conn.execute("BEGIN")
    try:
        return val(conn, "SELECT COALESCE(sum(hits), 0) FROM cache_private.drain_fast_hits()")
    finally:
        conn.execute("ROLLBACK")


def test_enabled_wrappers_serve_hits_from_c(url, owner):
    current = fasthits.status(url)
    assert current.enabled and current.wrappers_using_it == current.wrappers >= 2
    owner.execute(CALL)  # stored, or already there
    before = hit_count(owner)
    owner.execute(CALL)
    assert counted_in_memory(owner) == 1  # the hit went to shared memory, not to the event log
    assert val(owner, "SELECT count(*) FROM cache_private.cache_events WHERE cache_key = %s", [KEY]) == 0
    assert hit_count(owner) == before + 1
    # Forwarded as one row of the event log per key and hour, whatever the number of hits.
    for _ in range(7):
        owner.execute(CALL)
    with owner.transaction(force_rollback=True):
        assert val(owner, "SELECT cache_private.forward_fast_hits()") == 7
        assert owner.execute("SELECT kind, weight FROM cache_private.cache_events WHERE cache_key = %s",
                             [KEY]).fetchall() == [("hit", 7)]
    assert hit_count(owner) == before + 8


def test_concurrent_hits_are_counted_exactly(url, owner):
    owner.execute(CALL)
    before = hit_count(owner)
    threads, calls = 8, 250

    def caller():
        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(calls):
                conn.execute(CALL)

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert hit_count(owner) == before + threads * calls


def test_an_aborted_drain_puts_the_hits_back(owner):
    owner.execute(CALL)
    before = hit_count(owner)
    for _ in range(5):
        owner.execute(CALL)
    owner.execute("BEGIN")
    assert val(owner, "SELECT sum(hits) FROM cache_private.drain_fast_hits()") == 5
    owner.execute("ROLLBACK")
    # A roll-up that fails after forwarding gives them back too.
    with pytest.raises(psycopg.errors.DivisionByZero):
        with owner.transaction():
            owner.execute("SELECT cache_private.forward_fast_hits()")
            owner.execute("SELECT 1 / 0")
    # So does one inside a subtransaction that rolls back while its transaction commits (try_rollup's
    # EXCEPTION block when a statistics row stays locked).
    with owner.transaction():
        with pytest.raises(psycopg.errors.DivisionByZero):
            with owner.transaction():  # a savepoint
                owner.execute("SELECT cache_private.forward_fast_hits()")
                owner.execute("SELECT 1 / 0")
        assert val(owner, "SELECT count(*) FROM cache_private.cache_events WHERE cache_key = %s", [KEY]) == 0
    assert counted_in_memory(owner) == 5
    assert hit_count(owner) == before + 5


def test_hits_beyond_the_slot_table_are_appended_and_counted(owner):
    """More distinct entries hit in one hour than the shared table holds: the rest go to the event log."""
    owner.execute(CALL)
    owner.execute("SELECT cache_private.rollup_stats()")
    owner.execute("""
        INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at, hit_count, size_bytes,
                                        compute_ms, computed_snapshot, computed_xmin, computed_xmax)
        SELECT 'expert_sessions:copy' || g, cache_name, data, expires_at, created_at, 0, size_bytes,
               compute_ms, computed_snapshot, computed_xmin, computed_xmax
        FROM public.query_cache, generate_series(1, 5000) g WHERE cache_key = %s""", [KEY])
    # One hit per transaction, as callers make them (an append takes a transaction id, and in a
    # transaction that has one the C path leaves the call to the SQL engine's own-writes rule).
    served = sum(val(owner, "SELECT cache_private.hit_fast('expert_sessions', %s, '1 hour') IS NOT NULL",
                     [f"expert_sessions:copy{g}"]) for g in range(1, 5001))
    assert served == 5000
    appended = "SELECT count(*) FROM cache_private.cache_events WHERE cache_key LIKE 'expert_sessions:copy%'"
    assert val(owner, appended) > 0
    owner.execute("SELECT cache_private.rollup_stats()")
    assert val(owner, "SELECT sum(hit_count) FROM public.query_cache WHERE cache_key LIKE 'expert_sessions:copy%'") \
        == 5000
    owner.execute("DELETE FROM public.query_cache WHERE cache_key LIKE 'expert_sessions:copy%'")


def test_databases_on_one_server_keep_their_own_hits(pg18_fast, url, owner):
    other_url = pg18_fast.fresh_database("fast_hits_other")
    owner.execute(CALL)
    before = hit_count(owner)
    owner.execute(CALL)
    with psycopg.connect(other_url, autocommit=True) as other:
        other.execute(CALL)
        other_before = hit_count(other)
        other.execute(CALL)
        other.execute(CALL)
        assert hit_count(other) == other_before + 2  # its roll-up drained its own two, not ours
    assert hit_count(owner) == before + 1


@contextlib.contextmanager
def login(owner, url, role: str, member_of: str):
    """A LOGIN role that is a member of ``member_of`` (as every signed-in or anonymous caller is)."""
    owner.execute(f"DROP ROLE IF EXISTS {role}")
    owner.execute(f"CREATE ROLE {role} LOGIN IN ROLE {member_of}")
    try:
        with psycopg.connect(login_url(url, role), autocommit=True) as conn:
            yield conn
    finally:
        owner.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
        owner.execute(f"DROP OWNED BY {role}")
        owner.execute(f"DROP ROLE {role}")


@pytest.fixture
def eve(owner, url):
    """A signed-in user (member of authenticated), granted the C function by a careless admin."""
    with login(owner, url, "fast_eve", "authenticated") as conn:
        yield conn


C_CALLS = (f"SELECT cache_private.hit_fast('expert_sessions', '{KEY}', '1 hour')",
           "SELECT count(*) FROM cache_private.drain_fast_hits()",
           "SELECT cache_private.forward_fast_hits()")


def test_an_anonymous_caller_reaches_nothing_of_the_c_path(owner, url):
    with login(owner, url, "fast_ann", "anon") as ann:
        for sql in (*C_CALLS, CALL):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ann.execute(sql)


def test_only_the_engine_calls_the_c_functions(owner, eve):
    for sql in C_CALLS:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            eve.execute(sql)
    # Granted by mistake, the C hit still reads nothing its caller may not read.
    owner.execute("GRANT USAGE ON SCHEMA cache_private TO fast_eve")
    owner.execute("GRANT EXECUTE ON FUNCTION cache_private.hit_fast(text, text, interval) TO fast_eve")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="query_cache"):
        eve.execute("SELECT cache_private.hit_fast('expert_sessions', %s, '1 hour')", [KEY])
    # Through the wrapper, the signed-in user is served as always.
    assert val(eve, CALL) == val(owner, "SELECT public.get_expert_sessions_with_stats(3)")


def test_disabling_forwards_what_was_counted_and_rewrites_the_wrappers(url, owner):
    owner.execute(CALL)
    before = hit_count(owner)
    for _ in range(3):
        owner.execute(CALL)
    try:
        off = fasthits.disable(url)
        assert not off.enabled and off.wrappers_using_it == 0
        owner.execute(CALL)  # served by the SQL engine now
        assert hit_count(owner) == before + 4
    finally:
        on = fasthits.enable(url)
    assert on.enabled and on.wrappers_using_it == on.wrappers


def test_enabling_where_it_cannot_run_says_why(pg15):
    url = pg15.fresh_database("fast_hits_pg15")
    with pytest.raises(fasthits.FastHitsError, match="PostgreSQL 17 or later"):
        fasthits.enable(url)
    assert not fasthits.status(url).enabled
    assert "17 or later" in fasthits.version_blocker("PostgreSQL 15.18")
    assert fasthits.version_blocker("PostgreSQL 18.4") is None
    assert fasthits.version_blocker("PostgreSQL 18devel") is None
    assert "17 or later" in fasthits.version_blocker("PostgreSQL 16.14 (Debian 16.14-1.pgdg120+1)")
