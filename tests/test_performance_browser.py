"""Performance Analysis in Debian's chromium, on a deployment 12 days old that started on a Wednesday.

Real traffic (cachelib.demo.traffic, through the real cache) fills the statistics; the figures are read
back from the plotly charts the browser drew. Screenshots go to tests/artifacts/perf_*.png.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

import psycopg
import pytest

from cachelib import demo, ui
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.maintenance import EMERGENCY_TOKEN, Actor, Maintenance
from tests.browser import ARTIFACTS, admin_page, assert_clean, open_page, settle, streamlit_server

pytestmark = pytest.mark.browser

ADMIN_PASSWORD = "perf-Admin-pass-1"
CHOOSE = "Choose at least one cache in the Caches filter above to see this chart."
FIGURES = """() => [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
    title: (p.layout.title && p.layout.title.text) || '',
    xaxis: p.layout.xaxis, yaxis: p.layout.yaxis,
    x: p.data.map(t => t.x), names: p.data.map(t => t.name),
    annotations: (p.layout.annotations || []).map(a => a.text)}))"""


def _deployed_at() -> datetime:
    """A Wednesday 8 to 14 days ago, 09:30 UTC: Week 1 is over, Month 1 is under way."""
    today = datetime.now(UTC).date()
    day = next(today - timedelta(days=n) for n in range(8, 15) if (today - timedelta(days=n)).weekday() == 2)
    return datetime.combine(day, time(9, 30), tzinfo=UTC)


@pytest.fixture(scope="module")
def history(db_url):
    """16 days of demo traffic; the deployment moved to a Wednesday inside them."""
    demo.traffic(db_url, days=16, peak_visits_per_hour=2)
    deployed = _deployed_at()
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (deployed.isoformat(),))
    return deployed


@pytest.fixture(scope="module")
def server(db_url, history, tmp_path_factory):
    with streamlit_server(db_url, tmp_path_factory.mktemp("perf_browser"), ADMIN_PASSWORD,
                          refresh_seconds=600) as started:
        yield started


@pytest.fixture
def page(server, browser):
    with admin_page(browser, server, "perf", height=4600, password=ADMIN_PASSWORD) as page:
        open_performance(page)
        yield page


def open_performance(page) -> None:
    open_page(page, "Performance Analysis", "Performance Analysis")
    page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    page.wait_for_timeout(800)


def figures(page) -> dict[str, dict]:
    """The plotly charts on the page by title (up to its first comma, tags dropped)."""
    return {re.sub(r"<[^>]+>", "", f["title"]).split(",")[0]: f for f in page.evaluate(FIGURES)}


def pick(page, label: str, option: str, drawn: str) -> None:
    """Choose ``option`` in the selectbox ``label``; wait until a chart satisfies the JS predicate ``drawn``
    (on a plotly div ``p``), i.e. the page has been drawn again with it."""
    page.locator('[data-testid="stSelectbox"]', has_text=label).get_by_role("combobox").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(f"() => [...document.querySelectorAll('.js-plotly-plot')].some(p => {drawn})",
                           timeout=30_000)
    settle(page, "Performance Analysis")


def shoot(page, name: str) -> None:
    """The whole page (the viewport is tall enough) and each chart on its own, as a reviewer sees them."""
    page.screenshot(path=str(ARTIFACTS / f"perf_{name}.png"), full_page=True)
    for number in range(page.locator(".js-plotly-plot").count()):
        chart = page.locator(".js-plotly-plot").nth(number)
        chart.screenshot(path=str(ARTIFACTS / f"perf_{name}_chart{number + 1}.png"))


def day(moment: datetime) -> str:
    return f"{moment:%b} {moment.day}"


def test_the_default_range_starts_at_the_deployment_and_the_targets_are_judged(page, history):
    deployed = history
    assert "Week 1" in page.locator("body").inner_text()
    date_range = page.locator('[data-testid="stDateInput"] input').first.input_value()
    assert date_range.replace("/", "-").startswith(f"{deployed:%Y-%m-%d}"), date_range
    charts = figures(page)
    assert {"Hit rate per cache", "Database load reduction (all caches)", "Mean response time"} <= set(charts)
    for chart in ("Hit rate per cache", "Database load reduction (all caches)", "Mean response time"):
        axis = charts[chart]["xaxis"]
        assert str(axis["range"][0]).startswith(f"{deployed:%Y-%m-%d}"), (chart, axis["range"])
        assert axis["dtick"] == 86_400_000 and axis["tickformat"] == "%b %-d", (chart, axis)
    response = charts["Mean response time"]["yaxis"]
    assert response["type"] == "log" and response["dtick"] == 1 and response["ticksuffix"] == " ms"
    assert "Deployed" in charts["Hit rate per cache"]["annotations"]
    assert any(text.startswith("Week 1 target: Sessions hit rate above") for text in
               charts["Hit rate per cache"]["annotations"])

    table = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stTable"] tr')].map(
        tr => [...tr.children].map(cell => cell.innerText.trim()))""")
    assert table[0] == ["Target", "Cache", "Window", "Measured", "Result"], table[0]
    rows = [dict(zip(table[0], row, strict=True)) for row in table[1:]]
    assert len(rows) == 10, rows  # five targets, each over the selected range and over its own window
    selected = [r for r in rows if r["Window"].startswith(f"selected range {day(deployed)}-")]
    week1 = [r for r in rows if r["Window"] == f"Week 1 ({day(deployed)} 09:30-{day(deployed + timedelta(days=7))} "
                                               "09:30)"]
    month1 = [r for r in rows if r["Window"].startswith("Month 1 (") and r["Window"].endswith("so far")]
    assert len(selected) == 5 and len(week1) == 2 and len(month1) == 3, rows
    assert all(r["Result"] in ("pass", "fail") and r["Measured"].endswith("%") for r in selected + week1), rows
    assert all(r["Result"] in ("on track", "below target so far") for r in month1), rows
    assert_clean(page, "Performance Analysis")
    shoot(page, "01_default")


def test_the_week_bucket_shows_the_first_partial_week(page, history):
    deployed = history
    pick(page, "Bucket", "Week", "p.layout.xaxis.tickmode === 'array'")
    hit_rate = figures(page)["Hit rate per cache"]
    sunday = deployed + timedelta(days=4)
    assert hit_rate["xaxis"]["ticktext"][0] == f"{day(deployed)}-{day(sunday)}", hit_rate["xaxis"]["ticktext"]
    first_point = min(x for trace in hit_rate["x"] if trace for x in trace)
    assert first_point[:10] in {f"{deployed + timedelta(days=n):%Y-%m-%d}" for n in range(0, 4)}, first_point
    assert_clean(page, "week bucket")
    shoot(page, "02_week")

    pick(page, "Bucket", "Hour", "p.layout.xaxis.tickmode !== 'array'")
    page.get_by_text("Hourly buckets are shown for ranges up to 7 days").wait_for(timeout=30_000)
    assert figures(page)["Hit rate per cache"]["xaxis"]["dtick"] == 86_400_000  # shown by day


def test_an_emergency_clear_is_marked_on_the_charts(page, db_url):
    database = Database(db_url, Settings.from_env({}))
    try:
        assert Maintenance(database).emergency_clear(Actor("alice", "admin", "dashboard"), EMERGENCY_TOKEN).ok
    finally:
        database.close()
    page.wait_for_timeout(3500)  # the page's reads are cached for 3 s
    open_performance(page)
    charts = figures(page)
    for chart in ("Hit rate per cache", "Database load reduction (all caches)", "Mean response time"):
        assert "Emergency clear" in charts[chart]["annotations"], (chart, charts[chart]["annotations"])
    assert page.locator(".js-plotly-plot .annotation-text", has_text="Emergency clear").count() >= 3
    assert "1 emergency clear" in page.locator("body").inner_text()
    shoot(page, "03_emergency_clear")


def test_no_cache_chosen_means_no_chart(page):
    caches = page.locator('[data-testid="stMultiSelect"]', has_text="Caches")
    caches.get_by_role("button", name="Clear all").click()
    page.wait_for_timeout(500)
    settle(page, "Performance Analysis")
    body = page.locator("body").inner_text()
    assert body.count(CHOOSE) == 4, body
    assert page.locator(".js-plotly-plot").count() == 0
    shoot(page, "04_no_cache")


def test_one_cache_by_the_hour_over_three_days(page):
    caches = page.locator('[data-testid="stMultiSelect"]', has_text="Caches")
    caches.get_by_role("button", name="Remove Product analytics").click()
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some("
                           "p => (p.layout.title.text || '').includes('Database load reduction (Expert sessions)'))",
                           timeout=30_000)
    settle(page, "Performance Analysis")
    charts = figures(page)
    blue = ui.CACHE_COLORS["Expert sessions"]
    assert set(charts["Hit rate per cache"]["names"]) == {"Expert sessions"}
    load = page.evaluate("""() => { const p = [...document.querySelectorAll('.js-plotly-plot')].find(
        p => (p.layout.title.text || '').includes('Database load reduction'));
        return {bar: p.data[0].marker.color,
                target: p.layout.shapes.filter(s => s.yref === 'y').map(s => s.line.color)}; }""")
    assert load["bar"] == blue and load["target"] == [blue], load  # the target line in its series' colour
    rows = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stTable"] tr')].slice(1).map(
        tr => tr.children[1].innerText.trim())""")
    assert set(rows) == {"Expert sessions", "all caches"}, rows

    # The date range field is made of segments (year / month / day, twice) that take typed digits.
    today = datetime.now(UTC).date()
    first = today - timedelta(days=2)
    segments = page.locator('[data-testid="stDateInput"] [role="spinbutton"]')
    segments.nth(0).click()
    page.keyboard.type(f"{first:%Y%m%d}")
    segments.nth(3).click()
    page.keyboard.type(f"{today:%Y%m%d}")
    page.keyboard.press("Enter")
    page.locator("h1", has_text="Performance Analysis").click()  # leave the field: the range is sent
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(p => "
                           f"(p.layout.title.text || '').includes('{day(datetime.combine(first, time()))}-'))",
                           timeout=30_000)
    title = f"Hit rate per cache, {day(datetime.combine(first, time()))}-"
    # Waits for the chart drawn by the hour, its axis included (on a busy machine the title can be
    # seen before the rest of the figure is replaced).
    pick(page, "Bucket", "Hour", f"(p.layout.title.text || '').includes('{title}') "
                                 "&& p.layout.title.text.includes('(hourly') "
                                 "&& (p.layout.xaxis.tickformat || '').includes('%H') "
                                 "&& p.layout.xaxis.dtick === 6 * 3600000")
    assert "Hourly buckets are shown for ranges up to" not in page.locator("body").inner_text()
    hit_rate = figures(page)["Hit rate per cache"]
    assert hit_rate["xaxis"]["dtick"] == 6 * 3_600_000 and "%H:%M" in hit_rate["xaxis"]["tickformat"]
    points = hit_rate["x"][0]
    assert len(points) >= 12 and all(datetime.fromisoformat(x).time().strftime("%M:%S.%f") == "30:00.000000"
                                     for x in points), points  # mid-hour
    assert f"{first:%Y-%m-%d}" <= min(points) and max(points) < f"{today + timedelta(days=1):%Y-%m-%d}"
    assert_clean(page, "one cache by the hour")
    shoot(page, "05_one_cache_hourly")
