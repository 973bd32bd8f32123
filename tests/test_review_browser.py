"""The Monthly Review in Chromium, on 40 days of demo traffic replayed through the real cache.

It opens on the last full month, names the window of every target figure, marks an
emergency clear on the charts of the month it happened in, and its HTML report downloads
and opens offline. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from cachelib import demo
from cachelib.db import Database
from cachelib.maintenance import EMERGENCY_TOKEN, Actor, Maintenance
from tests.browser import ARTIFACTS, admin_page, assert_clean, open_page, settle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def db_url(pg18):
    """This module's database: the small demo with 40 days of traffic ending now, then an emergency clear."""
    url = pg18.fresh_database("review_browser")
    demo.traffic(url, 40)
    database = Database(url)
    Maintenance(database).emergency_clear(Actor("alice", "admin", "test"), EMERGENCY_TOKEN)
    database.close()
    return url


def _last_full_month(now: datetime) -> str:
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return datetime(year, month, 1).strftime("%B %Y")


def test_the_review_opens_on_the_last_full_month_with_named_windows(server, browser, tmp_path):
    with admin_page(browser, server, "review", height=2200, accept_downloads=True) as page:
        open_page(page, "Monthly Review", "Monthly Review")
        assert_clean(page, "Monthly Review")
        month = _last_full_month(datetime.now(UTC))
        body = page.locator("body").inner_text()
        assert f"{month}: " in body and f"{month} (so far)" not in body  # the caption under the picker
        page.screenshot(path=str(ARTIFACTS / "review_last_full_month.png"), full_page=True)

        with page.expect_download() as download:
            page.get_by_role("button", name=re.compile("Download the review as HTML")).click()
        saved = tmp_path / "review.html"
        download.value.save_as(saved)
        report = saved.read_text()
        assert month in report and "Plotly.newPlot" in report
        assert f"<td>{month} (" in report  # the month's target rows name their days
        assert "Month 1 window (" in report  # and so do the milestone windows that overlap it
        offline = page.context.new_page()
        offline.route(re.compile(r"^https?://"), lambda route: route.abort())  # nothing from the network
        offline.goto(saved.as_uri())
        offline.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
        assert offline.locator(".js-plotly-plot").count() == 3
        offline.screenshot(path=str(ARTIFACTS / "review_html_report.png"), full_page=True)

        # The current month (so far) holds the emergency clear: its charts mark it.
        page.locator('[data-testid="stSelectbox"]').first.click()
        page.keyboard.type("so far")
        page.keyboard.press("Enter")
        settle(page, "Monthly Review")
        page.get_by_text("1 emergency clear", exact=False).first.wait_for(timeout=30_000)
        assert page.locator("text=Emergency clear").count() >= 1
        page.screenshot(path=str(ARTIFACTS / "review_current_month.png"), full_page=True)
