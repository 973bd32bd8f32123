"""The cache engine under concurrency: no stale read after commit, one computation per
stampede, and maintenance running alongside readers and writers.

Besides the demo's cached functions, the tests use a test-only cache created in
their own database and registered through the catalog like any cache an admin adds
(``cache_private.register_cache``): ``public.cc_count_cached(grp)`` caches the number
of rows of ``public.cc_items`` in group ``grp``, with the generated wrapper and
invalidation triggers. So every promise below is proved for a generated cache. Its computation
logs every run in ``public.cc_compute_log`` and can be held at a "gate" (an advisory
lock the test holds) after it has taken its snapshot, so "a slow computation that
started before a commit and stores after it" is produced deterministically, not by
sleeping and hoping.

Every waiting step waits for a state visible in pg_locks / pg_stat_activity; the
timeouts are only a safety net and nothing asserts on elapsed time.
"""

from __future__ import annotations

import bisect
import itertools
import random
import threading
import time
from collections import Counter

import psycopg
import pytest

from tests.servers import flush_fast_hits

# Run once more with the optional C hit path enabled: its hits must keep every promise below.
ALSO_ON_FAST_HITS = True
TOKEN = "EMERGENCY_CLEAR_CONFIRMED"
_gates = itertools.count(4242)
_groups = itertools.count(1000)

SETUP = """
CREATE TABLE public.cc_items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, grp bigint NOT NULL);
CREATE TABLE public.cc_compute_log (grp bigint NOT NULL, n bigint NOT NULL, pid integer NOT NULL);

-- The gate and the pause come from session settings the test sets before each call: the
-- key is the group alone, as for any registered cache.
CREATE FUNCTION public.cc_count(p_grp bigint) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = public, pg_temp AS $$
DECLARE
  v_n bigint;
  v_gate bigint := NULLIF(current_setting('cc.gate', true), '')::bigint;
  v_sleep_ms integer := COALESCE(NULLIF(current_setting('cc.sleep_ms', true), '')::integer, 0);
BEGIN
  SELECT count(*) INTO v_n FROM public.cc_items WHERE grp = p_grp;  -- the result is as old as this snapshot
  INSERT INTO public.cc_compute_log VALUES (p_grp, v_n, pg_backend_pid());
  IF v_gate IS NOT NULL THEN
    PERFORM pg_advisory_xact_lock_shared(v_gate);  -- held here while the test holds the gate
  END IF;
  IF v_sleep_ms > 0 THEN
    PERFORM pg_sleep(v_sleep_ms / 1000.0);
  END IF;
  RETURN jsonb_build_object('grp', p_grp, 'n', v_n);
END
$$;

-- Registered like any cache an admin adds: the catalog writes public.cc_count_cached and its triggers.
SELECT cache_private.register_cache('public.cc_count(bigint)', ARRAY['public.cc_items:grp'], '1 hour',
                                    'cc_test', 'test-only cache of the concurrency tests');
"""


@pytest.fixture(scope="module")
def url(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(SETUP)
    return pg_url


@pytest.fixture
def admin(url):
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def connect(url):
    return psycopg.connect(url, autocommit=True)


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.002)


def waits_on_gate(admin, pid: int, gate: int) -> bool:
    return bool(val(admin, """
        SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted AND locktype = 'advisory'
          AND objsubid = 1 AND objid = %s""", [pid, gate]))


def waits_on_lock(admin, pid: int) -> bool:
    row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return row is not None and row[0] == "Lock"


class Worker(threading.Thread):
    """Runs fn(conn) on its own connection; keeps the result or the exception."""

    def __init__(self, url, fn):
        super().__init__(daemon=True)
        self.conn = connect(url)
        self.pid = self.conn.info.backend_pid
        self.fn = fn
        self.result = None
        self.error = None

    def run(self):
        try:
            self.result = self.fn(self.conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.conn.close()

    def outcome(self):
        self.join(60)
        assert not self.is_alive(), "worker did not finish"
        if self.error:
            raise self.error
        return self.result


def cc_call(conn, grp, gate=None, sleep_ms=0, duration="1 hour"):
    conn.execute("SELECT set_config('cc.gate', %s, false), set_config('cc.sleep_ms', %s, false)",
                 ["" if gate is None else str(gate), str(sleep_ms)])
    return val(conn, "SELECT public.cc_count_cached(%s, %s::interval)", [grp, duration])["n"]


def add_item(conn, grp):
    conn.execute("INSERT INTO public.cc_items (grp) VALUES (%s)", [grp])


def items(conn, grp) -> int:
    return val(conn, "SELECT count(*) FROM public.cc_items WHERE grp = %s", [grp])


def cache_row(conn, key):
    """Whether the key's row is a tombstone, as the dashboard sees it (after a roll-up marks what writers staled)."""
    conn.execute("SELECT cache_private.rollup_stats()")
    row = conn.execute("SELECT data IS NULL, expires_at = '-infinity' FROM public.query_cache WHERE cache_key = %s",
                       [key]).fetchone()
    return None if row is None else {"tombstone": row[0] and row[1]}


# --- no stale read after commit: the deterministic interleavings ----------------------------------

@pytest.mark.parametrize("key_state", ["never_cached", "tombstone", "live_but_too_old"])
def test_a_result_computed_before_a_commit_is_never_served_after_it(url, admin, key_state):
    """Reader computes from a snapshot taken before the writer commits and stores after the commit.
    The writer does not wait for the reader; the stored result is stale from the commit on."""
    grp, gate = next(_groups), next(_gates)
    if key_state != "never_cached":
        cc_call(admin, grp)
    if key_state == "tombstone":
        add_item(admin, grp)
        assert cache_row(admin, f"cc_test:{grp}") == {"tombstone": True}
    n0 = items(admin, grp)
    # live_but_too_old: the caller asks for data at most 1 microsecond old, so it recomputes a row holding data.
    duration = "1 microsecond" if key_state == "live_but_too_old" else "1 hour"

    admin.execute("SELECT pg_advisory_lock(%s)", [gate])
    reader = Worker(url, lambda conn: cc_call(conn, grp, gate=gate, duration=duration))
    reader.start()
    wait_until(lambda: waits_on_gate(admin, reader.pid, gate), "the reader computing, held at the gate")
    assert val(admin, "SELECT count(*) FROM public.cc_compute_log WHERE grp = %s AND pid = %s",
               [grp, reader.pid]) == 0  # not committed yet, but its snapshot is taken (the count ran)

    with connect(url) as writer:
        add_item(writer, grp)  # autocommit: returns after the commit, while the reader still computes
    assert reader.is_alive() and waits_on_gate(admin, reader.pid, gate)

    admin.execute("SELECT pg_advisory_unlock(%s)", [gate])
    assert reader.outcome() == n0  # computed before the commit: the old count, and that is allowed
    assert val(admin, "SELECT data->>'n' FROM public.query_cache WHERE cache_key = %s", [f"cc_test:{grp}"]) \
        == str(n0)  # it was stored ...
    assert cc_call(admin, grp) == n0 + 1  # ... and is never served: the next call sees the write
    assert val(admin, "SELECT count(*) FROM public.cc_compute_log WHERE grp = %s", [grp]) == \
        (2 if key_state == "never_cached" else 3)


@pytest.mark.parametrize("key_state", ["never_cached", "tombstone"])
def test_miss_during_an_uncommitted_write_does_not_wait_and_its_result_dies_with_the_commit(url, admin, key_state):
    """A miss during an uncommitted write neither waits for the writer nor survives its commit: it
    answers from the committed data, and the writer's invalidation makes that answer stale when it commits."""
    grp = next(_groups)
    if key_state == "tombstone":
        cc_call(admin, grp)
        add_item(admin, grp)
    n0 = items(admin, grp)
    with connect(url) as writer:
        writer.execute("BEGIN")
        add_item(writer, grp)
        assert cc_call(admin, grp) == n0  # started before the commit: the committed count is right
        assert cache_row(admin, f"cc_test:{grp}") == {"tombstone": False}
        writer.execute("COMMIT")
    assert cache_row(admin, f"cc_test:{grp}") == {"tombstone": True}
    assert cc_call(admin, grp) == n0 + 1


def test_a_transaction_reads_its_own_writes_through_the_cache(url, admin):
    grp = next(_groups)
    n0 = cc_call(admin, grp)
    with connect(url) as writer:
        writer.execute("BEGIN")
        add_item(writer, grp)
        assert cc_call(writer, grp) == n0 + 1  # its own write, although the cached value is older
        assert cc_call(admin, grp) == n0  # others still see the committed value
        writer.execute("COMMIT")
    assert cc_call(admin, grp) == n0 + 1


def test_writers_of_two_caches_in_opposite_orders_do_not_deadlock(url, admin):
    """Writers only append invalidations under their own transaction id: crossing writers share no cache lock."""
    for ident in (None, 3):
        admin.execute("SELECT public.get_expert_sessions_with_stats_cached(%s, '1 hour')", (ident,))
        admin.execute("SELECT public.get_product_performance_cached(%s, '1 hour')", (ident,))
    session = ("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
               "VALUES (3, now(), 30, 'completed')")
    order = "INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at) VALUES (3, 1, 10, now())"
    with connect(url) as first, connect(url) as second:
        for conn in (first, second):  # a lock wait here is the failure; do not hang on it
            conn.execute("SET lock_timeout = '5s'")
        first.execute("BEGIN")
        second.execute("BEGIN")
        first.execute(session)
        second.execute(order)
        first.execute(order)
        second.execute(session)
        first.execute("COMMIT")
        second.execute("COMMIT")
    admin.execute("SELECT cache_private.rollup_stats()")  # marks the stale entries
    stale = admin.execute("SELECT cache_key FROM public.query_cache WHERE data IS NULL ORDER BY 1").fetchall()
    assert {"expert_sessions:3", "expert_sessions:all", "product_performance:3", "product_performance:all"} <= {
        r[0] for r in stale}


def test_hit_during_an_uncommitted_write_serves_the_old_value_until_the_commit(url, admin):
    grp = next(_groups)
    n0 = cc_call(admin, grp)
    with connect(url) as writer:
        writer.execute("BEGIN")
        add_item(writer, grp)
        assert cc_call(admin, grp) == n0  # the write is not committed: the old value is still right
        writer.execute("COMMIT")
    assert cc_call(admin, grp) == n0 + 1


# --- no stale read after commit: hundreds of rounds ------------------------------------------------

def test_no_stale_read_after_commit_under_load(url, admin):
    """One writer commits row after row; readers call the cached functions all the time.

    A read that starts after a commit returned must see at least that commit's count.
    Targets: two experts (their own key, and their element of the :all key) and two groups
    of the test cache whose computation sleeps 0-3 ms (so computations often straddle commits).
    """
    rounds = 400
    experts = [17, 18]
    groups = [next(_groups), next(_groups)]
    targets = [("expert", e) for e in experts] + [("cc", g) for g in groups]

    def count_now(target):
        kind, ident = target
        if kind == "expert":
            return val(admin, "SELECT count(*) FROM public.expert_sessions WHERE expert_id = %s", [ident])
        return items(admin, ident)

    commits = {t: ([float("-inf")], [count_now(t)]) for t in targets}  # (commit times, committed counts)
    done = threading.Event()
    stats = Counter()
    stats_lock = threading.Lock()
    stale = []

    def writer(conn):
        try:
            for i in range(rounds):
                kind, ident = target = targets[i % len(targets)]
                if kind == "expert":
                    conn.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                                 "VALUES (%s, now(), 30, 'completed')", [ident])
                else:
                    add_item(conn, ident)
                at = time.monotonic()  # the commit has returned
                times, counts = commits[target]
                counts.append(counts[-1] + 1)
                times.append(at)
        finally:
            done.set()

    def reader(seed):
        def run(conn):
            rng = random.Random(seed)
            while not done.is_set():
                target = rng.choice(targets)
                kind, ident = target
                times, counts = commits[target]
                started = time.monotonic()
                required = counts[bisect.bisect_right(times, started) - 1]  # last commit finished before we started
                if kind == "expert" and rng.random() < 0.3:
                    data = val(conn, "SELECT public.get_expert_sessions_with_stats_cached(NULL, '1 hour')")
                    seen = next(row["session_count"] for row in data if row["expert_id"] == ident)
                    with stats_lock:
                        stats["reads_all_key"] += 1
                elif kind == "expert":
                    seen = val(conn, "SELECT public.get_expert_sessions_with_stats_cached(%s, '1 hour')",
                               [ident])[0]["session_count"]
                else:
                    seen = cc_call(conn, ident, sleep_ms=rng.choice([0, 0, 1, 3]))
                with stats_lock:
                    stats["reads"] += 1
                    if times[-1] > started:  # a commit finished while this read ran
                        stats["reads_overlapping_a_commit"] += 1
                if seen < required:
                    stale.append((target, seen, required))
        return run

    readers = [Worker(url, reader(seed)) for seed in range(4)]
    write = Worker(url, writer)
    for w in readers:
        w.start()
    write.start()
    write.outcome()
    for w in readers:
        w.outcome()
    misses = val(admin, "SELECT count(*) FROM cache_private.cache_events WHERE kind = 'miss'")
    print(f"\nno-stale-read: {rounds} committed writes, {stats['reads']} reads "
          f"({stats['reads_all_key']} via the :all key, {stats['reads_overlapping_a_commit']} overlapping a commit), "
          f"{misses} misses pending roll-up, stale reads: {len(stale)}")
    assert stale == []
    assert stats["reads"] > rounds  # the readers really ran alongside the writer
    for target in targets:  # and the final state is exact
        assert commits[target][1][-1] == count_now(target)


# --- stampede --------------------------------------------------------------------------------------

def test_stampede_of_16_misses_computes_once(url, admin):
    """16 callers miss the same key at the same time: one computes, 15 wait and read its result."""
    n_callers = 16
    grp, gate = next(_groups), next(_gates)
    key = f"cc_test:{grp}"
    for _ in range(3):
        add_item(admin, grp)
    admin.execute("SELECT pg_advisory_lock(%s)", [gate])
    callers = [Worker(url, lambda conn: cc_call(conn, grp, gate=gate)) for _ in range(n_callers)]
    for w in callers:
        w.start()
    pids = [w.pid for w in callers]

    def all_waiting():
        at_gate = val(admin, """SELECT count(*) FROM pg_locks WHERE pid = ANY(%s) AND NOT granted
                                  AND locktype = 'advisory' AND objsubid = 1 AND objid = %s""", [pids, gate])
        at_key = val(admin, """SELECT count(*) FROM pg_locks WHERE pid = ANY(%s) AND NOT granted
                                 AND locktype IN ('transactionid', 'tuple')""", [pids])
        return at_gate == 1 and at_key == n_callers - 1

    wait_until(all_waiting, "one caller computing and 15 waiting for the key")
    admin.execute("SELECT pg_advisory_unlock(%s)", [gate])
    results = [w.outcome() for w in callers]
    computes = val(admin, "SELECT count(*) FROM public.cc_compute_log WHERE grp = %s", [grp])
    events = dict(admin.execute("SELECT kind, count(*) FROM cache_private.cache_events WHERE cache_key = %s "
                                "GROUP BY kind", [key]).fetchall())
    print(f"\nstampede: {n_callers} concurrent misses, computations: {computes}, events: {events}")
    assert results == [3] * n_callers
    assert computes == 1
    assert events == {"miss": 1, "hit": n_callers - 1}


def test_stampede_on_a_real_cached_function_computes_once(url, admin):
    """No gate: 16 callers released together on an invalidated :all key; exactly one miss."""
    n_callers = 16
    admin.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:all')")
    flush_fast_hits(admin)
    admin.execute("DELETE FROM cache_private.cache_events WHERE cache_key = 'expert_sessions:all'")
    admin.execute("SELECT public.get_expert_sessions_with_stats_cached(NULL)")  # make sure the key exists
    admin.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:all')")
    flush_fast_hits(admin)
    admin.execute("DELETE FROM cache_private.cache_events WHERE cache_key = 'expert_sessions:all'")
    barrier = threading.Barrier(n_callers)

    def run(conn):
        barrier.wait()
        return val(conn, "SELECT public.get_expert_sessions_with_stats_cached(NULL, '1 hour')")

    callers = [Worker(url, run) for _ in range(n_callers)]
    for w in callers:
        w.start()
    results = [w.outcome() for w in callers]
    direct = val(admin, "SELECT public.get_expert_sessions_with_stats(NULL)")
    flush_fast_hits(admin)
    events = dict(admin.execute("SELECT kind, sum(weight) FROM cache_private.cache_events "
                                "WHERE cache_key = 'expert_sessions:all' GROUP BY kind").fetchall())
    print(f"\nstampede (real function): {n_callers} callers, events: {events}")
    assert all(r == direct for r in results)
    assert events == {"miss": 1, "hit": n_callers - 1}


def test_a_miss_waits_for_another_computation_at_most_compute_lock_timeout_ms(url, admin):
    """A miss waits at most compute_lock_timeout_ms for a caller computing the same key, then computes
    without storing and notes the key as busy, so the next misses do not wait for the same holder."""
    grp, gate = next(_groups), next(_gates)
    key = f"cc_test:{grp}"
    old = val(admin, "SELECT value FROM cache_private.settings WHERE name = 'compute_lock_timeout_ms'")
    admin.execute("UPDATE cache_private.settings SET value = '50' WHERE name = 'compute_lock_timeout_ms'")
    try:
        admin.execute("SELECT pg_advisory_lock(%s)", [gate])
        first = Worker(url, lambda conn: cc_call(conn, grp, gate=gate))
        first.start()
        wait_until(lambda: waits_on_gate(admin, first.pid, gate), "the first caller computing")
        with connect(url) as second:
            second.execute("SET lock_timeout = '7s'")
            assert cc_call(second, grp) == 0  # the right answer, computed alone, not an error
            assert val(second, "SHOW lock_timeout") == "7s"  # the caller's own setting is untouched
            assert cc_call(second, grp) == 0  # noted busy: this one does not wait again
        assert val(admin, "SELECT count(*) FROM cache_private.busy_keys WHERE cache_key = %s", [key]) == 1
        reasons = [r[0] for r in admin.execute(
            "SELECT reason FROM cache_private.cache_events WHERE cache_key = %s AND kind = 'miss' "
            "AND reason IS NOT NULL", [key]).fetchall()]
        assert reasons == ["not stored: key busy"] * 2
        admin.execute("SELECT pg_advisory_unlock(%s)", [gate])
        assert first.outcome() == 0
        assert val(admin, "SELECT data->>'n' FROM public.query_cache WHERE cache_key = %s", [key]) == "0"
    finally:
        admin.execute("SELECT pg_advisory_unlock_all()")
        admin.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'compute_lock_timeout_ms'", [old])


# --- maintenance alongside readers and writers -----------------------------------------------------

MAINTENANCE = [
    ("cleanup", "SELECT public.cleanup_expired_cache()"),
    ("optimize", "SELECT public.optimize_cache()"),
    ("invalidate_name", "SELECT public.invalidate_cache('expert_sessions')"),
    ("invalidate_key", "SELECT public.invalidate_cache(NULL, 'product_performance:1')"),
    ("invalidate_cc", "SELECT public.invalidate_cache('cc_test')"),
    ("emergency_clear", f"SELECT public.emergency_clear_cache('{TOKEN}')"),
    ("overview", "SELECT * FROM public.get_cache_metrics_overview()"),
    ("health", "SELECT * FROM public.analyze_cache_health()"),
    ("top", "SELECT * FROM public.get_top_cache_entries(20)"),
    ("series", "SELECT * FROM public.get_cache_hit_rate_series(1, 'hour')"),
]


@pytest.mark.parametrize("max_entries", [100000, 6], ids=["unbounded", "evicting"])
def test_maintenance_with_readers_and_writers(url, admin, max_entries):
    """Readers, a writer and two maintainers at once: no errors, no stale reads, exact counts.

    With max_entries = 6 every cleanup also evicts live entries while they are read and written.
    """
    flush_fast_hits(admin)
    for table in ("cache_private.cache_events", "cache_private.cache_stats_hourly", "cache_private.fallback_reasons"):
        admin.execute(f"DELETE FROM {table}")
    old_max = val(admin, "SELECT value FROM cache_private.settings WHERE name = 'max_entries'")
    admin.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'max_entries'", [str(max_entries)])
    actor = f"chaos-maintainer-{max_entries}"
    n_readers, reads_each, writes = 4, 120, 80
    experts, products = [21, 22], [1, 2]
    groups = [next(_groups), next(_groups)]
    watched = [("expert", e) for e in experts] + [("cc", g) for g in groups]
    commits = {t: ([float("-inf")], [None]) for t in watched}
    for t in watched:
        commits[t][1][0] = (val(admin, "SELECT count(*) FROM public.expert_sessions WHERE expert_id = %s", [t[1]])
                            if t[0] == "expert" else items(admin, t[1]))
    calls = Counter()
    fallbacks = Counter()
    errors = []
    stale = []
    ops = Counter()
    readers_done = threading.Event()
    lock = threading.Lock()

    def record_error(who, what, exc):
        with lock:
            errors.append((who, what, getattr(exc, "sqlstate", None), str(exc).splitlines()[0]))

    def reader(seed):
        def run(conn):
            rng = random.Random(seed)
            for _ in range(reads_each):
                choice = rng.random()
                try:
                    if choice < 0.45:
                        target = ("expert", rng.choice(experts))
                        times, counts = commits[target]
                        required = counts[bisect.bisect_right(times, time.monotonic()) - 1]
                        ident = rng.choice([target[1], target[1], 23, None])
                        data = val(conn, "SELECT public.get_expert_sessions_with_stats_cached(%s, '1 hour')", [ident])
                        cache, seen = "expert_sessions", None
                        if ident in experts or ident is None:
                            seen = next(r["session_count"] for r in data if r["expert_id"] == target[1])
                    elif choice < 0.7:
                        target, required, seen = None, None, None
                        val(conn, "SELECT public.get_product_performance_cached(%s, '1 hour')",
                            [rng.choice(products + [None])])
                        cache = "product_performance"
                    else:
                        target = ("cc", rng.choice(groups))
                        times, counts = commits[target]
                        required = counts[bisect.bisect_right(times, time.monotonic()) - 1]
                        seen = cc_call(conn, target[1], sleep_ms=rng.choice([0, 0, 2]))
                        cache = "cc_test"
                except psycopg.Error as exc:
                    record_error("reader", "cached call", exc)
                    continue
                with lock:
                    calls[cache] += 1
                    if seen is not None and seen < required:
                        stale.append((target, seen, required))
        return run

    def writer(conn):
        rng = random.Random(99)
        for i in range(writes):
            target = watched[i % len(watched)]
            written = [target]
            try:
                if target[0] == "expert" and rng.random() < 0.4:
                    # A transaction of two statements, the experts in either order.
                    written = [("expert", e) for e in rng.sample(experts, 2)]
                    with conn.transaction():
                        for _, expert_id in written:
                            conn.execute("INSERT INTO public.expert_sessions "
                                         "(expert_id, started_at, duration_minutes, status) "
                                         "VALUES (%s, now(), 30, 'completed')", [expert_id])
                elif target[0] == "expert":
                    conn.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                                 "VALUES (%s, now(), 30, 'completed')", [target[1]])
                else:
                    add_item(conn, target[1])
            except psycopg.Error as exc:
                record_error("writer", target[0], exc)
                continue
            at = time.monotonic()  # committed
            for t in written:
                times, counts = commits[t]
                counts.append(counts[-1] + 1)
                times.append(at)
            try:
                if rng.random() < 0.3:
                    conn.execute("INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at) "
                                 "VALUES (%s, 1, 9.99, now())", [rng.choice(products)])
            except psycopg.Error as exc:
                record_error("writer", "orders", exc)
            time.sleep(0.002)

    def maintainer(seed):
        def run(conn):
            conn.execute("SELECT set_config('cachelib.actor', %s, false)", [actor])
            rng = random.Random(seed)
            while not readers_done.is_set():
                name, sql = rng.choice(MAINTENANCE)
                try:
                    conn.execute(sql).fetchall()
                    if rng.random() < 0.2:
                        conn.execute("SELECT public.record_cache_fallback('product_performance', 'chaos')")
                        with lock:
                            fallbacks["product_performance"] += 1
                except psycopg.Error as exc:
                    record_error("maintainer", name, exc)
                    continue
                with lock:
                    ops[name] += 1
        return run

    try:
        readers = [Worker(url, reader(s)) for s in range(n_readers)]
        others = [Worker(url, writer), Worker(url, maintainer(1)), Worker(url, maintainer(2))]
        for w in readers + others:
            w.start()
        for w in readers:
            w.outcome()
        readers_done.set()
        for w in others:
            w.outcome()
    finally:
        readers_done.set()
        admin.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'max_entries'", [old_max])

    val(admin, "SELECT cache_private.rollup_stats()")
    totals = {r[0]: r[1:] for r in admin.execute(
        "SELECT cache_name, sum(hits + misses), sum(fallbacks) FROM cache_private.cache_stats_hourly GROUP BY 1")}
    counted = {name: int(t[0]) for name, t in totals.items() if t[0]}
    counted_fallbacks = {name: int(t[1]) for name, t in totals.items() if t[1]}
    audits = dict(admin.execute("SELECT action, count(*) FROM cache_private.maintenance_audit "
                                "WHERE actor = %s GROUP BY 1", [actor]).fetchall())
    print(f"\nmaintenance chaos (max_entries={max_entries}): calls {dict(calls)}, maintenance {dict(ops)}, "
          f"errors {len(errors)}, stale reads {len(stale)}, stats {counted}")
    assert errors == []
    assert stale == []
    assert counted == dict(calls)
    assert counted_fallbacks == dict(fallbacks)
    assert val(admin, "SELECT count(*) FROM cache_private.cache_events") == 0
    # Every maintenance write that succeeded left exactly one audit row.
    expected_audits = Counter()
    audited = {"cleanup": "cleanup", "optimize": "optimize", "emergency_clear": "emergency_clear",
               "invalidate_name": "invalidate", "invalidate_key": "invalidate", "invalidate_cc": "invalidate"}
    for name, n in ops.items():
        action = audited.get(name)
        if action:
            expected_audits[action] += n
    assert audits == dict(expected_audits)


def test_concurrent_rollups_never_count_an_event_twice(url, admin):
    """Eight sessions roll up at once while hits are appended: the totals stay exact."""
    flush_fast_hits(admin)
    admin.execute("DELETE FROM cache_private.cache_events")
    admin.execute("DELETE FROM cache_private.cache_stats_hourly")
    grp = next(_groups)
    cc_call(admin, grp)
    per_thread = 60
    barrier = threading.Barrier(8)

    def run(conn):
        barrier.wait()
        for i in range(per_thread):
            cc_call(conn, grp)
            if i % 3 == 0:
                conn.execute("SELECT * FROM public.get_cache_metrics_overview()")
        return True

    workers = [Worker(url, run) for _ in range(8)]
    for w in workers:
        w.start()
    assert all(w.outcome() for w in workers)
    val(admin, "SELECT cache_private.rollup_stats()")
    hits, misses = admin.execute("SELECT sum(hits), sum(misses) FROM cache_private.cache_stats_hourly "
                                 "WHERE cache_name = 'cc_test'").fetchone()
    assert (hits, misses) == (8 * per_thread, 1)
    assert val(admin, "SELECT hit_count FROM public.query_cache WHERE cache_key = %s", [f"cc_test:{grp}"]) == \
        8 * per_thread



# --- maintenance must not deadlock with a writer's transaction -------------------------------------

def _writer_holding_expert_5(url, admin):
    """Cache experts 3 then 5 (that physical order), then open a writer transaction that has
    invalidated expert 5 (holding its key) and will next write expert 3."""
    admin.execute(f"SELECT public.emergency_clear_cache('{TOKEN}')")
    admin.execute("SELECT public.get_expert_sessions_with_stats_cached(3, '1 hour')")
    admin.execute("SELECT public.get_expert_sessions_with_stats_cached(5, '1 hour')")
    writer = connect(url)
    writer.execute("BEGIN")
    writer.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                   "VALUES (5, now(), 30, 'completed')")
    return writer


@pytest.mark.parametrize("action", ["emergency_clear", "cleanup_evicting_everything", "invalidate_by_name"])
def test_maintenance_does_not_deadlock_with_a_multi_statement_writer(url, admin, action):
    """The writer locks keys in its own order across statements; maintenance that deletes rows
    must not hold one key while waiting for another (that is a deadlock: one of them aborts)."""
    old_max = val(admin, "SELECT value FROM cache_private.settings WHERE name = 'max_entries'")
    if action == "emergency_clear":
        sql = f"SELECT public.emergency_clear_cache('{TOKEN}')"
    elif action == "invalidate_by_name":
        sql = "SELECT public.invalidate_cache('expert_sessions')"
    else:
        sql = "SELECT public.cleanup_expired_cache()"
        admin.execute("UPDATE cache_private.settings SET value = '0' WHERE name = 'max_entries'")
    try:
        writer = _writer_holding_expert_5(url, admin)
        with writer:
            maintenance = Worker(url, lambda conn: val(conn, sql))
            maintenance.start()
            # Either it waits for the writer (emergency clear, invalidate) or it skips the writer's rows (cleanup).
            wait_until(lambda: waits_on_lock(admin, maintenance.pid) or not maintenance.is_alive(),
                       f"{action} waiting for the writer or done")
            writer.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status) "
                           "VALUES (3, now(), 30, 'completed')")
            writer.execute("COMMIT")
            maintenance.outcome()
    finally:
        admin.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'max_entries'", [old_max])
    for ident in (3, 5):
        assert val(admin, "SELECT public.get_expert_sessions_with_stats_cached(%s, '1 hour')", [ident]) == \
            val(admin, "SELECT public.get_expert_sessions_with_stats(%s)", [ident])
