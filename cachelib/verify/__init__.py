"""Deployment verification: ``python -m cachelib verify``.

Every check the deployment guide asks for, run against the live database (and,
when given, the HTTP API and the dashboard), each with a verdict and, for a
failure, the exact fix. ``run_checks`` returns the list; the CLI prints one
line per check and exits 0 only when every required check passes.

Reads only. The "cached call" checks call each cached function twice (the first
call stores or reuses an entry, the second must be a hit) and the health analysis
folds the event log into the statistics, but both run in one transaction that is
rolled back: the checks see their own entry and their own hit, and afterwards the
entries, the events and the hourly statistics are exactly as before. Only a commit
of those writes is not exercised. A cleanup runs only with ``allow_writes=True``.

The checks live by concern: checks.py (a check and its verdict), environment.py, database.py,
operations.py and edges.py (the API and the dashboard). Verify sits above maintenance and the
manager: nothing below imports it.
"""

from __future__ import annotations

from cachelib.config import Settings
from cachelib.verify.checks import GROUPS, Check, Run, all_required_pass, summary
from cachelib.verify.database import (
    ADMIN_FUNCTIONS,
    ALL_FUNCTIONS,
    EXPECTED_CACHE_ROUTINES,
    READ_FUNCTIONS,
    catalog_check,
    connect_check,
    database_checks,
)
from cachelib.verify.edges import api_checks, dashboard_checks
from cachelib.verify.environment import environment_checks
from cachelib.verify.operations import operations_checks

__all__ = ["ADMIN_FUNCTIONS", "ALL_FUNCTIONS", "EXPECTED_CACHE_ROUTINES", "GROUPS", "READ_FUNCTIONS", "Check",
           "catalog_check", "all_required_pass", "run_checks", "summary"]


def run_checks(url: str, *, allow_writes: bool = False, api_url: str | None = None, api_key: str | None = None,
               dashboard_url: str | None = None, config: Settings | None = None) -> list[Check]:
    """Run every check; see the module docstring for what may be written."""
    run = Run()
    config = environment_checks(run, config)
    conn = connect_check(run, url, config)
    if conn is None:
        for group, name in (("database", "migrations"), ("database", "cache functions"), ("database", "cache catalog"),
                            ("database", "invalidation triggers"), ("database", "row-level security"),
                            ("database", "grants"), ("database", "search_path pinned"), ("database", "C hit path"),
                            ("operations", "cached calls"), ("operations", "health analysis"),
                            ("operations", "cleanup"), ("operations", "scheduled cleanup")):
            run.add(Check(name, group, "skipped", "no usable database connection (see above)"))
    else:
        with conn:
            caches = database_checks(run, conn, url, config)
            operations_checks(run, conn, url, config, allow_writes, caches)
    api_checks(run, api_url, api_key)
    dashboard_checks(run, dashboard_url)
    return run.checks


