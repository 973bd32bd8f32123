"""Logging out ends the session on the server: a login cookie copied before the logout no longer logs in.

The dashboard runs under AppTest against the real database. The browser is played by
the client context Streamlit's server builds for a session (the handshake's cookies and
headers); the cookie a login sets is captured where streamlit-authenticator's cookie
manager writes it, then presented again exactly as a browser (or an attacker) would.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import extra_streamlit_components as stx
import jwt
import psycopg
import pytest
import streamlit.runtime.context as st_context
from streamlit.testing.v1 import AppTest

from cachelib import auth
from tests.conftest import ADMIN_PASSWORD, VIEWER_PASSWORD
from tests.test_auth_throttle import FakeClient
from tests.test_dashboard_apptest import APP, texts

pytestmark = pytest.mark.usefixtures("navigation_mode")
COOKIE_KEY = "apptest-cookie-key-0123456789abcdef"  # what the dashboard fixture configures


class Browser(FakeClient):
    """One browser's cookie jar; the cookies a login sets are kept in ``set_cookies``."""

    def __init__(self):
        super().__init__()
        self.set_cookies: list[str] = []


@pytest.fixture
def browser(monkeypatch) -> Browser:
    current = Browser()
    original = stx.CookieManager.set

    def record(manager, cookie, val, *args, **kwargs):
        if cookie == auth.COOKIE_NAME:
            current.set_cookies.append(val)
        return original(manager, cookie, val, *args, **kwargs)

    monkeypatch.setattr(stx.CookieManager, "set", record)
    monkeypatch.setattr(st_context, "_get_client_context", lambda: current)
    return current


def open_tab(browser: Browser, cookie: str | None = None) -> AppTest:
    """A new browser tab (a new Streamlit session), presenting ``cookie`` if given."""
    browser.cookies = {auth.COOKIE_NAME: cookie} if cookie else {}
    return AppTest.from_file(APP, default_timeout=30).run()


def log_in(browser: Browser, username: str, password: str) -> tuple[AppTest, str]:
    """Log in with the password form in a new tab; returns the tab and the cookie it set."""
    tab = open_tab(browser)
    tab.text_input(key="login_username").input(username)
    tab.text_input(key="login_password").input(password)
    [button] = [b for b in tab.button if b.label == "Log in"]
    button.click().run()
    assert not tab.exception and tab.session_state["authentication_status"] is True
    return tab, browser.set_cookies[-1]


def logged_in_as(tab: AppTest) -> str | None:
    if tab.session_state["authentication_status"] and texts(tab, "title") == ["Cache Overview"]:
        return tab.session_state["username"]
    assert texts(tab, "title") == ["pgcache-admin"] and [t.label for t in tab.text_input] == ["Username", "Password"]
    return None


def open_sessions(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM cache_private.dashboard_sessions").fetchone()[0]


def test_logout_revokes_a_captured_cookie(dashboard, browser):
    tab, cookie = log_in(browser, "admin", ADMIN_PASSWORD)
    assert logged_in_as(open_tab(browser, cookie)) == "admin"  # the copy works while the session is open
    stolen = open_tab(browser, cookie)  # an attacker's tab, logged in with the copied cookie
    assert logged_in_as(stolen) == "admin"

    tab.button(key="logout_button").click().run()
    assert not tab.exception and logged_in_as(tab) is None

    again = open_tab(browser, cookie)  # the captured cookie, presented after the logout
    assert not again.exception and logged_in_as(again) is None
    # The attacker's open tab is logged out at its next run, too.
    stolen.run()
    assert not stolen.exception and logged_in_as(stolen) is None
    assert any("session has ended" in text for text in texts(stolen, "info"))


def test_other_sessions_keep_working_after_a_logout(dashboard, browser):
    laptop, laptop_cookie = log_in(browser, "admin", ADMIN_PASSWORD)
    _phone, phone_cookie = log_in(browser, "admin", ADMIN_PASSWORD)
    _viewer, viewer_cookie = log_in(browser, "viewer", VIEWER_PASSWORD)
    assert len({laptop_cookie, phone_cookie, viewer_cookie}) == 3
    laptop.button(key="logout_button").click().run()
    assert logged_in_as(open_tab(browser, laptop_cookie)) is None
    assert logged_in_as(open_tab(browser, phone_cookie)) == "admin"  # per session, not per user
    assert logged_in_as(open_tab(browser, viewer_cookie)) == "viewer"


def test_the_cookie_token_path_checks_the_session(dashboard, browser):
    """What login_from_cookie does, step by step: the library's decoder, then our session check."""
    _tab, cookie = log_in(browser, "viewer", VIEWER_PASSWORD)
    token = jwt.decode(cookie, COOKIE_KEY, algorithms=["HS256"])
    assert set(token) == {"username", "exp_date", "sid"} and token["username"] == "viewer"
    assert auth.session_active(token["sid"], "viewer")
    assert not auth.session_active(token["sid"], "admin")  # a session belongs to one user
    assert auth.end_session(token["sid"]) is True
    assert not auth.session_active(token["sid"], "viewer")
    assert auth.end_session(token["sid"]) is False
    assert logged_in_as(open_tab(browser, cookie)) is None


def test_a_signed_cookie_without_an_open_session_does_not_log_in(dashboard, browser):
    expires = (datetime.now() + timedelta(days=1)).timestamp()
    forged = {
        # streamlit-authenticator's own format, correctly signed, but naming no session
        "no session": jwt.encode({"username": "admin", "exp_date": expires}, COOKIE_KEY, algorithm="HS256"),
        "made-up session": jwt.encode({"username": "admin", "exp_date": expires, "sid": "x" * 43}, COOKIE_KEY,
                                      algorithm="HS256"),
        "wrong key": jwt.encode({"username": "admin", "exp_date": expires, "sid": "x"}, "not-the-cookie-key" * 2,
                                algorithm="HS256"),
    }
    for name, cookie in forged.items():
        tab = open_tab(browser, cookie)
        assert not tab.exception, name
        assert logged_in_as(tab) is None, name


def test_an_expired_session_ends_and_expired_rows_are_pruned(dashboard, browser):
    _tab, cookie = log_in(browser, "admin", ADMIN_PASSWORD)
    sid = jwt.decode(cookie, COOKIE_KEY, algorithms=["HS256"])["sid"]
    with psycopg.connect(dashboard, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.dashboard_sessions SET expires_at = now() - interval '1 second'")
    assert not auth.session_active(sid, "admin")
    assert logged_in_as(open_tab(browser, cookie)) is None
    log_in(browser, "viewer", VIEWER_PASSWORD)  # every login prunes the expired sessions
    assert open_sessions(dashboard) == 1


def test_sessions_store_only_a_hash_of_the_id(dashboard):
    session = auth.start_session("admin")
    with psycopg.connect(dashboard) as conn:
        stored = [r[0] for r in conn.execute("SELECT session_hash FROM cache_private.dashboard_sessions")]
    assert session.id not in " ".join(stored) and auth._session_hash(session.id) in stored
    assert session.id not in repr(session)  # nor in logs that print the session
