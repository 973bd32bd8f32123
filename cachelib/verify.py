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
"""

from __future__ import annotations

import json
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import psycopg

from cachelib import catalog, migrate, schedule
from cachelib.config import PROJECT_ROOT, SETTINGS, Settings
from cachelib.db import Database, connect, describe_url
from cachelib.errors import CacheError
from cachelib.manager import calls

Status = Literal["pass", "fail", "skipped"]
GROUPS = ("environment", "database", "operations", "api", "dashboard")
READ_ONLY_REASON = "read-only: pass --allow-writes"

# The guide's Step 1 query, verbatim.
GUIDE_ROUTINES_SQL = ("SELECT routine_name, routine_type FROM information_schema.routines "
                      "WHERE routine_schema = 'public' AND routine_name LIKE '%cache%' ORDER BY routine_name")

# Public functions and their argument types (0003-0008). Read functions are granted to
# authenticated, cache_admin and service_role; admin functions to cache_admin and service_role.
READ_FUNCTIONS = {
    "get_expert_sessions_with_stats": "bigint",
    "get_product_performance": "bigint",
    "get_expert_sessions_with_stats_cached": "bigint, interval",
    "get_product_performance_cached": "bigint, interval",
    "analyze_cache_health": "",
    "get_cache_cleanup_stats": "integer",
    "get_cache_metrics_overview": "",
    "get_top_cache_entries": "integer, text, text, text",
    "get_cache_hit_rate_series": "integer, text, text",
    "get_cache_load_reduction_series": "integer, text",
    "get_cache_size_distribution": "",
    "record_cache_fallback": "text, text",
    "get_cache_fallback_usage": "integer",
}
ADMIN_FUNCTIONS = {
    "cleanup_expired_cache": "",
    "optimize_cache": "",
    "invalidate_cache": "text, text",
    "emergency_clear_cache": "text",
}
ALL_FUNCTIONS = {**READ_FUNCTIONS, **ADMIN_FUNCTIONS}
# The 15 the guide's Step 1 lists on a default install (the direct twins do not contain "cache");
# every cache registered since adds its wrapper <function>_cached.
EXPECTED_CACHE_ROUTINES = sorted(name for name in ALL_FUNCTIONS if "cache" in name)


def registered_wrappers(conn) -> dict[str, str]:
    """name -> signature of the wrappers of caches registered after install (public schema)."""
    return {cache.wrapper_name.split(".", 1)[1]: cache.wrapper for cache in catalog.read(conn)
            if cache.callable and not cache.builtin and cache.wrapper_name.startswith("public.")}

DURATION_SETTINGS = ("CACHE_EXPERT_SESSIONS_DURATION", "CACHE_ANALYTICS_DURATION", "CACHE_DEFAULT_DURATION")
CACHE_TABLES = ("query_cache", "cache_cleanup_log")
# yoyo's bookkeeping lives in public too; on Supabase public tables are exposed to anon by default.
MIGRATION_TABLES = ("_cachelib_migrations", "_yoyo_log", "_yoyo_version", "yoyo_lock")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
ROLES = ("anon", "authenticated", "cache_admin", "service_role")


@dataclass
class Check:
    name: str
    group: str
    status: Status
    detail: str = ""
    fix: str | None = None
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == "fail" and self.required

    def line(self) -> str:
        """One line: the mark, group and name, what was found, and the fix for a failure."""
        if self.status == "pass":
            return f"✓ {self.group}: {self.name} — {self.detail}"
        if self.status == "skipped":
            text = f"– {self.group}: {self.name} — skipped: {self.detail}"
            return text + (f" (instead: {self.fix})" if self.fix else "")
        optional = "" if self.required else " (not required)"
        return f"✗ {self.group}: {self.name}{optional} — {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict:
        return asdict(self)


def all_required_pass(checks: Iterable[Check]) -> bool:
    return not any(check.failed for check in checks)


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ("pass", "fail", "skipped")}
    required = sum(c.failed for c in checks)
    verdict = "all required checks pass" if required == 0 else f"{required} required check(s) failed"
    return (f"verify: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped — {verdict}")


class _Run:
    """Collects checks; a check that raises becomes a failure naming the error, never a traceback."""

    def __init__(self):
        self.checks: list[Check] = []

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def guarded(self, group: str, name: str, func: Callable[[], Check | list[Check]], *, required: bool = True,
                fix: str | None = None) -> None:
        try:
            result = func()
        except (psycopg.Error, CacheError, OSError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.add(Check(name, group, "fail", f"{type(exc).__name__}: {text}", fix, required))
            return
        for check in result if isinstance(result, list) else [result]:
            self.add(check)


# --- entry point ---------------------------------------------------------------------


def run_checks(url: str, *, allow_writes: bool = False, api_url: str | None = None, api_key: str | None = None,
               dashboard_url: str | None = None, config: Settings | None = None) -> list[Check]:
    """Run every check; see the module docstring for what may be written."""
    run = _Run()
    config = _environment_checks(run, config)
    conn = _connect_check(run, url, config)
    if conn is None:
        for group, name in (("database", "migrations"), ("database", "cache functions"),
                            ("database", "invalidation triggers"), ("database", "row-level security"),
                            ("database", "grants"), ("database", "search_path pinned"),
                            ("operations", "cached calls"), ("operations", "health analysis"),
                            ("operations", "cleanup"), ("operations", "scheduled cleanup")):
            run.add(Check(name, group, "skipped", "no usable database connection (see above)"))
    else:
        with conn:
            _database_checks(run, conn, url, config)
            _operations_checks(run, conn, url, config, allow_writes)
    _api_checks(run, api_url, api_key)
    _dashboard_checks(run, dashboard_url)
    return run.checks


# --- environment -----------------------------------------------------------------------


def _environment_checks(run: _Run, config: Settings | None) -> Settings:
    group = "environment"
    if config is None:
        try:
            config = Settings.from_env()
        except CacheError as exc:
            run.add(Check("settings parse", group, "fail", str(exc), "correct the variable named above; "
                          "python -m cachelib config lists every setting and its accepted values"))
            config = Settings.from_env({})
            run.add(Check("durations in effect", group, "skipped", "the settings did not parse; defaults used"))
            _credential_checks(run, config)
            return config
    set_here = sorted(name for name, source in config.sources.items() if source == "environment")
    run.add(Check("settings parse", group, "pass",
                  f"{len(SETTINGS)} settings valid ({len(set_here)} from the environment"
                  + (f": {', '.join(set_here)}" if set_here else "") + ")"))
    # Which cache each setting feeds is the catalog's business (database: cache catalog).
    run.add(Check("durations in effect", group, "pass", ", ".join(
        f"{setting} {config.duration_from(setting)} ({config.sources.get(setting, 'default')})"
        for setting in DURATION_SETTINGS)))
    if config.cache_enabled:
        run.add(Check("caching enabled", group, "pass", "CACHE_ENABLED=true"))
    else:
        run.add(Check("caching enabled", group, "fail",
                      "CACHE_ENABLED=false: every call goes straight to the direct query (the kill switch is on)",
                      "unset CACHE_ENABLED (or set it to true) and restart the application when the incident is over",
                      required=False))
    _credential_checks(run, config)
    return config


def _credential_checks(run: _Run, config: Settings) -> None:
    group = "environment"
    path = Path(config.auth_file)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        run.add(Check("credentials file", group, "fail", f"{path} does not exist (DASHBOARD_AUTH_FILE)",
                      "python -m cachelib setup creates it and prints the passwords once (or start the dashboard)"))
    except OSError as exc:
        run.add(Check("credentials file", group, "fail", f"cannot read {path}: {exc.strerror}",
                      f"make {path} readable by the user that runs the dashboard"))
    else:
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            run.add(Check("credentials file", group, "fail",
                          f"{path} is accessible by other users (mode {stat.filemode(mode)})", f"chmod 600 {path}"))
        else:
            run.add(Check("credentials file", group, "pass", f"{path} (mode {stat.filemode(mode)})"))
    run.add(_cookie_key_check(config))


def _cookie_key_check(config: Settings) -> Check:
    group, name = "environment", "cookie key"
    if config.cookie_key:
        if len(config.cookie_key) < 16:
            return Check(name, group, "fail", "DASHBOARD_COOKIE_KEY is shorter than 16 characters",
                         "set DASHBOARD_COOKIE_KEY to a long random value, e.g. python -c "
                         "'import secrets; print(secrets.token_urlsafe(32))'")
        return Check(name, group, "pass", "from DASHBOARD_COOKIE_KEY")
    secrets_file = PROJECT_ROOT / ".streamlit" / "secrets.toml"
    try:
        if tomllib.loads(secrets_file.read_text(encoding="utf-8")).get("cookie_key"):
            return Check(name, group, "pass", f"cookie_key in {secrets_file}")
    except (OSError, tomllib.TOMLDecodeError):
        pass
    path = Path(config.auth_file).parent / "cookie_key"
    try:
        mode = path.stat().st_mode
        present = bool(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return Check(name, group, "fail", f"no DASHBOARD_COOKIE_KEY and no key file {path}",
                     "start the dashboard once (it creates the file), or set DASHBOARD_COOKIE_KEY "
                     "(the same value on every dashboard replica)")
    except OSError as exc:
        return Check(name, group, "fail", f"cannot read {path}: {exc.strerror}",
                     f"make {path} readable by the dashboard's user only (chmod 600 {path})")
    if not present:
        return Check(name, group, "fail", f"{path} is empty", f"delete {path} and start the dashboard again")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Check(name, group, "fail", f"{path} is accessible by other users (mode {stat.filemode(mode)})",
                     f"chmod 600 {path}")
    return Check(name, group, "pass", f"{path} (mode {stat.filemode(mode)})")


# --- database --------------------------------------------------------------------------


def _connect_check(run: _Run, url: str, config: Settings) -> psycopg.Connection | None:
    group = "database"
    try:
        conn = connect(url, config=config)
    except CacheError as exc:
        run.add(Check("database connection", group, "fail", str(exc),
                      "check DATABASE_URL, that the server runs and accepts connections from here"))
        return None
    try:
        version, user, owner, superuser = conn.execute(
            """SELECT current_setting('server_version_num')::int, current_user,
                      (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass('public.query_cache')),
                      (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)""").fetchone()
    except psycopg.Error as exc:
        conn.close()
        run.add(Check("database connection", group, "fail", f"connected, but: {str(exc).strip().splitlines()[0]}",
                      "connect as the database owner"))
        return None
    where = describe_url(url)
    if version < 150000:
        run.add(Check("database connection", group, "fail", f"{where}: PostgreSQL {version // 10000} is too old",
                      "use PostgreSQL 15 or later"))
        conn.close()
        return None
    role_note = ("" if owner in (None, user) or superuser
                 else f"; NOTE: connected as {user}, the cache's owner is {owner}")
    run.add(Check("database connection", group, "pass", f"{where}: PostgreSQL {version // 10000}, as {user}"
                  + role_note))
    return conn


def _database_checks(run: _Run, conn, url: str, config: Settings) -> None:
    group = "database"
    run.guarded(group, "migrations", lambda: _migrations_check(conn, url))
    run.guarded(group, "cache functions", lambda: _routines_check(conn))
    run.guarded(group, "cache catalog", lambda: _catalog_check(conn))
    run.guarded(group, "invalidation triggers", lambda: _triggers_check(conn))
    run.guarded(group, "row-level security", lambda: _rls_check(conn))
    run.guarded(group, "grants", lambda: _grants_checks(conn))
    run.guarded(group, "search_path pinned", lambda: _search_path_check(conn))


def _migrations_check(conn, url: str) -> Check:
    name, group = "migrations", "database"
    files = sorted(p.stem for p in migrate.MIGRATIONS_DIR.glob("*.sql"))
    table = conn.execute("SELECT to_regclass(%s)", (f"public.{migrate.MIGRATION_TABLE}",)).fetchone()[0]
    if table is None:
        return Check(name, group, "fail", f"no migration has been applied (no table {migrate.MIGRATION_TABLE})",
                     "python -m cachelib migrate")
    waiting = migrate.pending(url)
    if waiting:
        return Check(name, group, "fail", f"{len(waiting)} pending: {', '.join(waiting)}",
                     "python -m cachelib migrate")
    applied = {r[0] for r in conn.execute(f"SELECT migration_id FROM public.{migrate.MIGRATION_TABLE}")}
    unknown = sorted(applied - set(files))
    if unknown:
        return Check(name, group, "fail", f"the database has migrations this code does not know: {', '.join(unknown)}",
                     "deploy the code version that applied them")
    return Check(name, group, "pass", f"all {len(files)} applied, none pending (last: {files[-1]})")


def _defined_in(function: str) -> str:
    pattern = re.compile(rf"CREATE (OR REPLACE )?FUNCTION public\.{re.escape(function)}\s*\(", re.I)
    for path in sorted(migrate.MIGRATIONS_DIR.glob("*.sql")):
        if pattern.search(path.read_text(encoding="utf-8")):
            return f"sql/migrations/{path.name}"
    return "sql/migrations"


def _routines_check(conn) -> Check:
    name, group = "cache functions", "database"
    rows = conn.execute(GUIDE_ROUTINES_SQL).fetchall()
    found = [r[0] for r in rows]
    registered = registered_wrappers(conn)
    expected = sorted([*EXPECTED_CACHE_ROUTINES, *registered])
    missing = [f for f in expected if f not in found]
    extra = sorted({f for f in found if f not in expected} | {f for f in found if found.count(f) > 1})
    not_functions = [r[0] for r in rows if r[1] != "FUNCTION"]
    problems, fixes = [], []
    for function in missing:
        problems.append(f"{function}() is missing")
        if function in registered:
            fixes.append(f"SELECT cache_private.write_wrapper(cache_name) FROM cache_private.caches "
                         f"WHERE wrapper_signature = '{registered[function]}';")
        else:
            fixes.append(f"re-create public.{function} from {_defined_in(function)} and its GRANT from "
                         "sql/migrations/0009_security.sql")
    if extra:
        problems.append(f"unexpected: {', '.join(extra)}")
        fixes.append("drop them, or register the function they cache: python -m cachelib cache add FUNCTION "
                     "--source TABLE[:COLUMN]")
    if not_functions:
        problems.append(f"not functions: {', '.join(not_functions)}")
    also = f" (the guide's {len(EXPECTED_CACHE_ROUTINES)} and {len(registered)} registered)" if registered else ""
    if problems:
        return Check(name, group, "fail", f"the guide's Step 1 query lists {len(rows)} routines, expected "
                     f"{len(expected)}{also}: " + "; ".join(problems), "; ".join(fixes) or None)
    return Check(name, group, "pass",
                 f"the guide's Step 1 query lists exactly {len(rows)} functions{also}, as expected")


def _catalog_check(conn) -> Check:
    """Every registered cache's function and generated wrapper exist (a dropped function is not noticed
    by PostgreSQL: the wrapper calls it by name)."""
    name, group = "cache catalog", "database"
    caches = catalog.read(conn)
    problems, fixes = [], []
    for cache in caches:
        if cache.function is None:
            continue  # wired by hand: the other checks look at it
        exists = conn.execute("SELECT to_regprocedure(%s) IS NOT NULL, to_regprocedure(%s) IS NOT NULL",
                              (cache.function, cache.wrapper)).fetchone()
        if not exists[0]:
            problems.append(f"cache {cache.name}: its function {cache.function} does not exist")
            fixes.append(f"re-create {cache.function}, or: python -m cachelib cache remove {cache.name}")
        elif not exists[1]:
            problems.append(f"cache {cache.name}: its wrapper {cache.wrapper or '(none)'} does not exist")
            fixes.append(f"SELECT cache_private.write_wrapper({_literal(cache.name)});")
    if problems:
        return Check(name, group, "fail", "; ".join(problems), " ".join(fixes))
    return Check(name, group, "pass", f"{len(caches)} caches: " + ", ".join(
        f"{c.name} ({c.wrapper_name or 'wired by hand'})" for c in caches))


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _triggers_check(conn) -> Check:
    """Every source of every cache in the catalog has its invalidation triggers, enabled."""
    name, group = "invalidation triggers", "database"
    problems, fixes, good, tables = [], [], 0, []
    for cache in catalog.read(conn):
        for source in cache.sources:
            table, column = source["table"], source.get("column")
            repair = (f"SELECT cache_private.attach_source({_literal(cache.name)}, {_literal(table)}, "
                      f"{_literal(column) if column else 'NULL'});")
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
                problems.append(f"source table {table} of cache {cache.name} does not exist")
                fixes.append("restore the table, or: python -m cachelib cache remove " + cache.name)
                continue
            tables.append(table)
            present = dict(conn.execute(
                """SELECT tgname, tgenabled FROM pg_trigger
                   WHERE tgrelid = %s::regclass AND NOT tgisinternal""", (table,)).fetchall())
            for suffix in ("ins", "upd", "del", "truncate") if column else ("ins", "truncate"):
                trigger = f"invalidate_{cache.name}_{suffix}"
                enabled = present.get(trigger)
                if enabled is None:
                    problems.append(f"{trigger} is missing on {table}")
                    fixes.append(repair)
                elif enabled in ("D", "R"):
                    problems.append(f"{trigger} is disabled on {table}" if enabled == "D"
                                    else f"{trigger} on {table} fires only on replicas (ENABLE REPLICA)")
                    fixes.append(f"ALTER TABLE {table} ENABLE TRIGGER {trigger};")
                else:
                    good += 1
    if problems:
        return Check(name, group, "fail", "; ".join(problems) + " — writes there leave stale cache entries",
                     " ".join(dict.fromkeys(fixes)))
    return Check(name, group, "pass", f"{good} triggers present and enabled on {', '.join(sorted(set(tables)))}")


def _rls_check(conn) -> Check:
    name, group = "row-level security", "database"
    rows = conn.execute(
        """SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relrowsecurity
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND c.relispartition IS NOT TRUE
             AND ((n.nspname = 'public' AND c.relname = ANY (%s)) OR n.nspname = 'cache_private')
           ORDER BY 1""", (list(CACHE_TABLES),)).fetchall()
    names = {r[0] for r in rows}
    missing_tables = [f"public.{t}" for t in CACHE_TABLES if f"public.{t}" not in names]
    off = [r[0] for r in rows if not r[1]]
    if missing_tables:
        return Check(name, group, "fail", f"tables missing: {', '.join(missing_tables)}", "python -m cachelib migrate")
    if off:
        return Check(name, group, "fail", f"RLS is disabled on {', '.join(off)}",
                     " ".join(f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;" for t in off))
    return Check(name, group, "pass", f"enabled on all {len(rows)} tables (query_cache, cache_cleanup_log, "
                 f"{len(rows) - 2} in cache_private)")


def _function_oids(conn) -> dict[str, tuple[int, str]]:
    """name -> (oid, public.name(argtypes)) for the public functions that exist."""
    found = {}
    signatures = {**{function: f"public.{function}({args})" for function, args in ALL_FUNCTIONS.items()},
                  **registered_wrappers(conn)}
    for function, signature in signatures.items():
        oid = conn.execute("SELECT to_regprocedure(%s)::oid", (signature,)).fetchone()[0]
        if oid is not None:
            found[function] = (oid, signature)
    return found


def _grants_checks(conn) -> list[Check]:
    group = "database"
    functions = _function_oids(conn)
    existing_roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY (%s)",
                                                 (list(ROLES),))}
    checks = []
    for role in ROLES:
        name = f"grants: {role}"
        if role not in existing_roles:
            checks.append(Check(name, group, "fail", f"role {role} does not exist",
                                f"CREATE ROLE {role} NOLOGIN; then re-run the grants of "
                                "sql/migrations/0009_security.sql"))
            continue
        # A registered cache's wrapper is a read function like the guide's cached functions.
        readable = set(READ_FUNCTIONS) | (set(functions) - set(ALL_FUNCTIONS))
        allowed = readable | set(ADMIN_FUNCTIONS) if role in ("cache_admin", "service_role") else (
            readable if role == "authenticated" else set())
        problems, fixes = [], []
        for function, (oid, signature) in functions.items():
            has = conn.execute("SELECT has_function_privilege(%s, %s::oid, 'EXECUTE')", (role, oid)).fetchone()[0]
            if has and function not in allowed:
                kind = "an admin function" if function in ADMIN_FUNCTIONS else "documented as not granted to it"
                problems.append(f"{role} can EXECUTE {signature} ({kind})")
                fixes.append(f"REVOKE EXECUTE ON FUNCTION {signature} FROM PUBLIC, {role};")
            elif not has and function in allowed:
                kind = "a maintenance function" if function in ADMIN_FUNCTIONS else "a read function"
                problems.append(f"{role} cannot EXECUTE {signature} ({kind}, documented as granted to {role})")
                fixes.append(f"GRANT EXECUTE ON FUNCTION {signature} TO {role};")
        if conn.execute("SELECT has_schema_privilege(%s, 'cache_private', 'USAGE')", (role,)).fetchone()[0]:
            problems.append(f"{role} may use schema cache_private")
            fixes.append(f"REVOKE ALL ON SCHEMA cache_private FROM PUBLIC, {role};")
        for table in CACHE_TABLES + MIGRATION_TABLES:
            if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0] is None:
                continue
            may = {p for p in TABLE_PRIVILEGES if conn.execute(
                "SELECT has_table_privilege(%s, %s, %s)", (role, f"public.{table}", p)).fetchone()[0]}
            expected = {"SELECT"} if role == "cache_admin" and table in CACHE_TABLES else set()
            if may - expected:
                problems.append(f"{role} has {', '.join(sorted(may - expected))} on public.{table}")
                fixes.append(f"REVOKE {', '.join(sorted(may - expected))} ON public.{table} FROM PUBLIC, {role};")
            if expected - may:
                problems.append(f"{role} cannot SELECT public.{table}")
                fixes.append(f"GRANT SELECT ON public.{table} TO {role};")
        if problems:
            checks.append(Check(name, group, "fail", "; ".join(problems), " ".join(fixes)))
        else:
            what = {"anon": "no function, table or schema rights",
                    "authenticated": f"EXECUTE on the {len(readable)} read functions only",
                    "cache_admin": f"EXECUTE on all {len(functions)} functions, SELECT on the cache tables",
                    "service_role": f"EXECUTE on all {len(functions)} functions, no table rights"}[role]
            checks.append(Check(name, group, "pass", f"as documented: {what}"))
    return checks


SAFE_SEARCH_PATH = "pg_catalog, pg_temp"


def _search_path_check(conn) -> Check:
    """SECURITY DEFINER functions must pin pg_catalog first and pg_temp last: with any other path
    (an empty one included) PostgreSQL searches the caller's pg_temp first for types and tables."""
    name, group = "search_path pinned", "database"
    rows = conn.execute(
        """SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)),
                  (SELECT substr(c, length('search_path=') + 1) FROM unnest(COALESCE(p.proconfig, '{}')) c
                   WHERE c LIKE 'search_path=%' LIMIT 1)
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
           WHERE p.prosecdef AND n.nspname IN ('public', 'cache_private')
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                             AND d.objid = p.oid AND d.deptype = 'e')
           ORDER BY 1""").fetchall()
    unpinned = [function for function, path in rows if path is None]
    unsafe = [function for function, path in rows if path is not None and path != SAFE_SEARCH_PATH]
    if unpinned or unsafe:
        problems = []
        if unpinned:
            problems.append(f"SECURITY DEFINER without a pinned search_path: {', '.join(unpinned)}")
        if unsafe:
            problems.append(f"search_path other than {SAFE_SEARCH_PATH} (the caller's temporary types would "
                            f"come first): {', '.join(unsafe)}")
        return Check(name, group, "fail", "; ".join(problems),
                     " ".join(f"ALTER FUNCTION {f} SET search_path = {SAFE_SEARCH_PATH};" for f in unpinned + unsafe))
    return Check(name, group, "pass", f"all {len(rows)} SECURITY DEFINER functions in public and cache_private "
                                      f"pin {SAFE_SEARCH_PATH}")


# --- operations ------------------------------------------------------------------------


@contextmanager
def _rolled_back(conn) -> Iterator[None]:
    """A transaction of its own (``conn`` is in autocommit) that is always rolled back: what the
    block writes is gone afterwards, and the block still sees its own writes."""
    with conn.transaction():
        yield
        raise psycopg.Rollback()


def _operations_checks(run: _Run, conn, url: str, config: Settings, allow_writes: bool) -> None:
    group = "operations"
    # The cached calls and the health analysis each run in a transaction that is rolled back: their
    # entries, hit/miss events and the roll-up into the hourly statistics leave no trace (verify must
    # not change what it measures).
    try:
        caches = [cache for cache in catalog.read(conn) if cache.callable]
    except psycopg.Error as exc:
        run.add(Check("cached calls", group, "fail", f"the cache catalog cannot be read: {exc}".strip(),
                      "python -m cachelib migrate"))
        caches = []
    for cache in caches:
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


# --- HTTP API and dashboard --------------------------------------------------------------

API_ROUTES = ("/api/admin/cache/metrics", "/api/admin/cache/maintenance")


def _api_checks(run: _Run, api_url: str | None, api_key: str | None) -> None:
    group = "api"
    if not api_url:
        run.add(Check("admin API", group, "skipped", "pass --api URL --api-key KEY to check it", required=False))
        return
    if not api_key:
        run.add(Check("admin API", group, "fail", "--api given without --api-key",
                      "python -m cachelib api-key create --name verify --role viewer, then pass --api-key"))
        return
    import httpx

    base = api_url.rstrip("/")
    with httpx.Client(timeout=10.0, follow_redirects=False) as client:
        for route in API_ROUTES:
            for with_key, expected in ((True, 200), (False, 401)):
                name = f"GET {route} {'with' if with_key else 'without'} key"
                headers = {"Authorization": f"Bearer {api_key}"} if with_key else {}
                try:
                    response = client.get(base + route, headers=headers)
                except httpx.HTTPError as exc:
                    run.add(Check(name, group, "fail", f"cannot reach {base}: {type(exc).__name__}: {exc}",
                                  "start the API: python -m cachelib api --host 127.0.0.1 --port 8000"))
                    continue
                if response.status_code == expected:
                    run.add(Check(name, group, "pass", f"{response.status_code} as expected"))
                    continue
                fix = ("check the key (python -m cachelib api-key list); a revoked key answers 401" if with_key
                       else "the route must refuse requests without a key: this is not pgcache-admin's API "
                       "or it sits behind a proxy that adds credentials")
                run.add(Check(name, group, "fail", f"answered {response.status_code}, expected {expected}", fix))


def _dashboard_checks(run: _Run, dashboard_url: str | None) -> None:
    group = "dashboard"
    if not dashboard_url:
        run.add(Check("dashboard", group, "skipped", "pass --dashboard URL to check it", required=False))
        return
    import httpx

    base = dashboard_url.rstrip("/")
    start = "python -m cachelib serve --port 8501 (or make run)"
    with httpx.Client(timeout=10.0, follow_redirects=True) as client:
        try:
            page = client.get(base + "/")
        except httpx.HTTPError as exc:
            run.add(Check("dashboard page", group, "fail", f"cannot reach {base}: {type(exc).__name__}: {exc}",
                          f"start it: {start}"))
            return
        if page.status_code != 200 or "streamlit" not in page.text.lower():
            run.add(Check("dashboard page", group, "fail",
                          f"{base}/ answered {page.status_code} and is "
                          f"{'a Streamlit page' if 'streamlit' in page.text.lower() else 'not a Streamlit page'}",
                          f"point --dashboard at the dashboard's address; start it: {start}"))
        else:
            run.add(Check("dashboard page", group, "pass", f"{base}/ answers 200 with the Streamlit app"))
        try:
            health = client.get(base + "/_stcore/health")
            healthy = health.status_code == 200 and health.text.strip() == "ok"
        except httpx.HTTPError:
            healthy = False
        if healthy:
            # Streamlit renders the login form in the browser over a websocket; plain HTTP cannot see it.
            run.add(Check("dashboard health", group, "pass", "/_stcore/health answers ok (the login form itself is "
                          "rendered client-side: check it in a browser)"))
        else:
            run.add(Check("dashboard health", group, "fail", f"{base}/_stcore/health did not answer ok",
                          "see the dashboard's log; a proxy must pass /_stcore/ and websockets through"))

