"""The catalog of caches (0017, cachelib/catalog.py): a cache is a row, and registering one builds it.

A third function is registered on the demo schema (expert session counts per expert) and then
looked for everywhere: the wrapper, its triggers (insert, update, delete, truncate), its grants,
the guide's Step 1 count, verify, the manager with fallback, the overview, top entries, hit-rate
series, the monthly review, the API's metrics and caches, the Prometheus labels and the health
analysis, with no code change. No stale read after commit for a generated cache is proved by
tests/test_engine_concurrency.py, whose cache is registered the same way.

Attacks: a signed-in role cannot register, remove or re-time a cache; functions that would run
someone else's code, read a caller's temporary tables, or whose keys a writer could not name
are refused; a viewer's request is refused and audited.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest

from cachelib import actions, api, apikeys, catalog, config, queries, review, verify
from cachelib.db import Database
from cachelib.errors import Busy, InvalidInput, PermissionDenied
from cachelib.maintenance import Actor
from cachelib.manager import CacheManager
from tests.servers import flush_fast_hits, login_url

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True

ADMIN = Actor("catalog-admin", "admin", "cli")
VIEWER = Actor("catalog-viewer", "viewer", "cli")
THIRD = "expert_session_counts"

THIRD_FUNCTION = """
CREATE FUNCTION public.get_expert_session_counts(p_expert_id bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
  SELECT COALESCE(jsonb_agg(jsonb_build_object('expert_id', expert_id, 'sessions', n) ORDER BY expert_id), '[]')
  FROM (SELECT expert_id, count(*) AS n FROM expert_sessions
        WHERE p_expert_id IS NULL OR expert_id = p_expert_id GROUP BY expert_id) t
$$;
"""
FUNCTIONS = THIRD_FUNCTION + """CREATE FUNCTION public.get_order_total() RETURNS jsonb
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
  SELECT jsonb_build_array(jsonb_build_object('orders', count(*))) FROM orders
$$;
-- Refused, each for its reason
CREATE FUNCTION public.not_jsonb(p bigint) RETURNS integer LANGUAGE sql SET search_path = public AS $$ SELECT 1 $$;
CREATE FUNCTION public.a_set(p bigint) RETURNS SETOF jsonb LANGUAGE sql
  SET search_path = public AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.two_args(a bigint, b bigint) RETURNS jsonb LANGUAGE sql
  SET search_path = public AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.text_key(p text) RETURNS jsonb LANGUAGE sql
  SET search_path = public AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.no_path(p bigint) RETURNS jsonb LANGUAGE sql AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.temp_first(p bigint) RETURNS jsonb LANGUAGE sql
  SET search_path = public AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.temp_middle(p bigint) RETURNS jsonb LANGUAGE sql
  SET search_path = pg_temp, public AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.taken(p bigint) RETURNS jsonb LANGUAGE sql
  SET search_path = public, pg_temp AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.taken_cached(p bigint) RETURNS jsonb LANGUAGE sql
  SET search_path = public AS $$ SELECT '[]'::jsonb $$;
-- Cacheable, never registered: the source checks are tried on these
CREATE FUNCTION public.key_probe(p bigint) RETURNS jsonb LANGUAGE sql
  SET search_path = public, pg_temp AS $$ SELECT '[]'::jsonb $$;
CREATE FUNCTION public.zero_probe() RETURNS jsonb LANGUAGE sql
  SET search_path = public, pg_temp AS $$ SELECT '[]'::jsonb $$;
"""


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def register(conn, function, sources, duration="1 hour", name=None):
    return val(conn, "SELECT cache_private.register_cache(%s, %s, %s::interval, %s)",
               [function, sources, duration, name])


def refusal(conn, function, sources, name=None) -> str:
    with pytest.raises(psycopg.Error) as caught:
        register(conn, function, sources, name=name)
    assert caught.value.sqlstate == "22023", caught.value
    return caught.value.diag.message_primary


def kinds(conn, key) -> list[str]:
    """The events of ``key`` not rolled up yet, oldest first."""
    flush_fast_hits(conn)
    return [r[0] for r in conn.execute(
        "SELECT kind FROM cache_private.cache_events, generate_series(1, weight) WHERE cache_key = %s "
        "ORDER BY event_at, ctid", [key])]


# --- in SQL, on both servers -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def owner(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(FUNCTIONS)
        yield conn


@pytest.fixture(scope="module")
def third(owner):
    described = register(owner, "public.get_expert_session_counts", ["public.expert_sessions:expert_id",
                                                                     "public.experts:id"], "1 hour", THIRD)
    return described


def test_the_guides_caches_are_catalog_entries_with_their_signatures(owner):
    rows = owner.execute("SELECT cache_name, wrapper_signature, builtin FROM public.cache_catalog "
                         "WHERE builtin ORDER BY 1").fetchall()
    assert rows == [("expert_sessions", "public.get_expert_sessions_with_stats_cached(bigint,interval)", True),
                    ("product_performance", "public.get_product_performance_cached(bigint,interval)", True)]
    # The guide's calls, verbatim, still work.
    assert isinstance(val(owner, "SELECT get_expert_sessions_with_stats_cached(NULL, '5 minutes')"), list)
    assert isinstance(val(owner, "SELECT get_product_performance_cached(NULL, '15 minutes')"), list)


def test_registering_builds_the_wrapper_triggers_and_grants(owner, third):
    assert third["wrapper"] == "public.get_expert_session_counts_cached(bigint,interval)"
    assert {s["table"] for s in third["sources"]} == {"public.expert_sessions", "public.experts"}
    triggers = {(r[0], r[1]) for r in owner.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE %s", [f"invalidate_{THIRD}%"])}
    assert triggers == {(table, f"invalidate_{THIRD}_{op}") for table in ("expert_sessions", "experts")
                        for op in ("ins", "upd", "del", "truncate")}
    grants = dict(owner.execute("""
        SELECT r, has_function_privilege(r, 'public.get_expert_session_counts_cached(bigint,interval)', 'EXECUTE')
        FROM unnest(ARRAY['anon', 'authenticated', 'cache_admin', 'service_role']) r""").fetchall())
    assert grants == {"anon": False, "authenticated": True, "cache_admin": True, "service_role": True}
    assert val(owner, "SELECT count(*) FROM information_schema.routines WHERE routine_schema = 'public' "
                      "AND routine_name LIKE '%cache%' AND routine_name <> 'taken_cached'") == 16
    audit = owner.execute("SELECT outcome, result->>'cache' FROM cache_private.maintenance_audit "
                          "WHERE action = 'cache_add' ORDER BY id DESC LIMIT 1").fetchone()
    assert audit == ("ok", THIRD)


def test_a_write_invalidates_only_the_keys_of_its_rows(owner, third):
    fetch = "SELECT public.get_expert_session_counts_cached(%s, '1 hour')"
    before = val(owner, fetch, [3])
    other = val(owner, fetch, [4])
    assert val(owner, fetch, [3]) == before and val(owner, fetch, [4]) == other  # hits
    owner.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                  "SELECT 3, started_at, duration_minutes, status FROM public.expert_sessions LIMIT 1")
    after = val(owner, fetch, [3])
    assert after[0]["sessions"] == before[0]["sessions"] + 1  # no stale read after commit
    assert kinds(owner, f"{THIRD}:4")[-1] == "hit"
    assert val(owner, fetch, [4]) == other and kinds(owner, f"{THIRD}:4")[-1] == "hit"  # untouched key still served


def test_truncate_invalidates_the_whole_cache(owner, third):
    owner.execute("CREATE TABLE public.cat_scratch (id bigint, expert_id bigint)")
    owner.execute("""CREATE FUNCTION public.get_scratch_count(p_expert_id bigint) RETURNS jsonb LANGUAGE sql STABLE
                     SET search_path = public, pg_temp AS $$
                     SELECT jsonb_build_array(jsonb_build_object('n', count(*))) FROM cat_scratch
                     WHERE expert_id = p_expert_id $$""")
    register(owner, "public.get_scratch_count", ["public.cat_scratch:expert_id"])
    owner.execute("INSERT INTO public.cat_scratch VALUES (1, 7), (2, 7)")
    fetch = "SELECT public.get_scratch_count_cached(7, '1 hour')"
    assert val(owner, fetch)[0]["n"] == 2 and val(owner, fetch)[0]["n"] == 2
    owner.execute("TRUNCATE public.cat_scratch")
    assert val(owner, fetch)[0]["n"] == 0


def test_a_source_without_a_key_column_invalidates_the_whole_cache(owner):
    register(owner, "public.get_order_total", ["public.orders"], name="order_total")
    fetch = "SELECT public.get_order_total_cached('1 hour')"
    first = val(owner, fetch)[0]["orders"]
    assert val(owner, fetch)[0]["orders"] == first and kinds(owner, "order_total:all")[-1] == "hit"
    owner.execute("DELETE FROM public.orders WHERE id = (SELECT max(id) FROM public.orders)")
    assert val(owner, fetch)[0]["orders"] == first - 1


@pytest.mark.parametrize("function, sources, expected", [
    ("public.nope", ["public.orders"], "no function public.nope exists"),
    ("public.not_jsonb", ["public.orders"], "returns integer: only a function returning one jsonb value"),
    ("public.a_set", ["public.orders"], "returns a set"),
    ("public.two_args", ["public.orders"], "takes 2 arguments"),
    ("public.text_key", ["public.orders"], "must be smallint, integer, bigint or uuid"),
    ("public.no_path", ["public.orders"], "must set its own search_path with pg_temp last"),
    ("public.temp_first", ["public.orders"], "must set its own search_path with pg_temp last"),
    ("public.temp_middle", ["public.orders"], "must set its own search_path with pg_temp last"),
    ("pg_catalog.now", ["public.orders"], "is not a function of the application"),
    ("public.get_expert_sessions_with_stats", ["public.orders"], "is cached already (cache expert_sessions)"),
    ("public.taken", ["public.orders"], "a function public.taken_cached exists already"),
    ("public.zero_probe", [], "give at least one source table"),
    ("public.key_probe", ["public.nosuch"], "source table public.nosuch does not exist"),
    ("public.key_probe", ["public.query_cache_expires_at_idx"], "(it is not a table)"),
    ("public.zero_probe", ["public.orders:product_id"], "takes no argument"),
    ("public.key_probe", ["public.orders:nosuch"], "has no column nosuch"),
    ("public.key_probe", ["public.experts:name"], "is text but the function's key is bigint"),
    ("public.key_probe", ["public.orders", "public.orders"], "is given twice"),
    ("x(", ["public.orders"], "no function public.x( exists"),
])
def test_what_cannot_be_cached_is_refused_with_the_reason(owner, third, function, sources, expected):
    before = val(owner, "SELECT count(*) FROM cache_private.caches")
    name = "refused_" + str(abs(hash(function)) % 10_000)
    assert expected in refusal(owner, function, sources, name=name)
    assert val(owner, "SELECT count(*) FROM cache_private.caches") == before  # nothing half-done


def test_a_function_owned_by_another_role_is_refused(owner):
    owner.execute("DROP ROLE IF EXISTS cat_other")
    owner.execute("CREATE ROLE cat_other")
    owner.execute("""CREATE FUNCTION public.other_owned(p bigint) RETURNS jsonb LANGUAGE sql
                     SET search_path = public AS $$ SELECT '[]'::jsonb $$""")
    owner.execute("ALTER FUNCTION public.other_owned(bigint) OWNER TO cat_other")
    try:
        # Its owner could rewrite it later; the wrapper would run that code as the cache's owner.
        assert "is owned by cat_other, not by the owner of the cache" in refusal(owner, "public.other_owned",
                                                                                 ["public.orders"])
    finally:
        owner.execute("DROP FUNCTION public.other_owned(bigint)")
        owner.execute("DROP ROLE cat_other")


def test_names_are_checked(owner):
    assert "use 1 to 40 lower-case letters" in refusal(owner, "public.get_order_total", ["public.orders"],
                                                       name="Bad-Name")
    assert "a cache named expert_sessions exists already" in refusal(owner, "public.get_order_total",
                                                                     ["public.orders"], name="expert_sessions")


def test_a_runtime_duration_wins_over_every_callers(owner, third):
    fetch = "SELECT public.get_expert_session_counts_cached(9, %s::interval)"
    owner.execute("SELECT cache_private.set_cache_duration(%s, '2 hours')", [THIRD])
    try:
        val(owner, fetch, ["5 minutes"])
        assert val(owner, "SELECT ttl FROM public.query_cache WHERE cache_key = %s", [f"{THIRD}:9"]).total_seconds() \
            == 7200
        with pytest.raises(psycopg.Error, match="p_cache_duration must be a positive interval"):
            val(owner, fetch, ["-1 minute"])  # a bad duration is still refused
        row = owner.execute("SELECT duration_override, action FROM public.cache_catalog, "
                            "(SELECT action FROM cache_private.maintenance_audit ORDER BY id DESC LIMIT 1) a "
                            "WHERE cache_name = %s", [THIRD]).fetchone()
        assert row[0].total_seconds() == 7200 and row[1] == "cache_duration"
    finally:
        owner.execute("SELECT cache_private.set_cache_duration(%s, NULL)", [THIRD])
    assert "PERFORM" not in val(owner, "SELECT prosrc FROM pg_proc WHERE proname = 'get_expert_session_counts_cached'")


def test_the_guides_caches_cannot_be_removed(owner):
    with pytest.raises(psycopg.Error, match="one of the deployment guide's caches"):
        owner.execute("SELECT cache_private.unregister_cache('expert_sessions')")


def test_removing_drops_the_wrapper_triggers_entries_and_statistics(owner):
    owner.execute("""CREATE FUNCTION public.get_short_lived(p_expert_id bigint) RETURNS jsonb LANGUAGE sql STABLE
                     SET search_path = public, pg_temp AS $$ SELECT jsonb_build_array(p_expert_id) $$""")
    register(owner, "public.get_short_lived", ["public.experts:id"])
    val(owner, "SELECT public.get_short_lived_cached(1, '1 hour')")
    owner.execute("SELECT cache_private.rollup_stats()")
    result = val(owner, "SELECT cache_private.unregister_cache('short_lived')")
    assert result["entries_deleted"] == 1
    assert val(owner, "SELECT to_regprocedure('public.get_short_lived_cached(bigint,interval)')") is None
    assert val(owner, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'invalidate\\_short\\_lived%%'") == 0
    for table in ("public.query_cache", "cache_private.cache_stats_hourly", "cache_private.cache_sources",
                  "cache_private.caches"):
        assert val(owner, f"SELECT count(*) FROM {table} WHERE cache_name = 'short_lived'") == 0, table


def test_signed_in_roles_read_the_catalog_view_but_cannot_change_it(owner, third, pg_url):
    owner.execute("DROP ROLE IF EXISTS cat_eve")
    owner.execute("CREATE ROLE cat_eve LOGIN IN ROLE authenticated")
    owner.execute(f'GRANT TEMPORARY ON DATABASE "{owner.info.dbname}" TO cat_eve')
    try:
        with psycopg.connect(login_url(pg_url, "cat_eve"), autocommit=True) as eve:
            assert THIRD in {r[0] for r in eve.execute("SELECT cache_name FROM public.cache_catalog")}
            # Eve calls the generated wrapper like the guide's.
            assert isinstance(val(eve, "SELECT public.get_expert_session_counts_cached(1, '1 hour')"), list)
            for sql in ("SELECT cache_private.register_cache('public.get_order_total', ARRAY['public.orders'], "
                        "'1 hour', 'eves')",
                        f"SELECT cache_private.set_cache_duration('{THIRD}', '1 second')",
                        f"SELECT cache_private.unregister_cache('{THIRD}')",
                        "SELECT * FROM cache_private.cache_sources",
                        "CREATE OR REPLACE VIEW public.cache_catalog AS SELECT 1"):
                with pytest.raises(psycopg.Error) as caught:
                    eve.execute(sql)
                assert caught.value.sqlstate == "42501", sql
            # A temporary table named like the function's source must not feed the cache: the function's
            # search_path names pg_temp last (anything else is refused at registration).
            eve.execute("CREATE TEMP TABLE expert_sessions (expert_id bigint)")
            eve.execute("INSERT INTO expert_sessions SELECT 77 FROM generate_series(1, 5000)")
            served = val(eve, "SELECT public.get_expert_session_counts_cached(77, '1 hour')")
        truth = val(owner, "SELECT public.get_expert_session_counts(77)")
        assert served == truth and all(row["sessions"] < 5000 for row in truth)
        assert val(owner, "SELECT public.get_expert_session_counts_cached(77, '1 hour')") == truth
        owner.execute("SET ROLE anon")
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                owner.execute("SELECT * FROM public.cache_catalog")
        finally:
            owner.execute("RESET ROLE")
    finally:
        owner.execute("DROP OWNED BY cat_eve")
        owner.execute(f'REVOKE ALL ON DATABASE "{owner.info.dbname}" FROM cat_eve')
        owner.execute("DROP ROLE cat_eve")


# --- everywhere in the application (PostgreSQL 18) ---------------------------------------------------


@pytest.fixture(scope="module")
def app_db(db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(FUNCTIONS)
        conn.execute("DROP FUNCTION public.taken_cached(bigint)")  # verify would rightly call it unexpected
    database = Database(db_url, config.Settings.from_env({}))
    yield database
    database.close()


@pytest.fixture(scope="module")
def registered(app_db):
    result = actions.run(app_db, ADMIN, "cache_add", {
        "function": "public.get_expert_session_counts",
        "source": ["public.expert_sessions:expert_id", "public.experts:id"],
        "duration": "20m", "name": THIRD, "description": "Sessions per expert"})
    assert result.ok and result.details["cache"] == THIRD
    manager = CacheManager(app_db, config.Settings.from_env({}))
    for expert in (None, 1, 2, 1, 2, 1):
        manager.call(THIRD, expert)
    return manager


def test_the_manager_calls_it_and_falls_back_when_its_wrapper_is_gone(app_db, registered):
    assert registered.call(THIRD, 1)[0]["expert_id"] == 1
    with pytest.raises(InvalidInput, match="expert_id must be a positive whole number"):
        registered.call(THIRD, -1)
    manager = CacheManager(app_db, config.Settings.from_env({}))
    with psycopg.connect(app_db.url, autocommit=True) as conn:
        conn.execute("ALTER FUNCTION public.get_expert_session_counts_cached(bigint, interval) "
                     "RENAME TO broken_wrapper")
        try:
            assert manager.call(THIRD, 2)[0]["expert_id"] == 2  # from the direct function
            assert manager.fallback_counts() == {THIRD: 1}
        finally:
            conn.execute("ALTER FUNCTION public.broken_wrapper(bigint, interval) "
                         "RENAME TO get_expert_session_counts_cached")


def test_it_appears_on_every_read_without_code_changes(app_db, registered):
    assert THIRD in queries.cache_names(app_db)
    assert THIRD in set(queries.overview(app_db)["cache_name"])
    assert THIRD in set(queries.top_entries(50, database=app_db)["cache_name"])
    assert THIRD in set(queries.hit_rate_series(1, "hour", None, app_db)["cache_name"])
    assert f"hit_rate:{THIRD}" in set(queries.health(app_db)["check_name"])
    health = queries.health(app_db).set_index("check_name").loc[f"hit_rate:{THIRD}"]
    assert health["recommendation"]  # not NULL for a cache without an environment variable
    now = datetime.now(UTC)
    month = review.build(now.date().replace(day=1), app_db)
    assert THIRD in set(month.per_cache["cache_name"])
    metrics = api.metrics_report(app_db)
    assert THIRD in {c["cache_name"] for c in metrics["caches"]}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(api.CacheCollector(lambda: app_db))
    assert f'pgcache_entries{{cache="{THIRD}"}}' in generate_latest(registry).decode()


def test_verify_expects_it_and_checks_its_triggers_grants_and_call(app_db, registered):
    checks = {c.name: c for c in verify.run_checks(app_db.url, config=config.Settings.from_env({}))}
    assert checks["cache functions"].status == "pass" and "1 registered" in checks["cache functions"].detail
    assert checks["invalidation triggers"].status == "pass"
    assert checks[f"cached call: {THIRD}"].status == "pass"
    assert all(checks[f"grants: {r}"].status == "pass" for r in ("anon", "authenticated", "cache_admin"))
    with psycopg.connect(app_db.url, autocommit=True) as conn:
        conn.execute(f"DROP TRIGGER invalidate_{THIRD}_upd ON public.experts")
        checks = {c.name: c for c in verify.run_checks(app_db.url, config=config.Settings.from_env({}))}
        assert checks["invalidation triggers"].status == "fail"
        assert f"invalidate_{THIRD}_upd is missing on public.experts" in checks["invalidation triggers"].detail
        fix = checks["invalidation triggers"].fix
        assert fix.startswith(f"SELECT cache_private.attach_source('{THIRD}', 'public.experts', 'id');")
        conn.execute(fix)  # the fix it prints repairs it
    checks = {c.name: c for c in verify.run_checks(app_db.url, config=config.Settings.from_env({}))}
    assert checks["invalidation triggers"].status == "pass"


def test_verify_names_a_registered_function_that_was_dropped(app_db, registered):
    with psycopg.connect(app_db.url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute("DROP FUNCTION public.get_expert_session_counts(bigint)")
        try:
            check = verify.catalog_check(conn, catalog.read(conn))
        finally:
            conn.execute("ROLLBACK")
    assert check.status == "fail" and f"cache {THIRD}: its function" in check.detail
    assert f"python -m cachelib cache remove {THIRD}" in check.fix


def test_the_listing_says_where_each_duration_comes_from(app_db, registered):
    rows = {row["cache"]: row for row in catalog.listing(config.Settings.from_env({}), app_db)}
    assert rows["expert_sessions"]["duration_source"] == "CACHE_EXPERT_SESSIONS_DURATION (default)"
    assert rows[THIRD]["duration"] == "20m" and rows[THIRD]["duration_source"] == "registered with the cache"
    env = config.Settings.from_env({"CACHE_ANALYTICS_DURATION": "30m"})
    assert catalog.duration_in_effect(catalog.find("product_performance", catalog.caches(app_db)), env)[0].seconds \
        == 1800
    actions.run(app_db, ADMIN, "cache_duration", {"cache": THIRD, "duration": "45m"})
    try:
        row = {r["cache"]: r for r in catalog.listing(config.Settings.from_env({}), app_db)}[THIRD]
        assert row["duration"] == "45m" and row["duration_source"].startswith("set by an admin at runtime")
        events = queries.events(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), app_db)
        assert "duration_change" in set(events["kind"])  # charted like the other admin actions
    finally:
        actions.run(app_db, ADMIN, "cache_duration", {"cache": THIRD, "duration": "default"})


def test_a_viewer_is_refused_and_audited(app_db, registered):
    with pytest.raises(PermissionDenied):
        actions.run(app_db, VIEWER, "cache_remove", {"cache": THIRD})
    with psycopg.connect(app_db.url) as conn:
        row = conn.execute("SELECT outcome, actor FROM cache_private.maintenance_audit WHERE action = 'cache_remove' "
                           "ORDER BY id DESC LIMIT 1").fetchone()
    assert row == ("refused", "catalog-viewer (cli)")
    assert THIRD in queries.cache_names(app_db)


def test_removing_a_cache_in_use_says_so_and_changes_nothing(app_db, registered):
    """A computation of the cache still holds its row: the removal waits CACHE_LOCK_TIMEOUT, then is refused
    as Busy (the API's 409), and the cache is left exactly as it was."""
    impatient = Database(app_db.url, config.Settings.from_env({"CACHE_LOCK_TIMEOUT": "1s"}))
    with psycopg.connect(app_db.url) as holder:
        holder.execute("SELECT 1 FROM public.query_cache WHERE cache_name = %s FOR UPDATE", [THIRD])
        with pytest.raises(Busy, match="nothing was changed"):
            actions.run(impatient, ADMIN, "cache_remove", {"cache": THIRD})
        holder.rollback()
    impatient.close()
    assert THIRD in queries.cache_names(app_db)
    with psycopg.connect(app_db.url) as conn:
        assert conn.execute("SELECT to_regprocedure('public.get_expert_session_counts_cached(bigint,interval)')"
                            ).fetchone()[0] is not None


@pytest.mark.parametrize("params, message", [
    ({"function": "public.get_order_total"}, "needs source="),
    ({"source": "public.orders"}, "needs function="),
    ({"function": "public.get_order_total", "source": "public.orders", "duration": "5x"}, "is not a duration"),
    ({"function": "public.get_order_total", "source": " , "}, "give at least one source"),
    ({"function": "public.get_order_total\x00", "source": "public.orders"}, "NUL"),
])
def test_bad_requests_are_refused_at_the_edge(app_db, params, message):
    with pytest.raises(InvalidInput, match=message):
        actions.run(app_db, ADMIN, "cache_add", params)


def test_the_api_lists_registers_and_removes(app_db, registered):
    keys = {"admin": apikeys.create_key("catalog-admin-key", "admin", app_db),
            "viewer": apikeys.create_key("catalog-viewer-key", "viewer", app_db)}
    app = api.create_app(app_db, metrics_key_required=False, throttle=api.FailureThrottle(base_delay=0))
    with TestClient(app, raise_server_exceptions=False) as client:
        listed = client.get("/api/admin/cache/caches", headers={"Authorization": f"Bearer {keys['viewer']}"})
        assert listed.status_code == 200 and THIRD in {c["cache"] for c in listed.json()["caches"]}
        add = client.post("/api/admin/cache/maintenance", headers={"Authorization": f"Bearer {keys['admin']}"},
                          params={"action": "cache_add", "function": "public.get_order_total",
                                  "source": "public.orders,public.products", "name": "api_orders"})
        assert add.status_code == 200, add.text
        assert {s["table"] for s in add.json()["details"]["sources"]} == {"public.orders", "public.products"}
        bad = client.post("/api/admin/cache/maintenance", headers={"Authorization": f"Bearer {keys['admin']}"},
                          params={"action": "cache_add", "function": "public.two_args", "source": "public.orders"})
        assert bad.status_code == 400 and "takes 2 arguments" in bad.json()["detail"]
        viewer = client.post("/api/admin/cache/maintenance", headers={"Authorization": f"Bearer {keys['viewer']}"},
                             params={"action": "cache_remove", "cache": "api_orders"})
        assert viewer.status_code == 403
        gone = client.post("/api/admin/cache/maintenance", headers={"Authorization": f"Bearer {keys['admin']}"},
                           params={"action": "cache_remove", "cache": "api_orders"})
        assert gone.status_code == 200 and "api_orders" not in queries.cache_names(app_db)
