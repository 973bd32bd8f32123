"""One throttle for failed dashboard logins and failed API keys, shared through PostgreSQL.

The rule, in one place for the API (cachelib/api.py) and the dashboard (cachelib/auth.py):

* Who is counted: the client address (``client_address``: the connecting address, or
  the one a trusted proxy names in X-Forwarded-For when the connection comes from one
  of TRUSTED_PROXIES; an IPv6 client counts by its /64) and, for logins, the username
  as well. Each holds on its own: new usernames do not reset an address, new addresses
  do not reset a username.
* Before a key or password is checked, the attempt reserves the next free slot of each
  of its subjects in cache_private.auth_throttle (migration 0013) with one statement.
  The row lock makes parallel attempts from every process take turns; each one counts
  as a failure until it succeeds, and the k-th attempt since the subject's last
  success moves the subject's next slot ``delay_for(k)`` further: nothing for the first
  ``free_failures``, then ``base_delay`` doubling up to ``max_delay``. The attempt waits
  for the latest of its slots; when that is more than ``max_wait`` away it is refused
  (``Throttled``; the API answers 429 with Retry-After) and is not counted.
* While every subject is within its free failures and has no slot pending, an API key
  check takes the free turn instead (``free_turn``): it holds each subject's advisory lock,
  checks, and counts a failure before letting the next attempt in, so guesses still
  take turns; a success there writes nothing. Beyond the free failures, attempts
  reserve slots as above and wait for them outside any lock.
* A success deletes its subjects' rows. A subject idle for ``forget_after`` starts
  afresh; such rows are pruned (at most every ``prune_every`` seconds per process) and
  the table never keeps more than ``max_rows`` rows.

Time is the database server's real clock (``clock_timestamp()``), never the cache's
movable test clock: every process agrees on it.
"""

from __future__ import annotations

import ipaddress
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import errors as pg_errors

from cachelib.config import TrustedProxies, ip_address_of
from cachelib.db import Database, get_database, translated_errors
from cachelib.errors import Busy, CacheError, MigrationError

API = "api"
LOGIN = "login"
SCOPES = (API, LOGIN)
UNKNOWN_ADDRESS = "unknown"
# What uvicorn (which serves Streamlit) trusts to set X-Forwarded-For when FORWARDED_ALLOW_IPS is unset.
UVICORN_DEFAULT_FORWARDED_ALLOW_IPS = "127.0.0.1,::1"


class Throttled(CacheError):
    """Too many failed attempts: this one would have to wait longer than the throttle's cap."""

    def __init__(self, retry_after: int, failures: int | None):
        self.retry_after = retry_after
        self.failures = failures
        why = (f"{failures} failed attempts since the last success" if failures is not None
               else "too many attempts at the same time")
        super().__init__(f"{why}; try again in {retry_after} s")


T = TypeVar("T")


@dataclass(frozen=True)
class Admission:
    """A reserved slot: wait ``wait`` seconds (until ``slot``, database time), then check."""

    wait: float
    failures: int
    slot: datetime


@dataclass(frozen=True)
class FreeTurn(Generic[T]):
    """What a free turn's check said, and the failure it counted when it said no (None after a yes)."""

    result: T
    counted: Admission | None


@contextmanager
def owner_connection(database: Database | None, tables: str) -> Iterator[psycopg.Connection]:
    """A pooled connection with our error translation; a missing table means an unmigrated database."""
    database = database or get_database()
    try:
        with translated_errors(database.url), database.connection() as conn:
            yield conn
    except pg_errors.UndefinedTable:
        raise MigrationError(f"{tables} does not exist; apply the migrations first: "
                             "python -m cachelib migrate") from None


_TABLE = "the table cache_private.auth_throttle"


def _delay_sql(attempt: str) -> str:
    """The delay after attempt number ``attempt`` (an SQL expression), looked up in the %(delays)s schedule."""
    return (f"pg_catalog.make_interval(secs => (%(delays)s::float8[])"
            f"[LEAST({attempt}, pg_catalog.cardinality(%(delays)s::float8[]))])")


# One statement reserves a slot on every subject: insert or update under the row lock, so
# concurrent attempts on a subject are serialized and each sees the slot the previous one left.
_RESERVE = f"""
INSERT INTO cache_private.auth_throttle AS t (scope, subject, failures, next_allowed_at, last_attempt_at)
SELECT %(scope)s, s.subject, 1, c.now + {_delay_sql('1')}, c.now
FROM pg_catalog.unnest(%(subjects)s::text[]) WITH ORDINALITY AS s(subject, position),
     (SELECT pg_catalog.clock_timestamp() AS now) AS c
ORDER BY s.position
ON CONFLICT (scope, subject) DO UPDATE SET
  failures = CASE WHEN t.last_attempt_at < excluded.last_attempt_at - %(forget)s THEN 1
                  ELSE t.failures + 1 END,
  next_allowed_at = CASE WHEN t.last_attempt_at < excluded.last_attempt_at - %(forget)s
                         THEN excluded.next_allowed_at
                         ELSE GREATEST(t.next_allowed_at, excluded.last_attempt_at)
                              + {_delay_sql('t.failures + 1')} END,
  last_attempt_at = excluded.last_attempt_at
RETURNING t.failures, t.next_allowed_at - {_delay_sql('t.failures')} AS slot, t.last_attempt_at AS now
"""

# The key of a subject's advisory lock (the engine's per-key locks use class 726354).
_LOCK_CLASS = 726355
_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock(%s, pg_catalog.hashtext(%s))"

# Whether an attempt on every subject would be free (no live count at or beyond the free failures, no slot
# still ahead), and whether any subject has a row to forget. A statement of its own after the locks', so its
# snapshot sees what the previous holder committed.
_FREE = """
SELECT pg_catalog.count(*) FILTER (
         WHERE last_attempt_at >= pg_catalog.clock_timestamp() - %(forget)s
           AND (failures >= %(free)s OR next_allowed_at > pg_catalog.clock_timestamp())) = 0,
       pg_catalog.count(*) > 0
FROM cache_private.auth_throttle
WHERE scope = %(scope)s AND subject = ANY(%(subjects)s::text[])
"""

_PRUNE = """
WITH clock AS (SELECT pg_catalog.clock_timestamp() - %(forget)s AS cutoff),
idle AS (
  DELETE FROM cache_private.auth_throttle t USING clock
  WHERE t.last_attempt_at < clock.cutoff
  RETURNING 1
), surplus AS (
  DELETE FROM cache_private.auth_throttle t
  USING (SELECT scope, subject FROM cache_private.auth_throttle, clock
         WHERE last_attempt_at >= clock.cutoff
         ORDER BY last_attempt_at DESC OFFSET %(max_rows)s) AS old
  WHERE t.scope = old.scope AND t.subject = old.subject
  RETURNING 1
)
SELECT (SELECT pg_catalog.count(*) FROM idle) + (SELECT pg_catalog.count(*) FROM surplus)
"""


@dataclass
class FailureThrottle:
    """The failed-authentication throttle (see the module docstring); holds settings, no counts.

    ``base_delay=0`` turns the slowdown off (attempts are still counted), for tests that are
    not about throttling.
    """

    base_delay: float = 0.25
    max_delay: float = 4.0
    free_failures: int = 3
    max_wait: float = 20.0
    forget_after: float = 900.0
    max_rows: int = 100_000
    prune_every: float = 60.0
    _pruned_at: float = field(default=-math.inf, init=False, repr=False, compare=False)
    _prune_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def delay_for(self, attempt: int) -> float:
        """Seconds by which attempt number ``attempt`` since the last success moves the next slot."""
        excess = attempt - self.free_failures
        if excess <= 0 or self.base_delay <= 0:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(excess - 1, 60))

    def schedule(self) -> list[float]:
        """``delay_for(1), delay_for(2), ...`` up to the first ``max_delay``; later attempts repeat the last."""
        delays = [self.delay_for(1)]
        while len(delays) <= self.free_failures or (self.base_delay > 0 and delays[-1] < self.max_delay):
            delays.append(self.delay_for(len(delays) + 1))
        return delays

    def reserve(self, scope: str, subjects: Sequence[str], database: Database | None = None) -> Admission:
        """Count one attempt for every subject and reserve its slot; raises Throttled when it would
        wait longer than ``max_wait`` (then nothing is counted), DatabaseUnavailable, MigrationError."""
        params = self._params(scope, subjects)
        self._maybe_prune(database)
        refused = None
        with self._turn_taken(database) as conn, conn.transaction():
            self._lock(conn, params)
            admission = self.count(conn, params)
            if admission.wait > self.max_wait:
                refused = Throttled(math.ceil(admission.wait), admission.failures - 1)
                raise psycopg.Rollback()  # a refused attempt is not counted and reserves nothing
        if refused is not None:
            raise refused
        return admission

    def free_turn(self, scope: str, subjects: Sequence[str], check: Callable[[psycopg.Connection], T],
                  database: Database | None = None) -> FreeTurn[T] | None:
        """The attempt when it is free for every subject (see the module docstring): ``check`` runs on the
        throttle's connection, its statements after the subjects' locks; a falsy result is counted as a
        failure before the locks go, a truthy one forgets the subjects' counts. None when the attempt is
        not free: then what ``check`` did is rolled back and its result dropped, nothing is counted, and
        the caller reserves a slot instead. Raises Throttled when the locks cannot be had within
        CACHE_LOCK_TIMEOUT, DatabaseUnavailable, MigrationError."""
        params = self._params(scope, subjects)
        turn = None
        # Pipelined: the BEGIN, the locks, the look and the check's first statement travel together,
        # as do a forget and the COMMIT.
        with self._turn_taken(database) as conn, conn.pipeline(), conn.transaction():
            self._lock(conn, params)
            state = conn.execute(_FREE, {**params, "free": self.free_failures})
            result = check(conn)
            free, counts = state.fetchone()
            if not free:
                raise psycopg.Rollback()
            if not result:
                turn = FreeTurn(result, self.count(conn, params))
            else:
                if counts:
                    self._forget(conn, scope, params["subjects"])
                turn = FreeTurn(result, None)
        return turn

    def count(self, conn: psycopg.Connection, params: dict[str, Any]) -> Admission:
        """Count one attempt on every subject of ``params`` (see _params) and reserve its slot, on ``conn``
        inside its transaction, with the subjects' locks held."""
        rows = conn.execute(_RESERVE, params).fetchall()
        failures = max(row[0] for row in rows)
        slot = max(row[1] for row in rows)
        return Admission(max(0.0, (slot - rows[0][2]).total_seconds()), failures, slot)

    def _params(self, scope: str, subjects: Sequence[str]) -> dict[str, Any]:
        if scope not in SCOPES or not subjects:
            raise ValueError(f"scope must be one of {SCOPES} with at least one subject")
        # Sorted, so two attempts sharing subjects lock them in the same order (no deadlock).
        return {"scope": scope, "subjects": sorted(set(subjects)), "delays": self.schedule(),
                "forget": timedelta(seconds=self.forget_after)}

    @staticmethod
    def _lock(conn: psycopg.Connection, params: dict[str, Any]) -> None:
        """Take every subject's advisory lock until the transaction ends: attempts on a subject take turns."""
        for subject in params["subjects"]:
            conn.execute(_LOCK, (_LOCK_CLASS, f"{params['scope']}:{subject}"))

    @contextmanager
    def _turn_taken(self, database: Database | None) -> Iterator[psycopg.Connection]:
        """A connection for one turn; a turn that cannot be had within CACHE_LOCK_TIMEOUT is refused."""
        try:
            with owner_connection(database, _TABLE) as conn:
                yield conn
        except (Busy, pg_errors.LockNotAvailable, pg_errors.DeadlockDetected):  # Busy: translated by db
            # So many attempts queue on one subject that this one could not even take its turn
            # within CACHE_LOCK_TIMEOUT: refuse it like any attempt that would wait too long.
            raise Throttled(max(1, math.ceil(self.max_wait)), None) from None

    @staticmethod
    def _forget(conn: psycopg.Connection, scope: str, subjects: Iterable[str]) -> None:
        conn.execute("DELETE FROM cache_private.auth_throttle WHERE scope = %s AND subject = ANY(%s::text[])",
                     (scope, list(subjects)))

    def succeeded(self, scope: str, subjects: Iterable[str], database: Database | None = None) -> None:
        """Forget the failures of ``subjects`` (after a correct key or password)."""
        with owner_connection(database, _TABLE) as conn:
            self._forget(conn, scope, subjects)

    def failures(self, scope: str, subject: str, database: Database | None = None) -> int:
        """Attempts counted for ``subject`` since its last success (0 when forgotten)."""
        with owner_connection(database, _TABLE) as conn:
            row = conn.execute("""SELECT failures FROM cache_private.auth_throttle
                                  WHERE scope = %s AND subject = %s
                                    AND last_attempt_at >= pg_catalog.clock_timestamp() - %s""",
                               (scope, subject, timedelta(seconds=self.forget_after))).fetchone()
        return row[0] if row else 0

    def prune(self, database: Database | None = None) -> int:
        """Delete idle rows and any beyond ``max_rows`` (oldest first); returns how many went."""
        with owner_connection(database, _TABLE) as conn:
            return conn.execute(_PRUNE, {"forget": timedelta(seconds=self.forget_after),
                                         "max_rows": self.max_rows}).fetchone()[0]

    def _maybe_prune(self, database: Database | None) -> None:
        with self._prune_lock:
            if time.monotonic() - self._pruned_at < self.prune_every:
                return
            self._pruned_at = time.monotonic()
        self.prune(database)


# --- subjects ---------------------------------------------------------------------------


def _printable(text: str, limit: int = 100) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def address_subject(address: str | None) -> str:
    """The throttle subject of a client address; an IPv6 address counts by its /64 network."""
    ip = ip_address_of(address)
    if ip is None:
        return "address:" + (_printable(address) if isinstance(address, str) and address else UNKNOWN_ADDRESS)
    if ip.version == 6:
        return f"address:{ipaddress.ip_network((ip, 64), strict=False)}"
    return f"address:{ip}"


def user_subject(username: str | None) -> str:
    """The throttle subject of a login name (case-insensitive, at most 100 characters)."""
    return "user:" + (_printable((username or "").strip().lower()) or "<empty>")


# --- the client's address -------------------------------------------------------------


def _hops(forwarded_for: Iterable[str]) -> list[str]:
    """The entries of every X-Forwarded-For header, in order (each proxy appends one)."""
    return [hop.strip() for value in forwarded_for if isinstance(value, str) for hop in value.split(",")]


def _host(hop: str) -> str:
    """``1.2.3.4:80`` -> ``1.2.3.4``; ``[2001:db8::1]:443`` -> ``2001:db8::1``; anything else as it is."""
    if hop.startswith("[") and "]" in hop:
        return hop[1:hop.index("]")]
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def _forwarded_client(hops: Sequence[str], trusted: TrustedProxies, proxy: str) -> str:
    """The right-most hop that is not a trusted proxy; ``proxy`` is the trusted hop that sent the request."""
    client = proxy
    for hop in reversed(hops):
        ip = ip_address_of(_host(hop))
        if ip is None:
            return client  # what lies left of here was written by the client: stop at the last proxy we trust
        client = str(ip)
        if ip not in trusted:
            return client
    return client  # every hop is a trusted proxy: the left-most one is the client


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: TrustedProxies) -> str:
    """The client behind a connection from ``peer``: ``peer`` itself, unless it is one of ``trusted``;
    then the right-most X-Forwarded-For entry that is not itself a trusted proxy."""
    ip = ip_address_of(peer)
    if ip is None:
        return _printable(peer) if isinstance(peer, str) and peer else UNKNOWN_ADDRESS
    if ip not in trusted:
        return str(ip)
    return _forwarded_client(_hops(forwarded_for), trusted, str(ip))


def streamlit_client_address(reported: object, forwarded_for: Iterable[str], trusted: TrustedProxies,
                             server_forwarded_allow: str | None = None) -> str:
    """``client_address`` for the dashboard, from what Streamlit reports (``st.context``).

    Streamlit reports a loopback peer as None, and its server (uvicorn) has already replaced
    the peer by an X-Forwarded-For entry when the peer is one of FORWARDED_ALLOW_IPS (unset:
    127.0.0.1 and ::1). When the reported address is the entry uvicorn would have picked, the
    real peer was one of those hosts: it counts as a trusted proxy only when all of them are
    in ``trusted``; otherwise the client is that hop, whatever the header says.
    """
    from uvicorn.middleware.proxy_headers import _TrustedHosts  # the server's own rule, so we agree with it

    values = [v for v in forwarded_for if isinstance(v, str)]
    hops = _hops(values)
    reported = reported if isinstance(reported, str) and reported else None
    allowed = (os.environ.get("FORWARDED_ALLOW_IPS", UVICORN_DEFAULT_FORWARDED_ALLOW_IPS)
               if server_forwarded_allow is None else server_forwarded_allow)
    server_hosts = [h.strip() for h in allowed.split(",") if h.strip()]
    if hops and server_hosts:
        picked, _port = _TrustedHosts(server_hosts).get_trusted_client_address(", ".join(values))
        if picked and picked in ({reported} if reported else {"127.0.0.1", "::1"}):
            if "*" not in server_hosts and all(_within(host, trusted) for host in server_hosts):
                return _forwarded_client(hops, trusted, str(ip_address_of(server_hosts[0]) or UNKNOWN_ADDRESS))
            first = ip_address_of(server_hosts[0])
            return str(first) if first is not None else UNKNOWN_ADDRESS
    return client_address(reported or "127.0.0.1", hops, trusted)


def _within(host: str, trusted: TrustedProxies) -> bool:
    """Whether every address ``host`` (an address or a network) stands for is in ``trusted``."""
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        return False
    if network.is_loopback and any(t.is_loopback for t in trusted.networks):
        return True  # 127.0.0.1 and ::1 are the same machine; uvicorn trusts both by default
    return any(network.version == t.version and network.subnet_of(t) for t in trusted.networks)
