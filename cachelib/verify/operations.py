"""Checks of the cache at work: a cached call per cache (rolled back), the health analysis, cleanup and its schedule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from cachelib import catalog, schedule
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.manager import calls
from cachelib.verify.checks import READ_ONLY_REASON, Check, Run


@contextmanager
def _rolled_back(conn) -> Iterator[None]:
    """A transaction of its own (``conn`` is in autocommit) that is always rolled back: what the
    block writes is gone afterwards, and the block still sees its own writes."""
    with conn.transaction():
        yield
        raise psycopg.Rollback()


def operations_checks(run: Run, conn, url: str, config: Settings, allow_writes: bool,
                      caches: list[catalog.Cache]) -> None:
    group = "operations"
    # The cached calls and the health analysis each run in a transaction that is rolled back: their
    # entries, hit/miss events and the roll-up into the hourly statistics leave no trace (verify must
    # not change what it measures).
    for cache in (cache for cache in caches if cache.callable):
        # The guide's caches must answer; a registered function may refuse NULL (all) by design.
        run.guarded(group, f"cached call: {cache.name}", lambda cache=cache: _cached_call_check(conn, cache, config),
                    fix="python -m cachelib maintenance health; check the function's grants and the server log",
                    required=cache.builtin)
    run.guarded(group, "health analysis", lambda: _health_check(conn),
                fix="the error above names the cause; python -m cachelib migrate if a function is missing")
    if allow_writes:
        run.guarded(group, "cleanup", lambda: _cleanup_check(url, config))
    else:
        run.add(Check("cleanup", group, "skipped", READ_ONLY_REASON, required=False))
    run.guarded(group, "scheduled cleanup", lambda: _schedule_checks(conn, url, config))


def _cached_call_check(conn, cache: catalog.Cache, config: Settings) -> Check:
    name, group = f"cached call: {cache.name}", "operations"
    duration = f"{catalog.duration_in_effect(cache, config)[0].seconds} seconds"
    key = f"{cache.name}:all"
    (sql, params), _direct = calls(cache, None, duration)
    with _rolled_back(conn):
        first = conn.execute(sql, params).fetchone()[0]
        second = conn.execute(sql, params).fetchone()[0]
        # The events this transaction wrote: the second call must have been a hit.
        kinds = dict(conn.execute(
            """SELECT kind, count(*) FROM cache_private.cache_events
               WHERE cache_key = %s AND xmin = pg_current_xact_id()::xid GROUP BY kind""", (key,)).fetchall())
    if first is None or second != first:
        return Check(name, group, "fail", f"two calls with key {key} returned different data",
                     "python -m cachelib maintenance invalidate --cache " + cache.name)
    if kinds.get("hit", 0) < 1:
        return Check(name, group, "fail", f"the second call of {key} was not a hit ({kinds or 'no events'})",
                     "check that query_cache accepts writes and cache durations are not zero; "
                     "python -m cachelib maintenance health")
    data = json.loads(first)  # the call returns the jsonb as text
    rows = len(data) if isinstance(data, list) else 1
    first_kind = "miss" if kinds.get("miss") else "hit"
    return Check(name, group, "pass",
                 f"{rows} rows; first call a {first_kind}, second call a hit (duration {duration})")


def _health_check(conn) -> Check:
    with _rolled_back(conn):
        rows = conn.execute("SELECT check_name, status FROM public.analyze_cache_health()").fetchall()
    by_status = {s: [n for n, st in rows if st == s] for s in ("ok", "warning", "critical")}
    detail = f"{len(rows)} checks: {len(by_status['ok'])} ok"
    for level in ("warning", "critical"):
        if by_status[level]:
            detail += f", {len(by_status[level])} {level} ({', '.join(by_status[level])})"
    return Check("health analysis", "operations", "pass",
                 detail + ("; see python -m cachelib maintenance health" if len(by_status["ok"]) < len(rows) else ""))


def _cleanup_check(url: str, config: Settings) -> Check:
    from cachelib.maintenance import Actor, Maintenance

    database = Database(url, config)
    try:
        result = Maintenance(database).cleanup(Actor("verify", "admin", "cli"))
        with database.connection() as conn:
            logged = conn.execute("SELECT cleanup_time, triggered_by FROM public.cache_cleanup_log WHERE id = %s",
                                  (result.details.get("id"),)).fetchone()
    finally:
        database.close()
    if logged is None:
        return Check("cleanup", "operations", "fail", "cleanup ran but wrote no cache_cleanup_log row",
                     "python -m cachelib migrate (cleanup_expired_cache must log)")
    return Check("cleanup", "operations", "pass", f"{result.message}; logged as cache_cleanup_log id "
                 f"{result.details['id']} by {logged[1]}")


def _schedule_checks(conn, url: str, config: Settings) -> list[Check]:
    group, name = "operations", "scheduled cleanup"
    state = schedule.status(url, config)
    if not state.available:
        checks = [Check(name, group, "skipped", f"pg_cron unavailable: {state.reason}", state.crontab,
                        required=False)]
        last, fresh = conn.execute(
            """SELECT max(cleanup_time), max(cleanup_time) >= now() - interval '24 hours'
               FROM public.cache_cleanup_log""").fetchone()
        if fresh:
            checks.append(Check("recent cleanup", group, "pass", f"last cleanup {last:%Y-%m-%d %H:%M:%S %Z} "
                                "(within 24 h)"))
        else:
            checks.append(Check("recent cleanup", group, "fail",
                                "no cleanup in the last 24 hours (last: " + (f"{last:%Y-%m-%d %H:%M %Z}" if last
                                                                             else "never") + ")",
                                f"add to the crontab: {state.crontab}"))
        return checks
    job = state.job(schedule.CLEANUP_JOB)
    if job is None:
        return [Check(name, group, "fail", f"pg_cron is available but no {schedule.CLEANUP_JOB} job is scheduled",
                      "python -m cachelib schedule install")]
    if not job.active:
        return [Check(name, group, "fail", f"{job.name} is inactive", f"SELECT cron.alter_job({job.jobid}, "
                      "active := true); or python -m cachelib schedule install")]
    if job.last_status == "failed":
        return [Check(name, group, "fail", f"the last run of {job.name} failed at {job.last_start:%Y-%m-%d %H:%M %Z}: "
                      f"{(job.last_message or '').strip()[:200]}",
                      "fix the error above (python -m cachelib schedule status shows every run)")]
    if job.last_status is None:
        last = conn.execute("SELECT max(cleanup_time) FROM public.cache_cleanup_log "
                            "WHERE cleanup_time >= now() - interval '24 hours'").fetchone()[0]
        if last is not None:
            return [Check(name, group, "pass", f"{job.name} [{job.schedule}] has not run yet; a cleanup ran at "
                          f"{last:%Y-%m-%d %H:%M %Z}")]
        return [Check(name, group, "fail", f"{job.name} [{job.schedule}] has not run yet and no cleanup ran in 24 h",
                      "wait for its first run and verify again; if it never runs, check cron.database_name, "
                      "cron.host and the server log")]
    if job.late:
        return [Check(name, group, "fail", f"{job.name} [{job.schedule}] is late: last run at "
                      f"{job.last_start:%Y-%m-%d %H:%M %Z}",
                      "check that the pg_cron scheduler runs (server log: 'pg_cron scheduler started') and "
                      "cron.max_running_jobs")]
    return [Check(name, group, "pass", f"{job.name} [{job.schedule}] last run succeeded at "
                  f"{job.last_start:%Y-%m-%d %H:%M:%S %Z} ({job.runs} runs, {job.failed_runs} failed)")]


