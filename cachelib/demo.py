"""Demo data: the source tables filled with generated, repeatable rows.

Rows are generated set-based inside PostgreSQL (generate_series), in chunks so
a progress bar can move; a million rows load in well under a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import UTC

from cachelib import db
from cachelib.config import settings

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
    "full": Scale(experts=2_000, sessions=1_000_000, products=5_000, orders=1_000_000),
}
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
        conn.commit()
    return counts


# --- demo traffic -------------------------------------------------------------
#
# Replays `days` of history through the real CacheManager with the SQL clock
# moved per call, so statistics, the cleanup log and the audit log are produced
# by the production code path. Traffic grows as "adoption" rises, follows a
# daily curve, prefers popular keys, and 1% of calls are writes that invalidate.

@dataclass
class TrafficReport:
    calls: int = 0
    writes: int = 0
    cleanups: int = 0
    seconds: float = 0.0


def _adoption(day_index: int, days: int) -> float:
    """0.35 on day one, rising to 1.0 at 60% of the replayed period."""
    return 0.35 + 0.65 * min(1.0, day_index / max(days * 0.6, 1))


def _hourly_visits(adoption: float, hour: int, peak: int) -> int:
    daily_curve = 0.25 + 0.75 * max(0.0, 1 - abs(hour - 14) / 9)
    return max(1, round(peak * adoption * daily_curve))


def traffic(url: str, days: int = 35, progress: ProgressFactory | None = None, seed: int = 7,
            peak_visits_per_hour: int = 6) -> TrafficReport:
    """Drive the cached functions over the last ``days`` days; returns what was done."""
    import random
    import time
    from datetime import datetime, timedelta

    from cachelib.maintenance import Actor, Maintenance
    from cachelib.manager import CacheManager

    if not 1 <= days <= 400:
        from cachelib.errors import InvalidInput

        raise InvalidInput(f"days must be from 1 to 400, got {days}")
    started = time.perf_counter()
    rng = random.Random(seed)
    # Ends now, so the last entries are still live when the dashboard opens.
    start = datetime.now(UTC) - timedelta(days=days)
    sim = {"t": start}
    # One pooled connection: the clock set for maintenance actions (see _at) is on that connection.
    database = db.Database(url, replace(settings(), pool_size=1))
    manager = CacheManager(database, clock=lambda: sim["t"])
    maintenance = Maintenance(database)
    cron = Actor("cron", "admin", "demo")
    admin = Actor("admin", "admin", "demo")
    with db.connect(url) as conn:
        expert_ids = [r[0] for r in conn.execute("SELECT id FROM public.experts ORDER BY id")]
        product_ids = [r[0] for r in conn.execute("SELECT id FROM public.products ORDER BY id")]
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (start.isoformat(),))
        conn.execute("UPDATE cache_private.settings SET value = 'true' WHERE name = 'demo_data'")
    if not expert_ids or not product_ids:
        from cachelib.errors import CacheError

        raise CacheError("the demo tables are empty; run: python -m cachelib demo load")

    report = TrafficReport()
    hours = days * 24
    bar = progress("replaying demo traffic", hours) if progress else nullcontext()
    with bar, db.connect(url) as writer:
        for hour_index in range(hours):
            hour_start = start + timedelta(hours=hour_index)
            adoption = _adoption(hour_index // 24, days)
            # A visit is one person on one screen: a few calls for the same key within minutes.
            visits = _hourly_visits(adoption, hour_start.hour, peak_visits_per_hour)
            for minute in sorted(rng.uniform(0, 60) for _ in range(visits)):
                if rng.random() < 0.03:
                    sim["t"] = hour_start + timedelta(minutes=minute)
                    _demo_write(writer, rng, sim["t"], expert_ids, product_ids)
                    report.writes += 1
                    continue
                cache = "expert_sessions" if rng.random() < 0.6 else "product_performance"
                ids = expert_ids if cache == "expert_sessions" else product_ids
                ident = None if rng.random() < 0.45 else ids[min(int(rng.paretovariate(1.2)) - 1, len(ids) - 1)]
                for offset in sorted(rng.uniform(0, 4) for _ in range(1 + rng.randint(0, round(1 + 7 * adoption)))):
                    sim["t"] = hour_start + timedelta(minutes=min(minute + offset, 59.9))
                    manager.call(cache, ident)
                    report.calls += 1
            if hour_index % 6 == 5:
                sim["t"] = hour_start + timedelta(minutes=59)
                _at(database, sim["t"], lambda: maintenance.cleanup(cron))
                report.cleanups += 1
            if hour_index % (24 * 7) == 24 * 7 - 1:
                _at(database, sim["t"], lambda: maintenance.health_check(admin))
                _at(database, sim["t"], lambda: maintenance.optimize(admin))
            if progress:
                bar.update(1)
    with db.connect(url) as conn:
        conn.execute("SELECT cache_private.rollup_stats()")
    database.close()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _demo_write(conn, rng, at, expert_ids, product_ids) -> None:
    with conn.transaction():
        conn.execute("SELECT set_config('cachelib.now', %s, true)", (at.isoformat(),))
        if rng.random() < 0.6:
            conn.execute("""INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, rating, status)
                            VALUES (%s, %s, 45, 4.5, 'completed')""", (rng.choice(expert_ids), at))
        else:
            conn.execute("""INSERT INTO public.orders (product_id, quantity, unit_price, ordered_at)
                            SELECT id, 1, price, %s FROM public.products WHERE id = %s""",
                         (at, rng.choice(product_ids)))


def _at(database, moment, action) -> None:
    """Run a maintenance action with the SQL clock at ``moment`` (its own pooled connection)."""
    with database.connection() as conn:
        conn.execute("SELECT set_config('cachelib.now', %s, false)", (moment.isoformat(),))
    try:
        action()
    finally:
        with database.connection() as conn:
            conn.execute("RESET cachelib.now")


def is_demo(url: str) -> bool:
    """True when the source tables hold the generated demo rows (their names are ours)."""
    with db.connect(url) as conn:
        return bool(conn.execute(
            "SELECT EXISTS (SELECT 1 FROM public.experts WHERE name = 'Expert 1' AND id = 1)"
            " AND EXISTS (SELECT 1 FROM public.products WHERE name = 'Product 1' AND id = 1)").fetchone()[0])


def has_traffic(url: str) -> bool:
    """True when the statistics already hold history (demo or real)."""
    with db.connect(url) as conn:
        return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM cache_private.cache_stats_hourly)").fetchone()[0])
