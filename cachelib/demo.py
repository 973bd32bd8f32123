"""Demo data, demo traffic and live demo traffic.

Rows are generated set-based inside PostgreSQL (generate_series), in chunks so
a progress bar can move; a million rows load in well under a minute. Scales:
``small`` for the tests (their template database is built from it: keep it as
it is), ``demo`` for make run (a small application with hundreds of experts and
products), ``full`` for the benchmarks.
"""

from __future__ import annotations

import atexit
import heapq
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from operator import attrgetter
from typing import NamedTuple

import psycopg

from cachelib import db
from cachelib.config import Settings, settings
from cachelib.errors import CacheError, InvalidInput

SPECIALTIES = ["cardiology", "tax law", "data science", "nutrition", "architecture", "career coaching",
               "physiotherapy", "marketing", "immigration", "personal finance"]
CATEGORIES = ["books", "electronics", "garden", "kitchen", "sports", "toys", "beauty", "office"]


@dataclass(frozen=True)
class Scale:
    experts: int
    sessions: int
    products: int
    orders: int


SCALES = {
    "small": Scale(experts=40, sessions=4_000, products=60, orders=4_000),
    "demo": Scale(experts=400, sessions=20_000, products=600, orders=20_000),
    "full": Scale(experts=2_000, sessions=1_000_000, products=5_000, orders=1_000_000),
}
SETUP_SCALE = "demo"  # what make run (python -m cachelib setup) loads
CHUNK_ROWS = 100_000

ProgressFactory = Callable[[str, int], object]


def has_data(url: str) -> bool:
    """True when any demo source table already holds rows."""
    with db.connect(url) as conn:
        return bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM public.experts) OR EXISTS (SELECT 1 FROM public.products)"
        ).fetchone()[0])


def _chunks(total: int) -> list[int]:
    sizes = [CHUNK_ROWS] * (total // CHUNK_ROWS)
    if total % CHUNK_ROWS:
        sizes.append(total % CHUNK_ROWS)
    return sizes


INSERT_EXPERTS = """
INSERT INTO public.experts (name, specialty, created_at)
SELECT 'Expert ' || g, (%(specialties)s::text[])[1 + (g %% %(n_specialties)s)],
       now() - make_interval(days => 400 + (g %% 300))
FROM generate_series(1, %(n)s) g
"""

# Session popularity is skewed: low expert ids get far more sessions (power law).
INSERT_SESSIONS = """
INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, rating, status)
SELECT e.ids[1 + floor(power(random(), 2.5) * array_length(e.ids, 1))::int],
       now() - make_interval(secs => random() * 86400 * 365),
       15 + floor(random() * 8)::int * 15,
       CASE WHEN r < 0.80 THEN round((3 + random() * 2)::numeric, 1) END,
       CASE WHEN r < 0.80 THEN 'completed' WHEN r < 0.90 THEN 'scheduled'
            WHEN r < 0.96 THEN 'cancelled' ELSE 'no_show' END
FROM (SELECT array_agg(id ORDER BY id) AS ids FROM public.experts) e,
     LATERAL (SELECT random() AS r FROM generate_series(1, %(n)s)) g
"""

INSERT_PRODUCTS = """
INSERT INTO public.products (name, category, price)
SELECT 'Product ' || g, (%(categories)s::text[])[1 + (g %% %(n_categories)s)],
       round((5 + random() * 495)::numeric, 2)
FROM generate_series(1, %(n)s) g
"""

INSERT_ORDERS = """
INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at)
SELECT p.id, 1 + floor(random() * 4)::int, p.price, now() - make_interval(secs => random() * 86400 * 365)
FROM (SELECT array_agg(id ORDER BY id) AS ids FROM public.products) ps,
     LATERAL (SELECT ps.ids[1 + floor(power(random(), 2.0) * array_length(ps.ids, 1))::int] AS pid
              FROM generate_series(1, %(n)s)) g
JOIN public.products p ON p.id = g.pid
"""


def load(url: str, scale: str = "small", progress: ProgressFactory | None = None, seed: float = 0.42) -> dict[str, int]:
    """Insert the demo rows at ``scale``; returns rows added per table."""
    size = SCALES[scale]
    steps = [
        ("experts", INSERT_EXPERTS, [size.experts]),
        ("expert_sessions", INSERT_SESSIONS, _chunks(size.sessions)),
        ("products", INSERT_PRODUCTS, [size.products]),
        ("orders", INSERT_ORDERS, _chunks(size.orders)),
    ]
    total_rows = sum(sum(chunks) for _, _, chunks in steps)
    bar = progress("loading demo data", total_rows) if progress else nullcontext()
    counts: dict[str, int] = {}
    with db.connect(url, autocommit=False) as conn, bar:
        conn.execute("SELECT setseed(%s)", (seed,))
        for table, sql, chunks in steps:
            for rows in chunks:
                conn.execute(sql, {
                    "n": rows, "specialties": SPECIALTIES, "n_specialties": len(SPECIALTIES),
                    "categories": CATEGORIES, "n_categories": len(CATEGORIES),
                })
                counts[table] = counts.get(table, 0) + rows
                if progress:
                    bar.update(rows)
        conn.execute("ANALYZE public.experts, public.expert_sessions, public.products, public.orders")
        conn.execute(UNCACHED_FUNCTION)
        conn.commit()
    return counts


# A function of the demo application that is not cached yet, so Cache Management has one to offer:
# an admin can register it in two clicks (README, "Adding a cached function").
UNCACHED_FUNCTION = """
CREATE OR REPLACE FUNCTION public.get_expert_ratings(p_expert_id bigint DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = public, pg_temp AS $$
  SELECT COALESCE(jsonb_agg(jsonb_build_object('expert_id', expert_id, 'rating', rating, 'sessions', n)
                            ORDER BY expert_id, rating), '[]'::jsonb)
  FROM (SELECT expert_id, rating, count(*) AS n FROM expert_sessions
        WHERE rating IS NOT NULL AND (p_expert_id IS NULL OR expert_id = p_expert_id) GROUP BY 1, 2) t
$$;
COMMENT ON FUNCTION public.get_expert_ratings(bigint) IS
  'How each expert''s sessions were rated (demo; not cached yet)';
"""


# --- demo traffic -------------------------------------------------------------
#
# How people use the demo application, shared by the replay of history and the
# live generator. A visit is one person on one screen: a few calls for the same
# key within minutes. Most visits open one expert's or one product's page, the
# id drawn from a Zipf law (a few popular ids, a long tail); some open the list
# of all of them (the cache's all-rows key); a few are writes (a session booked,
# an order placed) that invalidate what they touch.
#
# The replay moves the SQL clock per call through the real CacheManager and
# Maintenance, so statistics, the cleanup log and the audit log are produced by
# the production code path: 35 days of growing adoption on a daily curve with
# the 6-hourly cleanup and a weekly health check and optimize, then a dense
# "present" at the live rate that ends now, so hundreds of entries are live when
# the dashboard opens. The live generator (LiveTraffic) carries on from there on
# the real clock while the dashboard serves the demo data.

ID_SKEW = 0.7                 # Zipf exponent of id popularity: the id of rank r is drawn with weight r ** -0.7
ALL_ROWS_SHARE = 0.04         # visits that open a cache's list of all rows
SESSIONS_SHARE = 0.5          # visits to expert pages; the rest look at product analytics
WRITE_SHARE = 0.05            # visits that write (and so invalidate) instead of reading
VISIT_MINUTES = 4.0           # a visit's calls fall within this many minutes
LIVE_VISITS_PER_MINUTE = 60   # the present's and the live rate: about 3 calls a second
LIVE_EXTRA_CALLS = 4          # a visit then makes 1 to 5 calls
PRESENT_MINUTES = 15          # the replay ends with this much dense present (the longest default duration)
LIVE_CLEANUP_SECONDS = 3600   # the live generator's cleanup, as an hourly cron job would
LIVE_ROLLUP_SECONDS = 30      # and its statistics roll-up, so the figures move with nobody watching
MAX_BACKOFF_SECONDS = 60

log = logging.getLogger("cachelib.demo")


class Event(NamedTuple):
    at: datetime
    action: str                # call, write, vacuum, cleanup or weekly (health check and optimize)
    cache: str | None = None
    ident: int | None = None


class Workload:
    """Draws visits over the demo rows: which cache, which id, how many calls, or a write."""

    def __init__(self, expert_ids: list[int], product_ids: list[int], rng: random.Random):
        self.rng = rng
        self.ids = {"expert_sessions": list(expert_ids), "product_performance": list(product_ids)}
        self.cum_weights = {cache: list(accumulate(rank ** -ID_SKEW for rank in range(1, len(ids) + 1)))
                            for cache, ids in self.ids.items()}

    def popular_id(self, cache: str) -> int:
        """An id of ``cache``, the lowest ids (the busiest experts and best sellers) the most often."""
        return self.rng.choices(self.ids[cache], cum_weights=self.cum_weights[cache])[0]

    def visit(self, at: datetime, extra_calls: int) -> list[Event]:
        rng = self.rng
        cache = "expert_sessions" if rng.random() < SESSIONS_SHARE else "product_performance"
        if rng.random() < WRITE_SHARE:
            return [Event(at, "write", cache, self.popular_id(cache))]
        ident = None if rng.random() < ALL_ROWS_SHARE else self.popular_id(cache)
        offsets = sorted(rng.uniform(0, VISIT_MINUTES) for _ in range(rng.randint(0, extra_calls)))
        return [Event(at + timedelta(minutes=offset), "call", cache, ident) for offset in (0.0, *offsets)]


def _source_ids(conn) -> tuple[list[int], list[int]]:
    expert_ids = [r[0] for r in conn.execute("SELECT id FROM public.experts ORDER BY id")]
    product_ids = [r[0] for r in conn.execute("SELECT id FROM public.products ORDER BY id")]
    if not expert_ids or not product_ids:
        raise CacheError("the demo tables are empty; run: python -m cachelib demo load")
    return expert_ids, product_ids


def _write(conn, event: Event, rng: random.Random) -> None:
    """A booked session or an order at ``event.at``; the invalidation triggers do the rest."""
    with conn.transaction():
        if event.cache == "expert_sessions":
            conn.execute("""INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, rating, status)
                            VALUES (%s, %s, %s, %s, 'completed')""",
                         (event.ident, event.at, 15 * rng.randint(1, 8), round(3 + 2 * rng.random(), 1)))
        else:
            conn.execute("""INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at)
                            SELECT id, %s, price, %s FROM public.products WHERE id = %s""",
                         (rng.randint(1, 4), event.at, event.ident))


@dataclass
class TrafficReport:
    """What a replay did: calls (and per cache and id), writes, cleanups, how long it took, entries left live."""

    calls: int = 0
    writes: int = 0
    cleanups: int = 0
    seconds: float = 0.0
    live_entries: int = 0
    calls_by_key: Counter = field(default_factory=Counter)


def _adoption(day_index: int, days: int) -> float:
    """0.35 on day one, rising to 1.0 at 60% of the replayed period."""
    return 0.35 + 0.65 * min(1.0, day_index / max(days * 0.6, 1))


def _hourly_visits(adoption: float, hour: int, peak: int) -> int:
    daily_curve = 0.25 + 0.75 * max(0.0, 1 - abs(hour - 14) / 9)
    return max(1, round(peak * adoption * daily_curve))


class _SimulatedClock:
    """One connection whose SQL clock (``cachelib.now``) is set to ``now`` whenever it is borrowed.

    It stands in for db.Database under CacheManager and Maintenance, so the replay runs
    their code unchanged; one set_config per borrow is cheaper than the transaction
    around every call that CacheManager's own clock option needs.
    """

    def __init__(self, url: str, now: datetime):
        self.url = url
        self.config = settings()
        self.now = now
        self._conn = db.connect(url)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        db.set_clock(self._conn, self.now, transaction_only=False)
        yield self._conn

    def close(self) -> None:
        self._conn.close()


def traffic(url: str, days: int = 35, progress: ProgressFactory | None = None, seed: int = 7,
            peak_visits_per_hour: int = 6, present_minutes: int = PRESENT_MINUTES,
            visits_per_minute: float = LIVE_VISITS_PER_MINUTE) -> TrafficReport:
    """Replay ``days`` days of history ending now, the last ``present_minutes`` at the live rate."""
    from cachelib.maintenance import Actor, Maintenance
    from cachelib.manager import CacheManager

    if not 1 <= days <= 400:
        raise InvalidInput(f"days must be from 1 to 400, got {days}")
    if not 0 <= present_minutes <= 60:
        raise InvalidInput(f"present_minutes must be from 0 to 60, got {present_minutes}")
    started = time.perf_counter()
    rng = random.Random(seed)
    end = datetime.now(UTC)
    start = end - timedelta(days=days)
    history_end = end - timedelta(minutes=present_minutes)
    with db.connect(url) as conn:
        workload = Workload(*_source_ids(conn), rng)
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (start.isoformat(),))
        conn.execute("UPDATE cache_private.settings SET value = 'true' WHERE name = 'demo_data'")

    clock = _SimulatedClock(url, start)
    manager = CacheManager(clock)
    maintenance = Maintenance(clock)
    cron = Actor("cron", "admin", "demo")
    admin = Actor("admin", "admin", "demo")
    report = TrafficReport()

    def play(event: Event) -> None:
        clock.now = event.at
        if event.action == "call":
            manager.call(event.cache, event.ident)
            report.calls += 1
            report.calls_by_key[event.cache, event.ident] += 1
        elif event.action == "write":
            with clock.connection() as conn:
                _write(conn, event, rng)
            report.writes += 1
        elif event.action == "vacuum":
            with clock.connection() as conn:
                conn.execute(VACUUM_SQL)
        elif event.action == "cleanup":
            maintenance.cleanup(cron)
            report.cleanups += 1
        else:
            maintenance.health_check(admin)
            maintenance.optimize(admin)

    events: list[Event] = []
    for hour_index in range(math.ceil((history_end - start) / timedelta(hours=1))):
        hour_start = start + timedelta(hours=hour_index)
        adoption = _adoption(hour_index // 24, days)
        for _ in range(_hourly_visits(adoption, hour_start.hour, peak_visits_per_hour)):
            at = hour_start + timedelta(minutes=rng.uniform(0, 60))
            if at < history_end:
                events += workload.visit(at, round(1 + 7 * adoption))
        if hour_index % 6 == 5:
            events.append(Event(hour_start + timedelta(minutes=59), "cleanup"))
        if hour_index % 24 == 23:
            # Days go by in seconds, too fast for autovacuum: once a replayed day, vacuum as it would have,
            # so the health history the cleanups record is not a month of table-bloat warnings.
            events.append(Event(hour_start + timedelta(minutes=58), "vacuum"))
        if hour_index % (24 * 7) == 24 * 7 - 1:
            events.append(Event(hour_start + timedelta(minutes=59, seconds=30), "weekly"))
    # The present: visits as dense as the live generator's.
    at = history_end
    while present_minutes:
        at += timedelta(minutes=rng.expovariate(visits_per_minute))
        if at >= end:
            break
        events += workload.visit(at, LIVE_EXTRA_CALLS)
    events = sorted((e for e in events if e.at < end), key=attrgetter("at"))

    bar = progress("replaying demo traffic", len(events)) if progress else nullcontext()
    shift, shown = None, 0
    try:
        with bar:
            for done, event in enumerate(events, 1):
                if event.at >= history_end:
                    if shift is None:
                        # Weeks went by in seconds, too fast for autovacuum: tidy up as it would have.
                        with clock.connection() as conn:
                            conn.execute(VACUUM_SQL)
                        # The present ends when it is replayed, not when the replay began: its entries are fresh.
                        shift = max(datetime.now(UTC) - end, timedelta(0))
                    event = event._replace(at=event.at + shift)
                play(event)
                if progress and (done % 100 == 0 or done == len(events)):
                    bar.update(done - shown)
                    shown = done
    finally:
        clock.close()
    with db.connect(url) as conn:
        conn.execute("SELECT cache_private.rollup_stats()")
        conn.execute(VACUUM_SQL)  # and once more, so the dashboard opens on current planner statistics
        report.live_entries = conn.execute(LIVE_ENTRIES_SQL).fetchone()[0]
    report.seconds = round(time.perf_counter() - started, 2)
    return report


VACUUM_SQL = ("VACUUM (ANALYZE) public.query_cache, cache_private.cache_events, cache_private.invalidations, "
              "cache_private.cache_stats_hourly")
LIVE_ENTRIES_SQL = ("SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL "
                    "AND expires_at > cache_private.cache_now()")


# --- live demo traffic ----------------------------------------------------------


def live_traffic_wanted(config: Settings) -> str | None:
    """None when CACHE_DEMO_TRAFFIC lets this process start live demo traffic, else why not
    (decided without touching the database)."""
    if config.demo_traffic == "off":
        return "CACHE_DEMO_TRAFFIC=off"
    if config.demo_traffic == "auto" and config.database_url:
        return "DATABASE_URL is set (CACHE_DEMO_TRAFFIC=auto runs it on the embedded server only; on: also there)"
    return None


def live_traffic_refusal(url: str, mode: str) -> str | None:
    """None when live demo traffic may run on ``url`` in ``mode`` (auto, on, off), else why not.

    It only ever runs over the demo rows; ``auto`` also wants the statistics to be demo
    statistics (cache_private.settings 'demo_data', set by the replay)."""
    if mode == "off":
        return "CACHE_DEMO_TRAFFIC=off"
    if not is_demo(url):
        return ("the source tables do not hold the generated demo rows only, so no demo traffic is "
                "written into them (python -m cachelib demo load fills empty ones)")
    if mode == "auto":
        with db.connect(url) as conn:
            flag = conn.execute("SELECT cache_private.setting('demo_data')").fetchone()[0]
        if flag != "true":
            return ("the statistics are not demo statistics (cache_private.settings 'demo_data' is not true; "
                    "python -m cachelib demo traffic sets it); CACHE_DEMO_TRAFFIC=on runs it anyway")
    return None


class LiveTraffic:
    """Light live demo traffic from a daemon thread: a few calls a second through the real
    CacheManager on the real clock, skewed ids, an occasional write that invalidates, an hourly
    cleanup; only over demo rows. Errors are logged and retried with a growing pause; nothing
    it does is awaited by anyone else.
    """

    def __init__(self, url: str | None = None, config: Settings | None = None, *, mode: str | None = None,
                 visits_per_minute: float = LIVE_VISITS_PER_MINUTE, seed: int | None = None,
                 cleanup_every: float = LIVE_CLEANUP_SECONDS, rollup_every: float = LIVE_ROLLUP_SECONDS):
        self.config = config or settings()
        self.mode = mode or self.config.demo_traffic
        self.visits_per_minute = visits_per_minute
        self.cleanup_every = cleanup_every
        self.rollup_every = rollup_every
        self._url = url
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._active = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.refusal: str | None = None
        self.last_error: str | None = None
        self.calls = self.writes = self.cleanups = self.errors = 0

    @property
    def running(self) -> bool:
        """True while it generates traffic (started, over demo rows, not stopped)."""
        return self._active.is_set() and self._thread is not None and self._thread.is_alive()

    def start(self) -> LiveTraffic:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pgcache-demo-traffic", daemon=True)
                self._thread.start()
        return self

    def wait_started(self, timeout: float = 10.0) -> bool:
        """Wait until it generates traffic or has given up; True when it runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._active.is_set() and not self._finished.is_set():
            time.sleep(0.05)
        return self.running

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop and wait for the thread; True when it has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _pause(self, seconds: float) -> bool:
        """Sleep unless stopped; True when stopped."""
        return self._stop.wait(seconds)

    def _run(self) -> None:
        try:
            url = self._check()
            if url is not None:
                database = db.Database(url, self.config.model_copy(update={"pool_size": 2}))
                try:
                    self._generate(database)
                finally:
                    database.close()
        except Exception:  # a bug must not print a thread traceback over the dashboard's log
            log.exception("live demo traffic stopped after an unexpected error")
        finally:
            self._active.clear()
            self._finished.set()

    def _check(self) -> str | None:
        """The URL to write to, once the database says it holds demo rows; None when refused or stopped."""
        backoff = 1.0
        while not self._stop.is_set():
            try:
                url = self._url or db.database_url(self.config, start=False)
                refusal = live_traffic_refusal(url, self.mode)
            except (CacheError, psycopg.Error) as exc:
                log.warning("live demo traffic: cannot check the database yet (%s); retrying in %.0f s",
                            _one_line(exc), backoff)
                if self._pause(backoff):
                    return None
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if refusal:
                self.refusal = refusal
                log.warning("live demo traffic not started: %s", refusal)
                return None
            return url
        return None

    def _generate(self, database: db.Database) -> None:
        from cachelib.maintenance import Actor, Maintenance
        from cachelib.manager import CacheManager

        manager = CacheManager(database, self.config)
        maintenance = Maintenance(database)
        cron = Actor("cron", "admin", "demo")
        rate = self.visits_per_minute / 60.0
        workload: Workload | None = None
        due: list[tuple[float, int, Event]] = []  # (when, tie-breaker, event), calls a visit makes later
        sequence = 0
        backoff = 0.0
        while not self._stop.is_set():
            try:
                if workload is None:
                    with database.connection() as conn:
                        workload = Workload(*_source_ids(conn), self._rng)
                    now = time.monotonic()
                    next_visit = now + self._rng.expovariate(rate)
                    next_cleanup, next_rollup = now + self.cleanup_every, now + self.rollup_every
                    self._active.set()
                    log.warning("live demo traffic: about %g visits a minute over the demo rows of %s "
                                "(CACHE_DEMO_TRAFFIC=off stops it)", self.visits_per_minute,
                                db.describe_url(database.url))
                now = time.monotonic()
                next_visit = max(next_visit, now - 5)  # after a pause, carry on rather than catch up
                while next_visit <= now:
                    wall = datetime.now(UTC)
                    for event in workload.visit(wall, LIVE_EXTRA_CALLS):
                        sequence += 1
                        heapq.heappush(due, (next_visit + (event.at - wall).total_seconds(), sequence, event))
                    next_visit += self._rng.expovariate(rate)
                while due and due[0][0] <= now and not self._stop.is_set():
                    when, _, event = heapq.heappop(due)
                    if now - when > 30:
                        continue  # missed during a pause
                    if event.action == "call":
                        manager.call(event.cache, event.ident)
                        self.calls += 1
                    else:
                        with database.connection() as conn:
                            _write(conn, event._replace(at=datetime.now(UTC)), self._rng)
                        self.writes += 1
                if now >= next_rollup:
                    next_rollup = now + self.rollup_every
                    with database.connection() as conn:
                        conn.execute("SELECT cache_private.try_rollup()")
                if now >= next_cleanup:
                    next_cleanup = now + self.cleanup_every
                    refusal = live_traffic_refusal(database.url, self.mode)
                    if refusal:  # the tables changed under us: stop writing into them
                        self.refusal = refusal
                        log.warning("live demo traffic stopped: %s", refusal)
                        return
                    maintenance.cleanup(cron)
                    self.cleanups += 1
                backoff = 0.0
            except Exception as exc:  # the database restarts, a timeout, a revoked grant: log, pause, go on
                self.errors += 1
                self.last_error = _one_line(exc)
                backoff = min(max(backoff * 2, 1.0), MAX_BACKOFF_SECONDS)
                log.warning("live demo traffic: %s; pausing %.0f s", self.last_error, backoff)
                if self._pause(backoff):
                    return
                continue
            wake = min(next_visit, due[0][0] if due else next_visit, next_cleanup, next_rollup)
            self._pause(min(max(wake - time.monotonic(), 0.0), 1.0))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


_live: LiveTraffic | None = None
_live_lock = threading.Lock()


def start_live_traffic(config: Settings | None = None) -> LiveTraffic | None:
    """This process's live demo traffic, started on the first call when CACHE_DEMO_TRAFFIC allows it
    (None when it does not). Later calls return the same generator: one per process."""
    global _live
    config = config or settings()
    with _live_lock:
        if _live is None:
            why_not = live_traffic_wanted(config)
            if why_not:
                log.info("live demo traffic off: %s", why_not)
                return None
            _live = LiveTraffic(config=config).start()
            atexit.register(_live.stop, 2.0)
        return _live


def live_traffic() -> LiveTraffic | None:
    """The generator start_live_traffic started in this process, if any."""
    return _live


def stop_live_traffic(timeout: float = 10.0) -> bool:
    """Stop this process's generator (if any) and forget it; True when its thread has ended."""
    global _live
    with _live_lock:
        live, _live = _live, None
    return live.stop(timeout) if live is not None else True


def is_demo(url: str) -> bool:
    """True when the source tables hold generated demo rows only: Expert 1 and Product 1 are there
    under id 1, and every expert and product is named the way load() names them."""
    with db.connect(url) as conn:
        return bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM public.experts WHERE name = 'Expert 1' AND id = 1)"
            " AND EXISTS (SELECT 1 FROM public.products WHERE name = 'Product 1' AND id = 1)"
            " AND NOT EXISTS (SELECT 1 FROM public.experts WHERE name !~ '^Expert [0-9]+$')"
            " AND NOT EXISTS (SELECT 1 FROM public.products WHERE name !~ '^Product [0-9]+$')").fetchone()[0])


def has_traffic(url: str) -> bool:
    """True when the statistics already hold history (demo or real)."""
    with db.connect(url) as conn:
        return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM cache_private.cache_stats_hourly)").fetchone()[0])
