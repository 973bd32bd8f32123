"""Dashboard page render times of this checkout against another revision, in one run, on one database.

    python bench/pages_ab.py --before acab437                  # the bench database (make bench fills it)
    python bench/pages_ab.py --before acab437 --rounds 4 --pages performance,maintenance

Each round renders the pages once with REV's dashboard (its pages/, cachelib/ and dashboard.py,
taken with `git archive`) and once with this checkout's, each in a fresh Python process, taking
turns at going first, so a change in the machine's speed (up to 2x within a minute here) reaches
both alike. A render is Streamlit's AppTest switching to the page with the read cache cleared,
as `make bench` renders them; the median of --renders renders is kept, in wall and CPU time.
Both sides read the same database: BENCH_DATABASE_URL, else the embedded server's bench database
(python bench/run.py --only pages fills it with a million entries and 400 days of statistics).
Prints each round's after / before ratios and writes bench/pages_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "pages_ab.json"
PAGES = ("overview", "top_entries", "performance", "management", "maintenance", "monthly_review")

# Run in a child process whose working directory is the dashboard to measure (its cachelib first on the
# path, this checkout's bench helpers after it); prints one JSON line.
RENDER = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
sys.path.insert(1, sys.argv[3])
from pathlib import Path
from bench.admin_app import render_times, signed_in_app
at = signed_in_app(Path.cwd() / "dashboard.py", os.environ["DATABASE_URL"])
result = {}
for page in sys.argv[1].split(","):
    wall_ms, cpu_ms = render_times(at, page, int(sys.argv[2]))
    result[page] = {"wall_ms": wall_ms, "cpu_ms": cpu_ms}
print("RESULT " + json.dumps(result))
"""


def export(revision: str, into: Path) -> Path:
    """The dashboard (dashboard.py, pages/, cachelib/, .streamlit/) of ``revision``, unpacked into ``into``."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), revision, "dashboard.py", "pages",
                    "cachelib", ".streamlit"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def bench_database_url() -> str:
    if os.environ.get("BENCH_DATABASE_URL"):
        return os.environ["BENCH_DATABASE_URL"]
    sys.path.insert(0, str(ROOT))
    from bench.run import bench_url  # noqa: PLC0415 - the bench's own database, started if need be

    return bench_url()[0]


def render(tree: Path, url: str, pages: list[str], renders: int) -> dict[str, dict[str, float]]:
    env = {**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", RENDER, ",".join(pages), str(renders), str(ROOT)], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    line = next((out for out in done.stdout.splitlines() if out.startswith("RESULT ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"rendering in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def page_summary(rounds: list[dict], page: str) -> dict[str, list[float]]:
    """One page's rounds: after / before in wall and CPU time, and both sides' wall times."""
    def ratio(round_: dict, clock: str) -> float:
        return round(round_["after"][page][clock] / round_["before"][page][clock], 3)

    return {"after_over_before_wall": [ratio(r, "wall_ms") for r in rounds],
            "after_over_before_cpu": [ratio(r, "cpu_ms") for r in rounds],
            "after_wall_ms": [round(r["after"][page]["wall_ms"], 1) for r in rounds],
            "before_wall_ms": [round(r["before"][page]["wall_ms"], 1) for r in rounds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the revision to compare with (e.g. acab437)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both sides (default 4)")
    parser.add_argument("--renders", type=int, default=5, help="renders of each page per side and round (default 5)")
    parser.add_argument("--pages", default=",".join(PAGES), help="comma-separated pages (default: all)")
    args = parser.parse_args()
    pages = [p for p in args.pages.split(",") if p]
    unknown = [p for p in pages if p not in PAGES]
    if unknown:
        parser.error(f"unknown pages {unknown}; choose from {', '.join(PAGES)}")
    url = bench_database_url()
    with tempfile.TemporaryDirectory(prefix="pages_ab_") as work:
        sides = {"before": export(args.before, Path(work)), "after": ROOT}
        rounds = []
        for number in range(args.rounds):
            order = ["before", "after"] if number % 2 == 0 else ["after", "before"]
            measured = {side: render(sides[side], url, pages, args.renders) for side in order}
            rounds.append(measured)
            print(f"round {number + 1} ({' then '.join(order)}):")
            for page in pages:
                before, after = measured["before"][page], measured["after"][page]
                print(f"  {page:15s} before {before['wall_ms']:6.0f} ms  after {after['wall_ms']:6.0f} ms  "
                      f"after/before wall {after['wall_ms'] / before['wall_ms']:.2f}, "
                      f"cpu {after['cpu_ms'] / before['cpu_ms']:.2f}", flush=True)
    summary = {page: page_summary(rounds, page) for page in pages}
    print("median after/before (wall): " + ", ".join(
        f"{page} {statistics.median(row['after_over_before_wall']):.2f}" for page, row in summary.items()))
    RESULTS.write_text(json.dumps({
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/pages_ab.py", *sys.argv[1:]]), "before": args.before,
        "pages": summary}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
