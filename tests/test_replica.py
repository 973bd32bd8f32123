"""A real streaming standby of Debian's PostgreSQL 15 (pg_basebackup): the cache answers there, its reads
are counted on the primary, nothing stale is served, and the dashboard and API read there while their
actions go to the primary (DATABASE_READ_URL)."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import httpx
import psycopg
import pytest

from cachelib import api, apikeys, config, demo
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.manager import CacheManager
from tests.servers import api_in_thread, login_url, pg15_unavailable_reason, start_pg15, start_standby, wait_for_replay

pytestmark = pytest.mark.skipif(pg15_unavailable_reason() is not None, reason=str(pg15_unavailable_reason()))


@pytest.fixture(scope="module")
def cluster():
    """(primary URL, standby URL) of one migrated demo database and its hot standby."""
    primary = start_pg15()
    try:
        url = primary.create_database("app")
        demo.load(url, "small")
        standby = start_standby(primary)
        try:
            standby_url = standby.url("app")
            wait_for_replay(url, standby_url)
            yield url, standby_url
        finally:
            standby.stop()
    finally:
        primary.stop()


@contextmanager
def databases(primary_url: str, standby_url: str):
    primary, standby = Database(primary_url, Settings.from_env({})), Database(standby_url, Settings.from_env({}))
    try:
        yield primary, standby
    finally:
        primary.close()
        standby.close()


def scalar(url: str, sql: str, params: tuple = ()):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def events(url: str, key: str, kind: str) -> int:
    return scalar(url, "SELECT count(*) FROM cache_private.cache_events WHERE cache_key = %s AND kind = %s",
                  (key, kind))


def direct(url: str, product_id: int) -> list[dict]:
    return scalar(url, "SELECT public.get_product_performance(%s)", (product_id,))


def test_the_standby_is_a_standby(cluster):
    _, standby_url = cluster
    assert scalar(standby_url, "SELECT pg_is_in_recovery()") is True
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        scalar(standby_url, "INSERT INTO cache_private.cache_events (event_at, cache_name, kind) "
                            "VALUES (now(), 'product_performance', 'hit') RETURNING 1")


def test_hits_on_the_standby_are_served_and_counted_on_the_primary(cluster):
    primary_url, standby_url = cluster
    with databases(primary_url, standby_url) as (primary, standby):
        CacheManager(primary).product_performance(1)  # stored on the primary
        wait_for_replay(primary_url, standby_url)
        hits_before = events(primary_url, "product_performance:1", "hit")
        manager = CacheManager(primary, read_database=standby)
        for _ in range(5):
            assert manager.product_performance(1) == direct(standby_url, 1)
        assert manager.replica_reads_waiting()[0] + manager.flush_replica_reads() >= 5
        assert manager.replica_reads_waiting() == (0, 0)
        assert events(primary_url, "product_performance:1", "hit") == hits_before + 5
        assert manager.fallback_counts() == {}


def test_a_miss_on_the_standby_is_computed_not_stored_and_counted_on_the_primary(cluster):
    primary_url, standby_url = cluster
    with databases(primary_url, standby_url) as (primary, standby):
        manager = CacheManager(primary, read_database=standby)
        assert manager.product_performance(4) == direct(standby_url, 4)
        manager.flush_replica_reads()
        assert scalar(primary_url, "SELECT count(*) FROM public.query_cache WHERE cache_key = 'product_performance:4'"
                                   " AND data IS NOT NULL") == 0
        assert scalar(primary_url, "SELECT reason FROM cache_private.cache_events "
                                   "WHERE cache_key = 'product_performance:4' AND kind = 'miss'") \
            == "not stored: on a read replica"


def test_counted_reads_reach_the_statistics_of_the_primary(cluster):
    primary_url, standby_url = cluster
    with databases(primary_url, standby_url) as (primary, standby):
        CacheManager(primary).expert_sessions(2)
        wait_for_replay(primary_url, standby_url)
        manager = CacheManager(primary, read_database=standby)
        for _ in range(3):
            manager.expert_sessions(2)
        manager.flush_replica_reads()
        hits = scalar(primary_url, "SELECT hit_count FROM public.query_cache WHERE cache_key = 'expert_sessions:2'")
        scalar(primary_url, "SELECT cache_private.rollup_stats()")
        assert scalar(primary_url, "SELECT hit_count FROM public.query_cache "
                                   "WHERE cache_key = 'expert_sessions:2'") >= hits + 3


def test_no_stale_read_on_the_standby_after_a_write_on_the_primary(cluster):
    primary_url, standby_url = cluster
    with databases(primary_url, standby_url) as (primary, standby):
        CacheManager(primary).product_performance(2)
        wait_for_replay(primary_url, standby_url)
        manager = CacheManager(primary, read_database=standby)
        before = manager.product_performance(2)
        with psycopg.connect(primary_url, autocommit=True) as conn:
            conn.execute("UPDATE public.products SET name = name || ' (renamed)' WHERE id = 2")
        wait_for_replay(primary_url, standby_url)
        after = manager.product_performance(2)
        assert after == direct(standby_url, 2) != before
        assert "(renamed)" in str(after)


def test_plain_sql_on_the_standby_is_served(cluster):
    """SQL written from the guide, run on the standby by hand: served, and not counted (nothing forwards it)."""
    primary_url, standby_url = cluster
    with psycopg.connect(standby_url, autocommit=True) as conn:
        data = conn.execute("SELECT public.get_product_performance_cached(3, '15 minutes')").fetchone()[0]
        assert data == direct(standby_url, 3)


def test_only_server_side_roles_may_forward_reads(cluster):
    """A signed-in user (a login role in authenticated) could inflate hit rates by forwarding reads."""
    primary_url, _ = cluster
    with psycopg.connect(primary_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS replica_user; CREATE ROLE replica_user LOGIN IN ROLE authenticated")
        conn.execute("DROP ROLE IF EXISTS replica_app; CREATE ROLE replica_app LOGIN IN ROLE service_role")
    read = ('[{"at": "2026-01-01T00:00:00Z", "cache": "product_performance", "key": "product_performance:1", '
            '"kind": "hit", "elapsed_ms": 1, "compute_ms": 1}]')
    with psycopg.connect(login_url(primary_url, "replica_user"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT public.record_replica_reads(%s::jsonb)", (read,))
    with psycopg.connect(login_url(primary_url, "replica_app"), autocommit=True) as conn:
        assert conn.execute("SELECT public.record_replica_reads(%s::jsonb)", (read,)).fetchone()[0] == 1


@pytest.mark.parametrize("events_json, why", [
    ('{"kind": "hit"}', "a JSON array"),
    ('[{"at": "2026-01-01T00:00:00Z", "cache": "nope", "key": "k", "kind": "hit", "elapsed_ms": 1, '
     '"compute_ms": 1}]', "read 1"),
    ('[{"at": "2026-01-01T00:00:00Z", "cache": "product_performance", "key": "k", "kind": "stale", '
     '"elapsed_ms": 1, "compute_ms": 1}]', "read 1"),
    ('[{"at": "2026-01-01T00:00:00Z", "cache": "product_performance", "key": "k", "kind": "hit", '
     '"elapsed_ms": -1, "compute_ms": 1}]', "read 1"),
])
def test_forwarded_reads_are_checked_and_refused_whole(cluster, events_json, why):
    primary_url, _ = cluster
    before = scalar(primary_url, "SELECT count(*) FROM cache_private.cache_events")
    with psycopg.connect(primary_url, autocommit=True) as conn:
        good = ('{"at": "2026-01-01T00:00:00Z", "cache": "product_performance", "key": "k", "kind": "hit", '
                '"elapsed_ms": 1, "compute_ms": 1}')
        payload = events_json if not events_json.startswith("[") else f"[{good}, {events_json[1:]}"
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=why.replace("read 1", "read 2")):
            conn.execute("SELECT public.record_replica_reads(%s::jsonb)", (payload,))
    assert scalar(primary_url, "SELECT count(*) FROM cache_private.cache_events") == before


def test_reads_wait_while_the_primary_refuses_them(cluster, caplog):
    """Nothing lost while the primary cannot take them: the manager keeps them and forwards them later."""
    primary_url, standby_url = cluster
    with psycopg.connect(primary_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS replica_user2; CREATE ROLE replica_user2 LOGIN IN ROLE authenticated")
    refusing = Database(login_url(primary_url, "replica_user2"), Settings.from_env({}))
    with databases(primary_url, standby_url) as (primary, standby):
        manager = CacheManager(refusing, read_database=standby)
        try:
            with caplog.at_level(logging.WARNING, "cachelib.manager"):
                manager.product_performance(1)
                assert manager.flush_replica_reads() == 0
            assert manager.replica_reads_waiting()[0] == 1
            assert "kept for the next try" in caplog.text
            manager.database = primary  # the primary takes them again
            assert manager.flush_replica_reads() == 1
        finally:
            refusing.close()


def test_dashboard_with_a_read_replica_reads_there_and_acts_on_the_primary(cluster, monkeypatch, credentials_file,
                                                                          navigation_mode):
    """Every page renders from the standby; the health check button writes its history on the primary."""
    from tests.test_dashboard_apptest import logged_in, render_every_page

    primary_url, standby_url = cluster
    monkeypatch.setenv("DATABASE_URL", primary_url)
    monkeypatch.setenv("DATABASE_READ_URL", standby_url)
    monkeypatch.setenv("DASHBOARD_AUTH_FILE", str(credentials_file))
    monkeypatch.setenv("DASHBOARD_COOKIE_KEY", "replica-cookie-key-0123456789abcdef")
    monkeypatch.setenv("CACHE_DEMO_TRAFFIC", "off")
    monkeypatch.setattr(config, "_cached", None)
    at = logged_in("admin")
    render_every_page(at)
    before = scalar(primary_url, "SELECT count(*) FROM cache_private.health_history")
    at.switch_page("pages/maintenance.py").run()
    at.button(key="run_health_check").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert scalar(primary_url, "SELECT count(*) FROM cache_private.health_history") > before
    monkeypatch.setattr(config, "_cached", None)


def test_api_reads_from_the_standby_and_acts_on_the_primary(cluster):
    """With replay paused, a cleanup through the API lands on the primary while the API's reads still
    show the standby's older state: proof of where each goes."""
    primary_url, standby_url = cluster
    with databases(primary_url, standby_url) as (primary, standby):
        key = apikeys.create_key("replica-admin", "admin", primary)
        app = api.create_app(primary, read_database=standby, metrics_key_required=False,
                             throttle=api.FailureThrottle(base_delay=0))
        wait_for_replay(primary_url, standby_url)
        with psycopg.connect(standby_url, autocommit=True) as paused:
            paused.execute("SELECT pg_wal_replay_pause()")
            try:
                with api_in_thread(primary, app) as base:
                    headers = {"Authorization": f"Bearer {key}"}
                    before = httpx.get(f"{base}/api/admin/cache/maintenance", headers=headers).json()["last_cleanup"]
                    done = httpx.post(f"{base}/api/admin/cache/maintenance?action=cleanup", headers=headers)
                    assert done.status_code == 200, done.text
                    assert scalar(primary_url, "SELECT count(*) FROM public.cache_cleanup_log "
                                               "WHERE triggered_by LIKE '%%replica-admin%%'") == 1
                    seen = httpx.get(f"{base}/api/admin/cache/maintenance", headers=headers).json()["last_cleanup"]
                    assert seen == before  # the standby has not replayed the cleanup yet
                    assert httpx.get(f"{base}/api/admin/cache/metrics", headers=headers).status_code == 200
                    assert httpx.get(f"{base}/metrics").status_code == 200
            finally:
                paused.execute("SELECT pg_wal_replay_resume()")
        wait_for_replay(primary_url, standby_url)
        with api_in_thread(primary, app) as base:
            seen = httpx.get(f"{base}/api/admin/cache/maintenance",
                             headers={"Authorization": f"Bearer {key}"}).json()["last_cleanup"]
            assert "replica-admin" in seen["triggered_by"]


def test_a_manager_built_from_the_settings_reads_on_the_replica(cluster, monkeypatch):
    """DATABASE_READ_URL alone sends the application's cached calls to the standby, counted on the primary."""
    primary_url, standby_url = cluster
    monkeypatch.setenv("DATABASE_URL", primary_url)
    monkeypatch.setenv("DATABASE_READ_URL", standby_url)
    monkeypatch.setattr(config, "_cached", None)
    try:
        manager = CacheManager()
        assert (manager.database.url, manager.reads.url) == (primary_url, standby_url)
        def reads() -> int:
            return sum(events(primary_url, "product_performance:1", kind) for kind in ("hit", "miss"))

        before = reads()
        manager.product_performance(1)
        assert manager.flush_replica_reads() == 1
        assert reads() == before + 1
    finally:
        monkeypatch.setattr(config, "_cached", None)
