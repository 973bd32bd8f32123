"""Who may do what, row-level security, and search_path hijacking.

The matrix is tried for real: a superuser connection does ``SET ROLE x``, calls the
function or reads the table, and ``RESET ROLE``. Expected rights (0009_security.sql):

  anon           nothing
  authenticated  cached, direct and read functions, analyze_cache_health,
                 get_cache_cleanup_stats, record_cache_fallback; no maintenance, no tables
  cache_admin    every public function; SELECT on query_cache and cache_cleanup_log (RLS policy)
  service_role   every public function; no direct table reads
  nobody but the owner: anything in cache_private
"""

from __future__ import annotations

import psycopg
import pytest

from tests.servers import flush_fast_hits

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True

ROLES = ["anon", "authenticated", "cache_admin", "service_role"]
TOKEN = "EMERGENCY_CLEAR_CONFIRMED"

# name -> (call, class). Classes: read (every signed-in role), maintenance (admins only).
FUNCTIONS = {
    "get_expert_sessions_with_stats": ("SELECT public.get_expert_sessions_with_stats(1)", "read"),
    "get_product_performance": ("SELECT public.get_product_performance(1)", "read"),
    "get_expert_sessions_with_stats_cached": ("SELECT public.get_expert_sessions_with_stats_cached(1, '5 minutes')",
                                              "read"),
    "get_product_performance_cached": ("SELECT public.get_product_performance_cached(1, '15 minutes')", "read"),
    "analyze_cache_health": ("SELECT * FROM public.analyze_cache_health()", "read"),
    "get_cache_cleanup_stats": ("SELECT * FROM public.get_cache_cleanup_stats(7)", "read"),
    "get_cache_metrics_overview": ("SELECT * FROM public.get_cache_metrics_overview()", "read"),
    "get_top_cache_entries": ("SELECT * FROM public.get_top_cache_entries(10, 'hits')", "read"),
    "get_cache_hit_rate_series": ("SELECT * FROM public.get_cache_hit_rate_series(7, 'day')", "read"),
    "get_cache_load_reduction_series": ("SELECT * FROM public.get_cache_load_reduction_series(7, 'day')", "read"),
    "get_cache_size_distribution": ("SELECT * FROM public.get_cache_size_distribution()", "read"),
    "record_cache_fallback": ("SELECT public.record_cache_fallback('expert_sessions', 'permission test')", "read"),
    "get_cache_fallback_usage": ("SELECT * FROM public.get_cache_fallback_usage(7)", "read"),
    "cleanup_expired_cache": ("SELECT public.cleanup_expired_cache()", "maintenance"),
    "optimize_cache": ("SELECT public.optimize_cache()", "maintenance"),
    "invalidate_cache": ("SELECT public.invalidate_cache(NULL, 'expert_sessions:1')", "maintenance"),
    "emergency_clear_cache": (f"SELECT public.emergency_clear_cache('{TOKEN}')", "maintenance"),
}
DIRECT_TWINS = {"get_expert_sessions_with_stats", "get_product_performance"}

ALLOWED = {
    "anon": set(),
    "authenticated": {"read"},
    "cache_admin": {"read", "maintenance"},
    "service_role": {"read", "maintenance"},
}
TABLE_READERS = {"cache_admin"}


@pytest.fixture(scope="module")
def su(pg_url):
    """The owning superuser, with a few cache rows to read."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT public.get_expert_sessions_with_stats_cached(2, '1 hour')")
        conn.execute("SELECT public.get_product_performance_cached(2, '1 hour')")
        conn.execute("SELECT public.cleanup_expired_cache()")
        yield conn


def attempt(conn, role: str, sql: str):
    """Run sql as role; returns None on success or the SQLSTATE of the error."""
    conn.execute(f"SET ROLE {role}")
    try:
        conn.execute(sql).fetchall()
        return None
    except psycopg.Error as exc:
        return exc.sqlstate
    finally:
        conn.execute("RESET ROLE")


def test_the_matrix_covers_all_15_public_cache_functions_and_the_direct_twins(su):
    listed = {r[0] for r in su.execute("""
        SELECT routine_name FROM information_schema.routines
        WHERE routine_schema = 'public' AND routine_name LIKE '%cache%'""")}
    assert len(listed) == 15
    assert listed | DIRECT_TWINS == set(FUNCTIONS)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_function_permission_matrix(su, role, function):
    sql, kind = FUNCTIONS[function]
    outcome = attempt(su, role, sql)
    if kind in ALLOWED[role]:
        assert outcome is None, f"{role} should be able to call {function}"
    else:
        assert outcome == "42501", f"{role} must not call {function} (got {outcome})"


@pytest.mark.parametrize("role", ROLES)
def test_has_function_privilege_agrees_with_the_matrix(su, role):
    got = dict(su.execute("""
        SELECT p.proname, has_function_privilege(%s, p.oid, 'EXECUTE')
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace AND p.proname = ANY(%s)""",
                          [role, list(FUNCTIONS)]).fetchall())
    assert got == {name: kind in ALLOWED[role] for name, (_, kind) in FUNCTIONS.items()}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("table", ["public.query_cache", "public.cache_cleanup_log"])
def test_direct_table_reads(su, role, table):
    su.execute("SELECT public.get_expert_sessions_with_stats_cached(2, '1 hour')")
    su.execute("SELECT public.cleanup_expired_cache()")
    outcome = attempt(su, role, f"SELECT count(*) FROM {table}")
    if role in TABLE_READERS:
        assert outcome is None
        su.execute("SET ROLE cache_admin")
        try:
            seen = su.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            su.execute("RESET ROLE")
        assert seen == su.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0  # the policy shows every row
    else:
        assert outcome == "42501"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("sql", [
    "DELETE FROM public.query_cache",
    "UPDATE public.query_cache SET hit_count = 0",
    "INSERT INTO public.query_cache (cache_key, cache_name, expires_at, created_at) VALUES ('x', 'x', now(), now())",
    "DELETE FROM public.cache_cleanup_log",
])
def test_nobody_writes_the_cache_tables_directly(su, role, sql):
    assert attempt(su, role, sql) == "42501"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("sql", [
    "SELECT cache_private.cache_now()",
    "SELECT cache_private.rollup_stats()",
    "SELECT cache_private.get_or_compute('expert_sessions', 'expert_sessions:1', '1 hour', 'SELECT ''[]''::jsonb')",
    "SELECT cache_private.invalidate_keys('expert_sessions', ARRAY['expert_sessions:1'])",
    "SELECT * FROM cache_private.settings",
    "SELECT * FROM cache_private.maintenance_audit",
    "SELECT * FROM cache_private.cache_events",
    # the review's history and the health history (0015, 0016)
    "SELECT * FROM cache_private.key_activity_daily",
    "SELECT * FROM cache_private.invalidations_daily",
    "SELECT * FROM cache_private.health_history",
    "SELECT cache_private.compact_history()",
    "SELECT * FROM cache_private.record_health('cleanup')",
    # the catalog of caches (0017): only the owner registers, removes or re-times a cache
    "SELECT * FROM cache_private.cache_sources",
    "SELECT cache_private.register_cache('public.get_product_performance', ARRAY['public.orders'], '1 hour', 'x')",
    "SELECT cache_private.unregister_cache('expert_sessions')",
    "SELECT cache_private.set_cache_duration('expert_sessions', '1 second')",
    "SELECT cache_private.write_wrapper('expert_sessions')",
    "SELECT cache_private.attach_source('expert_sessions', 'public.orders', NULL)",
    "SELECT cache_private.detach_source('expert_sessions', 'public.experts')",
])
def test_nobody_but_the_owner_uses_cache_private(su, role, sql):
    assert attempt(su, role, sql) == "42501"


@pytest.mark.parametrize("role", ROLES)
def test_no_role_may_execute_or_reach_any_cache_private_function(su, role):
    rows = su.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'cache_private'::regnamespace AND has_function_privilege(%s, p.oid, 'EXECUTE')""",
                      [role]).fetchall()
    assert rows == []
    assert su.execute("SELECT has_schema_privilege(%s, 'cache_private', 'USAGE')", [role]).fetchone()[0] is False


def test_row_level_security_is_enabled_on_every_cache_table(su):
    tables = su.execute("""
        SELECT c.relnamespace::regnamespace::text || '.' || c.relname, c.relrowsecurity FROM pg_class c
        WHERE c.relkind IN ('r', 'p')
          AND (c.relnamespace = 'cache_private'::regnamespace
               OR c.oid IN ('public.query_cache'::regclass, 'public.cache_cleanup_log'::regclass))""").fetchall()
    names = {name for name, _ in tables}
    assert {"public.query_cache", "public.cache_cleanup_log", "cache_private.settings", "cache_private.caches",
            "cache_private.cache_events", "cache_private.cache_stats_hourly", "cache_private.fallback_reasons",
            "cache_private.maintenance_audit"} <= names
    assert [name for name, rls in tables if not rls] == []


PINNED = "search_path=pg_catalog, pg_temp"
# Inlined into its callers (a SET clause would prevent that): every name in it is qualified.
UNPINNED_BY_DESIGN = {"cache_private.cache_now()"}
# The optional C hit path (pgcache_hit): C looks nothing up through search_path (its tables by
# schema and name, its one SQL statement qualified), and saving and restoring the setting on
# every hit is part of what it exists to avoid. Called only from the pinned wrappers.
UNPINNED_IN_C = {"cache_private.hit_fast(text,text,interval)", "cache_private.drain_fast_hits()"}


def test_every_security_definer_function_pins_pg_catalog_first_and_pg_temp_last(su):
    """'' is not enough: an empty search_path still searches the caller's pg_temp first for types."""
    definers = su.execute("""
        SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')""").fetchall()
    assert len(definers) >= 17  # the 15 public cache functions, the 2 direct twins, the trigger functions
    assert [name for name, config in definers if PINNED not in (config or [])] == []


def test_every_function_of_the_cache_pins_its_search_path_or_is_known_not_to(su):
    unpinned = {r[0] for r in su.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE (p.pronamespace = 'cache_private'::regnamespace
               OR (p.pronamespace = 'public'::regnamespace AND p.proname = ANY(%s)))
          AND NOT COALESCE(%s = ANY(p.proconfig), false)""", [list(FUNCTIONS), PINNED]).fetchall()}
    in_c = {r[0] for r in su.execute("""
        SELECT p.oid::regprocedure::text FROM pg_proc p
        WHERE p.pronamespace = 'cache_private'::regnamespace
          AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c')""").fetchall()}
    assert in_c <= UNPINNED_IN_C
    assert unpinned == UNPINNED_BY_DESIGN | in_c


# --- search_path hijacking -------------------------------------------------------------------------

HIJACK = """
CREATE SCHEMA evil;
CREATE TABLE evil.calls (fn text);
GRANT INSERT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.mark(fn text) RETURNS void LANGUAGE sql VOLATILE AS
  $$ INSERT INTO evil.calls VALUES (fn); SELECT set_config('evil.called', fn, false); $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('now'); RETURN '1999-01-01'; END $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('clock_timestamp'); RETURN '1999-01-01'; END $$;
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('lower'); RETURN 'pwned'; END $$;
CREATE FUNCTION evil.length(text) RETURNS integer LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('length'); RETURN 1; END $$;
CREATE FUNCTION evil.round(numeric, integer) RETURNS numeric LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('round'); RETURN -1; END $$;
CREATE FUNCTION evil.hashtext(text) RETURNS integer LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('hashtext'); RETURN 1; END $$;
CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('current_setting'); RETURN NULL; END $$;
CREATE FUNCTION evil.jsonb_build_object(VARIADIC text[]) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('jsonb_build_object'); RETURN '{}'; END $$;
CREATE FUNCTION evil.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('= (text)'); RETURN true; END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_eq);
CREATE FUNCTION evil.ts_gt(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('> (timestamptz)'); RETURN true; END $$;
CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_gt);
CREATE FUNCTION evil.count_sfunc(bigint, bigint) RETURNS bigint LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('count'); RETURN 999; END $$;
CREATE AGGREGATE evil.count(bigint) (SFUNC = evil.count_sfunc, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION evil.sum_sfunc(bigint, integer) RETURNS bigint LANGUAGE plpgsql VOLATILE AS
  $$ BEGIN PERFORM evil.mark('sum'); RETURN 999; END $$;
CREATE AGGREGATE evil.sum(integer) (SFUNC = evil.sum_sfunc, STYPE = bigint, INITCOND = '0');
CREATE TEMP TABLE query_cache (cache_key text, data jsonb);
INSERT INTO query_cache VALUES ('expert_sessions:3', '"pwned"'), ('expert_sessions:all', '"pwned"');
"""


@pytest.fixture(scope="module")
def mallory(pg_url, su):
    """A signed-in role (member of authenticated) that may create schemas, with its traps set."""
    dbname = su.info.dbname
    su.execute("DROP ROLE IF EXISTS mallory")
    su.execute("CREATE ROLE mallory NOLOGIN IN ROLE authenticated")
    su.execute(f'GRANT CREATE, TEMPORARY ON DATABASE "{dbname}" TO mallory')
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET ROLE mallory")
        conn.execute(HIJACK)
        conn.execute("SET search_path = evil, pg_catalog, public")
        yield conn
        # Drop mallory's temp tables now: a backend drops them on exit only after a
        # moment, and DROP ROLE below would race with that.
        conn.execute("DISCARD TEMP")
    su.execute("DROP SCHEMA evil CASCADE")
    su.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM mallory')
    su.execute("DROP ROLE mallory")


def evil_calls(su) -> list[str]:
    return [r[0] for r in su.execute("SELECT fn FROM evil.calls ORDER BY 1")]


def test_the_traps_work_where_search_path_is_not_pinned(mallory, su):
    """Sanity check of the attack: unqualified names in mallory's own queries do hit the traps."""
    assert mallory.execute("SELECT lower('ABC'), now() = '1999-01-01'::timestamptz").fetchone() == ("pwned", True)
    assert mallory.execute("SELECT 'a'::text = 'b'::text").fetchone()[0] is True
    assert mallory.execute("SELECT count(x), sum(y) FROM (VALUES (1::bigint, 1), (2, 2)) v(x, y)").fetchone() == (
        999, 999)
    assert set(evil_calls(su)) >= {"lower", "now", "= (text)", "count", "sum"}
    su.execute("DELETE FROM evil.calls")
    mallory.execute("RESET evil.called")


@pytest.mark.parametrize("ident", [3, None])
def test_cached_functions_ignore_a_hijacked_search_path(mallory, su, ident):
    su.execute("DELETE FROM evil.calls")
    su.execute(f"SELECT public.emergency_clear_cache('{TOKEN}')")
    expected = su.execute("SELECT public.get_expert_sessions_with_stats(%s)", [ident]).fetchone()[0]
    cached = "SELECT public.get_expert_sessions_with_stats_cached(%s, '5 minutes')"
    miss = mallory.execute(cached, [ident]).fetchone()[0]
    hit = mallory.execute(cached, [ident]).fetchone()[0]
    direct = mallory.execute("SELECT public.get_expert_sessions_with_stats(%s)", [ident]).fetchone()[0]
    products = mallory.execute("SELECT public.get_product_performance_cached(%s, '15 minutes')", [ident]).fetchone()[0]
    assert miss == hit == direct == expected
    assert products == su.execute("SELECT public.get_product_performance(%s)", [ident]).fetchone()[0]
    flush_fast_hits(su)
    kinds = su.execute("SELECT kind FROM cache_private.cache_events, generate_series(1, weight) "
                       "WHERE cache_key = %s ORDER BY event_at",
                       [f"expert_sessions:{'all' if ident is None else ident}"]).fetchall()
    assert sorted(k for (k,) in kinds) == ["hit", "miss"]
    assert evil_calls(su) == []
    assert mallory.execute("SELECT current_setting('evil.called', true)").fetchone()[0] in (None, "")


def test_read_functions_ignore_a_hijacked_search_path(mallory, su):
    su.execute("DELETE FROM evil.calls")
    for sql, kind in FUNCTIONS.values():
        if kind == "read":
            mallory.execute(sql).fetchall()
    top = mallory.execute("SELECT cache_key FROM public.get_top_cache_entries(100, 'key', NULL, 'EXPERT')").fetchall()
    assert top and all("expert" in key for (key,) in top)  # lower() was not replaced
    assert evil_calls(su) == []


def test_triggers_ignore_a_hijacked_search_path(pg_url, su):
    """A writer with a hijacked search_path still invalidates exactly the right keys."""
    su.execute("DELETE FROM evil.calls")
    su.execute("SELECT public.get_expert_sessions_with_stats_cached(4, '1 hour')")
    su.execute("SELECT public.get_expert_sessions_with_stats_cached(6, '1 hour')")
    with psycopg.connect(pg_url, autocommit=True) as writer:
        # Temporary tables named like the trigger's transition tables and the cache table come first
        # in an unpinned search_path; neither may be used.
        writer.execute("CREATE TEMP TABLE new_rows (expert_id bigint); INSERT INTO new_rows VALUES (6)")
        writer.execute("CREATE TEMP TABLE query_cache (cache_key text PRIMARY KEY)")
        writer.execute("SET search_path = pg_temp, evil, pg_catalog, public")
        writer.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                       "VALUES (4, pg_catalog.now(), 30, 'completed')")
    su.execute("SELECT cache_private.rollup_stats()")  # marks what the write made stale
    stale = dict(su.execute("SELECT cache_key, data IS NULL FROM public.query_cache WHERE cache_key IN "
                            "('expert_sessions:4', 'expert_sessions:6')").fetchall())
    assert stale == {"expert_sessions:4": True, "expert_sessions:6": False}
    assert evil_calls(su) == []
