"""Attacks on the API's failed-key throttle and its parameters, performed for real.

Real PostgreSQL holds the throttle (cache_private.auth_throttle, 0013); where the
header handling matters the requests go over HTTP to uvicorn, served the way
``python -m cachelib api`` serves it. Nothing here asserts on wall-clock time: the
throttle's reserved slots (database timestamps) are recorded and checked instead.
"""

from __future__ import annotations

import threading
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from cachelib import api, apikeys, config
from cachelib.config import TrustedProxies
from cachelib.db import Database
from cachelib.throttle import (
    API,
    Admission,
    FailureThrottle,
    Throttled,
    address_subject,
    client_address,
    streamlit_client_address,
)
from tests.servers import api_in_thread

METRICS = "/api/admin/cache/metrics"
MAINTENANCE = "/api/admin/cache/maintenance"
BAD_KEY = "pgc_00000000_" + "d" * 43
ROLES = ["anon", "authenticated", "cache_admin", "service_role"]


@dataclass
class RecordingThrottle(FailureThrottle):
    """The real throttle, remembering every attempt it counted (in a free turn or a reserved slot) and
    every refusal."""

    admitted: list[Admission] = field(default_factory=list)
    refused: list[Throttled] = field(default_factory=list)
    free_turns: int = 0

    def free_turn(self, scope, subjects, check, database=None):
        turn = super().free_turn(scope, subjects, check, database)
        self.free_turns += turn is not None
        if turn is not None and turn.counted is not None:
            self.admitted.append(turn.counted)
        return turn

    def reserve(self, scope, subjects, database=None):
        try:
            admission = super().reserve(scope, subjects, database)
        except Throttled as exc:
            self.refused.append(exc)
            raise
        self.admitted.append(admission)
        return admission


def fast(**overrides) -> RecordingThrottle:
    """Small real delays (tens of milliseconds), so real waits keep the tests quick."""
    return RecordingThrottle(**{"base_delay": 0.02, "max_delay": 0.16, "free_failures": 3, "max_wait": 0.5,
                                **overrides})


@pytest.fixture(scope="module")
def database(db_url) -> Database:
    with closing(Database(db_url, config.Settings.from_env({}))) as pool:
        yield pool


@pytest.fixture(scope="module")
def keys(database) -> dict[str, str]:
    return {"admin": apikeys.create_key("throttle-admin", "admin", database),
            "viewer": apikeys.create_key("throttle-viewer", "viewer", database)}


@pytest.fixture
def conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as connection:
        connection.execute("DELETE FROM cache_private.auth_throttle")  # each test starts with no counts
        yield connection


def counted(conn, subject: str, scope: str = API) -> int:
    row = conn.execute("SELECT failures FROM cache_private.auth_throttle WHERE scope = %s AND subject = %s",
                       (scope, subject)).fetchone()
    return row[0] if row else 0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_serialized(throttle: FailureThrottle, admitted: list[Admission]) -> None:
    """Each admitted attempt took the slot the previous one left: slot(k+1) = max(slot(k) + delay(k), its
    own arrival) exactly, in database time; and none waits longer than the cap."""
    ordered = sorted(admitted, key=lambda a: a.failures)
    assert [a.failures for a in ordered] == list(range(1, len(ordered) + 1))
    for previous, current in zip(ordered, ordered[1:], strict=False):
        arrival = current.slot - timedelta(seconds=current.wait)
        expected = max(previous.slot + timedelta(seconds=throttle.delay_for(previous.failures)), arrival)
        assert abs((current.slot - expected).total_seconds()) < 1e-5, (previous, current)
    assert all(a.wait <= throttle.max_wait for a in admitted)


# --- (a) X-Forwarded-For from a local client -----------------------------------------------------


def test_rotating_x_forwarded_for_does_not_reset_the_budget(database, keys, conn):
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default; served our way, nobody does."""
    throttle = fast()
    app = api.create_app(database, metrics_key_required=False, throttle=throttle, trusted_proxies=TrustedProxies())
    forged = [f"198.51.100.{n}" for n in range(1, 9)]
    with api_in_thread(database, app) as base, httpx.Client(base_url=base, timeout=30) as http:
        for address in forged:
            response = http.get(METRICS, headers={**bearer(BAD_KEY), "X-Forwarded-For": address})
            assert response.status_code == 401
    assert counted(conn, "address:127.0.0.1") == len(forged)
    assert [a.failures for a in throttle.admitted] == list(range(1, len(forged) + 1))
    assert all(counted(conn, f"address:{address}") == 0 for address in forged)
    assert sum(a.wait for a in throttle.admitted) > 0  # the later guesses were slowed down


def test_the_cli_server_does_not_take_the_address_from_headers():
    assert api.SERVER_OPTIONS["proxy_headers"] is False and api.SERVER_OPTIONS["forwarded_allow_ips"] == ""


def test_a_trusted_proxy_passes_the_forwarded_address(database, keys, conn):
    throttle = fast()
    app = api.create_app(database, metrics_key_required=False, throttle=throttle,
                         trusted_proxies=TrustedProxies.parse("127.0.0.1,10.0.0.0/8"))
    with api_in_thread(database, app) as base, httpx.Client(base_url=base, timeout=30) as http:
        assert http.get(METRICS, headers={**bearer(BAD_KEY), "X-Forwarded-For": "203.0.113.7"}).status_code == 401
        # The client may prepend anything; the proxies append, and the right-most untrusted entry counts.
        for forged in ("1.1.1.1", "2.2.2.2", "not-an-address"):
            response = http.get(METRICS, headers={**bearer(BAD_KEY),
                                                  "X-Forwarded-For": f"{forged}, 203.0.113.7, 10.1.2.3"})
            assert response.status_code == 401
        assert http.get(METRICS, headers=bearer(BAD_KEY)).status_code == 401  # the proxy host itself
    assert counted(conn, "address:203.0.113.7") == 4
    assert counted(conn, "address:127.0.0.1") == 1
    assert counted(conn, "address:1.1.1.1") == counted(conn, "address:10.1.2.3") == 0


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),                  # untrusted peer: the header is ignored
    ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.5", ["198.51.100.1, 10.0.0.9"], "198.51.100.1"),          # a chain of trusted proxies
    ("10.0.0.5", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),           # the client's own prefix is ignored
    ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),         # repeated headers are one list
    ("10.0.0.5", ["198.51.100.1:4711"], "198.51.100.1"),
    ("10.0.0.5", ["[2001:db8::7]:443"], "2001:db8::7"),
    ("10.0.0.5", ["garbage"], "10.0.0.5"),                             # nothing usable: the proxy itself
    ("10.0.0.5", ["198.51.100.1, garbage"], "10.0.0.5"),
    ("10.0.0.5", ["10.0.0.7"], "10.0.0.7"),                            # all trusted: the left-most
    ("10.0.0.5", [], "10.0.0.5"),
    ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),             # IPv4-mapped peer
    ("testclient", ["198.51.100.1"], "testclient"),                    # not an IP (test transport): as it is
    (None, ["198.51.100.1"], "unknown"),
])
def test_client_address_rule(peer, forwarded, expected):
    assert client_address(peer, forwarded, TrustedProxies.parse("10.0.0.0/8")) == expected


@pytest.mark.parametrize("reported, forwarded, trusted, expected", [
    (None, [], "", "127.0.0.1"),                                       # Streamlit reports loopback as None
    ("203.0.113.5", [], "", "203.0.113.5"),
    # Streamlit's uvicorn took the address from the header of a loopback peer: that is forged...
    ("198.51.100.9", ["198.51.100.9"], "", "127.0.0.1"),
    ("198.51.100.9", ["1.1.1.1, 198.51.100.9"], "", "127.0.0.1"),
    # ...unless the local proxy is trusted (either loopback address stands for the machine).
    ("198.51.100.9", ["198.51.100.9"], "127.0.0.1", "198.51.100.9"),
    ("198.51.100.9", ["1.1.1.1, 198.51.100.9"], "127.0.0.1,::1", "198.51.100.9"),
    # A remote client that names itself in the header is not mistaken for a proxied one.
    ("203.0.113.5", ["203.0.113.5, 6.6.6.6"], "127.0.0.1", "203.0.113.5"),
    ("10.0.0.5", ["198.51.100.1"], "10.0.0.0/8", "198.51.100.1"),     # a remote trusted proxy
])
def test_streamlit_client_address_rule(reported, forwarded, trusted, expected):
    assert streamlit_client_address(reported, forwarded, TrustedProxies.parse(trusted),
                                    server_forwarded_allow="127.0.0.1,::1") == expected


def test_ipv6_clients_count_by_their_64():
    assert address_subject("2001:db8:1:2::1") == address_subject("2001:db8:1:2:ffff::9") == "address:2001:db8:1:2::/64"
    assert address_subject("2001:db8:1:3::1") != address_subject("2001:db8:1:2::1")


# --- (b) parallel guesses ---------------------------------------------------------------------------


def test_parallel_bad_keys_from_one_address_are_checked_one_slot_at_a_time(database, keys, conn):
    throttle = fast()
    app = api.create_app(database, metrics_key_required=False, throttle=throttle, trusted_proxies=TrustedProxies())
    attempts = 60
    statuses: list[int] = []
    retry_after: list[int] = []
    start = threading.Barrier(attempts)

    def guess(http: httpx.Client) -> None:
        start.wait()
        response = http.get(METRICS, headers=bearer(BAD_KEY))
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.append(int(response.headers["retry-after"]))
            assert "too many failed API keys" in response.json()["detail"]

    limits = httpx.Limits(max_connections=attempts)
    with api_in_thread(database, app) as base, httpx.Client(base_url=base, timeout=60, limits=limits) as http:
        threads = [threading.Thread(target=guess, args=(http,)) for _ in range(attempts)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    checked, refused = statuses.count(401), statuses.count(429)
    assert checked + refused == attempts
    # Every key that was checked had reserved its own slot, one after the other, within the cap ...
    assert checked == len(throttle.admitted) == counted(conn, "address:127.0.0.1")
    assert_serialized(throttle, throttle.admitted)
    # ... and every other guess was refused without being checked or counted.
    assert refused == len(throttle.refused) == len(retry_after)
    assert all(exc.retry_after > throttle.max_wait for exc in throttle.refused) and min(retry_after) >= 1
    # With slots 0.16 s apart and a 0.5 s cap, most of 60 simultaneous guesses cannot get a slot at all.
    print(f"\n{attempts} parallel guesses from one address: {checked} checked one slot at a time, {refused} refused")
    assert refused >= attempts // 2


def test_free_turns_check_one_at_a_time_and_end_at_the_free_failures(database, conn):
    """Twelve guesses at once while the address is within its free failures: each check runs in the
    database with the subject locked, so one at a time, and once the free failures are used the rest
    get no free turn (what their checks did is dropped)."""
    throttle = fast(base_delay=1.0, max_delay=4.0, max_wait=0.5)
    subject = "address:198.51.100.70"

    def wrong_key(conn) -> tuple:  # a check that takes 50 ms of the database's time, and says no
        began, _, ended = conn.execute("SELECT pg_catalog.clock_timestamp(), pg_catalog.pg_sleep(0.05), "
                                       "pg_catalog.clock_timestamp()").fetchone()
        return began, ended

    start = threading.Barrier(12)
    turns = []

    def guess() -> None:
        start.wait()
        turn = throttle.free_turn(API, [subject], lambda conn: (spans.append(wrong_key(conn)), None)[1],
                                  database)
        turns.append(turn)

    spans: list[tuple] = []
    threads = [threading.Thread(target=guess) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every check, kept or dropped, ran alone: no two overlap in the database's time.
    ordered = sorted(spans)
    assert len(ordered) == 12
    assert all(earlier[1] <= later[0] for earlier, later in zip(ordered, ordered[1:], strict=False))
    free = [t for t in turns if t is not None]
    assert sorted(t.counted.failures for t in free) == [1, 2, 3] == list(range(1, throttle.free_failures + 1))
    assert counted(conn, subject) == throttle.free_failures  # the nine other turns counted nothing


def test_a_good_key_from_a_quiet_address_counts_nothing(database, keys, conn):
    throttle = fast()
    app = api.create_app(database, metrics_key_required=False, throttle=throttle)
    with TestClient(app, client=("198.51.100.80", 40000)) as client:
        for _ in range(20):
            assert client.get(METRICS, headers=bearer(keys["viewer"])).status_code == 200
    assert throttle.free_turns == 20 and throttle.admitted == [] and counted(conn, "address:198.51.100.80") == 0


# --- (c) several processes ----------------------------------------------------------------------------


def test_two_app_instances_share_one_budget(db_url, keys, conn):
    first, second = fast(), fast()
    databases = [Database(db_url, config.Settings.from_env({})) for _ in range(2)]
    apps = [api.create_app(databases[0], metrics_key_required=False, throttle=first),
            api.create_app(databases[1], metrics_key_required=False, throttle=second)]
    peer = ("198.51.100.20", 40000)
    try:
        with TestClient(apps[0], client=peer) as one, TestClient(apps[1], client=peer) as two:
            for _ in range(3):
                assert one.get(METRICS, headers=bearer(BAD_KEY)).status_code == 401
                assert two.get(METRICS, headers=bearer(BAD_KEY)).status_code == 401
    finally:
        for database in databases:
            database.close()
    assert counted(conn, "address:198.51.100.20") == 6
    assert [a.failures for a in first.admitted] == [1, 3, 5]
    assert [a.failures for a in second.admitted] == [2, 4, 6]
    assert_serialized(first, first.admitted + second.admitted)


def test_a_good_key_clears_the_budget(database, keys, conn):
    throttle = fast(max_wait=30)
    app = api.create_app(database, metrics_key_required=False, throttle=throttle)
    with TestClient(app, client=("198.51.100.30", 40000)) as client:
        for _ in range(5):
            assert client.get(METRICS, headers=bearer(BAD_KEY)).status_code == 401
        assert counted(conn, "address:198.51.100.30") == 5
        assert client.get(METRICS, headers=bearer(keys["viewer"])).status_code == 200
        assert counted(conn, "address:198.51.100.30") == 0
        throttle.admitted.clear()
        assert client.get(METRICS, headers=bearer(BAD_KEY)).status_code == 401
    assert [(a.failures, a.wait) for a in throttle.admitted] == [(1, 0.0)]


def test_a_missing_key_is_not_a_guess_and_other_addresses_are_not_slowed(database, keys, conn):
    throttle = fast(max_wait=30)
    app = api.create_app(database, metrics_key_required=False, throttle=throttle)
    with TestClient(app, client=("198.51.100.40", 40000)) as guesser, \
            TestClient(app, client=("198.51.100.41", 40000)) as other:
        for _ in range(6):
            guesser.get(METRICS, headers=bearer(BAD_KEY))
        assert other.get(METRICS).status_code == 401
        assert counted(conn, "address:198.51.100.41") == 0
        free_before, counted_before = throttle.free_turns, len(throttle.admitted)
        assert other.get(METRICS, headers=bearer(keys["viewer"])).status_code == 200
    # The other address's key was checked in a free turn: no slot, no wait, nothing counted.
    assert throttle.free_turns == free_before + 1 and len(throttle.admitted) == counted_before
    assert counted(conn, "address:198.51.100.41") == 0


def test_too_long_a_wait_is_a_429_with_retry_after_and_is_not_counted(database, keys, conn):
    throttle = fast(base_delay=1.0, max_delay=4.0, free_failures=0, max_wait=1.5)
    app = api.create_app(database, metrics_key_required=False, throttle=throttle)
    peer = ("198.51.100.50", 40000)
    # Slots at +0 and +1 s fit under the 1.5 s cap; the next (+3 s) does not.
    with TestClient(app, client=peer, raise_server_exceptions=False) as client:
        statuses = [client.get(METRICS, headers=bearer(BAD_KEY)).status_code for _ in range(2)]
        refused = client.get(METRICS, headers=bearer(keys["viewer"]))
    assert statuses == [401, 401]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 2
    assert "Traceback" not in refused.text and refused.json()["detail"].startswith("too many failed API keys")
    assert counted(conn, "address:198.51.100.50") == 2  # the refused attempt was not counted


def test_a_queue_that_cannot_take_its_turn_in_time_is_refused(db_url, conn):
    database = Database(db_url, config.Settings.from_env({"CACHE_LOCK_TIMEOUT": "1s"}))
    conn.execute("INSERT INTO cache_private.auth_throttle VALUES ('api', 'address:198.51.100.60', 1, now(), now())")
    try:
        with psycopg.connect(db_url) as holder:
            holder.execute("SELECT 1 FROM cache_private.auth_throttle WHERE subject = 'address:198.51.100.60' "
                           "FOR UPDATE")
            with pytest.raises(Throttled):
                FailureThrottle().reserve(API, ["address:198.51.100.60"], database)
            holder.rollback()
    finally:
        database.close()


def test_a_free_turn_that_cannot_take_its_lock_in_time_is_refused(db_url, conn):
    database = Database(db_url, config.Settings.from_env({"CACHE_LOCK_TIMEOUT": "1s"}))
    checked = []
    try:
        with psycopg.connect(db_url) as holder:  # an attempt on the same address, mid-check
            holder.execute("SELECT pg_catalog.pg_advisory_xact_lock(726355, pg_catalog.hashtext(%s))",
                           ("api:address:198.51.100.61",))
            with pytest.raises(Throttled):
                FailureThrottle().free_turn(API, ["address:198.51.100.61"], checked.append, database)
            holder.rollback()
        turn = FailureThrottle().free_turn(API, ["address:198.51.100.61"], lambda _conn: "yes", database)
        assert turn.result == "yes"
    finally:
        database.close()
    assert counted(conn, "address:198.51.100.61") == 0


def test_idle_and_surplus_rows_are_pruned(database, conn):
    conn.execute("""INSERT INTO cache_private.auth_throttle
                    SELECT 'api', 'address:192.0.2.' || n, 1, now(), now() - make_interval(mins => n, secs => -30)
                    FROM generate_series(1, 40) n""")
    assert FailureThrottle(forget_after=30 * 60, max_rows=100).prune(database) == 10  # idle for over 30 min
    assert FailureThrottle(forget_after=30 * 60, max_rows=5).prune(database) == 25    # keep the 5 newest
    conn.execute("INSERT INTO cache_private.auth_throttle VALUES ('api', 'address:192.0.2.99', 1, now(), "
                 "now() - interval '2 hours')")
    assert FailureThrottle(forget_after=30 * 60, max_rows=2).prune(database) == 4  # both kinds in one go
    newest = {r[0] for r in conn.execute("SELECT subject FROM cache_private.auth_throttle")}
    assert newest == {f"address:192.0.2.{n}" for n in range(1, 3)}


def test_throttle_and_session_tables_are_private(conn):
    for table in ("cache_private.auth_throttle", "cache_private.dashboard_sessions"):
        assert conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()[0]
        for role in ROLES:
            for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                assert conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege)).fetchone()[0] \
                    is False, (role, table, privilege)
    count = conn.execute("""SELECT count(*) FROM information_schema.routines
                            WHERE routine_schema = 'public' AND routine_name LIKE '%cache%'""").fetchone()[0]
    assert count == 15


# --- repeated parameters ---------------------------------------------------------------------------------


def test_repeated_action_is_refused_and_nothing_runs(database, keys, conn):
    def rows(action: str) -> int:
        return conn.execute("SELECT count(*) FROM cache_private.maintenance_audit WHERE action = %s",
                            (action,)).fetchone()[0]

    conn.execute("SELECT public.get_expert_sessions_with_stats_cached(1, '1 hour')")
    entries = conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0]
    before = {action: rows(action) for action in ("emergency_clear", "health_check")}
    with api_in_thread(database) as base, httpx.Client(base_url=base, timeout=30) as http:
        for query in ("action=health_check&action=emergency_clear",
                      "action=health_check&action=emergency_clear&confirm=EMERGENCY_CLEAR_CONFIRMED",
                      "action=emergency_clear&%61ction=health_check&confirm=EMERGENCY_CLEAR_CONFIRMED",
                      "action=emergency_clear&confirm=EMERGENCY_CLEAR_CONFIRMED&confirm=x"):
            response = http.post(f"{MAINTENANCE}?{query}", headers=bearer(keys["admin"]))
            assert response.status_code == 400, (query, response.text)
            detail = response.json()["detail"]
            assert "given more than once" in detail and ("'action' (2 times)" in detail or "'confirm'" in detail)
    assert {action: rows(action) for action in before} == before
    assert conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0] == entries


@pytest.mark.parametrize("method, path", [
    ("GET", f"{METRICS}?a=1&a=2"), ("GET", f"{MAINTENANCE}?x=&x="), ("POST", f"{MAINTENANCE}?days=1&days=2"),
    ("GET", "/metrics?name[]=1&name[]=2"), ("GET", "/healthz?check=1&check=1"), ("GET", "/docs?a=1&a=1"),
    ("GET", "/no-such-route?a=1&a=2"),
])
def test_every_route_refuses_repeated_parameters(database, keys, method, path):
    app = api.create_app(database, metrics_key_required=False, throttle=fast())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.request(method, path, headers=bearer(keys["admin"]))
    assert response.status_code == 400 and "given more than once" in response.json()["detail"]
    assert "Traceback" not in response.text


def test_two_authorization_headers_are_malformed(database, keys, conn):
    app = api.create_app(database, metrics_key_required=False, throttle=fast())
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get(METRICS, headers=[("Authorization", f"Bearer {keys['viewer']}"),
                                                ("Authorization", f"Bearer {BAD_KEY}")])
    assert response.status_code == 401 and response.json()["detail"].startswith("malformed")


def test_unique_parameters_still_work(database, keys):
    app = api.create_app(database, metrics_key_required=False, throttle=fast())
    with TestClient(app) as client:
        response = client.post(MAINTENANCE, params={"action": "cleanup_stats", "days": 2},
                               headers=bearer(keys["admin"]))
    assert response.status_code == 200 and len(response.json()["details"]["days"]) == 2


def test_forged_header_values_never_become_keys(database, conn):
    """Whatever a client writes in the header, an untrusted peer is counted under its own address."""
    throttle = FailureThrottle(base_delay=0)
    peer = client_address("203.0.113.99", [str(uuid.uuid4()), "\x00" * 300], TrustedProxies())
    throttle.reserve(API, [address_subject(peer)], database)
    assert {r[0] for r in conn.execute("SELECT subject FROM cache_private.auth_throttle")} == {
        "address:203.0.113.99"}
