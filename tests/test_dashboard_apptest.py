"""The dashboard through Streamlit's AppTest against a real database: login, every page, every button."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from streamlit.testing.v1 import AppTest

from cachelib import auth, config, db, ui
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.errors import DatabaseUnavailable
from cachelib.maintenance import EMERGENCY_TOKEN
from cachelib.manager import CacheManager

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard.py")
PAGES = {
    "pages/overview.py": "Cache Overview",
    "pages/top_entries.py": "Top Cache Entries",
    "pages/performance.py": "Performance Analysis",
    "pages/management.py": "Cache Management",
    "pages/maintenance.py": "Maintenance & Health",
    "pages/monthly_review.py": "Monthly Review",
}
from tests.conftest import ADMIN_PASSWORD, VIEWER_PASSWORD  # noqa: E402

pytestmark = pytest.mark.usefixtures("navigation_mode")
ADMIN_BUTTONS = {"run_health_check", "run_cleanup", "run_optimize", "invalidate_cache", "invalidate_key", "prewarm",
                 "invalidate_selected"}


# Fixtures (dashboard, credentials_file, traffic, navigation_mode) live in tests/conftest.py.


def scalar(url: str, sql: str, params: tuple = ()):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def live_entries(url: str) -> int:
    return scalar(url, "SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL")


def app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=30)


def open_session(username: str) -> str:
    """A server-side session id for ``username`` (as a successful login opens one); a dummy when the
    configured database is unreachable, so the dashboard itself meets the outage."""
    try:
        return auth.start_session(username).id
    except DatabaseUnavailable:
        return "unreachable-database-session"


def logged_in(username: str, page: str | None = None) -> AppTest:
    """An AppTest whose session is logged in as ``username`` (as streamlit-authenticator and a
    successful login leave it)."""
    at = app()
    at.session_state[auth.SESSION_ID_KEY] = open_session(username)
    at.session_state["authentication_status"] = True
    at.session_state["username"] = username
    at.session_state["name"] = username.title()
    at.session_state["roles"] = [username]
    at.session_state["live_refresh"] = False
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def button_keys(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


def labels(at: AppTest) -> set[str]:
    return {b.label for b in at.button}


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in getattr(at, kind)]


def render_every_page(at: AppTest) -> None:
    """Switch ``at`` to every page: each renders its title, with no exception and no error box."""
    for page, title in PAGES.items():
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert texts(at, "title") == [title], (page, texts(at, "error"))
        assert not at.error, (page, texts(at, "error"))


def submit(at: AppTest, label: str) -> AppTest:
    [button] = [b for b in at.button if b.label == label]
    return button.click().run()


# --- not logged in --------------------------------------------------------------------

def test_without_login_only_the_login_form_is_shown(dashboard):
    at = app().run()
    assert not at.exception
    assert texts(at, "title") == ["pgcache-admin"]
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    assert labels(at) == {"Log in"}
    assert not at.metric and not at.dataframe
    assert "role" not in at.session_state
    with pytest.raises(ValueError):  # no page is registered before the login
        at.switch_page("pages/maintenance.py")


def test_a_page_run_directly_without_login_shows_nothing(dashboard):
    at = AppTest.from_file(str(ROOT / "pages" / "maintenance.py"), default_timeout=30).run()
    assert not at.exception
    assert "Please log in" in texts(at, "warning")[0]
    assert not at.button and not at.dataframe and not at.title


def login_failures(subject: str) -> int:
    return auth.LOGIN_THROTTLE.failures("login", subject)


def test_login_form_wrong_then_right_password(dashboard):
    at = app().run()
    at.text_input(key="login_username").input("admin")
    at.text_input(key="login_password").input("not-the-password")
    submit(at, "Log in")
    assert not at.exception
    assert "incorrect" in texts(at, "error")[0]
    assert texts(at, "title") == ["pgcache-admin"]
    assert not at.session_state["authentication_status"]
    assert login_failures("user:admin") >= 1 and login_failures("address:127.0.0.1") >= 1

    at.text_input(key="login_password").input(ADMIN_PASSWORD)
    submit(at, "Log in")
    assert not at.exception
    assert at.session_state["authentication_status"] is True
    assert at.session_state["role"] == "admin"
    assert texts(at, "title") == ["Cache Overview"]
    assert "role **admin**" in " ".join(texts(at.sidebar, "markdown"))
    # A successful login forgets the failures of its address and its username.
    assert login_failures("user:admin") == login_failures("address:127.0.0.1") == 0


def test_login_as_viewer_and_log_out(dashboard):
    at = app().run()
    at.text_input(key="login_username").input("viewer")
    at.text_input(key="login_password").input(VIEWER_PASSWORD)
    submit(at, "Log in")
    assert at.session_state["role"] == "viewer"
    assert texts(at, "title") == ["Cache Overview"]
    at.button(key="logout_button").click().run()
    assert not at.exception
    assert not at.session_state["authentication_status"]
    assert "role" not in at.session_state
    assert texts(at, "title") == ["pgcache-admin"]
    assert not at.metric


# --- every page, both roles -------------------------------------------------------------

@pytest.mark.parametrize("username", ["admin", "viewer"])
def test_every_page_renders_for_both_roles(dashboard, username):
    at = logged_in(username)
    assert at.session_state["role"] == username
    for page, title in PAGES.items():
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert texts(at, "title") == [title], page
        assert not at.error, (page, texts(at, "error"))
        assert "Demo data" not in " ".join(texts(at, "markdown"))  # the test database holds no demo traffic
        if username == "viewer":
            assert not button_keys(at) & ADMIN_BUTTONS, page
            assert "Emergency Clear All" not in labels(at), page


def test_viewer_sees_state_but_no_controls(dashboard):
    at = logged_in("viewer", "pages/management.py")
    assert "Only administrators" in " ".join(texts(at, "info"))
    assert {m.label for m in at.metric} >= {"Caching"}
    at.switch_page("pages/maintenance.py").run()
    assert "Maintenance actions are for administrators" in " ".join(texts(at, "info"))
    assert not at.checkbox and not at.text_input
    at.switch_page("pages/top_entries.py").run()
    assert "invalidate_selected" not in button_keys(at)


def test_overview_shows_the_guide_numbers(dashboard):
    at = logged_in("admin")
    with psycopg.connect(dashboard) as conn:
        total, hit, avg, expired = conn.execute("""
            SELECT COUNT(*), COUNT(CASE WHEN hit_count > 0 THEN 1 END), COALESCE(ROUND(AVG(hit_count), 2), 0),
                   COUNT(CASE WHEN expires_at <= now() THEN 1 END) FROM public.query_cache""").fetchone()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Total entries"] == f"{total:,}"
    assert metrics["Entries with hits"] == f"{hit:,}"
    assert metrics["Average hits per entry"] == f"{float(avg):,.2f}"
    assert metrics["Expired entries"] == f"{expired:,}"
    assert total > 0 and hit > 0
    assert {"Entries", "Cache size", "Load reduction", "Fallbacks 7 d", "Last cleanup", "Health"} <= set(metrics)
    scorecard = at.dataframe[-1].value
    # Every figure names its window, with its dates.
    assert [w.split(" (")[0] for w in scorecard["Window"]] == ["Week 1", "Week 1", "Month 1", "Month 1", "Month 1"]
    assert all(re.fullmatch(r"(Week|Month) 1 \(\w{3} \d+ \d\d:\d\d-\w{3} \d+ \d\d:\d\d\)", w)
               for w in scorecard["Window"])
    assert "Database load reduction at least 40%" in list(scorecard["Target"])


def test_performance_controls(dashboard):
    at = logged_in("admin", "pages/performance.py")
    # The module's deployment is minutes old: the range is its first day, by the hour.
    assert at.selectbox(key="perf_bucket").value == "hour"
    for bucket in ("hour", "week"):
        at.selectbox(key="perf_bucket").select(bucket).run()
        assert not at.exception and not at.error
    at.multiselect(key="perf_caches").unselect("product_performance").run()
    assert not at.exception and not at.error
    # Hours only up to 7 days; one cache's load reduction by week beyond 120 days, refused beyond 120 weeks.
    today = at.date_input(key="perf_range").value[1]
    at.selectbox(key="perf_bucket").select("hour").run()
    at.date_input(key="perf_range").set_value((today - timedelta(days=200), today)).run()
    assert not at.exception and not at.error
    assert any("Hourly buckets are shown for ranges up to 7 days" in t for t in texts(at, "info"))
    assert any("drawn by week for ranges of more than 120 days" in t for t in texts(at, "caption"))
    at.date_input(key="perf_range").set_value((today - timedelta(days=1000), today)).run()
    assert any("too long to split load reduction by cache" in t for t in texts(at, "info"))
    at.multiselect(key="perf_caches").unselect("expert_sessions").run()
    assert not at.exception and not at.error
    choose = [t for t in texts(at, "info") if t.startswith("Choose at least one cache")]
    assert len(choose) == 4 and len(set(choose)) == 1 and not at.get("plotly_chart")


def hit_rate_traces(at: AppTest) -> dict[str, list]:
    """The hit-rate chart's points per cache (trace name) as the page sends them."""
    [chart] = [c for c in at.get("plotly_chart") if "Hit rate per cache" in c.proto.spec]
    return {trace["name"]: trace["y"] for trace in json.loads(chart.proto.spec)["data"]}


def test_a_cache_shows_the_same_hit_rates_alone_as_among_all(dashboard):
    """Choosing fewer caches in the filter must not change a chosen cache's own figures."""
    at = logged_in("admin", "pages/performance.py")
    every = hit_rate_traces(at)
    assert len(every) == 2 and all(any(v is not None for v in points) for points in every.values())
    for cache in ("expert_sessions", "product_performance"):
        at.multiselect(key="perf_caches").set_value([cache]).run()
        assert not at.exception and not at.error
        alone = hit_rate_traces(at)
        assert list(alone) == [ui.cache_label(cache)] and alone == {ui.cache_label(cache): every[ui.cache_label(cache)]}
    at.multiselect(key="perf_caches").set_value(["expert_sessions", "product_performance"]).run()


def test_top_entries_filters(dashboard):
    at = logged_in("viewer", "pages/top_entries.py")
    table = at.dataframe[0].value
    assert len(table) > 0 and list(table.columns)[:3] == ["Key", "Cache", "Hits"]
    at.text_input(key="top_search").input("no-such-key").run()
    assert "No cache entries match." in texts(at, "info")
    at.text_input(key="top_search").input("").run()
    at.selectbox(key="top_cache").select("product_performance").run()
    at.selectbox(key="top_order").select("saved").run()
    assert not at.exception
    assert set(at.dataframe[0].value["Cache"]) == {"Product analytics"}


# --- actions ----------------------------------------------------------------------------

def test_run_health_check(dashboard):
    before = scalar(dashboard, "SELECT count(*) FROM cache_private.maintenance_audit WHERE action = 'health_check'")
    at = logged_in("admin", "pages/maintenance.py")
    at.button(key="run_health_check").click().run()
    assert not at.exception
    # The outcome is shown in the box of its severity: a critical result is never green.
    overall = scalar(dashboard, "SELECT result->>'overall' FROM cache_private.maintenance_audit "
                                "WHERE action = 'health_check' ORDER BY id DESC LIMIT 1")
    box = {"ok": "success", "warning": "warning", "critical": "error"}[overall]
    assert [s for s in texts(at, box) if s.startswith(f"Health: {overall}")]
    others = {"success", "warning", "error"} - {box}
    assert not [s for kind in others for s in texts(at, kind) if s.startswith("Health:")]
    assert scalar(dashboard, "SELECT count(*) FROM cache_private.maintenance_audit WHERE action = 'health_check'") \
        == before + 1
    assert scalar(dashboard, "SELECT actor FROM cache_private.maintenance_audit ORDER BY id DESC LIMIT 1") \
        == "admin (dashboard)"


def test_clean_up_expired(dashboard):
    with psycopg.connect(dashboard, autocommit=True) as conn:
        conn.execute("UPDATE public.query_cache SET expires_at = now() - interval '1 hour' "
                     "WHERE cache_key = (SELECT min(cache_key) FROM public.query_cache WHERE data IS NOT NULL)")
    expired = scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE expires_at <= now()")
    logs = scalar(dashboard, "SELECT count(*) FROM public.cache_cleanup_log")
    assert expired >= 1
    at = logged_in("admin", "pages/maintenance.py")
    at.button(key="run_cleanup").click().run()
    assert not at.exception and not at.error
    assert any("Cleanup removed" in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.cache_cleanup_log") == logs + 1
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE expires_at <= now()") == 0
    assert scalar(dashboard, "SELECT triggered_by FROM public.cache_cleanup_log ORDER BY id DESC LIMIT 1") \
        .startswith("admin")


def test_optimize(dashboard):
    logs = scalar(dashboard, "SELECT count(*) FROM public.cache_cleanup_log")
    at = logged_in("admin", "pages/maintenance.py")
    at.button(key="run_optimize").click().run()
    assert not at.exception and not at.error
    assert any("Optimize removed" in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.cache_cleanup_log") == logs + 1


def emergency(at: AppTest, token: str, understood: bool) -> AppTest:
    at.text_input(key="emergency_token").input(token)
    if understood:
        at.checkbox(key="emergency_understood").check()
    return submit(at, "Emergency Clear All")


def test_emergency_clear_refuses_a_wrong_token(dashboard):
    before = live_entries(dashboard)
    assert before > 0
    at = emergency(logged_in("admin", "pages/maintenance.py"), "emergency_clear_confirmed", understood=True)
    assert not at.exception
    assert any("refused" in e and EMERGENCY_TOKEN in e for e in texts(at, "error"))
    assert live_entries(dashboard) == before
    assert scalar(dashboard, "SELECT outcome FROM cache_private.maintenance_audit "
                             "WHERE action = 'emergency_clear' ORDER BY id DESC LIMIT 1") == "refused"


def test_emergency_clear_needs_the_checkbox(dashboard):
    before = live_entries(dashboard)
    at = emergency(logged_in("admin", "pages/maintenance.py"), EMERGENCY_TOKEN, understood=False)
    assert not at.exception
    assert any("Nothing was deleted" in e for e in texts(at, "error"))
    assert live_entries(dashboard) == before > 0


def test_emergency_clear_with_token_and_checkbox_empties_the_cache(dashboard):
    assert live_entries(dashboard) > 0
    at = emergency(logged_in("admin", "pages/maintenance.py"), EMERGENCY_TOKEN, understood=True)
    assert not at.exception and not at.error
    assert any("Emergency clear deleted" in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache") == 0


def test_prewarm_and_invalidate_from_management(dashboard):
    at = logged_in("admin", "pages/management.py")
    at.selectbox(key="prewarm_cache_name").select("expert_sessions")
    at.button(key="prewarm").click().run()
    assert not at.exception and not at.error
    assert any("Prewarmed" in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE cache_name = 'expert_sessions' "
                             "AND data IS NOT NULL") >= 1

    at.selectbox(key="invalidate_cache_name").select("expert_sessions")
    at.button(key="invalidate_cache").click().run()
    assert not at.exception and not at.error
    assert any("Invalidated" in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE cache_name = 'expert_sessions' "
                             "AND data IS NOT NULL AND expires_at > now()") == 0


def test_invalidate_one_key_from_management(dashboard):
    CacheManager(Database(dashboard, Settings.from_env({})), Settings.from_env({})).product_performance(2)
    key = scalar(dashboard, "SELECT cache_key FROM public.query_cache WHERE cache_name = 'product_performance' "
                            "AND data IS NOT NULL ORDER BY cache_key LIMIT 1")
    at = logged_in("admin", "pages/management.py")
    at.button(key="invalidate_key").click().run()
    assert "Enter the cache key" in " ".join(texts(at, "error"))
    at.text_input(key="invalidate_key_text").input(key)
    at.button(key="invalidate_key").click().run()
    assert not at.exception
    assert any(f"of key {key}" in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE cache_key = %s AND data IS NOT NULL "
                             "AND expires_at > now()", (key,)) == 0


def test_admin_invalidates_selected_rows(dashboard):
    CacheManager(Database(dashboard, Settings.from_env({})), Settings.from_env({})).expert_sessions(3)
    at = logged_in("admin", "pages/top_entries.py")
    keys = list(at.dataframe[0].value["Key"])
    assert keys and at.button(key="invalidate_selected").disabled
    at.session_state["top_entries_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert not at.button(key="invalidate_selected").disabled
    at.button(key="invalidate_selected").click().run()
    assert not at.exception and not at.error
    assert any(keys[0] in s for s in texts(at, "success"))
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE cache_key = %s AND data IS NOT NULL "
                             "AND expires_at > now()", (keys[0],)) == 0


def test_monthly_review_offers_csv_and_html(dashboard):
    at = logged_in("viewer", "pages/monthly_review.py")
    assert not at.exception and not at.error
    assert at.selectbox(key="review_month").value is not None
    assert "Targets" in " ".join(texts(at, "subheader"))
    downloads = at.get("download_button")
    assert len(downloads) == 2


# --- failure modes ----------------------------------------------------------------------

def test_database_down_shows_a_banner_and_retry(dashboard, monkeypatch):
    url = "postgresql://nobody@127.0.0.1:9/nowhere"
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("CACHE_CONNECT_TIMEOUT", "1s")
    monkeypatch.setattr(config, "_cached", None)
    try:
        for page in ("pages/overview.py", "pages/maintenance.py"):
            at = logged_in("admin", page)
            assert not at.exception
            assert "not reachable" in texts(at, "error")[0]
            assert "Retry" in labels(at)
    finally:
        database = db._databases.pop(url, None)
        if database:
            database.close()


def test_a_database_without_traffic_and_caching_off(dashboard, pg18, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", pg18.fresh_database("dashboard_empty"))
    monkeypatch.setenv("CACHE_ENABLED", "false")
    monkeypatch.setattr(config, "_cached", None)
    at = logged_in("admin")
    for page, title in PAGES.items():
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert texts(at, "title") == [title]
        assert not at.error, (page, texts(at, "error"))
        assert "Caching is OFF (CACHE_ENABLED=false)" in texts(at, "warning")[0], page
        if page not in ("pages/overview.py", "pages/management.py"):  # these show zeros and "no data" states
            assert any(t.startswith("No data yet") or t.startswith("No cleanup") for t in texts(at, "info")), page
    at.switch_page("pages/management.py").run()
    assert {m.label: m.value for m in at.metric}["Caching"] == "OFF"


def test_credentials_file_problems_are_shown_without_traceback(dashboard, monkeypatch, tmp_path):
    loose = tmp_path / "loose.yaml"
    loose.write_text(Path(os.environ["DASHBOARD_AUTH_FILE"]).read_text())
    loose.chmod(0o644)
    broken = tmp_path / "broken.yaml"
    broken.write_text("credentials: [unclosed\n")
    broken.chmod(0o600)
    cases = {loose: "chmod 600", tmp_path / "missing.yaml": "does not exist", broken: "not valid YAML"}
    for path, message in cases.items():
        monkeypatch.setenv("DASHBOARD_AUTH_FILE", str(path))
        monkeypatch.setattr(config, "_cached", None)
        at = app().run()
        assert not at.exception
        assert message in texts(at, "error")[0]
        assert not at.text_input  # no login form


# --- cachelib.auth ---------------------------------------------------------------------

def test_ensure_credentials_creates_a_private_file_once(tmp_path):
    path = tmp_path / "sub" / "auth.yaml"
    settings = Settings.from_env({"DASHBOARD_AUTH_FILE": str(path), "DASHBOARD_ADMIN_PASSWORD": "given-pass"})
    created = dict(auth.ensure_credentials(settings))
    assert created["admin"] == "given-pass" and len(created["viewer"]) >= 16
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "given-pass" not in path.read_text() and created["viewer"] not in path.read_text()
    assert auth.ensure_credentials(settings) == []
    credentials = auth.load_credentials(settings)
    assert auth.role_of("admin", credentials) == "admin"
    assert auth.role_of("viewer", credentials) == "viewer"
    assert auth.role_of("mallory", credentials) == "viewer"
    path.chmod(0o640)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        auth.check_file_permissions(path)


def test_cookie_key_is_random_and_kept_private(tmp_path):
    settings = Settings.from_env({"DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml")})
    key = auth.cookie_key(settings)
    assert len(key) >= 32 and auth.cookie_key(settings) == key
    assert stat.S_IMODE((tmp_path / "cookie_key").stat().st_mode) == 0o600
    assert auth.cookie_key(Settings.from_env({"DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml"),
                                              "DASHBOARD_COOKIE_KEY": "from-env"})) == "from-env"
    other = Settings.from_env({"DASHBOARD_AUTH_FILE": str(tmp_path / "other" / "auth.yaml")})
    assert auth.cookie_key(other) != key


def test_verify_deployment_button_shows_the_checks(dashboard):
    at = logged_in("viewer", "pages/maintenance.py")
    assert "run_verify" not in button_keys(at)
    at = logged_in("admin", "pages/maintenance.py")
    at.button(key="run_verify").click().run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [d.value for d in at.dataframe if "Check" in d.value.columns and "Fix" in d.value.columns]
    assert tables and {"cache functions", "row-level security", "migrations"} <= set(tables[0]["Check"])
    assert scalar(dashboard, "SELECT count(*) FROM cache_private.maintenance_audit WHERE action = 'verify'") == 1
