"""Scheduled cleanup: a real pg_cron on Debian's PostgreSQL 15 runs the jobs, and the fallback without pg_cron.

The pg_cron server is our own PostgreSQL 15 in a temp dir with
shared_preload_libraries = 'pg_cron' and cron.database_name set to a database we
create and migrate. pg_cron 1.4 (Debian 12) schedules at most once a minute, so the
lifecycle test schedules '* * * * *' and waits for the next minute's run (up to ~70 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from cachelib import schedule, verify
from cachelib.config import PROJECT_ROOT, Settings
from cachelib.errors import InvalidInput
from tests.servers import pg15_unavailable_reason, start_pg15

PG_CRON_CONTROL = Path("/usr/share/postgresql/15/extension/pg_cron.control")
CRON_DATABASE = "pgcache_cron"


@pytest.fixture(scope="module")
def cron_server():
    reason = pg15_unavailable_reason((PG_CRON_CONTROL,))
    if reason:
        pytest.skip(reason)
    server = start_pg15({
        "shared_preload_libraries": "'pg_cron'",
        "max_worker_processes": "32",
        "cron.database_name": f"'{CRON_DATABASE}'",
        # Jobs run in background workers: no TCP connection or password needed.
        "cron.use_background_workers": "on",
    })
    try:
        server.create_database(CRON_DATABASE)
        yield server
    finally:
        server.stop()


def run_cli(*args, url: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachelib", *args], capture_output=True, text=True,
                          env={**os.environ, "DATABASE_URL": url}, timeout=timeout, cwd=PROJECT_ROOT)


def health_row(url: str, name: str = "cleanup_schedule") -> tuple:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT value, status, recommendation FROM public.analyze_cache_health() "
                            "WHERE check_name = %s", (name,)).fetchone()


# --- a real pg_cron: install first, so pg_cron's next minute comes while the other tests run ---


@dataclass
class Installed:
    url: str
    other: str
    last_log: int


@pytest.fixture(scope="module")
def installed(cron_server) -> Installed:
    """An expired entry to clean up, then the jobs scheduled every minute (in the cron database and,
    through cron.schedule_in_database, for a second database). The tests in between run while
    pg_cron waits for the next minute."""
    url = cron_server.url(CRON_DATABASE)
    other = cron_server.create_database("pgcache_other")
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT set_config('cachelib.now', (now() - interval '2 hours')::text, true)")
            conn.execute("SELECT public.get_expert_sessions_with_stats_cached(NULL, '1 minute')")
        assert conn.execute("SELECT count(*) FROM public.query_cache WHERE expires_at < now()").fetchone()[0] == 1
        last_log = conn.execute("SELECT COALESCE(max(id), 0) FROM public.cache_cleanup_log").fetchone()[0]
    result = run_cli("schedule", "install", "--every", "1m", "--rollup-every", "1m", url=url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pgcache-cleanup [* * * * *]" in result.stdout and "pgcache-rollup [* * * * *]" in result.stdout
    return Installed(url, other, last_log)


def test_install_schedules_named_jobs_idempotently_here_and_in_another_database(installed):
    url, other = installed.url, installed.other
    again = schedule.install(url, every="1m", rollup_every="1m")  # updates, never duplicates
    assert again.installed and [j.name for j in again.jobs] == ["pgcache-cleanup", "pgcache-rollup"]
    assert [(j.schedule, j.command) for j in again.jobs] == [("* * * * *", schedule.CLEANUP_COMMAND),
                                                            ("* * * * *", schedule.ROLLUP_COMMAND)]
    elsewhere = schedule.install(other, every="1m", rollup_every="1m")
    assert elsewhere.installed and "from database pgcache_cron, running in pgcache_other" in elsewhere.message
    assert [j.name for j in elsewhere.jobs] == ["pgcache-cleanup@pgcache_other", "pgcache-rollup@pgcache_other"]
    assert all(j.database == "pgcache_other" for j in elsewhere.jobs)
    assert health_row(url)[0].startswith("pg_cron job pgcache-cleanup [* * * * *], last run ")


def test_seconds_are_refused_by_pg_cron_1_4_with_the_reason(installed):
    with psycopg.connect(installed.url) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()[0]
    if schedule.seconds_supported(version):
        pytest.skip(f"pg_cron {version} supports seconds")
    result = run_cli("schedule", "install", "--every", "30s", url=installed.url)
    assert result.returncode == 2 and "seconds need pg_cron 1.5 or later" in result.stderr


# --- schedules -------------------------------------------------------------------------------------


@pytest.mark.parametrize("every,expression", [
    ("hourly", "0 * * * *"), ("daily", "30 3 * * *"), ("15m", "*/15 * * * *"), ("1m", "* * * * *"),
    ("60m", "0 * * * *"), ("2h", "0 */2 * * *"), ("1h", "0 * * * *"), ("30s", "30 seconds"),
    ("5 4 * * 1-5", "5 4 * * 1-5"),
])
def test_schedules(every, expression):
    assert schedule.cron_expression(every) == expression


@pytest.mark.parametrize("every", ["7m", "90s", "5h", "never", "", "* * * *", "0s"])
def test_bad_schedules_are_refused_with_the_accepted_forms(every):
    with pytest.raises(InvalidInput, match="every="):
        schedule.cron_expression(every)


def test_seconds_need_pg_cron_1_5():
    assert not schedule.seconds_supported("1.4-1") and schedule.seconds_supported("1.6.4")
    with pytest.raises(InvalidInput, match="pg_cron 1.5"):
        schedule.cron_expression("30s", seconds_allowed=False)


def test_lateness_follows_the_schedule():
    from datetime import UTC, datetime

    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert schedule.expected_interval("0 * * * *") == timedelta(hours=1)
    assert schedule.expected_interval("*/15 * * * *") == timedelta(minutes=15)
    assert schedule.expected_interval("0 3 * * 1-5") is None
    assert not schedule.is_late("0 * * * *", now - timedelta(minutes=80), now)
    assert schedule.is_late("0 * * * *", now - timedelta(hours=2), now)
    assert not schedule.is_late("5 4 * * 1-5", now - timedelta(days=3), now)  # custom: not judged


# --- without pg_cron (the embedded PostgreSQL 18) -------------------------------------------------


def test_without_pg_cron_install_explains_why_and_prints_the_crontab_line(db_url):
    result = schedule.install(db_url)
    assert not result.installed and "pg_cron extension is not installed" in result.reason
    assert "-m cachelib maintenance cleanup --json" in result.crontab and result.crontab.startswith("0 * * * *")
    cli = run_cli("schedule", "install", "--every", "15m", url=db_url)
    assert cli.returncode == 1
    assert "not scheduled: pg_cron is not available" in cli.stdout
    assert "*/15 * * * *  cd " in cli.stdout and "-m cachelib maintenance cleanup --json" in cli.stdout
    status = run_cli("schedule", "status", url=db_url)
    assert status.returncode == 1 and "cleanup from cron instead: 0 * * * *" in status.stdout
    removed = run_cli("schedule", "remove", url=db_url)
    assert removed.returncode == 0 and "no pgcache pg_cron jobs" in removed.stdout
    bad = run_cli("schedule", "install", "--every", "7m", url=db_url)
    assert bad.returncode == 2 and "minutes must divide 60" in bad.stderr


def test_without_pg_cron_the_health_row_judges_recent_cleanups(db_url):
    value, status, recommendation = health_row(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM public.cache_cleanup_log").fetchone()[0] == 0
        assert status == "warning" and value == "no pg_cron job pgcache-cleanup; last cleanup never"
        assert "schedule install" in recommendation
        conn.execute("SELECT public.cleanup_expired_cache()")
    value, status, _ = health_row(db_url)
    assert status == "ok" and value.startswith("no pg_cron job pgcache-cleanup; last cleanup 20")


def test_pg_cron_installed_but_not_preloaded_says_how_to_load_it(pg15):
    if not PG_CRON_CONTROL.exists():
        pytest.skip("postgresql-15-cron is not installed (apt-get install postgresql-15-cron; .ci/run does this)")
    url = pg15.fresh_database("schedule_not_loaded")
    result = schedule.install(url)
    assert not result.installed
    assert "pg_cron is installed but not loaded: add pg_cron to shared_preload_libraries" in result.reason
    assert "cron.database_name = 't" in result.reason
    assert health_row(url)[1] == "warning"


# --- last: the jobs installed above have had time to run ---------------------------------------------


def test_scheduled_cleanup_really_runs_in_pg_cron(installed):
    url, other, last_log = installed.url, installed.other, installed.last_log
    # pg_cron 1.4 fires at the start of each minute: wait for the cleanup jobs' first successful runs.
    deadline = time.monotonic() + 75
    while True:
        state = schedule.status(url)
        elsewhere_state = schedule.status(other)
        done = [s.job("pgcache-cleanup") for s in (state, elsewhere_state)]
        if all(j is not None and j.last_status is not None for j in done):
            break
        assert time.monotonic() < deadline, f"pg_cron did not run the jobs: {[j.describe() for j in done if j]}"
        time.sleep(0.5)
    cleanup = state.job("pgcache-cleanup")
    assert cleanup.last_status == "succeeded", cleanup.describe()
    assert cleanup.runs >= 1 and cleanup.failed_runs == 0 and not cleanup.late
    assert elsewhere_state.job("pgcache-cleanup").last_status == "succeeded"
    with psycopg.connect(url) as conn:
        logged = conn.execute("SELECT entries_removed, triggered_by FROM public.cache_cleanup_log WHERE id > %s "
                              "ORDER BY id", (last_log,)).fetchall()
        assert logged and logged[0] == (1, "postgres"), logged  # the job ran as the user who scheduled it
        assert conn.execute("SELECT count(*) FROM public.query_cache WHERE expires_at < now()").fetchone()[0] == 0
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT count(*) FROM public.cache_cleanup_log").fetchone()[0] >= 1

    status = run_cli("schedule", "status", url=url)
    assert status.returncode == 0, status.stdout
    assert "pgcache-cleanup [* * * * *] active, last run succeeded at" in status.stdout
    value, health_status, _ = health_row(url)
    assert health_status == "ok" and value == "pg_cron job pgcache-cleanup [* * * * *], last run succeeded"
    checks = {c.name: c for c in verify.run_checks(url, config=Settings.from_env({}))}
    assert checks["scheduled cleanup"].status == "pass", checks["scheduled cleanup"].line()
    assert "recent cleanup" not in checks

    # A failed run is reported by status, the health check and verify. (Recorded directly, after
    # moving the job to a schedule that cannot fire during this test.)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT cron.alter_job(%s, schedule := '0 0 1 1 *')", (cleanup.jobid,))
        conn.execute("SELECT cron.unschedule('pgcache-rollup')")
        conn.execute("""INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status,
                                                          return_message, start_time, end_time)
                        VALUES (%s, 0, %s, 'postgres', %s, 'failed',
                                'ERROR:  canceling statement due to lock timeout', now(), now())""",
                     (cleanup.jobid, CRON_DATABASE, schedule.CLEANUP_COMMAND))
    failed_job = schedule.status(url).job("pgcache-cleanup")
    assert failed_job.last_status == "failed" and "lock timeout" in failed_job.describe()
    assert run_cli("schedule", "status", url=url).returncode == 1
    value, health_status, recommendation = health_row(url)
    assert health_status == "warning" and "canceling statement due to lock timeout" in recommendation
    check = {c.name: c for c in verify.run_checks(url, config=Settings.from_env({}))}["scheduled cleanup"]
    assert check.status == "fail" and "the last run of pgcache-cleanup failed" in check.detail

    removed = run_cli("schedule", "remove", url=url)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed: pgcache-cleanup"
    assert schedule.remove(other) == ["pgcache-cleanup@pgcache_other", "pgcache-rollup@pgcache_other"]
    assert schedule.status(url).jobs == [] and schedule.status(other).jobs == []
    gone = run_cli("schedule", "status", url=url)
    assert gone.returncode == 1 and "no pgcache job is scheduled" in gone.stdout
    # Without the job, the health row falls back to "a cleanup ran in the last 24 hours".
    value, health_status, _ = health_row(url)
    assert health_status == "ok" and value.startswith("no pg_cron job pgcache-cleanup; last cleanup")
    check = {c.name: c for c in verify.run_checks(url, config=Settings.from_env({}))}["scheduled cleanup"]
    assert check.status == "fail" and check.fix == "python -m cachelib schedule install"
