"""The real dashboard (streamlit run) driven in Debian's chromium: log in, visit every page, run a health check.

Screenshots of every page go to tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cachelib import auth
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.manager import CacheManager
from tests.servers import free_port

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ADMIN_PASSWORD = "browser-Admin-pass-1"
PAGES = {
    "Overview": ("Cache Overview", "overview"),
    "Top Cache Entries": ("Top Cache Entries", "top_entries"),
    "Performance Analysis": ("Performance Analysis", "performance"),
    "Cache Management": ("Cache Management", "management"),
    "Maintenance & Health": ("Maintenance & Health", "maintenance"),
    "Monthly Review": ("Monthly Review", "monthly_review"),
}




def _wait_http_ok(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"the dashboard did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(db_url, tmp_path_factory):
    """The real app under `streamlit run`, on a free port, against the module's database."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run does this)")
    work = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "DATABASE_URL": db_url, "DASHBOARD_AUTH_FILE": str(work / "auth.yaml"),
           "DASHBOARD_COOKIE_KEY": "browser-test-cookie-key-0123456789abcdef",
           "DASHBOARD_ADMIN_PASSWORD": ADMIN_PASSWORD, "DASHBOARD_REFRESH_SECONDS": "30",
           "PYTHONPATH": str(ROOT)}
    assert auth.ensure_credentials(Settings.from_env(env))[0] == ("admin", ADMIN_PASSWORD)
    database = Database(db_url, Settings.from_env({}))
    manager = CacheManager(database, Settings.from_env({}))
    for _ in range(2):
        for ident in (None, 1, 2):
            manager.expert_sessions(ident)
            manager.product_performance(ident)
    database.close()

    port = free_port()
    log = work / "streamlit.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http_ok(f"http://127.0.0.1:{port}/_stcore/health", process, log)
        yield {"url": f"http://127.0.0.1:{port}/", "log": log}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _settle(page, title: str) -> None:
    """Wait for the page's title, then for the script run to finish."""
    page.locator("h1", has_text=title).first.wait_for(timeout=30_000)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=30_000)
    page.wait_for_timeout(1200)  # let charts and tables paint


def _assert_clean(page, where: str) -> None:
    text = page.locator("body").inner_text()
    assert "Traceback" not in text, where
    assert "Error" not in text, (where, text[:2000])
    assert page.locator('[data-testid="stException"]').count() == 0, where
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0, where


def test_log_in_visit_every_page_and_run_a_health_check(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 2000})
    page = context.new_page()
    try:
        page.goto(server["url"], wait_until="domcontentloaded")
        page.get_by_label("Username").wait_for(timeout=30_000)
        assert page.locator("h1", has_text="Cache Overview").count() == 0  # nothing before the login
        page.screenshot(path=str(ARTIFACTS / "00_login.png"))
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Log in").click()
        _settle(page, "Cache Overview")
        sidebar = page.locator('[data-testid="stSidebar"]')
        assert "role admin" in sidebar.inner_text()
        assert sidebar.get_by_role("button", name="Log out").is_visible()

        for number, (link, (title, name)) in enumerate(PAGES.items(), start=1):
            page.locator('[data-testid="stSidebarNav"] a', has_text=link).first.click()
            _settle(page, title)
            _assert_clean(page, title)
            page.screenshot(path=str(ARTIFACTS / f"{number:02d}_{name}.png"), full_page=True)

        page.locator('[data-testid="stSidebarNav"] a', has_text="Maintenance & Health").first.click()
        _settle(page, "Maintenance & Health")
        page.get_by_role("button", name="Run health check").click()
        page.get_by_text("Health:", exact=False).first.wait_for(timeout=30_000)
        _settle(page, "Maintenance & Health")
        _assert_clean(page, "after the health check")
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
