"""The Maintenance & Health and Cache Management pages in the real dashboard (streamlit run), driven in
Debian's chromium: severity colours, the health table in full, the health history and cleanup charts,
the emergency clear (empty token field, red button, what it would delete, a refusal shown at once) and
the impact of an invalidation.

Screenshots go to tests/artifacts/maintenance_*.png.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from cachelib.maintenance import EMERGENCY_TOKEN
from tests.browser import ARTIFACTS, admin_page, keep_failure, open_page, settle, streamlit_server

pytestmark = pytest.mark.browser

ADMIN_PASSWORD = "maint-Admin-pass-1"
REASON = "simulated outage: the cache function could not be reached from the application server"
RED = "rgb(220, 38, 38)"


def scalar(url: str, sql: str, params: tuple = ()):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


@pytest.fixture(scope="module")
def server(db_url, traffic, tmp_path_factory):
    """The real app against a database (with some traffic) whose health is critical: 101 fallbacks in the
    last 24 hours."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Three days of history: a cleanup every 3 hours (each removes a few expired entries and records the
        # checks), 5 fallbacks 45 hours ago (fallbacks: warning for a day), then the outage now (critical).
        now = conn.execute("SELECT now()").fetchone()[0]
        for hours in range(72, 0, -3):
            at = now - timedelta(hours=hours)
            conn.execute("SELECT set_config('cachelib.now', %s, false)", (at.isoformat(),))
            conn.execute("""INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at,
                                                            size_bytes, compute_ms)
                            SELECT 'old:' || %s || ':' || i, 'expert_sessions', '[]', %s, %s, 40000, 5
                            FROM generate_series(1, %s) AS i""",
                         (hours, at - timedelta(minutes=30), at - timedelta(hours=1), 1 + hours % 7))
            if hours == 45:
                for _ in range(5):
                    conn.execute("SELECT public.record_cache_fallback('product_performance', 'lock timeout')")
            conn.execute("SELECT public.cleanup_expired_cache()")
        conn.execute("SELECT set_config('cachelib.now', '', false)")
        conn.execute("SELECT public.cleanup_expired_cache()")
        for _ in range(101):
            conn.execute("SELECT public.record_cache_fallback('product_performance', %s)", (REASON,))

    with streamlit_server(db_url, tmp_path_factory.mktemp("maintenance_browser"), ADMIN_PASSWORD,
                          refresh_seconds=600) as started:
        yield started


@pytest.fixture
def page(server, browser):
    with admin_page(browser, server, "maintenance_login", height=3400, password=ADMIN_PASSWORD) as page:
        yield page


def failing(page, server, name: str):
    keep_failure(page, server, f"maintenance_{name}")


def plot(page, key: str) -> dict:
    """The drawn plotly figure of the chart with ``key``: its layout and its traces."""
    return page.locator(f".st-key-{key} .js-plotly-plot").first.evaluate(
        """el => ({layout: {yaxis: el._fullLayout.yaxis.range, yaxis2: (el._fullLayout.yaxis2 || {}).range,
                            legend_y: el._fullLayout.legend.y, dtick: el._fullLayout.xaxis.dtick,
                            xtitle: el._fullLayout.xaxis.title.text},
                  traces: el.data.map(t => ({type: t.type, name: t.name, y: t.y ? Array.from(t.y) : [],
                                             color: t.marker ? t.marker.color : null}))})""")


def test_a_critical_health_check_is_red_and_shown_in_full(server, page):
    try:
        open_page(page, "Maintenance & Health", "Maintenance & Health")
        page.get_by_role("button", name="Run health check").click()
        page.get_by_text("Health: critical", exact=False).first.wait_for(timeout=30_000)
        settle(page, "Maintenance & Health")
        assert page.locator('[data-testid="stAlertContentError"]', has_text="Health: critical").count() == 1
        assert page.locator('[data-testid="stAlertContentSuccess"]', has_text="Health:").count() == 0
        assert page.locator('[data-testid="stAlertContentWarning"]', has_text="Health:").count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "Could not show" not in page.locator("body").inner_text()
        page.locator('[data-testid="stExpander"]', has_text="Status changes").locator("summary").first.click()
        changes = page.locator('[data-testid="stExpander"]', has_text="Status changes").inner_text()
        assert "fallbacks" in changes and "lock timeout" in changes
        # The health table shows every value and recommendation in full.
        table = page.locator('[data-testid="stTable"]').first
        text = table.inner_text()
        assert f"101 in 24 h; last reason: {REASON}" in text
        assert ("The cache failed and calls fell back to direct queries: check function permissions, locks and "
                "connectivity (python -m cachelib verify).") in text
        assert "fewer than 100 calls, not judged" in text
        # The history: the cleanup before the outage (ok) and the health check (critical), in the same colours.
        page.locator(".st-key-chart_health_history .js-plotly-plot").first.wait_for(timeout=30_000)
        history = plot(page, "chart_health_history")
        bars = {t["name"]: t for t in history["traces"] if t["type"] == "bar"}
        assert bars["critical"]["color"] == "#dc2626" and "fallbacks" in bars["critical"]["y"]
        assert bars["ok"]["color"] == "#16a34a"
        assert history["layout"]["xtitle"] == "Time (UTC)"
        # The cleanup chart starts both axes at zero, keeps its legend above the plot, one tick a day.
        cleanup = plot(page, "chart_cleanup")
        assert cleanup["layout"]["yaxis"][0] == 0 and cleanup["layout"]["yaxis2"][0] == 0
        assert cleanup["layout"]["legend_y"] >= 1 and cleanup["layout"]["dtick"] == 86_400_000
        page.screenshot(path=str(ARTIFACTS / "maintenance_critical_health.png"), full_page=True)
    except Exception:
        failing(page, server, "health")
        raise


def test_emergency_clear_shows_its_impact_and_its_refusal_at_once(server, page):
    live = scalar(server["db"], "SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL "
                                "AND expires_at > now()")
    assert live > 0
    try:
        open_page(page, "Maintenance & Health", "Maintenance & Health")
        expander = page.locator('[data-testid="stExpander"]', has_text="Emergency Clear All").first
        expander.locator("summary").first.click()
        token = page.get_by_label("Confirmation token", exact=True)
        token.wait_for(timeout=10_000)
        assert token.input_value() == ""
        assert (token.get_attribute("placeholder") or "") != EMERGENCY_TOKEN
        assert f"Clearing now loses {live} live entries" in expander.inner_text()
        assert EMERGENCY_TOKEN in expander.inner_text()  # the instructions name the token
        button = page.locator(".st-key-emergency_clear_submit button")
        assert button.evaluate("b => getComputedStyle(b).backgroundColor") == RED
        page.screenshot(path=str(ARTIFACTS / "maintenance_emergency_before.png"), full_page=True)

        token.fill("emergency_clear_confirmed")
        page.get_by_text("I understand this deletes every cache entry").click()
        button.click()
        refusal = page.locator('[data-testid="stAlertContentError"]', has_text="refused")
        refusal.first.wait_for(state="visible", timeout=30_000)
        assert refusal.first.is_visible()
        assert EMERGENCY_TOKEN in refusal.first.inner_text() and "nothing was deleted" in refusal.first.inner_text()
        assert scalar(server["db"], "SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL "
                                    "AND expires_at > now()") == live
        assert page.get_by_label("Confirmation token", exact=True).input_value() == ""
        page.screenshot(path=str(ARTIFACTS / "maintenance_emergency_refused.png"), full_page=True)
    except Exception:
        failing(page, server, "emergency")
        raise


def test_invalidation_shows_what_it_would_lose(server, page):
    live = scalar(server["db"], "SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL "
                                "AND expires_at > now() AND cache_name = 'expert_sessions'")
    assert live > 0
    try:
        open_page(page, "Cache Management", "Cache Management")
        page.get_by_text(f"Invalidating Expert sessions loses {live} live entries").wait_for(timeout=30_000)
        page.get_by_label("Cache key").fill("expert_sessions:1")
        page.get_by_label("Cache key").press("Enter")
        page.get_by_text("Invalidating expert_sessions:1 loses 1 live entry").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "maintenance_invalidation_impact.png"), full_page=True)
    except Exception:
        failing(page, server, "invalidation")
        raise
