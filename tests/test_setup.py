"""make run's path end to end: setup on an empty database, then the dashboard serves HTTP 200."""

import subprocess
import sys
import time

import httpx
import psycopg

from cachelib.config import PROJECT_ROOT
from tests.servers import free_port
from tests.test_cli import run_cli


def test_setup_prepares_everything_once(pg18, tmp_path):
    url = pg18.empty_database("setup")
    env = {"DATABASE_URL": url, "DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml"),
           "DASHBOARD_ADMIN_PASSWORD": "chosen-admin-pw-123"}
    first = run_cli("setup", "--demo", env=env, timeout=240)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "Applied" in out and "demo data: 400 experts" in out and "demo traffic:" in out
    assert "(as set in DASHBOARD_ADMIN_PASSWORD)" in out and "chosen-admin-pw-123" not in out
    viewer_line = next(line for line in out.splitlines() if line.strip().startswith("viewer"))
    assert len(viewer_line.split()[-1]) >= 12  # a generated password, shown once
    assert (tmp_path / "auth.yaml").stat().st_mode & 0o077 == 0
    with psycopg.connect(url) as conn:
        days = conn.execute("SELECT count(DISTINCT date_trunc('day', bucket)) FROM cache_private.cache_stats_hourly"
                            ).fetchone()[0]
        live = conn.execute("SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL "
                            "AND expires_at > now()").fetchone()[0]
        demo_flag = conn.execute("SELECT cache_private.setting('demo_data')").fetchone()[0]
    # Hundreds of live entries, so Top Cache Entries and entry sizes have something to show.
    assert days >= 35 and live >= 100 and demo_flag == "true"
    second = run_cli("setup", "--demo", env=env, timeout=120)
    assert second.returncode == 0
    assert "Nothing to apply" in second.stdout and "demo data:" not in second.stdout
    assert "as created earlier" in second.stdout


def test_setup_never_puts_demo_rows_into_your_own_database_unasked(pg18, tmp_path):
    url = pg18.empty_database("setup_own")
    result = run_cli("setup", env={"DATABASE_URL": url, "DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml")})
    assert result.returncode == 0, result.stderr
    assert "demo data: skipped" in result.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM public.experts").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM cache_private.cache_stats_hourly").fetchone()[0] == 0


def test_serve_answers_http_200(db_url, tmp_path):
    port = free_port()
    env = {"DATABASE_URL": db_url, "DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml"),
           "DASHBOARD_COOKIE_KEY": "k" * 32}
    import os

    from cachelib import auth
    from cachelib.config import Settings

    auth.ensure_credentials(Settings.from_env(env))

    process = subprocess.Popen([sys.executable, "-m", "cachelib", "serve", "--port", str(port), "--host",
                                "127.0.0.1"], cwd=PROJECT_ROOT, env={**os.environ, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code
            except httpx.HTTPError:
                time.sleep(0.5)
        assert status == 200
        assert httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=5).text == "ok"
        busy = run_cli("serve", "--port", str(port), "--host", "127.0.0.1", env=env)
        assert busy.returncode == 1 and "already in use" in busy.stderr
    finally:
        process.terminate()
        process.wait(10)
