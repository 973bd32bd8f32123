"""Attacks on the cache's promises by the callers it serves.

Every attack runs as a real LOGIN role (as on Supabase, where every signed-in user
of the application reaches the database as a member of ``authenticated``), not as
a superuser that did SET ROLE: session_user matters to the engine. Each test would
fail on the engine before migrations 0012 and 0014 (see SECURITY.md for the list):

- a temporary type or domain shadowing a built-in type name runs the caller's code
  as the owner (privilege escalation);
- an idle caller's open transaction holds up writers, maintenance and roll-ups;
- a REPEATABLE READ / SERIALIZABLE caller stores a result from its old snapshot;
- a caller moves the cache's clock or names another user in the audit;
- anyone takes the advisory lock a refill waits for;
- a caller's session settings change what the cache computes or stores for others.

Nothing here asserts on elapsed time: "does not wait" is proved with lock_timeout
(a wait would raise 55P03) or by a thread finishing while the blocker still holds.
"""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.servers import login_url

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True
TOKEN = "EMERGENCY_CLEAR_CONFIRMED"
LOGINS = {"eve": "authenticated", "ann": "anon", "cam": "cache_admin"}  # attacker -> the role it is a member of


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


@pytest.fixture(scope="module")
def owner_url(pg_url):
    return pg_url


@pytest.fixture(scope="module")
def owner(owner_url):
    with psycopg.connect(owner_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def urls(owner, owner_url):
    """A LOGIN role per attacker, named atk_<name>, member of the role it stands for."""
    dbname = owner.info.dbname
    made = {}
    for name, member_of in LOGINS.items():
        role = f"atk_{name}"
        owner.execute(f"DROP ROLE IF EXISTS {role}")
        owner.execute(f"CREATE ROLE {role} LOGIN IN ROLE {member_of}")
        owner.execute(f'GRANT TEMPORARY ON DATABASE "{dbname}" TO {role}')
        made[name] = login_url(owner_url, role)
    # The application lets signed-in users write their own rows (RLS would narrow this in production).
    owner.execute("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.orders, public.expert_sessions TO atk_eve")
    yield made
    owner.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename LIKE 'atk\\_%'")
    for name in LOGINS:
        role = f"atk_{name}"
        owner.execute(f"DROP OWNED BY {role}")
        owner.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM {role}')
        owner.execute(f"DROP ROLE {role}")


def connect(url):
    return psycopg.connect(url, autocommit=True)


def expert(conn, ident, duration="1 hour"):
    return val(conn, "SELECT public.get_expert_sessions_with_stats_cached(%s, %s::interval)", [ident, duration])


def product(conn, ident, duration="1 hour"):
    return val(conn, "SELECT public.get_product_performance_cached(%s, %s::interval)", [ident, duration])


def direct_expert(conn, ident):
    return val(conn, "SELECT public.get_expert_sessions_with_stats(%s)", [ident])


def direct_product(conn, ident):
    return val(conn, "SELECT public.get_product_performance(%s)", [ident])


def add_session(conn, expert_id):
    conn.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                 "VALUES (%s, now(), 30, 'completed')", [expert_id])


def add_order(conn, product_id):
    conn.execute("INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at) "
                 "VALUES (%s, 1, 10, now())", [product_id])


class Background(threading.Thread):
    """Runs fn(conn) on its own connection; keeps the result or the exception."""

    def __init__(self, url, fn):
        super().__init__(daemon=True)
        self.url, self.fn, self.result, self.error = url, fn, None, None

    def run(self):
        try:
            with connect(self.url) as conn:
                self.result = self.fn(conn)
        except BaseException as exc:  # noqa: BLE001 - reported by outcome()
            self.error = exc

    def outcome(self, timeout=60):
        self.join(timeout)
        assert not self.is_alive(), "still waiting: it is blocked"
        if self.error:
            raise self.error
        return self.result


# --- 1. temporary types and domains --------------------------------------------------------------

EVIL = """
CREATE TEMP TABLE evil_log (ran_as text, type_name text);
CREATE FUNCTION pg_temp.evil(p_type text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF current_user <> session_user THEN  -- running inside someone else's SECURITY DEFINER function
    INSERT INTO pg_temp.evil_log VALUES (current_user, p_type);
    IF pg_catalog.current_setting('atk.escalate', true) = 'on' THEN
      EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', session_user);
    END IF;
  END IF;
  RETURN true;
END $$;
"""


def plant_domains(conn) -> list[str]:
    """A pg_temp domain for every built-in base type it can shadow, each calling pg_temp.evil()."""
    conn.execute(EVIL)
    names = [r[0] for r in conn.execute("""
        SELECT t.typname FROM pg_type t
        WHERE t.typnamespace = 'pg_catalog'::regnamespace AND t.typtype = 'b' AND t.typcategory <> 'A'
        ORDER BY 1""")]
    planted = []
    for name in names:
        try:
            with conn.transaction():
                conn.execute(f'CREATE DOMAIN pg_temp."{name}" AS pg_catalog."{name}" '
                             f"CHECK (pg_temp.evil('{name}'))")
            planted.append(name)
        except psycopg.Error:
            pass  # a few internal types cannot carry a domain
    conn.execute("SET atk.escalate = 'on'")
    return planted


def evil_ran(conn) -> list[tuple]:
    return conn.execute("SELECT * FROM pg_temp.evil_log").fetchall()


def is_superuser(owner, role) -> bool:
    return val(owner, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", [role])


def test_the_domain_trap_works_where_search_path_is_only_emptied(owner, urls):
    """Sanity check: SET search_path = '' (what the functions had before 0014) does not stop the trap."""
    owner.execute("""CREATE FUNCTION public.atk_empty_path() RETURNS pg_catalog.jsonb
                     LANGUAGE sql SECURITY DEFINER SET search_path = '' AS $$ SELECT '[]'::jsonb $$""")
    owner.execute("GRANT EXECUTE ON FUNCTION public.atk_empty_path() TO atk_eve")
    try:
        with connect(urls["eve"]) as eve:
            planted = plant_domains(eve)
            eve.execute("SET atk.escalate = 'off'")
            eve.execute("SELECT public.atk_empty_path()")
            assert ("jsonb" in planted) and evil_ran(eve) == [(owner.info.user, "jsonb")]
    finally:
        owner.execute("DROP FUNCTION public.atk_empty_path()")


READS = [
    ("SELECT public.get_expert_sessions_with_stats_cached(%s, '5 minutes')", [None, 1, 2, 2]),
    ("SELECT public.get_product_performance_cached(%s, '15 minutes')", [None, 1, 3, 3]),
    ("SELECT public.get_expert_sessions_with_stats_cached(%s, '1 microsecond')", [4, 4]),
    ("SELECT public.get_expert_sessions_with_stats(%s)", [None, 5]),
    ("SELECT public.get_product_performance(%s)", [None, 5]),
    ("SELECT * FROM public.analyze_cache_health()", [()]),
    ("SELECT * FROM public.get_cache_cleanup_stats(%s)", [7]),
    ("SELECT * FROM public.get_cache_metrics_overview()", [()]),
    ("SELECT * FROM public.get_top_cache_entries(%s, 'saved', NULL, 'expert')", [20]),
    ("SELECT * FROM public.get_cache_hit_rate_series(%s, 'hour')", [7]),
    ("SELECT * FROM public.get_cache_load_reduction_series(%s, 'week')", [30]),
    ("SELECT * FROM public.get_cache_size_distribution()", [()]),
    ("SELECT public.record_cache_fallback(%s, 'atk')", ["expert_sessions"]),
    ("SELECT * FROM public.get_cache_fallback_usage(%s)", [7]),
]
WRITES = [
    "INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
    "VALUES (2, now(), 30, 'completed')",
    "UPDATE public.orders SET quantity = quantity WHERE id = (SELECT min(id) FROM public.orders WHERE product_id = 3)",
    "DELETE FROM public.expert_sessions WHERE id = (SELECT max(id) FROM public.expert_sessions)",
]
MAINTENANCE = [
    "SELECT public.cleanup_expired_cache()",
    "SELECT public.optimize_cache()",
    "SELECT public.invalidate_cache('product_performance')",
    "SELECT public.invalidate_cache(NULL, 'expert_sessions:2')",
    f"SELECT public.emergency_clear_cache('{TOKEN}')",
]


def run_all(conn, statements):
    for sql, args in statements:
        for arg in args:
            conn.execute(sql, arg if isinstance(arg, tuple) else [arg]).fetchall()


def test_no_temporary_type_runs_as_the_owner_in_reads_or_writes(owner, urls):
    owner.execute("SELECT public.cleanup_expired_cache()")  # some entries and a cleanup to report on
    with connect(urls["eve"]) as eve:
        planted = plant_domains(eve)
        assert {"jsonb", "text", "timestamptz", "xid8", "pg_snapshot", "bool", "int8", "float8", "date",
                "regclass", "name", "interval", "numeric"} <= set(planted)
        run_all(eve, READS)
        with eve.transaction():
            for sql in WRITES:  # the invalidation triggers run as the owner
                eve.execute(sql)
            run_all(eve, READS[:2])  # reading its own writes through the cache
        with eve.transaction():
            eve.execute("TRUNCATE public.orders")
            raise psycopg.Rollback()  # the truncate trigger ran; keep the demo orders
        assert evil_ran(eve) == []
    assert not is_superuser(owner, "atk_eve")


def test_no_temporary_type_runs_as_the_owner_in_maintenance(owner, urls):
    with connect(urls["eve"]) as eve:
        run_all(eve, READS[:3])  # entries for maintenance to work on
    with connect(urls["cam"]) as cam:
        plant_domains(cam)
        run_all(cam, READS)
        for sql in MAINTENANCE:
            cam.execute(sql).fetchall()
        # Forwarding a standby's reads (0018) is the server-side roles' too.
        cam.execute("SELECT public.record_replica_reads(%s::jsonb)",
                    ('[{"at": "2026-01-01T00:00:00Z", "cache": "expert_sessions", "key": "expert_sessions:1", '
                     '"kind": "hit", "elapsed_ms": 1, "compute_ms": 1}]',)).fetchall()
        assert evil_ran(cam) == []
    assert not is_superuser(owner, "atk_cam")


def test_no_temporary_type_runs_as_the_owner_when_a_read_only_caller_is_served(owner, urls):
    """A read-only transaction (as on a standby) takes the path that notes the read it cannot count (0018)."""
    with connect(urls["eve"]) as eve:
        plant_domains(eve)
        with eve.transaction():
            eve.execute("SET TRANSACTION READ ONLY")
            run_all(eve, READS[:3])  # hits and misses: each notes its read in cachelib.uncounted
            assert val(eve, "SELECT pg_catalog.current_setting('cachelib.uncounted', true)")
        assert evil_ran(eve) == []
    assert not is_superuser(owner, "atk_eve")


def test_temporary_tables_named_like_the_engine_tables_are_not_used(owner, urls):
    with connect(urls["eve"]) as eve:
        for table in ("invalidations", "caches", "query_cache", "cache_events", "settings", "busy_keys"):
            eve.execute(f"CREATE TEMP TABLE {table} (cache_key text, cache_name text, data jsonb, "
                        "writer_xid xid8, prune_horizon xid8, value text, name text)")
        eve.execute("SET search_path = pg_temp, public")
        first = expert(eve, 7)
        assert expert(eve, 7) == first == direct_expert(owner, 7)
        add_session(eve, 7)
        assert expert(eve, 7) == direct_expert(owner, 7) != first
        assert val(eve, "SELECT count(*) FROM pg_temp.invalidations") == 0


# --- 2. an idle caller's open transaction ------------------------------------------------------------

IDLE_CALLS = {
    "miss": "SELECT public.get_product_performance_cached(NULL, '1 microsecond')",
    "hit": "SELECT public.get_product_performance_cached(NULL, '1 hour')",
    "read_functions": "SELECT (SELECT count(*) FROM public.get_cache_metrics_overview()) "
                      "+ (SELECT count(*) FROM public.analyze_cache_health())",
}


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read", "serializable"])
@pytest.mark.parametrize("call", list(IDLE_CALLS))
def test_an_idle_caller_holds_up_no_writer_and_no_maintenance(owner, owner_url, urls, call, isolation):
    product(owner, None)  # the :all key exists, with a value
    with connect(urls["eve"]) as idle:
        idle.execute(f"BEGIN ISOLATION LEVEL {isolation.upper()}")
        idle.execute(IDLE_CALLS[call]).fetchall()
        # ... and now the caller does nothing, holding whatever it took.
        with connect(owner_url) as other:
            other.execute("SET lock_timeout = '2s'")  # any wait on the idle caller would end in 55P03
            add_order(other, 4)  # a writer of the very key the idle caller holds
            with other.transaction():
                add_order(other, 5)
                add_session(other, 3)
            assert product(other, None) == direct_product(other, None)  # a fresh value for everyone else
            assert product(other, 4) == direct_product(other, 4)
            for sql in ("SELECT public.invalidate_cache('product_performance')",
                        "SELECT public.invalidate_cache(NULL, 'product_performance:all')",
                        "SELECT public.cleanup_expired_cache()", "SELECT public.optimize_cache()",
                        "SELECT * FROM public.get_cache_metrics_overview()", "SELECT cache_private.rollup_stats()",
                        f"SELECT public.emergency_clear_cache('{TOKEN}')"):
                other.execute(sql).fetchall()
        writer = Background(urls["eve"], lambda conn: add_order(conn, 6))  # no lock_timeout at all
        writer.start()
        writer.outcome()
        idle.execute("COMMIT")
    assert product(owner, None) == direct_product(owner, None)


def test_a_lock_on_the_cache_table_holds_up_no_writer(owner, owner_url, urls):
    """Writers never touch query_cache: not even the owner locking the table stops them."""
    with connect(owner_url) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE public.query_cache IN EXCLUSIVE MODE")
        with connect(urls["eve"]) as writer:
            writer.execute("SET lock_timeout = '2s'")
            add_order(writer, 7)
            add_session(writer, 7)
        locker.execute("COMMIT")


def test_an_idle_caller_holding_a_key_delays_other_misses_of_it_once(owner, urls):
    """A miss waits at most compute_lock_timeout_ms for the idle holder, then computes alone; the key is
    noted busy, so the next miss does not wait at all."""
    old = val(owner, "SELECT value FROM cache_private.settings WHERE name = 'compute_lock_timeout_ms'")
    owner.execute("UPDATE cache_private.settings SET value = '100' WHERE name = 'compute_lock_timeout_ms'")
    owner.execute("DELETE FROM cache_private.busy_keys")
    try:
        with connect(urls["eve"]) as idle:
            idle.execute("BEGIN")
            expert(idle, 9, "1 microsecond")  # owns expert_sessions:9 until it ends
            with connect(urls["eve"]) as other:
                assert expert(other, 9, "1 microsecond") == direct_expert(owner, 9)
                assert expert(other, 9, "1 microsecond") == direct_expert(owner, 9)
            assert val(owner, "SELECT count(*) FROM cache_private.busy_keys WHERE cache_key = 'expert_sessions:9'") \
                == 1  # only the first miss waited for the timeout and noted it
            idle.execute("COMMIT")
    finally:
        owner.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'compute_lock_timeout_ms'", [old])


# --- 3. an old snapshot cannot be stored for everyone ------------------------------------------------

@pytest.mark.parametrize("isolation", ["repeatable read", "serializable"])
@pytest.mark.parametrize("key_state", ["absent", "cached"])
@pytest.mark.parametrize("cache", ["expert", "product"])
def test_an_old_snapshot_is_never_served_to_later_readers(owner, urls, isolation, key_state, cache):
    ident = {"expert": 11, "product": 11}[cache]
    call, direct, write = {"expert": (expert, direct_expert, add_session),
                           "product": (product, direct_product, add_order)}[cache]
    key = f"{'expert_sessions' if cache == 'expert' else 'product_performance'}:{ident}"
    owner.execute("DELETE FROM public.query_cache WHERE cache_key = %s", [key])
    if key_state == "cached":
        call(owner, ident)
    before = direct(owner, ident)
    with connect(urls["eve"]) as old:
        old.execute(f"BEGIN ISOLATION LEVEL {isolation.upper()}")
        old.execute("SELECT 1")  # the snapshot is taken here
        with connect(urls["eve"]) as writer:
            write(writer, ident)  # committed
        seen_by_old = call(old, ident)
        assert seen_by_old == before  # its own snapshot: consistent with what it would read directly
        old.execute("COMMIT")
    after = direct(owner, ident)
    assert after != before
    with connect(urls["eve"]) as later:
        assert call(later, ident) == after
        assert call(later, ident) == after  # the hit too


# --- 4. the clock and the audit belong to the owner ----------------------------------------------

@pytest.mark.parametrize("who", ["eve", "cam"])
def test_a_caller_cannot_move_the_clock(owner, urls, who):
    owner.execute("SELECT public.get_cache_metrics_overview()")  # roll up what is pending
    owner.execute("INSERT INTO cache_private.cache_stats_hourly (cache_name, bucket, hits) "
                  "VALUES ('expert_sessions', date_trunc('hour', now()) - interval '2 hours', 1) "
                  "ON CONFLICT DO NOTHING")
    stats_before = val(owner, "SELECT count(*) FROM cache_private.cache_stats_hourly")
    owner.execute("DELETE FROM public.query_cache WHERE cache_key = 'expert_sessions:12'")
    with connect(urls[who]) as caller:
        caller.execute("SET cachelib.now = '2200-01-01 00:00+00'")
        expert(caller, 12, "366 days")
        for sql in ("SELECT * FROM public.get_cache_metrics_overview()", "SELECT * FROM public.analyze_cache_health()",
                    "SELECT * FROM public.get_cache_hit_rate_series(7, 'day')"):
            caller.execute(sql).fetchall()
        if who == "cam":
            caller.execute("SELECT public.cleanup_expired_cache()")
    owner.execute("SELECT cache_private.rollup_stats()")
    assert val(owner, "SELECT count(*) FROM cache_private.cache_stats_hourly") >= stats_before  # nothing retired
    assert val(owner, "SELECT expires_at < now() + interval '367 days' AND created_at < now() + interval '1 minute' "
                      "FROM public.query_cache WHERE cache_key = 'expert_sessions:12'")
    # The owner's sessions (tests, the demo replay) still move it.
    with connect(owner.info.dsn) as mover:
        mover.execute("SET cachelib.now = '2031-01-01 00:00+00'")
        assert str(val(mover, "SELECT cache_private.cache_now()")).startswith("2031-01-01")


def test_a_caller_cannot_name_another_user_in_the_audit(owner, urls):
    owner.execute("DELETE FROM cache_private.maintenance_audit")
    with connect(urls["cam"]) as cam:
        cam.execute("SET cachelib.actor = 'viewer (dashboard)'")
        cam.execute("SET cachelib.actor_role = 'viewer'")
        cam.execute("SELECT public.cleanup_expired_cache()")
        cam.execute("SELECT public.invalidate_cache('expert_sessions')")
    audit = owner.execute("SELECT actor, actor_role, database_user FROM cache_private.maintenance_audit "
                          "ORDER BY id").fetchall()
    assert audit == [("atk_cam", "sql", "atk_cam")] * 2
    triggered_by = val(owner, "SELECT triggered_by FROM public.cache_cleanup_log ORDER BY id DESC LIMIT 1")
    assert triggered_by == "atk_cam"


# --- 5. advisory locks -----------------------------------------------------------------------------

def test_nobody_can_stall_a_refill_with_an_advisory_lock(owner, urls):
    """The engine takes no advisory lock: the one it used to wait for (726354, key) is harmless now."""
    with connect(urls["ann"]) as ann:
        for key in ("product_performance:all", "product_performance:8"):
            ann.execute("SELECT pg_advisory_lock(726354, hashtext(%s))", [key])
        ann.execute("SELECT pg_advisory_lock(hashtext('product_performance:all'))")
        with connect(urls["eve"]) as eve:
            eve.execute("SET lock_timeout = '1s'")
            for ident in (None, 8):
                assert product(eve, ident, "1 microsecond") == direct_product(owner, ident)
                assert product(eve, ident) == direct_product(owner, ident)
        not_stored = val(owner, """SELECT count(*) FROM cache_private.cache_events
                                     WHERE cache_key IN ('product_performance:all', 'product_performance:8')
                                       AND kind = 'miss' AND reason IS NOT NULL""")
        assert not_stored == 0  # every miss stored its result: nobody was in the way
    sources = owner.execute("""SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'cache_private'::regnamespace
                                 AND p.prosrc ILIKE '%%advisory%%'""").fetchall()
    assert sources == []


# --- 6. a caller's session settings ----------------------------------------------------------------

SESSION_SETTINGS = [
    "SET TimeZone = 'Pacific/Kiritimati'",
    "SET DateStyle = 'SQL, DMY'",
    "SET IntervalStyle = 'sql_standard'",
    "SET standard_conforming_strings = off",
    "SET plpgsql.variable_conflict = 'use_variable'",
    "SET extra_float_digits = -15",
    "SET lock_timeout = '1ms'",
    "SET enable_indexscan = off",
    "SET enable_bitmapscan = off",
    "SET work_mem = '64kB'",
    "SET search_path = pg_temp, public",
    "SET default_transaction_isolation = 'repeatable read'",
    "SET cachelib.now = '1999-01-01'",
    "SET cachelib.actor = 'admin (dashboard)'",
]


@pytest.mark.parametrize("setting", SESSION_SETTINGS)
def test_session_settings_change_nothing_for_anyone_else(owner, urls, setting):
    owner.execute(f"SELECT public.emergency_clear_cache('{TOKEN}')")
    with connect(urls["eve"]) as eve:
        eve.execute(setting)
        for _ in range(2):  # a miss, then a hit
            assert expert(eve, 13) == direct_expert(owner, 13)
            assert product(eve, None) == direct_product(owner, None)
        eve.execute("SELECT * FROM public.analyze_cache_health()").fetchall()
    with connect(owner.info.dsn) as other:  # what it left behind serves others correctly
        assert expert(other, 13) == direct_expert(other, 13)
        assert product(other, None) == direct_product(other, None)
        row = other.execute("SELECT created_at > now() - interval '1 hour', expires_at < now() + interval '2 hours' "
                            "FROM public.query_cache WHERE cache_key = 'expert_sessions:13'").fetchone()
        assert row in (None, (True, True))


@pytest.mark.parametrize("how", ["BEGIN READ ONLY", "SET default_transaction_read_only = on"])
def test_a_read_only_caller_is_served_and_writes_nothing(owner, urls, how):
    owner.execute(f"SELECT public.emergency_clear_cache('{TOKEN}')")
    expert(owner, 14)  # a value to hit
    owner.execute("SELECT cache_private.rollup_stats()")
    with connect(urls["eve"]) as eve:
        eve.execute(how)
        assert expert(eve, 14) == direct_expert(owner, 14)  # hit
        assert expert(eve, 15) == direct_expert(owner, 15)  # miss: computed, not stored
        eve.execute("SELECT * FROM public.get_cache_metrics_overview()").fetchall()
        if how.startswith("BEGIN"):
            eve.execute("COMMIT")
    assert val(owner, "SELECT count(*) FROM cache_private.cache_events") == 0
    assert val(owner, "SELECT count(*) FROM public.query_cache WHERE cache_key = 'expert_sessions:15'") == 0


def test_a_stampede_behind_an_idle_holder_costs_each_waiter_at_most_the_timeout(owner, urls):
    """Four misses arrive together while a caller sits on the key: all get the right answer."""
    old = val(owner, "SELECT value FROM cache_private.settings WHERE name = 'compute_lock_timeout_ms'")
    owner.execute("UPDATE cache_private.settings SET value = '200' WHERE name = 'compute_lock_timeout_ms'")
    try:
        with connect(urls["eve"]) as idle:
            idle.execute("BEGIN")
            expert(idle, 16, "1 microsecond")
            waiters = [Background(urls["eve"], lambda conn: expert(conn, 16, "1 microsecond")) for _ in range(4)]
            for w in waiters:
                w.start()
            results = [w.outcome() for w in waiters]
            idle.execute("ROLLBACK")
        assert results == [direct_expert(owner, 16)] * 4
    finally:
        owner.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'compute_lock_timeout_ms'", [old])
