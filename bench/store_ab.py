"""What the maintained entry counts and the size bound on store (0022) cost a miss that stores, A/B.

Two databases on one server, one migrated up to 0021 and one up to 0022, each with N entries
already cached; then misses that store (distinct keys, a trivial computation, so the store itself
is what is measured) alternate between the two. Prints the p50/p95 of each and their ratio and
writes bench/store_ab.json.

    python bench/store_ab.py                 # 20,000 entries already cached, 2,000 stores each
    python bench/store_ab.py --entries 1000000 --stores 3000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachelib import db, migrate  # noqa: E402
from cachelib.config import Settings  # noqa: E402

STORE = ("SELECT cache_private.get_or_compute('expert_sessions', %s, '1 hour', "
         "'SELECT jsonb_build_object(''n'', 1)')")


def database(admin: str, name: str, last_migration: str) -> str:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = admin.replace("/postgres?", f"/{name}?")
    chosen = Path(tempfile.mkdtemp(prefix="store_ab_"))
    for path in sorted((ROOT / "sql" / "migrations").glob("*.sql")):
        if path.name <= last_migration:
            shutil.copy(path, chosen / path.name)
    migrate.apply(url, chosen)
    return url


def fill(url: str, entries: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.settings SET value = '100000000' WHERE name = 'max_entries'")
        conn.execute("""INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at, ttl,
                                                      size_bytes, compute_ms, hit_count)
                        SELECT 'filled:' || g, 'expert_sessions', '{"n": 1}', now() + interval '1 day', now(),
                               interval '1 day', 20, 1, 0
                        FROM generate_series(1, %s) g""", (entries,))
        conn.execute("VACUUM ANALYZE public.query_cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--stores", type=int, default=2_000)
    args = parser.parse_args()
    settings = Settings.from_env({})
    was_running = db.embedded_status(settings.data_dir).running
    status = db.start_embedded(settings.data_dir)
    admin = status.uri.replace(f"/{db.EMBEDDED_DATABASE}?", "/postgres?")
    try:
        urls = {"before (0021)": database(admin, "store_ab_before", "0021_zzz"),
                "after (0022)": database(admin, "store_ab_after", "0022_zzz")}
        for url in urls.values():
            fill(url, args.entries)
        conns = {label: psycopg.connect(url, autocommit=True) for label, url in urls.items()}
        samples: dict[str, list[float]] = {label: [] for label in urls}
        for n in range(args.stores):
            for label, conn in conns.items():
                started = time.perf_counter()
                conn.execute(STORE, (f"ab:{n}",)).fetchone()
                samples[label].append((time.perf_counter() - started) * 1e6)
        for conn in conns.values():
            conn.close()
        result = {label: {"p50_us": round(statistics.median(s), 1),
                          "p95_us": round(sorted(s)[int(0.95 * len(s))], 1)} for label, s in samples.items()}
        before, after = result["before (0021)"], result["after (0022)"]
        result["ratio_p50"] = round(after["p50_us"] / before["p50_us"], 3)
        result["setup"] = {"entries_already_cached": args.entries, "stores_each": args.stores}
        for label in urls:
            print(f"  {label:14s} store p50 {result[label]['p50_us']} µs, p95 {result[label]['p95_us']} µs")
        print(f"  after / before (p50): {result['ratio_p50']}")
        (ROOT / "bench" / "store_ab.json").write_text(json.dumps(result, indent=2) + "\n")
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in ("store_ab_before", "store_ab_after"):
                conn.execute(f"DROP DATABASE IF EXISTS {name}")
    finally:
        if not was_running:
            db.stop_embedded(settings.data_dir)


if __name__ == "__main__":
    main()
