"""The command line: every command has --help, errors are one line, migrations are idempotent and atomic."""

import json
import shutil
import subprocess
import sys

import click
import psycopg
import pytest
from click.testing import CliRunner

from cachelib import config, migrate
from cachelib.__main__ import cli
from cachelib.errors import MigrationError


def run_cli(*args, env=None, timeout=120):
    """The real command line in a subprocess, as cron or a person runs it."""
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cachelib", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=config.PROJECT_ROOT)


def all_commands(group=cli, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


@pytest.mark.parametrize("path", list(all_commands()), ids=" ".join)
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_migrate_twice_applies_nothing_the_second_time(pg18):
    url = pg18.empty_database("migrate_twice")
    first = run_cli("migrate", env={"DATABASE_URL": url})
    assert first.returncode == 0, first.stderr
    files = sorted(p.stem for p in migrate.MIGRATIONS_DIR.glob("*.sql"))
    assert f"Applied {len(files)} migration(s)" in first.stdout
    second = run_cli("migrate", env={"DATABASE_URL": url})
    assert second.returncode == 0 and "Nothing to apply" in second.stdout


def test_a_failing_migration_leaves_the_database_as_it_was(pg18, tmp_path):
    url = pg18.empty_database("failing_migration")
    migrations = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, migrations)
    (migrations / "0999_broken.sql").write_text(
        "CREATE TABLE public.half_done (x int);\nINSERT INTO public.half_done SELECT * FROM no_such_table;\n")
    with pytest.raises(MigrationError) as err:
        migrate.apply(url, migrations)
    message = str(err.value)
    assert "0999_broken.sql" in message and "no_such_table" in message and "rolled back" in message
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT to_regclass('public.half_done')").fetchone()[0] is None
        assert conn.execute("SELECT to_regclass('public.query_cache')").fetchone()[0] == "query_cache"
    assert migrate.pending(url, migrations) == ["0999_broken"]


@pytest.mark.parametrize("url,code,words", [
    ("postgresql://nobody@127.0.0.1:9/none", 1, "cannot reach the database"),
    ("not a url", 2, "DATABASE_URL"),
    ("postgresql://x@host:notaport/db", 2, "invalid port"),
])
def test_a_bad_database_url_gives_one_clear_line(url, code, words):
    result = run_cli("status", env={"DATABASE_URL": url, "CACHE_CONNECT_TIMEOUT": "2s"})
    assert result.returncode == code
    assert words in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) <= 2


def test_a_bad_setting_stops_at_start_up():
    result = run_cli("status", env={"CACHE_ANALYTICS_DURATION": "15 minutes"})
    assert result.returncode == 2
    assert "CACHE_ANALYTICS_DURATION='15 minutes'" in result.stderr and "1h30m" in result.stderr


def test_maintenance_commands_for_cron(db_url):
    env = {"DATABASE_URL": db_url}
    cleanup = run_cli("maintenance", "cleanup", "--json", env=env)
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["action"] == "cleanup"
    stats = run_cli("maintenance", "stats", "--days", "3", "--json", env=env)
    assert len(json.loads(stats.stdout)["details"]["days"]) == 3
    assert run_cli("maintenance", "stats", "--days", "0", env=env).returncode == 2
    assert run_cli("maintenance", "optimize", env=env).returncode == 0
    health = run_cli("maintenance", "health", "--json", env=env)
    assert json.loads(health.stdout)["details"]["overall"] in ("ok", "warning", "critical")
    invalid = run_cli("maintenance", "invalidate", "--cache", "nope", env=env)
    assert invalid.returncode == 1 and "unknown cache name" in invalid.stderr
    refused = run_cli("maintenance", "emergency-clear", "--confirm", "yes", env=env)
    assert refused.returncode == 1 and "EMERGENCY_CLEAR_CONFIRMED" in refused.stderr
    cleared = run_cli("maintenance", "emergency-clear", "--confirm", "EMERGENCY_CLEAR_CONFIRMED", env=env)
    assert cleared.returncode == 0 and "deleted" in cleared.stdout
    status = run_cli("status", "--json", env=env)
    assert {"overview", "targets"} <= set(json.loads(status.stdout))
    both = run_cli("maintenance", "invalidate", "--cache", "expert_sessions", "--key", "k", env=env)
    assert both.returncode == 1 and "exactly one of cache or key" in both.stderr
    assert run_cli("maintenance", "prewarm", env=env).returncode == 2  # --cache is required: a usage error


@pytest.mark.parametrize("group_name", ["maintenance", "cache"])
def test_the_action_commands_are_the_registrys(group_name):
    """One command per registry action of the group, with the registry's parameters and summary
    (``cache list`` is the one read-only command of its own)."""
    from cachelib.actions import REGISTRY

    group = cli.commands[group_name]
    expected = {a.command: a for a in REGISTRY.values() if a.command and a.group == group_name}
    assert set(group.commands) - {"list"} == set(expected)
    for name, action in expected.items():
        command = group.commands[name]
        params = {p.name: p for p in command.params if p.name != "as_json"}
        assert set(params) == {p.name for p in action.parameters}, name
        for parameter in action.parameters:
            assert isinstance(params[parameter.name], click.Argument) == parameter.argument, parameter.name
            assert getattr(params[parameter.name], "multiple", False) == parameter.multiple, parameter.name
        assert command.help.startswith(action.summary)


def test_demo_load_fills_an_empty_database_once(pg18):
    url = pg18.empty_database("demo_load")
    env = {"DATABASE_URL": url}
    assert run_cli("migrate", env=env).returncode == 0
    loaded = run_cli("demo", "load", env=env)
    assert loaded.returncode == 0 and "40 experts" in loaded.stdout
    again = run_cli("demo", "load", env=env)
    assert "already hold data" in again.stdout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM public.expert_sessions").fetchone()[0] == 4000


def test_embedded_server_lifecycle(tmp_path):
    env = {"CACHELIB_DATA_DIR": str(tmp_path / "pg"), "DATABASE_URL": ""}
    started = run_cli("db", "start", env=env)
    assert started.returncode == 0, started.stderr
    try:
        url = started.stdout.strip().splitlines()[-1]
        assert run_cli("db", "status", env=env).stdout.strip().endswith("running")
        assert run_cli("db", "url", env=env).stdout.strip() == url
        psql = shutil.which("psql")
        if psql:
            answer = subprocess.run([psql, url, "-Atc", "SELECT 42"], capture_output=True, text=True)
            assert answer.stdout.strip() == "42"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        again = run_cli("db", "start", env=env)
        assert again.returncode == 0 and "already running" in again.stdout
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM kept").fetchone()[0] == 7
    finally:
        assert "stopped" in run_cli("db", "stop", env=env).stdout
    stopped = run_cli("db", "status", env=env)
    assert stopped.returncode == 3 and "stopped" in stopped.stdout


def test_an_unusable_data_directory_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("db", "start", env={"CACHELIB_DATA_DIR": str(blocker / "pg"), "DATABASE_URL": ""})
    assert result.returncode == 1 and "CACHELIB_DATA_DIR" in result.stderr and "Traceback" not in result.stderr


def test_status_prints_readable_tables_with_units(app_env, traffic):
    import re

    result = CliRunner().invoke(cli, ["status"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("expert_sessions", "product_performance", "all caches", "Sessions hit rate above",
                 "Analytics hit rate above", "Database load reduction at least"):
        assert name in out, name  # full names, never cut
    assert "..." not in out
    assert re.search(r"\b\d+\.\d%", out)  # rates in %
    assert re.search(r"\b\d+(\.\d)? (bytes|KB|MB)\b", out)  # sizes for people
    for milestone in ("Week 1", "Month 1"):
        assert re.search(rf"{milestone} targets, \d{{4}}-\d\d-\d\d \d\d:\d\d UTC to \d{{4}}-\d\d-\d\d \d\d:\d\d UTC",
                         out), milestone
    assert re.search(r"Last cleanup: (never|\d{4}-\d\d-\d\d \d\d:\d\d UTC)", out)


def test_status_json_keeps_its_shape(app_env, traffic):
    result = CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False)
    body = json.loads(result.output)
    assert set(body) == {"overview", "targets"}
    assert {"cache_name", "entries", "live_entries", "total_bytes", "hit_rate_today", "hit_rate_7d", "hit_rate_30d",
            "load_reduction_30d", "fallbacks_7d"} <= set(body["overview"][0])
    assert set(body["targets"][0]) == {"milestone", "target", "cache_name", "window_start", "window_end", "measured",
                                       "goal", "state", "met"}
    assert isinstance(body["overview"][0]["total_bytes"], int)  # numbers stay numbers, without units


def test_status_units():
    from cachelib.__main__ import _count, _percent, _size, _table

    assert _count(1234567) == "1,234,567" and _count(None) == "-"
    assert _percent(78.456) == "78.5%" and _percent(float("nan")) == "-"
    assert _size(512) == "512 bytes" and _size(12595) == "12.3 KB" and _size(5 * 1024**2) == "5.0 MB"
    assert _size(3 * 1024**3) == "3.0 GB"
    header, row = _table(["CACHE", "SIZE"], [["a_very_long_cache_name", "12.3 KB"]])
    assert row == "  a_very_long_cache_name  12.3 KB" and header == "  CACHE                      SIZE"
