"""Scheduled cleanup inside PostgreSQL with pg_cron, or the crontab line when there is no pg_cron.

``install`` schedules two named pg_cron jobs:

- ``pgcache-cleanup``: ``SELECT public.cleanup_expired_cache()`` (hourly by default), which
  deletes expired entries, enforces the size bound and writes ``cache_cleanup_log``;
- ``pgcache-rollup``: ``SELECT cache_private.rollup_stats()`` (every 5 minutes by default),
  which folds the hit/miss event log into the hourly statistics.

pg_cron keeps its jobs in the database named by ``cron.database_name``. When that is the
cache's database (Supabase: ``postgres``), the jobs are scheduled there with
``cron.schedule``; otherwise they are scheduled from that database with
``cron.schedule_in_database`` and named ``pgcache-cleanup@<database>``. pg_cron runs each job
as the user who scheduled it: schedule as the database owner (``postgres`` on Supabase).

Without pg_cron, ``install`` changes nothing and explains why, with the crontab line that runs
``python -m cachelib maintenance cleanup --json`` instead.
"""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cachelib.config import PROJECT_ROOT, Settings, settings
from cachelib.db import connect, value
from cachelib.errors import InvalidInput

CLEANUP_JOB = "pgcache-cleanup"
ROLLUP_JOB = "pgcache-rollup"
CLEANUP_COMMAND = "SELECT public.cleanup_expired_cache()"
ROLLUP_COMMAND = "SELECT cache_private.rollup_stats()"
DEFAULT_EVERY = "hourly"
DEFAULT_ROLLUP_EVERY = "5m"
EVERY_FORMS = ("hourly, daily, every N minutes as 5m/15m/30m (N divides 60), every N hours as 2h/6h "
               "(N divides 24), N seconds as 30s (pg_cron 1.5 or later), or a five-field cron expression")

NOT_INSTALLED = ("the pg_cron extension is not installed on this PostgreSQL server (Debian/Ubuntu: "
                 "apt-get install postgresql-{major}-cron; Supabase: Database > Extensions > pg_cron; "
                 "managed services: enable pg_cron in the server's parameters)")
NOT_PRELOADED = ("pg_cron is installed but not loaded: add pg_cron to shared_preload_libraries and set "
                 "cron.database_name = '{database}' in postgresql.conf, then restart PostgreSQL")


# --- schedules ---------------------------------------------------------------------


def cron_expression(every: str, *, seconds_allowed: bool = True) -> str:
    """The pg_cron schedule for ``every`` ("hourly", "15m", "2h", "30s", or a cron expression)."""
    text = (every or "").strip().lower()
    if text == "hourly":
        return "0 * * * *"
    if text == "daily":
        return "30 3 * * *"
    match = re.fullmatch(r"(\d+)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)", text)
    if match:
        number, unit = int(match.group(1)), match.group(2)[0]
        if unit == "s":
            if not 1 <= number <= 59:
                raise InvalidInput(f"every={every!r}: seconds must be 1..59; {EVERY_FORMS}")
            if not seconds_allowed:
                raise InvalidInput(f"every={every!r}: this pg_cron schedules at most once a minute "
                                   "(seconds need pg_cron 1.5 or later); use 1m")
            return f"{number} seconds"
        if unit == "m":
            if number == 60:
                return "0 * * * *"
            if not 1 <= number <= 59 or 60 % number:
                raise InvalidInput(f"every={every!r}: minutes must divide 60 (1, 2, 5, 10, 15, 30); {EVERY_FORMS}")
            return "* * * * *" if number == 1 else f"*/{number} * * * *"
        if number == 24:
            return "30 3 * * *"
        if not 1 <= number <= 23 or 24 % number:
            raise InvalidInput(f"every={every!r}: hours must divide 24 (1, 2, 3, 4, 6, 8, 12); {EVERY_FORMS}")
        return "0 * * * *" if number == 1 else f"0 */{number} * * *"
    fields = text.split()
    if len(fields) == 5 and all(re.fullmatch(r"[0-9*/,\-]+", f) for f in fields):
        return " ".join(fields)
    raise InvalidInput(f"every={every!r} is not a schedule; use {EVERY_FORMS}")


def expected_interval(schedule: str) -> timedelta | None:
    """How often a schedule written by ``cron_expression`` fires; None for other cron expressions."""
    schedule = " ".join(schedule.split())
    if match := re.fullmatch(r"(\d+) seconds?", schedule):
        return timedelta(seconds=int(match.group(1)))
    if schedule == "* * * * *":
        return timedelta(minutes=1)
    if match := re.fullmatch(r"\*/(\d+) \* \* \* \*", schedule):
        return timedelta(minutes=int(match.group(1)))
    if re.fullmatch(r"\d+ \* \* \* \*", schedule):
        return timedelta(hours=1)
    if match := re.fullmatch(r"\d+ \*/(\d+) \* \* \*", schedule):
        return timedelta(hours=int(match.group(1)))
    if re.fullmatch(r"\d+ \d+ \* \* \*", schedule):
        return timedelta(days=1)
    return None


def is_late(schedule: str, last_start: datetime | None, now: datetime) -> bool:
    """A job is late when its last run started more than 1.5 intervals (plus a minute) ago."""
    interval = expected_interval(schedule)
    if interval is None or last_start is None:
        return False
    return now - last_start > interval * 1.5 + timedelta(minutes=1)


def crontab_line(every: str = DEFAULT_EVERY, config: Settings | None = None) -> str:
    """The crontab line that runs the cleanup from the operating system's cron instead of pg_cron."""
    config = config or settings()
    try:
        expression = cron_expression(every, seconds_allowed=False)
    except InvalidInput:
        expression = "0 * * * *"
    database = "DATABASE_URL=postgresql://... " if config.database_url else ""
    return (f"{expression}  cd {PROJECT_ROOT} && {database}{sys.executable} -m cachelib maintenance cleanup "
            "--json >> /var/log/pgcache-cleanup.log 2>&1")


# --- where pg_cron lives -------------------------------------------------------------


@dataclass(frozen=True)
class CronLocation:
    """Whether pg_cron can be used for this database, and from which database."""

    available: bool
    reason: str | None = None
    database: str | None = None        # the cache's database
    cron_database: str | None = None   # where pg_cron keeps its jobs (cron.database_name)
    extension_ready: bool = False      # CREATE EXTENSION pg_cron already ran in cron_database
    version: str | None = None

    @property
    def local(self) -> bool:
        return self.database == self.cron_database



def seconds_supported(version: str | None) -> bool:
    """pg_cron schedules "N seconds" from version 1.5 on."""
    numbers = [int(p) for p in re.findall(r"\d+", version or "")[:2]]
    return len(numbers) == 2 and tuple(numbers) >= (1, 5)


def _with_dbname(url: str, dbname: str) -> str:
    parts = conninfo_to_dict(url)
    parts["dbname"] = dbname
    return make_conninfo(**parts)


def _extension_version(conn) -> str | None:
    return value(conn, "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'")


def locate(conn) -> CronLocation:
    """Find pg_cron for the database ``conn`` is connected to (reads only)."""
    database = value(conn, "SELECT current_database()")
    version = _extension_version(conn)
    if version is not None:
        return CronLocation(True, None, database, database, True, version)
    if not value(conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'pg_cron')"):
        major = value(conn, "SELECT current_setting('server_version_num')::int / 10000")
        return CronLocation(False, NOT_INSTALLED.format(major=major), database)
    # pg_cron defines cron.database_name only when it is loaded (a postgresql.conf value alone is a placeholder).
    loaded = value(conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_settings WHERE name = 'cron.database_name')")
    if not loaded:
        return CronLocation(False, NOT_PRELOADED.format(database=database), database)
    cron_database = value(conn, "SELECT current_setting('cron.database_name')")
    return CronLocation(True, None, database, cron_database, False, None)


def _cron_connection(url: str, location: CronLocation, config: Settings | None):
    target = url if location.local else _with_dbname(url, location.cron_database)
    return connect(target, config=config)


def job_names(location: CronLocation) -> tuple[str, str]:
    """The cleanup and roll-up job names: plain in the cron database, suffixed with the database otherwise."""
    if location.local:
        return CLEANUP_JOB, ROLLUP_JOB
    return f"{CLEANUP_JOB}@{location.database}", f"{ROLLUP_JOB}@{location.database}"


# --- install / status / remove ------------------------------------------------------


@dataclass
class JobStatus:
    name: str
    jobid: int
    schedule: str
    command: str
    database: str
    username: str
    active: bool
    runs: int = 0
    failed_runs: int = 0
    last_status: str | None = None     # of the last finished run: succeeded / failed
    last_start: datetime | None = None
    last_end: datetime | None = None
    last_message: str | None = None
    running: bool = False
    late: bool = False

    def describe(self) -> str:
        state = "active" if self.active else "INACTIVE"
        if self.last_status is None:
            last = "no run yet"
        else:
            last = f"last run {self.last_status} at {self.last_start:%Y-%m-%d %H:%M:%S %Z}"
            if self.last_status != "succeeded" and self.last_message:
                last += f": {self.last_message.strip()}"
        late = "; LATE" if self.late else ""
        return (f"{self.name} [{self.schedule}] {state}, {last}; {self.runs} runs, {self.failed_runs} failed"
                f"{late}; {self.command}")


@dataclass
class ScheduleStatus:
    available: bool
    reason: str | None
    database: str | None
    cron_database: str | None
    version: str | None
    jobs: list[JobStatus] = field(default_factory=list)
    crontab: str | None = None
    message: str = ""

    def job(self, base: str) -> JobStatus | None:
        return next((j for j in self.jobs if j.name == base or j.name.startswith(base + "@")), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InstallResult:
    installed: bool
    message: str
    reason: str | None = None
    crontab: str | None = None
    jobs: list[JobStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_JOBS_SQL = """
SELECT j.jobid, j.jobname, j.schedule, j.command, j.database, j.username, j.active,
       (SELECT count(*) FROM cron.job_run_details r WHERE r.jobid = j.jobid) AS runs,
       (SELECT count(*) FROM cron.job_run_details r WHERE r.jobid = j.jobid AND r.status = 'failed') AS failed_runs,
       d.status, d.start_time, d.end_time, d.return_message,
       EXISTS (SELECT 1 FROM cron.job_run_details r
               WHERE r.jobid = j.jobid AND r.status IN ('starting', 'running', 'sending', 'connecting')) AS running,
       clock_timestamp() AS now
FROM cron.job j
LEFT JOIN LATERAL (
  SELECT status, start_time, end_time, return_message FROM cron.job_run_details r
  WHERE r.jobid = j.jobid AND r.status IN ('succeeded', 'failed')
  ORDER BY r.runid DESC LIMIT 1) d ON true
WHERE j.jobname = ANY (%s)
ORDER BY j.jobname
"""


def _jobs(conn, names: tuple[str, ...]) -> list[JobStatus]:
    jobs = []
    for row in conn.execute(_JOBS_SQL, (list(names),)).fetchall():
        (jobid, name, schedule, command, database, username, active, runs, failed, status, start, end,
         message, running, now) = row
        jobs.append(JobStatus(name, jobid, schedule, command, database, username, active, runs, failed, status,
                              start, end, message, running, is_late(schedule, start, now)))
    return jobs


def install(url: str, every: str = DEFAULT_EVERY, rollup_every: str = DEFAULT_ROLLUP_EVERY,
            config: Settings | None = None) -> InstallResult:
    """Schedule the cleanup and the statistics roll-up with pg_cron (idempotent: re-running updates them).

    Without pg_cron nothing changes: the result says why and gives the crontab line instead.
    Raises InvalidInput for a schedule pg_cron cannot run.
    """
    cron_expression(every)  # a bad schedule fails before anything is touched
    cron_expression(rollup_every)
    with connect(url, config=config) as conn:
        location = locate(conn)
    if not location.available:
        return InstallResult(False, f"pg_cron is not available: {location.reason}", location.reason,
                             crontab_line(every, config))
    cleanup_name, rollup_name = job_names(location)
    with _cron_connection(url, location, config) as conn:
        if not location.extension_ready and _extension_version(conn) is None:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            except psycopg.Error as exc:
                reason = (f"could not create the pg_cron extension in database {location.cron_database}: "
                          f"{_first_line(exc)}; connect as a superuser (Supabase: enable pg_cron under "
                          "Database > Extensions)")
                return InstallResult(False, f"pg_cron is not available: {reason}", reason,
                                     crontab_line(every, config))
        # The version installed decides whether "N seconds" works.
        seconds_ok = seconds_supported(_extension_version(conn))
        cleanup_schedule = cron_expression(every, seconds_allowed=seconds_ok)
        rollup_schedule = cron_expression(rollup_every, seconds_allowed=seconds_ok)
        with conn.transaction():
            for name, schedule, command in ((cleanup_name, cleanup_schedule, CLEANUP_COMMAND),
                                            (rollup_name, rollup_schedule, ROLLUP_COMMAND)):
                if location.local:
                    conn.execute("SELECT cron.schedule(%s, %s, %s)", (name, schedule, command))
                else:
                    conn.execute("SELECT cron.schedule_in_database(%s, %s, %s, %s)",
                                 (name, schedule, command, location.database))
        jobs = _jobs(conn, (cleanup_name, rollup_name))
    where = "" if location.local else f" (from database {location.cron_database}, running in {location.database})"
    message = (f"Scheduled with pg_cron{where}: {cleanup_name} [{cleanup_schedule}] runs {CLEANUP_COMMAND}; "
               f"{rollup_name} [{rollup_schedule}] runs {ROLLUP_COMMAND}")
    return InstallResult(True, message, jobs=jobs)


def status(url: str, config: Settings | None = None) -> ScheduleStatus:
    """The pgcache jobs with their last run (reads only)."""
    with connect(url, config=config) as conn:
        location = locate(conn)
    if not location.available:
        return ScheduleStatus(False, location.reason, location.database, None, None, [],
                              crontab_line(DEFAULT_EVERY, config), f"pg_cron is not available: {location.reason}")
    names = job_names(location)
    with _cron_connection(url, location, config) as conn:
        version = _extension_version(conn)
        jobs = _jobs(conn, names) if version is not None else []
    result = ScheduleStatus(True, None, location.database, location.cron_database, version, jobs)
    if not jobs:
        result.message = (f"pg_cron is available (database {location.cron_database}) but no pgcache job is "
                          "scheduled; run: python -m cachelib schedule install")
    else:
        result.message = f"{len(jobs)} pgcache job(s) in pg_cron {version} (database {location.cron_database})"
    return result


def remove(url: str, config: Settings | None = None) -> list[str]:
    """Unschedule the pgcache jobs; returns the names removed (empty when there were none)."""
    with connect(url, config=config) as conn:
        location = locate(conn)
    if not location.available:
        return []
    names = job_names(location)
    with _cron_connection(url, location, config) as conn:
        if _extension_version(conn) is None:
            return []
        present = [job.name for job in _jobs(conn, names)]
        for name in present:
            conn.execute("SELECT cron.unschedule(%s)", (name,))
    return present


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
