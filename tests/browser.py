"""What every browser test needs: the real dashboard under `streamlit run`, Debian's chromium, a login.

One copy of the start-up, the wait for a script run to finish and the login, so that the
browser test files hold only what they assert.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cachelib import auth
from cachelib.config import Settings
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Streamlit's status widget says "Running" while a script run is going on.
ADMIN_PASSWORD = "browser-Admin-pass-1"  # the admin's password on every test server started here
SCRIPT_RUN_DONE = ("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
                   " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')")


def require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium "
                    "(apt-get install chromium; .ci/run does this)")


def wait_http_ok(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
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


@contextmanager
def streamlit_server(db_url: str, work: Path, admin_password: str = ADMIN_PASSWORD, refresh_seconds: int = 30,
              extra_env: dict[str, str] | None = None) -> Iterator[dict]:
    """The real app under `streamlit run` on a free port against ``db_url``; yields its url and log.

    ``work`` holds the credentials file and the server's log. ``CACHE_DEPLOYED_AT`` is not passed on,
    so the deployment is the database's own. Charts are sent as in production, unchecked by plotly
    (the in-process AppTest runs check every one): the browser reads the JSON the dashboard builds."""
    require_chromium()
    env = {**os.environ, "DATABASE_URL": db_url, "DASHBOARD_AUTH_FILE": str(work / "auth.yaml"),
           "DASHBOARD_COOKIE_KEY": f"browser-test-cookie-key-{work.name}-0123456789abcdef",
           "DASHBOARD_ADMIN_PASSWORD": admin_password, "DASHBOARD_REFRESH_SECONDS": str(refresh_seconds),
           "PYTHONPATH": str(ROOT), "PGCACHE_CHECK_CHART_SPECS": "0", **(extra_env or {})}
    env.pop("CACHE_DEPLOYED_AT", None)
    assert auth.ensure_credentials(Settings.from_env(env))[0] == ("admin", admin_password)
    port = free_port()
    log = work / "streamlit.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "dashboard.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/_stcore/health", process, log)
        yield {"url": f"http://127.0.0.1:{port}/", "log": log, "db": db_url}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def chromium() -> Iterator[object]:
    """Debian's chromium, headless, through Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def settle(page, title: str) -> None:
    """Wait for the page's title, then for the script run to finish."""
    page.locator("h1", has_text=title).first.wait_for(timeout=30_000)
    page.wait_for_function(SCRIPT_RUN_DONE, timeout=30_000)
    page.wait_for_timeout(1200)  # let charts and tables paint


def assert_clean(page, where: str) -> None:
    text = page.locator("body").inner_text()
    assert "Traceback" not in text, where
    assert "Error" not in text, (where, text[:2000])
    assert page.locator('[data-testid="stException"]').count() == 0, where
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0, where


def log_in(page, password: str = ADMIN_PASSWORD, user: str = "admin", landing: str = "Cache Overview") -> None:
    """Fill in the login form and wait for ``landing``.

    A server that has just started sometimes drops the first submit while its first script run
    is still going (on a busy machine): then the form is still there, and it is sent again."""
    for attempt in range(3):
        page.get_by_label("Username").wait_for(timeout=30_000)
        page.wait_for_function(SCRIPT_RUN_DONE, timeout=30_000)
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Log in").click()
        try:
            page.locator("h1", has_text=landing).first.wait_for(timeout=20_000)
            break
        except Exception:
            if attempt == 2:
                raise
    settle(page, landing)


def open_page(page, link: str, title: str) -> None:
    """Follow the sidebar link ``link`` and wait for the page titled ``title``."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=link).first.click()
    settle(page, title)


def keep_failure(page, server: dict, name: str) -> None:
    """The page as it was and the server's log, in tests/artifacts/<name>_failure.*."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}_failure.png"), full_page=True)
    shutil.copy(server["log"], ARTIFACTS / f"{name}_failure-streamlit.log")


@contextmanager
def admin_page(browser, server: dict, name: str, height: int = 2000, password: str = ADMIN_PASSWORD,
               **context_options) -> Iterator[object]:
    """A fresh browser context logged in as admin on ``server``, ``height`` px tall; a failure while it is
    open (the login included) keeps a screenshot and the server's log under ``name``."""
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": height}, **context_options)
    page = context.new_page()
    try:
        page.goto(server["url"], wait_until="domcontentloaded")
        log_in(page, password)
        yield page
    except Exception:
        keep_failure(page, server, name)
        raise
    finally:
        context.close()
