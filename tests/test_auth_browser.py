"""The session and throttle attacks against the real dashboard (streamlit run) in Debian's chromium.

A login cookie is copied out of one browser into others, then the owner logs out; and a
local client forges X-Forwarded-For on every failed login (Streamlit's own server
believes it from 127.0.0.1).
"""

from __future__ import annotations

import psycopg
import pytest

from cachelib import auth
from tests.browser import ADMIN_PASSWORD, settle

pytestmark = pytest.mark.browser


def log_in(page, url: str, password: str = ADMIN_PASSWORD) -> None:
    page.goto(url, wait_until="domcontentloaded")
    settle(page, "pgcache-admin")  # the login form, once its script run has finished
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()


def login_cookie(context) -> dict:
    cookies = [c for c in context.cookies() if c["name"] == auth.COOKIE_NAME]
    assert cookies, "the login set no cookie"
    return cookies[0]


def shows_login_form(page) -> bool:
    page.get_by_role("button", name="Log in").wait_for(timeout=30_000)
    return page.locator("h1", has_text="Cache Overview").count() == 0


def test_a_cookie_copied_before_logout_no_longer_logs_in(server, browser):
    url = server["url"]
    owner = browser.new_context()
    page = owner.new_page()
    log_in(page, url)
    settle(page, "Cache Overview")
    page.wait_for_function(f"() => document.cookie.includes('{auth.COOKIE_NAME}=')", timeout=30_000)
    page.reload(wait_until="domcontentloaded")
    settle(page, "Cache Overview")  # the cookie logs in after a reload
    captured = login_cookie(owner)
    copy = {"name": captured["name"], "value": captured["value"], "url": url}

    thief = browser.new_context()
    thief.add_cookies([copy])
    stolen = thief.new_page()
    stolen.goto(url, wait_until="domcontentloaded")
    settle(stolen, "Cache Overview")  # while the session is open, the copy works

    page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Log out").click()
    assert shows_login_form(page)

    later = browser.new_context()
    later.add_cookies([copy])
    again = later.new_page()
    again.goto(url, wait_until="domcontentloaded")
    assert shows_login_form(again)
    stolen.reload(wait_until="domcontentloaded")
    assert shows_login_form(stolen)
    for context in (owner, thief, later):
        context.close()


def test_forged_x_forwarded_for_does_not_reset_the_login_budget(server, browser, db_url):  # noqa: F811
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM cache_private.auth_throttle")
    forged = ["198.51.100.71", "198.51.100.72", "198.51.100.73"]
    for address in forged:
        context = browser.new_context(extra_http_headers={"X-Forwarded-For": address})
        page = context.new_page()
        log_in(page, server["url"], password="not-the-password")
        page.get_by_text("Username or password is incorrect").wait_for(timeout=30_000)
        context.close()
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT subject, failures FROM cache_private.auth_throttle WHERE scope = 'login'"))
    assert rows == {"address:127.0.0.1": 3, "user:admin": 3}
