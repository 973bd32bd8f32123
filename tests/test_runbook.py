"""docs/operations.md is runnable: every ```bash command runs, in order, against a test database.

Each line of a ```bash block must be a `python -m cachelib ...` command (optionally with
VAR=value in front); `python` becomes this interpreter, DATABASE_URL the module's demo
database, http://127.0.0.1:8000 a real API server (cachelib.api) and $API_KEY an admin key
of it. A trailing `# exits N` comment is the documented exit code; otherwise it is 0.
The curl, cron, credentials and partitioning examples outside ```bash are run too.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import bcrypt
import httpx
import psycopg
import pytest
import yaml

from cachelib.config import PROJECT_ROOT, Settings
from cachelib.db import Database
from tests.servers import api_in_thread

DOC = PROJECT_ROOT / "docs" / "operations.md"
DOC_API = "http://127.0.0.1:8000"
FENCE = re.compile(r"^\s*```(\w*)\s*$")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
EXITS = re.compile(r"^\s*exits\s+(\d+)\b")


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first body line, body lines) for every fenced block."""
    blocks, language, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if language is None and match:
            language, start, body = match.group(1) or "plain", number + 1, []
        elif language is not None and line.strip() == "```":
            blocks.append((language, start, body))
            language = None
        elif language is not None:
            body.append(line)
    assert language is None, "unclosed code block in docs/operations.md"
    return blocks


def logical_lines(start: int, body: list[str]) -> list[tuple[int, str]]:
    """Lines with backslash continuations joined, comments-only and empty lines dropped."""
    lines, pending, first = [], "", start
    for offset, raw in enumerate(body):
        text = raw.strip()
        if not pending:
            first = start + offset
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        text = pending + text
        pending = ""
        if text and not text.startswith("#"):
            lines.append((first, text))
    return lines


@dataclass
class DocCommand:
    lineno: int
    text: str
    words: list[str]
    env: dict[str, str] = field(default_factory=dict)
    expected: int = 0


def parse_command(lineno: int, text: str) -> DocCommand:
    command, _, comment = text.partition(" #")
    marker = EXITS.match(comment)
    words = shlex.split(command)
    env = {}
    while words and ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return DocCommand(lineno, text, words, env, int(marker.group(1)) if marker else 0)


def bash_commands() -> list[DocCommand]:
    commands = []
    for language, start, body in fenced_blocks(DOC.read_text(encoding="utf-8")):
        if language == "bash":
            commands += [parse_command(n, line) for n, line in logical_lines(start, body)]
    return commands


def substitute(word: str, variables: dict[str, str], api_base: str) -> str:
    word = word.replace(DOC_API, api_base)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables[m.group(1)], word)


# --- the doc's structure -----------------------------------------------------------------------


def test_every_bash_line_is_a_cachelib_command():
    commands = bash_commands()
    assert len(commands) >= 25
    wrong = [f"line {c.lineno}: {c.text}" for c in commands if c.words[:3] != ["python", "-m", "cachelib"]]
    assert not wrong, "move these to a ```text block or make them python -m cachelib commands:\n" + "\n".join(wrong)
    documented = {" ".join(c.words[3:5]) for c in commands}
    for needed in ("migrate", "verify --allow-writes", "schedule install", "schedule status", "candidates --limit",
                   "maintenance emergency-clear", "maintenance health", "maintenance cleanup"):
        assert any(d.startswith(needed) for d in documented), needed


def test_the_runbook_covers_what_operators_need():
    text = DOC.read_text(encoding="utf-8")
    for heading in ("## 1. Deploying onto an existing database", "### Daily", "### Weekly", "### Monthly",
                    "## 3. Emergency procedures", "### Turn caching off", "### What a fallback looks like",
                    "### Low hit rate", "### Many expired entries", "### Cache errors in the logs",
                    "### Dashboard not loading", "### Slow cache operations", "### Memory and storage usage",
                    "### Managed PostgreSQL", "### Behind a transaction pooler", "### Read replicas",
                    "### Dump and restore", "### Partitioning the statistics table",
                    "### Several dashboard and API replicas", "### Alerting"):
        assert heading in text, heading
    assert "Supabase" in text and "CACHE_ENABLED=false" in text and "DASHBOARD_COOKIE_KEY" in text
    # The fallback line quoted is the one the manager logs.
    manager = (PROJECT_ROOT / "cachelib" / "manager.py").read_text()
    assert "cache %s failed, serving the direct query instead: %s" in manager
    assert "WARNING cachelib.manager: cache expert_sessions failed, serving the direct query instead: " in text


def test_health_checks_named_in_the_runbook_exist(db_url):
    text = DOC.read_text(encoding="utf-8")
    with psycopg.connect(db_url) as conn:
        names = {r[0] for r in conn.execute("SELECT check_name FROM public.analyze_cache_health()")}
    for name in ("expired_entries", "last_cleanup", "cleanup_schedule", "fallbacks", "never_hit_before_expiry",
                 "invalidated_early", "largest_entries", "table_bloat", "size_bound", "hit_rate:expert_sessions",
                 "hit_rate:product_performance"):
        assert f"`{name}`" in text and name in names, name


# --- running it ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(db_url):
    """The real admin API over the runbook's database, and an admin key for it."""
    from cachelib import apikeys

    database = Database(db_url, Settings.from_env({}))
    key = apikeys.create_key("runbook-test", "admin", database)
    try:
        with api_in_thread(database) as base:
            yield base, key
    finally:
        database.close()


@pytest.fixture(scope="module")
def runbook_env(db_url, api, tmp_path_factory) -> dict[str, str]:
    from cachelib import auth

    auth_file = tmp_path_factory.mktemp("runbook") / "auth.yaml"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CACHE_", "DASHBOARD_"))}
    env.update(DATABASE_URL=db_url, DASHBOARD_AUTH_FILE=str(auth_file),
               DASHBOARD_COOKIE_KEY="runbook-test-cookie-key-0123456789", API_KEY=api[1])
    auth.ensure_credentials(Settings.from_env(env))
    return env


def test_every_bash_command_runs_with_its_documented_exit_code(runbook_env, api):
    api_base, _ = api
    mismatches, ran = [], 0
    for command in bash_commands():
        env = {**runbook_env, **command.env}
        argv = [sys.executable, *(substitute(w, env, api_base) for w in command.words[1:])]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT, timeout=180)
        ran += 1
        if result.returncode != command.expected:
            mismatches.append(f"line {command.lineno}: {command.text}\n  exit {result.returncode}, documented "
                              f"{command.expected}\n  stdout: {result.stdout[-600:]}\n  stderr: {result.stderr[-600:]}")
    assert ran >= 25
    assert not mismatches, "\n".join(mismatches)


def test_the_curl_emergency_clear_works_as_written(api):
    api_base, key = api
    blocks = fenced_blocks(DOC.read_text(encoding="utf-8"))
    curls = [line for language, start, body in blocks if language == "text"
             for _, line in logical_lines(start, body) if line.startswith("curl ")]
    assert len(curls) == 1
    words = shlex.split(curls[0])
    method = words[words.index("-X") + 1]
    header = words[words.index("-H") + 1].replace("Bearer KEY", f"Bearer {key}")
    url = next(w for w in words if w.startswith(DOC_API)).replace(DOC_API, api_base)
    assert "action=emergency_clear&confirm=EMERGENCY_CLEAR_CONFIRMED" in url
    name, _, value = header.partition(": ")
    response = httpx.request(method, url, headers={name: value}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["action"] == "emergency_clear" and "entries_deleted" in response.json()["details"]


def test_the_crontab_line_runs(runbook_env):
    blocks = fenced_blocks(DOC.read_text(encoding="utf-8"))
    lines = [line for language, start, body in blocks if language == "cron" for _, line in logical_lines(start, body)]
    assert lines
    for line in lines:
        assert re.match(r"^(\S+\s+){5}\s*cd ", line), line
        args = re.search(r"python -m cachelib (.+?)\s*>>", line).group(1).split()
        result = subprocess.run([sys.executable, "-m", "cachelib", *args], capture_output=True, text=True,
                                env=runbook_env, cwd=PROJECT_ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        assert '"action": "cleanup"' in result.stdout


def test_the_credentials_command_creates_a_private_file_and_no_demo_rows(db_url, tmp_path):
    blocks = fenced_blocks(DOC.read_text(encoding="utf-8"))
    line = next(line for language, start, body in blocks if language == "text"
                for _, line in logical_lines(start, body) if "python -m cachelib setup" in line)
    command = parse_command(0, line)
    assert command.words[:4] == ["python", "-m", "cachelib", "setup"]
    auth_file = tmp_path / "auth.yaml"
    env = {**os.environ, **command.env, "DASHBOARD_AUTH_FILE": str(auth_file), "DATABASE_URL": db_url}
    with psycopg.connect(db_url) as conn:
        sessions_before = conn.execute("SELECT count(*) FROM public.expert_sessions").fetchone()[0]
    result = subprocess.run([sys.executable, *command.words[1:]], capture_output=True, text=True, env=env,
                            cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "demo data: skipped" in result.stdout
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600
    users = yaml.safe_load(auth_file.read_text())["credentials"]["usernames"]
    assert bcrypt.checkpw(command.env["DASHBOARD_ADMIN_PASSWORD"].encode(), users["admin"]["password"].encode())
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.expert_sessions").fetchone()[0] == sessions_before


def partitioning_sql() -> str:
    blocks = fenced_blocks(DOC.read_text(encoding="utf-8"))
    return next("\n".join(body) for language, _, body in blocks
                if language == "sql" and "PARTITION BY" in "\n".join(body))


def edge_hours(now: datetime, retention_days: int) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """Hours a monthly partitioning gets wrong first: ({inside the kept window}, {outside it}), in UTC."""
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    month = hour.replace(day=1, hour=0)
    next_month = (month + timedelta(days=32)).replace(day=1)
    edge = (now.astimezone(UTC) - timedelta(days=retention_days)).replace(minute=0, second=0, microsecond=0)
    inside = {"the current hour": hour, "the last hour of last month": month - timedelta(hours=1),
              "the first hour of this month": month, "the last hour of this month": next_month - timedelta(hours=1),
              "the first hour of next month": next_month, "the retention edge": edge}
    # Rows the roll-up has not purged yet, and a clock moved forward (the demo and tests move it).
    outside = {"40 days before the retention edge": edge - timedelta(days=40),
               "a year ahead": (month + timedelta(days=366)).replace(day=1) + timedelta(hours=5)}
    return inside, outside


STATS_TOTALS = "SELECT count(*), COALESCE(sum(hits), 0) FROM cache_private.cache_stats_hourly"
PARENT = "'cache_private.cache_stats_hourly'::regclass"


@pytest.mark.parametrize("timezone", ["UTC", "Pacific/Kiritimati", "America/Adak"])
def test_the_partitioning_sql_keeps_every_row_in_its_utc_month(pg_url, timezone):
    with psycopg.connect(pg_url) as conn:  # run it, then roll it back
        conn.execute("SELECT set_config('TimeZone', %s, false)", [timezone])
        now, retention_days = conn.execute(
            "SELECT now(), value::int FROM cache_private.settings WHERE name = 'stats_retention_days'").fetchone()
        inside, outside = edge_hours(now, retention_days)
        for number, (cache, bucket) in enumerate(
                (cache, bucket) for bucket in (*inside.values(), *outside.values())
                for cache in ("expert_sessions", "product_performance")):
            conn.execute("""INSERT INTO cache_private.cache_stats_hourly (cache_name, bucket, hits, misses, fallbacks,
                              hit_ms_total, miss_ms_total, compute_ms_spent, compute_ms_saved)
                            VALUES (%s, %s, %s, 2, 1, 3.5, 7.25, 40, 90) ON CONFLICT DO NOTHING""",
                         [cache, bucket, 1000 + number])
        before = conn.execute(STATS_TOTALS).fetchone()

        conn.execute(partitioning_sql())

        assert conn.execute(f"SELECT relkind FROM pg_class WHERE oid = {PARENT}").fetchone()[0] == "p"
        assert conn.execute(STATS_TOTALS).fetchone() == before, "rows were lost or doubled"
        default = conn.execute(f"SELECT partdefid FROM pg_partitioned_table WHERE partrelid = {PARENT}").fetchone()[0]
        assert default, "no DEFAULT partition"
        placed = dict(conn.execute(
            "SELECT bucket, tableoid FROM cache_private.cache_stats_hourly WHERE bucket = ANY (%s)",
            [list(inside.values()) + list(outside.values())]).fetchall())
        in_default = [name for name, bucket in inside.items() if placed[bucket] == default]
        assert not in_default, f"in the DEFAULT partition: {in_default}"
        # A partition bounded by local instead of UTC midnight mixes two UTC months at the boundary.
        mixed = conn.execute("""SELECT tableoid::regclass::text FROM cache_private.cache_stats_hourly
                                WHERE tableoid <> %s GROUP BY tableoid
                                HAVING count(DISTINCT date_trunc('month', bucket, 'UTC')) > 1""", [default]).fetchall()
        assert not mixed, f"partitions holding more than one UTC month: {mixed}"

        assert conn.execute(f"SELECT relrowsecurity FROM pg_class WHERE oid = {PARENT}").fetchone()[0]
        exposed = conn.execute(f"""
            SELECT r.rolname, t.relid::regclass::text FROM pg_partition_tree({PARENT}) t,
                   pg_roles r WHERE r.rolname IN ('anon', 'authenticated', 'service_role', 'cache_admin')
              AND has_table_privilege(r.oid, t.relid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE')""").fetchall()
        assert not exposed, f"granted: {exposed}"
        definitions = [row[0] for row in conn.execute(
            f"SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = {PARENT}")]
        assert any(d.endswith("(cache_name, bucket)") for d in definitions), definitions
        assert any(d.endswith("(bucket)") for d in definitions), definitions
        assert conn.execute(f"SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = {PARENT} "
                            "AND contype = 'p'").fetchone()[0] == "PRIMARY KEY (cache_name, bucket)"

        # The roll-up still writes into it.
        hits = "SELECT hits FROM cache_private.cache_stats_hourly WHERE cache_name = 'expert_sessions' AND bucket = %s"
        current = conn.execute(hits, [inside["the current hour"]]).fetchone()[0]
        conn.execute("INSERT INTO cache_private.cache_events (event_at, cache_name, kind) "
                     "VALUES (now(), 'expert_sessions', 'hit')")
        conn.execute("SELECT cache_private.rollup_stats()")
        assert conn.execute(hits, [inside["the current hour"]]).fetchone()[0] == current + 1
        conn.rollback()
