"""The real dashboard (streamlit run) driven in Debian's chromium: log in, visit every page, run a health check.

Screenshots of every page go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import shutil

import pytest

from tests.browser import ARTIFACTS, assert_clean, log_in, open_page, settle

pytestmark = pytest.mark.browser

PAGES = {
    "Overview": ("Cache Overview", "overview"),
    "Top Cache Entries": ("Top Cache Entries", "top_entries"),
    "Performance Analysis": ("Performance Analysis", "performance"),
    "Cache Management": ("Cache Management", "management"),
    "Maintenance & Health": ("Maintenance & Health", "maintenance"),
    "Monthly Review": ("Monthly Review", "monthly_review"),
}
CHARTED = {"performance", "maintenance", "monthly_review"}


def test_log_in_visit_every_page_and_run_a_health_check(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    page = context.new_page()
    try:
        page.goto(server["url"], wait_until="domcontentloaded")
        page.get_by_label("Username").wait_for(timeout=30_000)
        assert page.locator("h1", has_text="Cache Overview").count() == 0  # nothing before the login
        page.screenshot(path=str(ARTIFACTS / "00_login.png"))
        log_in(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        assert "role admin" in sidebar.inner_text()
        assert sidebar.get_by_role("button", name="Log out").is_visible()

        for number, (link, (title, name)) in enumerate(PAGES.items(), start=1):
            open_page(page, link, title)
            if name in CHARTED:  # the screenshot shows the charts, not their empty frames
                page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            assert_clean(page, title)
            page.screenshot(path=str(ARTIFACTS / f"{number:02d}_{name}.png"), full_page=True)

        open_page(page, "Maintenance & Health", "Maintenance & Health")
        page.get_by_role("button", name="Run health check").click()
        page.get_by_text("Health:", exact=False).first.wait_for(timeout=30_000)
        settle(page, "Maintenance & Health")
        # The outcome is shown in the box of its severity: this database never ran a cleanup, so the result
        # is critical and red. Apart from that box the page is clean.
        errors = page.locator('[data-testid="stAlertContentError"]')
        texts = [errors.nth(i).inner_text() for i in range(errors.count())]
        assert ["Health: critical" in t for t in texts] in ([], [True]), texts
        assert page.locator('[data-testid="stAlertContentSuccess"]', has_text="Health: critical").count() == 0
        assert "Traceback" not in page.locator("body").inner_text()
        assert page.locator('[data-testid="stException"]').count() == 0
        page.screenshot(path=str(ARTIFACTS / "07_health_check_done.png"), full_page=True)

        sidebar.get_by_role("button", name="Log out").click()
        page.get_by_label("Username").wait_for(timeout=30_000)
        assert page.locator("h1", has_text="Maintenance & Health").count() == 0
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        shutil.copy(server["log"], ARTIFACTS / "failure-streamlit.log")
        raise
    finally:
        context.close()
