"""python -m cachelib verify: passes on a good deployment, names each broken item with its fix.

Every broken case gets its own fresh copy of the demo database, breaks exactly one
thing, and must fail exactly the check that covers it, with a precise line. Where
the fix is SQL, the test runs it and verify passes again. The lines printed are
collected in tests/artifacts/verify_broken_cases.txt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from cachelib import auth, verify
from cachelib.config import PROJECT_ROOT, Settings
from cachelib.db import Database
from tests.conftest import VERIFY_COOKIE_KEY
from tests.servers import api_in_thread, free_port

ARTIFACT = PROJECT_ROOT / "tests" / "artifacts" / "verify_broken_cases.txt"


@pytest.fixture(scope="module")
def cfg(dashboard_env) -> Settings:
    return Settings.from_env(dashboard_env)


@pytest.fixture(scope="module")
def report_lines():
    lines: list[str] = []
    yield lines
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n", encoding="utf-8")


def by_name(checks: list[verify.Check]) -> dict[str, verify.Check]:
    return {c.name: c for c in checks}


def failed(checks: list[verify.Check]) -> dict[str, verify.Check]:
    return {c.name: c for c in checks if c.status == "fail"}


def run_cli(*args, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cachelib", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout, cwd=PROJECT_ROOT)


# --- a good deployment -----------------------------------------------------------------------


def test_verify_passes_on_a_fresh_demo_database(pg18, cfg):
    url = pg18.fresh_database("verify_ok")
    checks = verify.run_checks(url, allow_writes=True, config=cfg)
    assert verify.all_required_pass(checks), "\n".join(c.line() for c in checks if c.status == "fail")
    status = {c.name: c.status for c in checks}
    for name in ("settings parse", "durations in effect", "caching enabled", "credentials file", "cookie key",
                 "database connection", "migrations", "cache functions", "invalidation triggers",
                 "row-level security", "grants: anon", "grants: authenticated", "grants: cache_admin",
                 "grants: service_role", "search_path pinned", "cached call: expert_sessions",
                 "cached call: product_performance", "health analysis", "cleanup", "recent cleanup"):
        assert status[name] == "pass", name
    # The embedded server has no pg_cron: the schedule check says so and gives the crontab line instead.
    scheduled = by_name(checks)["scheduled cleanup"]
    assert scheduled.status == "skipped" and not scheduled.required
    assert "pg_cron" in scheduled.detail and "-m cachelib maintenance cleanup --json" in scheduled.fix
    assert {c.group for c in checks} == set(verify.GROUPS)
    sessions = by_name(checks)["cached call: expert_sessions"]
    assert "40 rows" in sessions.detail and "second call a hit" in sessions.detail


def test_cli_prints_one_line_per_check_and_exits_0(pg18, dashboard_env):
    url = pg18.fresh_database("verify_cli")
    env = {**dashboard_env, "DATABASE_URL": url}
    first = run_cli("verify", "--allow-writes", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.strip().splitlines()
    assert lines[-1].startswith("verify: ") and "all required checks pass" in lines[-1]
    assert all(line[0] in "✓✗–" for line in lines[:-1])
    assert "✓ operations: cleanup — Cleanup removed" in first.stdout
    # A cleanup is now logged, so the read-only run passes too, and skips the cleanup with its reason.
    second = run_cli("verify", "--json", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    body = json.loads(second.stdout)
    assert body["ok"] is True
    cleanup = next(c for c in body["checks"] if c["name"] == "cleanup")
    assert cleanup == {"name": "cleanup", "group": "operations", "status": "skipped",
                       "detail": "read-only: pass --allow-writes", "fix": None, "required": False}


def test_read_only_verify_without_any_cleanup_fails_with_the_crontab_fix(pg18, dashboard_env, report_lines):
    url = pg18.fresh_database("verify_nocleanup")
    result = run_cli("verify", env={**dashboard_env, "DATABASE_URL": url})
    assert result.returncode == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert len(bad) == 1 and bad[0].startswith("✗ operations: recent cleanup — no cleanup in the last 24 hours")
    assert "fix: add to the crontab: 0 * * * *" in bad[0]
    assert "– operations: cleanup — skipped: read-only: pass --allow-writes" in result.stdout
    report_lines += ["[no cleanup ever ran, read-only verify]", *bad, result.stdout.strip().splitlines()[-1], ""]


def test_environment_problems_are_named(pg18, tmp_path):
    url = pg18.fresh_database("verify_env")
    loose = tmp_path / "auth.yaml"
    config = Settings.from_env({"DASHBOARD_AUTH_FILE": str(loose)})
    auth.ensure_credentials(config)
    loose.chmod(0o644)
    checks = verify.run_checks(url, allow_writes=True, config=config)
    bad = failed(checks)
    assert set(bad) == {"credentials file", "cookie key"}
    assert bad["credentials file"].fix == f"chmod 600 {loose}"
    assert f"no DASHBOARD_COOKIE_KEY and no key file {tmp_path / 'cookie_key'}" in bad["cookie key"].detail
    (tmp_path / "cookie_key").write_text("a-random-key-kept-beside-the-credentials")
    (tmp_path / "cookie_key").chmod(0o600)
    loose.chmod(0o600)
    assert verify.all_required_pass(verify.run_checks(url, allow_writes=True, config=config))
    off = Settings.from_env({"DASHBOARD_AUTH_FILE": str(loose), "CACHE_ENABLED": "false"})
    switch = by_name(verify.run_checks(url, config=off))["caching enabled"]
    assert switch.status == "fail" and not switch.required and "kill switch" in switch.detail


# --- each broken item, one by one --------------------------------------------------------------

BROKEN = {
    "dropped trigger": (
        "DROP TRIGGER invalidate_expert_sessions_upd ON public.expert_sessions",
        "invalidation triggers",
        "✗ database: invalidation triggers — invalidate_expert_sessions_upd is missing on public.expert_sessions",
        True),
    "disabled trigger": (
        "ALTER TABLE public.orders DISABLE TRIGGER invalidate_product_performance_ins",
        "invalidation triggers",
        "✗ database: invalidation triggers — invalidate_product_performance_ins is disabled on public.orders",
        True),
    "revoked grant": (
        "REVOKE EXECUTE ON FUNCTION public.get_cache_size_distribution() FROM authenticated",
        "grants: authenticated",
        "✗ database: grants: authenticated — authenticated cannot EXECUTE public.get_cache_size_distribution()",
        True),
    "extra grant": (
        "GRANT EXECUTE ON FUNCTION public.emergency_clear_cache(text) TO anon",
        "grants: anon",
        "✗ database: grants: anon — anon can EXECUTE public.emergency_clear_cache(text) (an admin function)",
        True),
    "RLS disabled": (
        "ALTER TABLE public.query_cache DISABLE ROW LEVEL SECURITY",
        "row-level security",
        "✗ database: row-level security — RLS is disabled on public.query_cache",
        True),
    "missing function": (
        "DROP FUNCTION public.get_cache_size_distribution()",
        "cache functions",
        "✗ database: cache functions — the guide's Step 1 query lists 14 routines, expected 15: "
        "get_cache_size_distribution() is missing",
        False),
    "pending migration": (
        "DELETE FROM public._cachelib_migrations WHERE migration_id = '0010_api_keys'",
        "migrations",
        "✗ database: migrations — 1 pending: 0010_api_keys — fix: python -m cachelib migrate",
        False),
    "search_path reset": (
        "ALTER FUNCTION public.analyze_cache_health() RESET search_path",
        "search_path pinned",
        "✗ database: search_path pinned — SECURITY DEFINER without a pinned search_path: "
        "public.analyze_cache_health()",
        True),
    "search_path emptied": (
        "ALTER FUNCTION public.get_product_performance_cached(bigint, interval) SET search_path = ''",
        "search_path pinned",
        "✗ database: search_path pinned — search_path other than pg_catalog, pg_temp (the caller's temporary "
        "types would come first): public.get_product_performance_cached(bigint, interval)",
        True),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_item_fails_its_own_check_with_a_precise_line(case, pg18, cfg, report_lines):
    breakage, check_name, expected_line, fix_is_sql = BROKEN[case]
    url = pg18.fresh_database("verify_" + case.replace(" ", "_"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(breakage)
    checks = verify.run_checks(url, allow_writes=True, config=cfg)
    bad = failed(checks)
    assert set(bad) == {check_name}, "\n".join(c.line() for c in bad.values())
    check = bad[check_name]
    assert check.required and check.fix
    line = check.line()
    assert line.startswith(expected_line), line
    assert not verify.all_required_pass(checks)
    report_lines += [f"[{case}] {breakage}", line, ""]
    print(f"\n{case}: {line}")
    if fix_is_sql:
        # The fix verify prints is the SQL that repairs it.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(check.fix)
        assert verify.all_required_pass(verify.run_checks(url, config=cfg)), f"fix did not repair: {check.fix}"


def test_the_missing_function_fix_names_the_migration_file(pg18, cfg):
    url = pg18.fresh_database("verify_missing_fn_fix")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION public.get_cache_size_distribution()")
    check = failed(verify.run_checks(url, allow_writes=True, config=cfg))["cache functions"]
    assert "sql/migrations/0008_read_functions.sql" in check.fix and "0009_security.sql" in check.fix


def test_a_broken_item_makes_the_cli_exit_1(pg18, dashboard_env):
    url = pg18.fresh_database("verify_cli_broken")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.orders DISABLE TRIGGER invalidate_product_performance_del")
    result = run_cli("verify", "--allow-writes", env={**dashboard_env, "DATABASE_URL": url})
    assert result.returncode == 1
    assert ("✗ database: invalidation triggers — invalidate_product_performance_del is disabled on public.orders"
            in result.stdout)
    assert "fix: ALTER TABLE public.orders ENABLE TRIGGER invalidate_product_performance_del;" in result.stdout
    assert "1 required check(s) failed" in result.stdout.strip().splitlines()[-1]


def test_an_unreachable_database_fails_one_check_and_skips_the_rest(cfg):
    checks = verify.run_checks("postgresql://nobody@127.0.0.1:9/none", config=Settings.from_env(
        {"DASHBOARD_AUTH_FILE": str(cfg.auth_file), "DASHBOARD_COOKIE_KEY": VERIFY_COOKIE_KEY,
         "CACHE_CONNECT_TIMEOUT": "2s"}))
    bad = failed(checks)
    assert set(bad) == {"database connection"} and "cannot reach the database" in bad["database connection"].detail
    migrations = by_name(checks)["migrations"]
    assert migrations.status == "skipped" and "no usable database" in migrations.detail


# --- the HTTP API and the dashboard ------------------------------------------------------------




@pytest.fixture(scope="module")
def api_server(pg18):
    """The real admin API (cachelib.api) served by uvicorn, with a viewer key."""
    from cachelib import apikeys

    url = pg18.fresh_database("verify_api")
    database = Database(url, Settings.from_env({}))
    key = apikeys.create_key("verify-check", "viewer", database)
    try:
        with api_in_thread(database) as base:
            yield url, base, key
    finally:
        database.close()


def test_api_checks_pass_with_a_key_and_see_401_without(api_server, cfg):
    url, api_url, key = api_server
    checks = [c for c in verify.run_checks(url, allow_writes=True, config=cfg, api_url=api_url, api_key=key)
              if c.group == "api"]
    assert [(c.name, c.status) for c in checks] == [
        ("GET /api/admin/cache/metrics with key", "pass"), ("GET /api/admin/cache/metrics without key", "pass"),
        ("GET /api/admin/cache/maintenance with key", "pass"),
        ("GET /api/admin/cache/maintenance without key", "pass")]


def test_api_checks_fail_with_a_wrong_key_or_no_server(api_server, cfg):
    url, api_url, _ = api_server
    checks = verify.run_checks(url, config=cfg, api_url=api_url, api_key="pgc_00000000_wrong")
    bad = failed(checks)
    assert set(bad) == {"GET /api/admin/cache/metrics with key", "GET /api/admin/cache/maintenance with key"}
    assert bad["GET /api/admin/cache/metrics with key"].detail == "answered 401, expected 200"
    down = failed(verify.run_checks(url, config=cfg, api_url=f"http://127.0.0.1:{free_port()}", api_key="k"))
    assert len(down) == 4 and all("cannot reach" in c.detail for c in down.values())
    assert "python -m cachelib api" in next(iter(down.values())).fix


def test_dashboard_checks_against_the_real_streamlit_server(api_server, dashboard_env, cfg):
    url, api_url, _ = api_server
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "dashboard.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=PROJECT_ROOT, env={**os.environ, **dashboard_env, "DATABASE_URL": url},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "streamlit did not start"
            time.sleep(0.2)
        checks = {c.name: c for c in verify.run_checks(url, config=cfg, dashboard_url=base) if c.group == "dashboard"}
        assert checks["dashboard page"].status == "pass" and checks["dashboard health"].status == "pass"
        assert "client-side" in checks["dashboard health"].detail
        # The API is not a dashboard: verify says so.
        wrong = {c.name: c for c in verify.run_checks(url, config=cfg, dashboard_url=api_url)
                 if c.group == "dashboard"}
        assert wrong["dashboard page"].status == "fail" and "not a Streamlit page" in wrong["dashboard page"].detail
        assert wrong["dashboard health"].status == "fail"
    finally:
        process.terminate()
        process.wait(10)


def test_unrequested_api_and_dashboard_checks_are_skipped_not_failed(pg18, cfg):
    checks = verify.run_checks(pg18.fresh_database("verify_skips"), allow_writes=True, config=cfg)
    skipped = {c.name: c for c in checks if c.group in ("api", "dashboard")}
    assert {c.status for c in skipped.values()} == {"skipped"}
    assert not any(c.required for c in skipped.values())

