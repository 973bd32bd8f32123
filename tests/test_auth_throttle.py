"""Attacks on the dashboard's failed-login throttle, performed for real against PostgreSQL.

Parallel sessions are threads calling what the login form calls (``auth.attempt_login``
with a real bcrypt check), as Streamlit runs each browser session's script in its own
thread; "processes" are separate throttles with separate connection pools. The address
tests drive the dashboard through AppTest with the client context Streamlit's server
would build. No wall-clock assertions: reserved slots are recorded and checked.
"""

from __future__ import annotations

import threading
from contextlib import closing

import bcrypt
import psycopg
import pytest
import streamlit.runtime.context as st_context
from streamlit.testing.v1 import AppTest

from cachelib import auth, config
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.throttle import LOGIN, Throttled
from tests.conftest import ADMIN_PASSWORD
from tests.test_api_throttle import RecordingThrottle, assert_serialized
from tests.test_dashboard_apptest import APP, texts

pytestmark = pytest.mark.usefixtures("navigation_mode")


def fast(**overrides) -> RecordingThrottle:
    return RecordingThrottle(**{"base_delay": 0.02, "max_delay": 0.16, "free_failures": 3, "max_wait": 0.5,
                                **overrides})


@pytest.fixture(scope="module")
def database(db_url) -> Database:
    with closing(Database(db_url, Settings.from_env({}))) as pool:
        yield pool


@pytest.fixture
def conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("DELETE FROM cache_private.auth_throttle")
        yield connection


@pytest.fixture(scope="module")
def admin_hash(credentials_file) -> bytes:
    settings = Settings.from_env({"DASHBOARD_AUTH_FILE": str(credentials_file)})
    return auth.load_credentials(settings)["usernames"]["admin"]["password"].encode()


def counted(conn, subject: str) -> int:
    row = conn.execute("SELECT failures FROM cache_private.auth_throttle WHERE scope = %s AND subject = %s",
                       (LOGIN, subject)).fetchone()
    return row[0] if row else 0


def guess(admin_hash: bytes, password: str):
    return lambda: bcrypt.checkpw(password.encode(), admin_hash)


# --- parallel sessions and several processes --------------------------------------------------------


def test_parallel_login_sessions_take_turns(database, conn, admin_hash):
    throttle = fast()
    sessions = 24
    results: list[str] = []
    start = threading.Barrier(sessions)

    def session(n: int) -> None:
        start.wait()
        try:
            attempt = auth.attempt_login("admin", "203.0.113.10", guess(admin_hash, f"guess-{n}"),
                                         database=database, throttle=throttle)
            results.append("ok" if attempt.ok else "wrong")
        except Throttled:
            results.append("refused")

    threads = [threading.Thread(target=session, args=(n,)) for n in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    checked = results.count("wrong")
    assert checked + results.count("refused") == sessions and "ok" not in results
    assert checked == len(throttle.admitted) == counted(conn, "address:203.0.113.10") == counted(conn, "user:admin")
    assert_serialized(throttle, throttle.admitted)
    assert results.count("refused") == len(throttle.refused) >= sessions // 2


def test_two_dashboard_processes_share_one_budget(db_url, conn, admin_hash):
    throttles = [fast(max_wait=30), fast(max_wait=30)]
    databases = [Database(db_url, Settings.from_env({})) for _ in throttles]
    try:
        for n in range(6):
            which = n % 2
            attempt = auth.attempt_login("admin", "203.0.113.11", guess(admin_hash, "wrong"),
                                         database=databases[which], throttle=throttles[which], sleep=lambda _s: None)
            assert not attempt.ok and attempt.failures == n + 1
    finally:
        for database in databases:
            database.close()
    assert counted(conn, "address:203.0.113.11") == counted(conn, "user:admin") == 6
    assert [a.failures for a in throttles[0].admitted] == [1, 3, 5]
    assert [a.failures for a in throttles[1].admitted] == [2, 4, 6]
    assert_serialized(throttles[0], throttles[0].admitted + throttles[1].admitted)


def test_rotating_usernames_does_not_reset_the_address(database, conn):
    throttle = fast(base_delay=1.0, max_delay=4.0, max_wait=30)  # waits are recorded, not slept
    for n in range(6):
        auth.attempt_login(f"user{n}", "203.0.113.12", lambda: False, database=database, throttle=throttle,
                           sleep=lambda _s: None)
    assert counted(conn, "address:203.0.113.12") == 6
    assert [a.failures for a in throttle.admitted] == [1, 2, 3, 4, 5, 6]
    assert_serialized(throttle, throttle.admitted)
    assert throttle.admitted[-1].wait > 0  # the address is slowed down although every username is new


def test_rotating_addresses_does_not_reset_the_username(database, conn):
    throttle = fast(base_delay=1.0, max_delay=4.0, max_wait=30)  # waits are recorded, not slept
    for n in range(6):
        auth.attempt_login("admin", f"198.51.100.{n}", lambda: False, database=database, throttle=throttle,
                           sleep=lambda _s: None)
    assert counted(conn, "user:admin") == 6
    assert [a.failures for a in throttle.admitted] == [1, 2, 3, 4, 5, 6]
    assert_serialized(throttle, throttle.admitted)
    assert throttle.admitted[-1].wait > 0  # the username is slowed down although every address is new


def test_the_right_password_clears_its_address_and_username(database, conn, admin_hash):
    throttle = fast(max_wait=30)
    for _ in range(4):
        auth.attempt_login("admin", "203.0.113.13", guess(admin_hash, "wrong"), database=database,
                           throttle=throttle, sleep=lambda _s: None)
    auth.attempt_login("viewer", "203.0.113.99", guess(admin_hash, "wrong"), database=database, throttle=throttle)
    attempt = auth.attempt_login("admin", "203.0.113.13", guess(admin_hash, ADMIN_PASSWORD), database=database,
                                 throttle=throttle, sleep=lambda _s: None)
    assert attempt.ok and attempt.failures == 0
    assert counted(conn, "address:203.0.113.13") == counted(conn, "user:admin") == 0
    assert counted(conn, "user:viewer") == 1  # other subjects keep their count


# --- through the dashboard ----------------------------------------------------------------------------


class FakeClient:
    """What Streamlit's server hands a session: the handshake's headers and cookies, and the peer
    address uvicorn reports (already taken from X-Forwarded-For when the peer was 127.0.0.1)."""

    def __init__(self):
        self.headers: list[tuple[str, str]] = []
        self.cookies: dict[str, str] = {}
        self.remote_ip: str | None = "127.0.0.1"


@pytest.fixture
def client(monkeypatch) -> FakeClient:
    fake = FakeClient()
    monkeypatch.setattr(st_context, "_get_client_context", lambda: fake)
    return fake


def wrong_login(at: AppTest, username: str = "admin", password: str = "not-the-password") -> AppTest:
    at.text_input(key="login_username").input(username)
    at.text_input(key="login_password").input(password)
    [button] = [b for b in at.button if b.label == "Log in"]
    return button.click().run()


@pytest.mark.parametrize("trusted, counted_as", [("", "127.0.0.1"), ("127.0.0.1", None)])
def test_rotating_x_forwarded_for_does_not_reset_the_dashboard_budget(dashboard, conn, client, monkeypatch,
                                                                      trusted, counted_as):
    monkeypatch.setenv("TRUSTED_PROXIES", trusted)
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.setattr(config, "_cached", None)
    monkeypatch.setattr(auth, "LOGIN_THROTTLE", fast(max_wait=30))
    forged = [f"198.51.100.{n}" for n in range(1, 6)]
    for address in forged:
        # A local process sends its own header; Streamlit's uvicorn believes it (FORWARDED_ALLOW_IPS unset).
        client.headers = [("X-Forwarded-For", address)]
        client.remote_ip = address
        at = wrong_login(AppTest.from_file(APP, default_timeout=30).run())
        assert not at.exception and "incorrect" in texts(at, "error")[0]
    if counted_as:  # nobody is trusted: every attempt is the local machine's
        assert counted(conn, f"address:{counted_as}") == len(forged)
        assert all(counted(conn, f"address:{address}") == 0 for address in forged)
    else:  # a trusted local proxy: each forwarded address is its own client
        assert all(counted(conn, f"address:{address}") == 1 for address in forged)
    assert counted(conn, "user:admin") == len(forged)  # and the username holds either way


def test_a_throttled_login_is_refused_before_the_password_is_checked(dashboard, conn, client, monkeypatch):
    monkeypatch.setattr(auth, "LOGIN_THROTTLE", fast(max_wait=5))
    conn.execute("INSERT INTO cache_private.auth_throttle "
                 "VALUES ('login', 'user:admin', 40, now() + interval '1 hour', now())")
    at = wrong_login(AppTest.from_file(APP, default_timeout=30).run(), password=ADMIN_PASSWORD)
    assert not at.exception
    assert any("Too many failed logins" in e and "try again in" in e for e in texts(at, "error"))
    assert not at.session_state["authentication_status"]
    assert texts(at, "title") == ["pgcache-admin"]
    assert counted(conn, "user:admin") == 40  # refused attempts are not counted
