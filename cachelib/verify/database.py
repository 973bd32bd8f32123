"""Checks of the database: migrations, the public functions (the guide's Step 1), the catalog of caches,
invalidation triggers, row-level security, grants and pinned search paths."""

from __future__ import annotations

import re

import psycopg

from cachelib import catalog, fasthits, migrate
from cachelib.config import Settings
from cachelib.db import connect, describe_url
from cachelib.errors import CacheError
from cachelib.verify.checks import Check, Run

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


def registered_wrappers(caches: list[catalog.Cache]) -> dict[str, str]:
    """name -> signature of the wrappers of caches registered after install (public schema)."""
    return {cache.wrapper_name.split(".", 1)[1]: cache.wrapper for cache in caches
            if cache.callable and not cache.builtin and cache.wrapper_name.startswith("public.")}

CACHE_TABLES = ("query_cache", "cache_cleanup_log")
# yoyo's bookkeeping lives in public too; on Supabase public tables are exposed to anon by default.
MIGRATION_TABLES = ("_cachelib_migrations", "_yoyo_log", "_yoyo_version", "yoyo_lock")
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
ROLES = ("anon", "authenticated", "cache_admin", "service_role")


def connect_check(run: Run, url: str, config: Settings) -> psycopg.Connection | None:
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


def database_checks(run: Run, conn, url: str, config: Settings) -> list[catalog.Cache]:
    """The database's checks; returns the catalog of caches (read once, for these and the operations)."""
    group = "database"
    run.guarded(group, "migrations", lambda: _migrations_check(conn, url))
    try:
        caches, unreadable = catalog.read(conn), None
    except psycopg.Error as exc:
        caches, unreadable = [], exc
    run.guarded(group, "cache functions", lambda: _routines_check(conn, caches))
    if unreadable is None:
        run.guarded(group, "cache catalog", lambda: catalog_check(conn, caches))
    else:
        reason = str(unreadable).strip().splitlines()[0] if str(unreadable).strip() else type(unreadable).__name__
        run.add(Check("cache catalog", group, "fail", f"the cache catalog cannot be read: {reason}",
                      "python -m cachelib migrate"))
    run.guarded(group, "invalidation triggers", lambda: _triggers_check(conn, caches))
    run.guarded(group, "row-level security", lambda: _rls_check(conn))
    run.guarded(group, "grants", lambda: _grants_checks(conn, caches))
    run.guarded(group, "search_path pinned", lambda: _search_path_check(conn))
    run.guarded(group, "C hit path", lambda: _fast_hits_check(conn))
    return caches


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


def _routines_check(conn, caches: list[catalog.Cache]) -> Check:
    name, group = "cache functions", "database"
    rows = conn.execute(GUIDE_ROUTINES_SQL).fetchall()
    found = [r[0] for r in rows]
    registered = registered_wrappers(caches)
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


def catalog_check(conn, caches: list[catalog.Cache]) -> Check:
    """Every registered cache's function and generated wrapper exist (a dropped function is not noticed
    by PostgreSQL: the wrapper calls it by name)."""
    name, group = "cache catalog", "database"
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


def _triggers_check(conn, caches: list[catalog.Cache]) -> Check:
    """Every source of every cache in the catalog has its invalidation triggers, enabled."""
    name, group = "invalidation triggers", "database"
    problems, fixes, good, tables = [], [], 0, []
    for cache in caches:
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


def _function_oids(conn, caches: list[catalog.Cache]) -> dict[str, tuple[int, str]]:
    """name -> (oid, public.name(argtypes)) for the public functions that exist."""
    found = {}
    signatures = {**{function: f"public.{function}({args})" for function, args in ALL_FUNCTIONS.items()},
                  **registered_wrappers(caches)}
    for function, signature in signatures.items():
        oid = conn.execute("SELECT to_regprocedure(%s)::oid", (signature,)).fetchone()[0]
        if oid is not None:
            found[function] = (oid, signature)
    return found


def _grants_checks(conn, caches: list[catalog.Cache]) -> list[Check]:
    group = "database"
    functions = _function_oids(conn, caches)
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


def _fast_hits_check(conn) -> Check:
    """The optional C hit path: optional, so only a disagreement between it and the wrappers fails."""
    name, group = "C hit path", "database"
    current = fasthits.status_of(conn)
    problem = fasthits.mismatch(current)
    if problem:
        fix = "python -m cachelib fast-hits enable" if current.enabled else "python -m cachelib fast-hits disable"
        return Check(name, group, "fail", problem, fix)
    if current.enabled:
        return Check(name, group, "pass", current.describe())
    return Check(name, group, "skipped", f"optional, not in use: {current.describe()}", required=False)
