"""The demo: the "demo" scale, the replay that ends in a dense present, and the live generator.

All against real PostgreSQL: the replay and the live generator go through the real
CacheManager and Maintenance, and what they did is read back from the database.
"""

from __future__ import annotations

import logging
import statistics
import time

import psycopg
import pytest
from streamlit.testing.v1 import AppTest

from cachelib import config, demo, migrate
from cachelib.config import Settings

LIVE_SQL = ("SELECT count(*) FROM query_cache WHERE data IS NOT NULL "
            "AND expires_at > cache_private.cache_now()")
CALLS_SQL = "SELECT COALESCE(sum(hits + misses), 0) FROM cache_private.cache_stats_hourly"
REPLAY_DAYS = 3  # the real code path, fewer days than make run's 35 to keep the test short


def scalar(url: str, sql: str, params: tuple = ()):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.fixture(scope="module")
def demo_scale(pg18):
    """An empty database, migrated, loaded at the demo scale and replayed (a short history, the full present)."""
    url = pg18.empty_database("demo_scale")
    migrate.apply(url)
    counts = demo.load(url, "demo")
    report = demo.traffic(url, days=REPLAY_DAYS)
    return url, counts, report


@pytest.fixture
def no_live_traffic():
    """No process-wide generator before or after the test."""
    demo.stop_live_traffic()
    yield
    assert demo.stop_live_traffic()


# --- the demo scale and the replay -------------------------------------------------------------


def test_the_small_scale_is_unchanged():
    # The test template database is built from it; many tests depend on its ids.
    assert demo.SCALES["small"] == demo.Scale(experts=40, sessions=4_000, products=60, orders=4_000)
    assert demo.SETUP_SCALE == "demo"


def test_the_demo_scale_is_a_small_application(demo_scale):
    url, counts, _ = demo_scale
    assert counts == {"experts": 400, "expert_sessions": 20_000, "products": 600, "orders": 20_000}
    assert scalar(url, "SELECT count(*) FROM public.experts") == 400
    assert scalar(url, "SELECT count(*) FROM public.products") == 600
    assert demo.is_demo(url)


def test_the_replay_leaves_hundreds_of_live_entries(demo_scale):
    url, _, report = demo_scale
    live = scalar(url, LIVE_SQL)
    assert live >= 200, f"only {live} live entries after the replay"
    assert report.live_entries >= 200
    per_cache = dict(psycopg.connect(url).execute(
        "SELECT cache_name, count(*) FROM query_cache WHERE data IS NOT NULL "
        "AND expires_at > cache_private.cache_now() GROUP BY cache_name").fetchall())
    assert per_cache.get("expert_sessions", 0) >= 40 and per_cache.get("product_performance", 0) >= 100
    # Entries people came back to: many live entries have hits.
    with_hits = scalar(url, "SELECT count(*) FROM query_cache WHERE hit_count > 0 AND data IS NOT NULL "
                            "AND expires_at > cache_private.cache_now()")
    assert with_hits >= 100


def test_the_replay_is_skewed_to_a_few_popular_ids(demo_scale):
    url, _, report = demo_scale
    for cache, ids in (("expert_sessions", 400), ("product_performance", 600)):
        counts = [n for (name, ident), n in report.calls_by_key.items() if name == cache and ident is not None]
        assert len(counts) > ids // 3  # a long tail: many different ids are asked for
        top, median = max(counts), statistics.median(counts)
        assert top >= 10 * median, f"{cache}: most-called id {top} calls, median {median}"
        most_called = max((k for k in report.calls_by_key if k[0] == cache and k[1] is not None),
                          key=report.calls_by_key.__getitem__)
        assert most_called[1] <= 5  # the popular ids are the busiest experts and best sellers
    # The database saw every call: the statistics, rolled up, count exactly the calls made.
    assert scalar(url, CALLS_SQL) == report.calls


def test_the_replay_looks_like_a_deployment(demo_scale):
    url, _, report = demo_scale
    assert 0.01 <= report.writes / report.calls <= 0.03  # ~1-3% of calls are writes that invalidate
    assert scalar(url, "SELECT cache_private.setting('demo_data')") == "true"
    with psycopg.connect(url) as conn:
        deployed = conn.execute("SELECT cache_private.setting('deployed_at')::timestamptz").fetchone()[0]
        days = conn.execute("SELECT count(DISTINCT date_trunc('day', bucket)) FROM cache_private.cache_stats_hourly"
                            ).fetchone()[0]
        cleanups = conn.execute("SELECT count(*) FROM cache_cleanup_log").fetchone()[0]
        per_hour = [r[0] for r in conn.execute(
            "SELECT sum(hits + misses) FROM cache_private.cache_stats_hourly GROUP BY bucket ORDER BY bucket")]
        invalidated = conn.execute("SELECT count(*) FROM cache_private.invalidations").fetchone()[0]
    assert days >= REPLAY_DAYS
    assert cleanups == report.cleanups and cleanups >= REPLAY_DAYS * 4 - 1  # every 6 hours
    assert deployed is not None
    assert invalidated > 0
    # History, then a present as dense as the live generator: the last hours carry most calls.
    assert max(per_hour) > 10 * statistics.median(per_hour)


def test_replay_parameters_are_checked(db_url):
    from cachelib.errors import InvalidInput

    with pytest.raises(InvalidInput, match="days"):
        demo.traffic(db_url, days=0)
    with pytest.raises(InvalidInput, match="present_minutes"):
        demo.traffic(db_url, days=1, present_minutes=61)


# --- the live generator ------------------------------------------------------------------------


def test_the_live_generator_moves_the_statistics_and_stops(db_url, no_live_traffic):
    scalar(db_url, "SELECT cache_private.rollup_stats()")
    calls_before = scalar(db_url, CALLS_SQL)
    live = demo.start_live_traffic(Settings.from_env({"DATABASE_URL": db_url, "CACHE_DEMO_TRAFFIC": "on"}))
    assert live is not None and demo.live_traffic() is live
    assert demo.start_live_traffic(Settings.from_env({"DATABASE_URL": db_url, "CACHE_DEMO_TRAFFIC": "on"})) is live
    assert live.wait_started(30), live.refusal or live.last_error
    assert wait_for(lambda: live.calls >= 8), f"{live.calls} calls, last error {live.last_error}"
    assert demo.stop_live_traffic(10)
    assert not live.running and demo.live_traffic() is None
    made = live.calls
    time.sleep(1.5)
    assert live.calls == made  # stopped means stopped
    assert live.errors == 0, live.last_error
    scalar(db_url, "SELECT cache_private.rollup_stats()")
    assert scalar(db_url, CALLS_SQL) == calls_before + made  # every call it made, and nothing after the stop


def test_a_fast_generator_writes_and_invalidates(db_url):
    sessions = scalar(db_url, "SELECT count(*) FROM public.expert_sessions")
    orders = scalar(db_url, "SELECT count(*) FROM public.orders")
    invalidations = scalar(db_url, "SELECT count(*) FROM cache_private.invalidations")
    hits = scalar(db_url, "SELECT COALESCE(sum(hits), 0) FROM cache_private.cache_stats_hourly")
    live = demo.LiveTraffic(db_url, Settings.from_env({}), mode="on", visits_per_minute=3000, seed=3).start()
    try:
        assert live.wait_started(30), live.refusal or live.last_error
        assert wait_for(lambda: live.writes >= 3 and live.calls >= 50), (live.calls, live.writes, live.last_error)
    finally:
        assert live.stop(10)
    assert live.errors == 0, live.last_error
    written = (scalar(db_url, "SELECT count(*) FROM public.expert_sessions") - sessions
               + scalar(db_url, "SELECT count(*) FROM public.orders") - orders)
    assert written == live.writes
    assert scalar(db_url, "SELECT count(*) FROM cache_private.invalidations") > invalidations
    scalar(db_url, "SELECT cache_private.rollup_stats()")
    assert scalar(db_url, "SELECT COALESCE(sum(hits), 0) FROM cache_private.cache_stats_hourly") > hits
    assert scalar(db_url, "SELECT max(hit_count) FROM query_cache") > 0


def test_auto_does_not_start_with_database_url(db_url, no_live_traffic, caplog):
    assert demo.start_live_traffic(Settings.from_env({"DATABASE_URL": db_url})) is None
    assert demo.start_live_traffic(Settings.from_env({"DATABASE_URL": db_url, "CACHE_DEMO_TRAFFIC": "off"})) is None
    assert demo.live_traffic() is None
    assert "DATABASE_URL is set" in demo.live_traffic_wanted(Settings.from_env({"DATABASE_URL": db_url}))
    # Without DATABASE_URL (the embedded server) auto is willing; the database then decides.
    assert demo.live_traffic_wanted(Settings.from_env({})) is None
    assert demo.live_traffic_wanted(Settings.from_env({"CACHE_DEMO_TRAFFIC": "off"})) == "CACHE_DEMO_TRAFFIC=off"
    assert demo.live_traffic_wanted(Settings.from_env({"DATABASE_URL": db_url, "CACHE_DEMO_TRAFFIC": "ON"})) is None


def test_auto_wants_demo_statistics_too(db_url):
    flag = scalar(db_url, "SELECT cache_private.setting('demo_data')")
    try:
        scalar(db_url, "UPDATE cache_private.settings SET value = 'false' WHERE name = 'demo_data' RETURNING 1")
        assert "demo_data" in demo.live_traffic_refusal(db_url, "auto")
        assert demo.live_traffic_refusal(db_url, "on") is None  # demo rows: on runs anyway
        scalar(db_url, "UPDATE cache_private.settings SET value = 'true' WHERE name = 'demo_data' RETURNING 1")
        assert demo.live_traffic_refusal(db_url, "auto") is None
        assert demo.live_traffic_refusal(db_url, "off") == "CACHE_DEMO_TRAFFIC=off"
    finally:
        scalar(db_url, "UPDATE cache_private.settings SET value = %s WHERE name = 'demo_data' RETURNING 1", (flag,))


def test_on_refuses_tables_that_are_not_the_demo_rows(pg18, caplog):
    url = pg18.empty_database("demo_refuse")
    migrate.apply(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO public.experts (name, specialty) VALUES ('Expert 1', 'tax law'), "
                     "('Ada Lovelace', 'data science')")
        conn.execute("INSERT INTO public.products (name, category, price) VALUES ('Product 1', 'books', 10)")
    caplog.set_level(logging.WARNING, logger="cachelib.demo")
    live = demo.LiveTraffic(url, Settings.from_env({"DATABASE_URL": url, "CACHE_DEMO_TRAFFIC": "on"})).start()
    assert not live.wait_started(30)
    assert live.stop(5)
    assert live.refusal and "demo rows" in live.refusal and live.calls == 0 and live.writes == 0
    assert "live demo traffic not started" in caplog.text
    assert scalar(url, "SELECT count(*) FROM public.expert_sessions") == 0
    assert scalar(url, "SELECT count(*) FROM query_cache") == 0
    # Only the generated rows: then it may run.
    scalar(url, "DELETE FROM public.experts WHERE name = 'Ada Lovelace' RETURNING 1")
    assert demo.live_traffic_refusal(url, "on") is None


def test_the_setting_is_validated():
    from cachelib.errors import ConfigError

    assert Settings.from_env({}).demo_traffic == "auto"
    assert Settings.from_env({"CACHE_DEMO_TRAFFIC": " Off "}).demo_traffic == "off"
    with pytest.raises(ConfigError, match="CACHE_DEMO_TRAFFIC='sometimes'"):
        Settings.from_env({"CACHE_DEMO_TRAFFIC": "sometimes"})


def test_the_page_header_says_live_traffic_is_flowing(app_env, monkeypatch, no_live_traffic):
    def header():
        from cachelib import ui

        ui.page_header("Overview")

    def badges() -> str:
        at = AppTest.from_function(header, default_timeout=30).run()
        assert not at.exception, at.exception
        return " ".join(m.value for m in at.markdown)

    assert "Live demo traffic" not in badges()
    monkeypatch.setenv("CACHE_DEMO_TRAFFIC", "on")
    monkeypatch.setattr(config, "_cached", None)
    live = demo.start_live_traffic()
    assert live is not None and live.wait_started(30), live.refusal
    text = badges()
    assert "Live demo traffic" in text
    assert demo.stop_live_traffic(10)
    assert "Live demo traffic" not in badges()


def test_the_dashboard_starts_one_generator_for_all_its_sessions(dashboard, navigation_mode, monkeypatch):
    import streamlit as st

    from cachelib import auth
    from cachelib.config import PROJECT_ROOT

    def logged_in(username: str) -> AppTest:
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboard.py"), default_timeout=30)
        at.session_state[auth.SESSION_ID_KEY] = auth.start_session(username).id
        at.session_state["authentication_status"] = True
        at.session_state["username"] = username
        at.session_state["name"] = username.title()
        at.session_state["roles"] = [username]
        at.session_state["live_refresh"] = False
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    demo.stop_live_traffic()
    st.cache_resource.clear()  # the dashboard keeps its generator in st.cache_resource, once per process
    monkeypatch.setenv("CACHE_DEMO_TRAFFIC", "on")  # DATABASE_URL is set: auto would not start it
    monkeypatch.setattr(config, "_cached", None)
    try:
        first = logged_in("admin")
        live = demo.live_traffic()
        assert live is not None and live.wait_started(30), live and live.refusal
        second = logged_in("viewer")
        assert demo.live_traffic() is live  # one generator, however many sessions
        for at in (first.run(), second):
            assert "Live demo traffic" in " ".join(m.value for m in at.markdown)
    finally:
        assert demo.stop_live_traffic(10)
        st.cache_resource.clear()
