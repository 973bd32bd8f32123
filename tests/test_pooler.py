"""Through a real PgBouncer in transaction mode (Debian's pgbouncer, started here): DATABASE_POOL_MODE=transaction
sets the timeouts inside each transaction and prepares nothing, so cached calls, maintenance, the dashboard's
reads and the API work there, and no session state of ours leaks between clients sharing a server connection."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from cachelib import api, apikeys, config, demo, queries
from cachelib.config import Settings
from cachelib.db import Database, connection_kwargs
from cachelib.errors import Busy
from cachelib.maintenance import Actor, Maintenance
from cachelib.manager import CacheManager
from tests.servers import PGBOUNCER, api_in_thread, pg15_unavailable_reason, start_pg15, start_pgbouncer

UNAVAILABLE = pg15_unavailable_reason((PGBOUNCER,))
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))

POOLED = {"DATABASE_POOL_MODE": "transaction", "CACHE_STATEMENT_TIMEOUT": "2s", "CACHE_LOCK_TIMEOUT": "1s"}


@pytest.fixture(scope="module")
def servers():
    """(direct URL, URL through PgBouncer) of one migrated demo database; PgBouncer keeps 2 server connections,
    so the clients of a test really take turns on them."""
    postgres = start_pg15()
    try:
        url = postgres.create_database("app")
        demo.load(url, "small")
        bouncer = start_pgbouncer(postgres, pool_size=2)
        try:
            yield url, bouncer.url("app")
        finally:
            bouncer.stop()
    finally:
        postgres.stop()


@pytest.fixture
def pooled(servers):
    database = Database(servers[1], Settings.from_env(POOLED))
    yield database
    database.close()


def scalar(url: str, sql: str, params: tuple | None = None):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_session_mode_settings_are_refused_by_a_transaction_pooler(servers):
    """Why the setting exists: the startup parameter that carries the timeouts is refused."""
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(servers[1], **connection_kwargs(Settings.from_env({}))).close()
    assert "options" not in connection_kwargs(Settings.from_env(POOLED))


def test_the_timeouts_hold_in_every_transaction_even_when_a_neighbour_changed_them(servers, pooled):
    """A careless client of the same pooler sets session-wide timeouts of its own on the shared server
    connections; ours still hold for each borrow."""
    with psycopg.connect(servers[1], autocommit=True, prepare_threshold=None) as neighbour:
        for _ in range(4):
            neighbour.execute("SET statement_timeout = 0")
            neighbour.execute("SET lock_timeout = 0")
    for _ in range(6):
        assert pooled.value("SELECT current_setting('statement_timeout')") == "2s"
        assert pooled.value("SELECT current_setting('lock_timeout')") == "1s"
    with pytest.raises(psycopg.errors.QueryCanceled):
        pooled.value("SELECT pg_sleep(5)")


def test_a_lock_held_elsewhere_is_busy_after_the_lock_timeout(servers, pooled):
    with psycopg.connect(servers[0]) as holder:
        holder.execute("LOCK TABLE public.products IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(Busy):
            pooled.rows("SELECT count(*) FROM public.products")
        holder.rollback()


def test_cached_calls_from_many_threads_share_two_server_connections(servers, pooled):
    """Repeated statements (psycopg would prepare them after five) from 8 threads on 2 server connections:
    every call answers the direct query's data, nothing falls back, misses fill the cache and hits count."""
    manager = CacheManager(pooled, Settings.from_env(POOLED))
    direct = {ident: scalar(servers[0], "SELECT public.get_product_performance(%s)", (ident,)) for ident in (1, 2, 3)}
    hits_before = scalar(servers[0], "SELECT count(*) FROM cache_private.cache_events WHERE kind = 'hit'")

    def calls(_):
        for _ in range(25):
            for ident in (1, 2, 3):
                assert manager.product_performance(ident) == direct[ident]
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(calls, range(8)))
    assert manager.fallback_counts() == {}
    assert scalar(servers[0], "SELECT count(*) FROM cache_private.cache_events WHERE kind = 'hit'") \
        >= hits_before + 8 * 25 * 3 - 3


def test_invalidation_through_the_pooler(servers, pooled):
    manager = CacheManager(pooled, Settings.from_env(POOLED))
    before = manager.product_performance(2)
    pooled.rows("UPDATE public.products SET name = name || ' (pooled)' WHERE id = 2 RETURNING id")
    after = manager.product_performance(2)
    assert after != before and "(pooled)" in str(after)
    assert after == scalar(servers[0], "SELECT public.get_product_performance(2)")


def test_actors_do_not_leak_between_clients_sharing_server_connections(servers, pooled):
    """Maintenance names its actor in a transaction-local setting: 24 actions by 24 actors from 6 threads
    on 2 server connections must each be audited under their own name."""
    maintenance = Maintenance(pooled)
    names = [f"pooled-admin-{n}" for n in range(24)]
    barrier = threading.Barrier(6)

    def act(chunk):
        barrier.wait()
        for name in chunk:
            maintenance.cleanup(Actor(name, "admin", "api"))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(act, [names[i::6] for i in range(6)]))
    with psycopg.connect(servers[0], autocommit=True) as conn:
        audited = conn.execute("SELECT actor FROM cache_private.maintenance_audit WHERE action = 'cleanup' "
                               "AND actor LIKE 'pooled-admin-%%'").fetchall()
        logged = conn.execute("SELECT triggered_by FROM public.cache_cleanup_log "
                              "WHERE triggered_by LIKE '%%pooled-admin-%%'").fetchall()
    assert sorted(a for (a,) in audited) == sorted(f"{name} (api)" for name in names)
    assert len(logged) == len(names)


def test_every_dashboard_read_through_the_pooler(pooled):
    """The reads the pages make, each through the pooler (the pages call these through cachelib.ui.read)."""
    reads = {
        "overview": lambda: queries.overview(pooled),
        "health": lambda: queries.health(pooled),
        "top_entries": lambda: queries.top_entries(limit=20, database=pooled),
        "hit_rate_series": lambda: queries.hit_rate_series(30, "day", None, pooled),
        "load_reduction_series": lambda: queries.load_reduction_series(30, "day", pooled),
        "fallback_usage": lambda: queries.fallback_usage(7, pooled),
        "cleanup_log": lambda: queries.cleanup_log(10, pooled),
        "target_status": lambda: queries.target_status(database=pooled),
        "deployment": lambda: queries.deployment(pooled),
    }
    for name, read in reads.items():
        for _ in range(6):  # past psycopg's prepare threshold
            assert read() is not None, name


def test_the_dashboard_through_the_pooler(servers, monkeypatch, credentials_file, navigation_mode):
    from tests.test_dashboard_apptest import logged_in, render_every_page

    monkeypatch.setenv("DATABASE_URL", servers[1])
    for name, value in POOLED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DASHBOARD_AUTH_FILE", str(credentials_file))
    monkeypatch.setenv("DASHBOARD_COOKIE_KEY", "pooler-cookie-key-0123456789abcdef")
    monkeypatch.setenv("CACHE_DEMO_TRAFFIC", "off")
    monkeypatch.setattr(config, "_cached", None)
    at = logged_in("admin")
    render_every_page(at)
    at.switch_page("pages/maintenance.py").run()
    at.button(key="run_health_check").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert scalar(servers[0], "SELECT actor FROM cache_private.maintenance_audit ORDER BY id DESC LIMIT 1") \
        == "admin (dashboard)"
    monkeypatch.setattr(config, "_cached", None)


def test_the_api_through_the_pooler(servers, pooled):
    key = apikeys.create_key("pooled-api-admin", "admin", pooled)
    app = api.create_app(pooled, metrics_key_required=False, throttle=api.FailureThrottle(base_delay=0))
    headers = {"Authorization": f"Bearer {key}"}
    with api_in_thread(pooled, app) as base:
        for _ in range(6):
            assert httpx.get(f"{base}/api/admin/cache/metrics", headers=headers).status_code == 200
            assert httpx.get(f"{base}/metrics").status_code == 200
        bad = httpx.get(f"{base}/api/admin/cache/metrics", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        done = httpx.post(f"{base}/api/admin/cache/maintenance?action=invalidate&cache=product_performance",
                          headers=headers)
        assert done.status_code == 200, done.text
        refused = httpx.post(f"{base}/api/admin/cache/maintenance?action=cache_duration&cache=product_performance"
                             "&duration=forever", headers=headers)
        assert refused.status_code == 400, refused.text
