"""Several replicas of the admin API and the dashboard behind one database share what they must.

Two real ``python -m cachelib api`` processes, A and B, each on its own free port, serve the same
test database, as two replicas behind a load balancer would. Through PostgreSQL they share:

* the failed-authentication throttle (cache_private.auth_throttle): failures counted by A and by
  B add up to one budget per client address, and failures sent to A make B answer 429;
* the API keys: a key revoked through the CLI (a third process) is refused by both at once;
* the audit: a maintenance action through B and a read through A land in the one log the
  dashboard shows.

Dashboard replicas are played by short Python processes running what dashboard.py runs (they
share sessions through cache_private.dashboard_sessions): a session ended by one is over for
the others. The login cookie is signed with the cookie key, which is not in the database: two
replicas accept each other's cookies only when they are given the same DASHBOARD_COOKIE_KEY (or
read one key file).

Every process gets a free port and is killed when the module ends, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from cachelib import apikeys, queries
from cachelib.config import PROJECT_ROOT, Settings
from cachelib.db import Database
from cachelib.throttle import API, FailureThrottle
from tests.servers import free_port

METRICS = "/api/admin/cache/metrics"
CACHES = "/api/admin/cache/caches"
MAINTENANCE = "/api/admin/cache/maintenance"
BAD_KEY = "pgc_00000000_" + "d" * 43
LOCAL = "address:127.0.0.1"  # every request here comes from this client address
# Settings a replica gets from its test, never from the environment the tests run in (TRUSTED_PROXIES
# would change who counts as the client; the dashboard's two say which cookie key a replica has).
NOT_INHERITED = ("TRUSTED_PROXIES", "DASHBOARD_COOKIE_KEY", "DASHBOARD_AUTH_FILE")


def replica_env(url: str, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
    return {**env, "DATABASE_URL": url, **settings}


@contextmanager
def api_processes(url: str, logs: Path, count: int) -> Iterator[list[str]]:
    """``count`` processes of ``python -m cachelib api`` against ``url``, each on a free port, started
    together; yields their base URLs and kills them afterwards."""
    started: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        for number in range(count):
            port, log = free_port(), logs / f"api_{number}.log"
            with open(log, "wb") as out:
                started.append((subprocess.Popen([sys.executable, "-m", "cachelib", "api", "--port", str(port)],
                                                 stdout=out, stderr=subprocess.STDOUT, env=replica_env(url),
                                                 cwd=PROJECT_ROOT), f"http://127.0.0.1:{port}", log))
        deadline = time.monotonic() + 60
        for process, base, log in started:
            while not _answers(base):
                assert process.poll() is None, f"the API exited with {process.returncode}:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"the API did not answer within 60 s:\n{log.read_text()}"
                time.sleep(0.1)
        yield [base for _process, base, _log in started]
    finally:
        for process, _base, _log in started:
            process.terminate()
        for process, _base, _log in started:
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:  # uvicorn waits for requests still waiting for their throttle slot
                process.kill()
                process.wait(10)


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def replicas(db_url, tmp_path_factory) -> Iterator[list[str]]:
    """Two API replicas, A and B."""
    with api_processes(db_url, tmp_path_factory.mktemp("api_replicas"), 2) as bases:
        yield bases


@pytest.fixture(scope="module")
def database(db_url) -> Iterator[Database]:
    with closing(Database(db_url, Settings.from_env({}))) as pool:
        yield pool


@pytest.fixture(scope="module")
def admin_key(database) -> str:
    return apikeys.create_key("replica-admin", "admin", database)


@pytest.fixture
def conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("DELETE FROM cache_private.auth_throttle")  # each test starts with no counts
        yield connection


def counted(conn, subject: str = LOCAL) -> int:
    row = conn.execute("SELECT failures FROM cache_private.auth_throttle WHERE scope = %s AND subject = %s",
                       (API, subject)).fetchone()
    return row[0] if row else 0


def call(base: str, key: str, path: str = CACHES, method: str = "GET", timeout: float = 60,
         **params) -> httpx.Response:
    return httpx.request(method, base + path, params=params, headers={"Authorization": f"Bearer {key}"},
                         timeout=timeout)


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachelib", *args], capture_output=True, text=True, timeout=120,
                          env=replica_env(url), cwd=PROJECT_ROOT)


# --- the API ----------------------------------------------------------------------------------


def test_failures_counted_by_either_replica_add_up_to_one_budget(replicas, conn):
    a, b = replicas
    for base in (a, b, a, b):
        assert call(base, BAD_KEY).status_code == 401
    assert counted(conn) == 4


def test_a_key_revoked_through_the_cli_is_refused_by_both_replicas_at_once(db_url, replicas, database, conn):
    a, b = replicas
    key = apikeys.create_key("replica-viewer", "viewer", database)
    assert [call(base, key).status_code for base in (a, b)] == [200, 200]
    revoked = run_cli(db_url, "api-key", "revoke", "--name", "replica-viewer")
    assert revoked.returncode == 0, revoked.stderr
    for base in (b, a):
        response = call(base, key)
        assert response.status_code == 401 and response.json()["detail"] == "unknown or revoked API key"
    refused = conn.execute("""SELECT count(*) FROM cache_private.maintenance_audit
                              WHERE action = 'api_auth' AND outcome = 'refused' AND actor = 'replica-viewer (api)'
                                AND result->>'reason' = 'key revoked'""").fetchone()[0]
    assert refused == 2  # one from each replica


def test_both_replicas_write_one_audit(replicas, database, admin_key, conn):
    a, b = replicas
    acted = call(b, admin_key, MAINTENANCE, "POST", action="health_check")
    assert acted.status_code == 200, acted.text
    acted = call(a, admin_key, MAINTENANCE, "POST", action="cleanup_stats", days="7")
    assert acted.status_code == 200, acted.text
    # What the dashboard's audit log shows, newest first: A's action, then B's.
    log = queries.audit_log(2, database)
    assert list(zip(log["actor"], log["action"], log["outcome"], strict=True)) == [
        ("replica-admin (api)", "cleanup_stats", "ok"), ("replica-admin (api)", "health_check", "ok")]


def attempts_before_refusal(throttle: FailureThrottle) -> int:
    """How many attempts arriving at once the throttle admits before one would wait longer than its cap."""
    wait, attempt = 0.0, 1
    while wait <= throttle.max_wait:
        wait += throttle.delay_for(attempt)
        attempt += 1
    return attempt - 1


def test_failures_sent_to_one_replica_make_the_other_refuse(replicas, admin_key, conn):
    """Runs last: A is left with requests waiting for their slots (they end within the throttle's cap)."""
    a, b = replicas
    burst = attempts_before_refusal(FailureThrottle())  # the throttle `python -m cachelib api` runs with
    assert burst == 12  # 3 free, then 0.25 s doubling to 4 s: the 13th would wait 23.75 s, the cap is 20 s

    def guess() -> None:
        # Each attempt takes its slot on arrival and then waits for it; the guesser need not wait with it.
        try:
            call(a, BAD_KEY, METRICS, timeout=1)
        except httpx.TimeoutException:
            pass

    guessers = [threading.Thread(target=guess) for _ in range(burst)]
    for thread in guessers:
        thread.start()
    deadline = time.monotonic() + 3  # the 13th attempt must come before the first slots have passed
    while counted(conn) < burst:
        assert time.monotonic() < deadline, f"only {counted(conn)} of {burst} attempts were counted"
        time.sleep(0.02)
    for base, key in ((b, BAD_KEY), (b, admin_key), (a, admin_key)):
        response = call(base, key, METRICS)
        assert response.status_code == 429, (base, response.text)
        assert int(response.headers["Retry-After"]) > FailureThrottle().max_wait
        assert f"{burst} failed attempts since the last success" in response.json()["detail"]
    assert counted(conn) == burst  # a refused attempt is not counted
    for thread in guessers:
        thread.join(5)


# --- the dashboard ----------------------------------------------------------------------------

# What a dashboard replica does with a login cookie (dashboard.py: login_from_cookie, set_login_cookie, the
# logout), in a process of its own. streamlit-authenticator decodes the cookie with jwt.decode(..., HS256).
DASHBOARD_REPLICA = """
import sys
import jwt
from cachelib import auth

command, argument = sys.argv[1], sys.argv[2]
key = auth.cookie_key()
if command == "log-in":
    print(auth.cookie_token(auth.start_session(argument), key))
    sys.exit()
try:
    claims = jwt.decode(argument, key, algorithms=["HS256"])
except jwt.InvalidSignatureError:
    print("cookie rejected")
    sys.exit()
if command == "open":
    print("logged in" if auth.session_active(claims["sid"], claims["username"]) else "session ended")
elif command == "log-out":
    print("logged out" if auth.end_session(claims["sid"]) else "no such session")
"""


def dashboard_replica(url: str, auth_dir: Path, command: str, argument: str, **settings: str) -> str:
    """One request to a dashboard replica whose credentials (and, without DASHBOARD_COOKIE_KEY, its cookie
    key file) live in ``auth_dir``; returns what it printed."""
    env = replica_env(url, DASHBOARD_AUTH_FILE=str(auth_dir / "auth.yaml"), **settings)
    result = subprocess.run([sys.executable, "-c", DASHBOARD_REPLICA, command, argument], capture_output=True,
                            text=True, timeout=120, env=env, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_session_ended_on_one_replica_is_over_on_the_others(db_url, tmp_path):
    shared = {"DASHBOARD_COOKIE_KEY": "replicas-share-this-cookie-key-0123456789"}
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    cookie = dashboard_replica(db_url, a, "log-in", "admin", **shared)
    assert dashboard_replica(db_url, b, "open", cookie, **shared) == "logged in"  # the other replica accepts it
    assert dashboard_replica(db_url, b, "log-out", cookie, **shared) == "logged out"
    assert dashboard_replica(db_url, a, "open", cookie, **shared) == "session ended"  # a copy no longer logs in


def test_replicas_with_their_own_cookie_key_files_reject_each_others_cookies(db_url, tmp_path):
    """No DASHBOARD_COOKIE_KEY: each replica creates a random key beside its credentials file."""
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    cookie = dashboard_replica(db_url, a, "log-in", "viewer")
    # Another process reading the same key file (a replica on the same machine, or on a shared volume) agrees.
    assert dashboard_replica(db_url, a, "open", cookie) == "logged in"
    # A replica on another machine has drawn its own key: the login does not carry over to it.
    assert dashboard_replica(db_url, b, "open", cookie) == "cookie rejected"
    assert (a / "cookie_key").read_text() != (b / "cookie_key").read_text()
