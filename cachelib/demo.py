"""Demo data: the source tables filled with generated, repeatable rows.

Rows are generated set-based inside PostgreSQL (generate_series), in chunks so
a progress bar can move; a million rows load in well under a minute.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from cachelib import db

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
