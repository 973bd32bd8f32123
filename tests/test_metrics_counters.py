"""Prometheus counters never run backwards: pgcache_hits_total, _misses_total and _fallbacks_total are lifetime
totals (0021), not sums over the kept hourly history, so the statistics retention deleting old hours does not
lower them (Prometheus would read that as a counter reset and rate() would spike)."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cachelib import api
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.manager import CacheManager

COUNTERS = ("pgcache_hits_total", "pgcache_misses_total", "pgcache_fallbacks_total")


@pytest.fixture(scope="module")
def database(db_url):
    database = Database(db_url, Settings.from_env({}))
    yield database
    database.close()


def scrape(database) -> dict[tuple[str, str], float]:
    app = api.create_app(database, metrics_key_required=False, throttle=api.FailureThrottle(base_delay=0))
    text = TestClient(app).get("/metrics").text
    return {(sample.name, sample.labels["cache"]): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name in COUNTERS}


def traffic(database, calls: int) -> None:
    """``calls`` hits of product 1 after its miss, and one fallback of expert_sessions."""
    manager = CacheManager(database, Settings.from_env({}))
    for _ in range(calls + 1):
        manager.product_performance(1)
    database.rows("SELECT 1 FROM public.record_cache_fallback('expert_sessions', 'counter test')")


def kept_history_hits(conn) -> int:
    return conn.execute("SELECT COALESCE(sum(hits), 0) FROM cache_private.cache_stats_hourly").fetchone()[0]


def test_counters_survive_the_retention_and_count_exactly(db_url, database):
    traffic(database, 5)
    before = scrape(database)
    assert before[("pgcache_hits_total", "product_performance")] >= 5
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert kept_history_hits(conn) > 0
        # Past the retention (stats_retention_days, 450): the roll-up deletes every kept hour.
        later = datetime.now().astimezone() + timedelta(days=460)
        conn.execute("SELECT set_config('cachelib.now', %s, false)", (later.isoformat(),))
        conn.execute("SELECT cache_private.rollup_stats()")
        assert kept_history_hits(conn) == 0  # the history the old counters summed is gone
    after = scrape(database)
    assert after == before
    traffic(database, 3)  # entry still live: 4 hits, and one more fallback
    grown = scrape(database)
    assert grown[("pgcache_hits_total", "product_performance")] \
        == before[("pgcache_hits_total", "product_performance")] + 4
    assert grown[("pgcache_fallbacks_total", "expert_sessions")] \
        == before[("pgcache_fallbacks_total", "expert_sessions")] + 1
    assert all(grown[key] >= value for key, value in before.items())


def test_every_cache_has_its_counters(database):
    with database.connection() as conn:
        names = {row[0] for row in conn.execute("SELECT cache_name FROM cache_private.caches")}
    scraped = scrape(database)
    assert {(counter, name) for counter in COUNTERS for name in names} <= set(scraped)


def test_signed_in_roles_cannot_read_or_forge_the_totals(db_url):
    from tests.servers import login_url

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS totals_user; CREATE ROLE totals_user LOGIN IN ROLE authenticated")
    with psycopg.connect(login_url(db_url, "totals_user"), autocommit=True) as conn:
        for sql in ("SELECT * FROM cache_private.cache_lifetime_totals",
                    "UPDATE cache_private.cache_lifetime_totals SET hits = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
