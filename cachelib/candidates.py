"""Caching candidates: the most expensive repeated read queries that are not cached yet.

Reads ``pg_stat_statements`` (it must be preloaded and created in the database). Queries
that already go through the cache are left out: calls of the cached functions and their
direct twins, anything touching ``query_cache``, ``cache_cleanup_log`` or
``cache_private``, and the catalog and monitoring queries of tools. What remains, ordered
by total execution time, is where a cached function would save the most; the README's
"Adding a cached function" shows how to add one.

Without pg_stat_statements the report says what is missing and how to enable it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from cachelib.db import Database, get_database, translated_errors, value
from cachelib.errors import InvalidInput

NOT_INSTALLED = ("pg_stat_statements is not installed on this PostgreSQL server: install the server's contrib "
                 "package (Debian/Ubuntu ship it with postgresql-{major}); on Supabase and managed services it "
                 "is available: enable it in the extensions list")
NOT_LOADED = ("pg_stat_statements is not loaded: add it to shared_preload_libraries in postgresql.conf "
              "(shared_preload_libraries = 'pg_stat_statements', keeping any libraries already listed), "
              "restart PostgreSQL, then run in this database: CREATE EXTENSION pg_stat_statements;")
NOT_CREATED = ("pg_stat_statements is loaded but not created in this database: run "
               "CREATE EXTENSION pg_stat_statements; (Supabase: Database > Extensions > pg_stat_statements), "
               "then let the application run a while before looking again")

OUTDATED = ("pg_stat_statements is older than this server: run in this database: "
            "ALTER EXTENSION pg_stat_statements UPDATE;")

def exclude_pattern(cached: list[str] = ()) -> str:
    """What is left out: our own public functions (every one has cache in its name), the functions of the
    catalog's caches and their wrappers (``cached``, plain names), the cache's tables, and tools' queries."""
    own = sorted(cached, key=len, reverse=True)
    return (r"(query_cache|cache_cleanup_log|cache_private\.|cache_catalog|_cachelib_migrations|_yoyo_|yoyo_lock"
            r"|information_schema\.|cron\.|\mpg_\w+"  # pg_catalog, pg_stat_*, pg_class, pg_advisory_lock ...
            r"|\m\w*cache\w*\s*\("
            r"|\m(set_config|current_setting|has_\w+_privilege|to_reg\w+"
            + "".join("|" + re.escape(name) for name in own) + r")\s*\()")


# Caching what runs in under a millisecond costs more than it saves (optimize_cache drops such entries too).
DEFAULT_MIN_MEAN_MS = 1.0
READ_PATTERN = r"^\s*(\(\s*)*(select|with|table|values)\M"
WRITE_PATTERN = r"\m(insert|update|delete|merge|copy|into)\M|\mfor\s+(no\s+key\s+)?(update|share)\M"


@dataclass
class Candidate:
    queryid: int
    query: str
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    share_pct: float | None  # of all execution time recorded for this database
    # Run by the cache's owner (or a member of it): only such a query may be wrapped into a cached function
    # from here, since the wrapper runs it as the owner. A query anyone else ran may have been planted.
    by_owner: bool = False

    @property
    def rows_per_call(self) -> float:
        return self.rows / self.calls if self.calls else 0.0

    def one_line(self, width: int = 100) -> str:
        text = re.sub(r"\s+", " ", self.query).strip()
        return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class CandidatesReport:
    available: bool
    message: str
    how_to_enable: str | None = None
    stats_since: datetime | None = None
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stats_since"] = self.stats_since.isoformat() if self.stats_since else None
        return data


def _unavailable(reason: str) -> CandidatesReport:
    return CandidatesReport(False, "cannot list caching candidates: " + reason.split(":")[0], reason)


def _already_cached(conn) -> tuple[list[str], list[int]]:
    """What the catalog caches already: the plain names of every registered function and wrapper, and the
    candidates wrapped into one (none before 0017)."""
    try:
        with conn.transaction():
            rows = conn.execute("SELECT function_signature, wrapper_signature, from_queryid "
                                "FROM cache_private.caches").fetchall()
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
        return [], []
    names = [signature.split("(", 1)[0].split(".")[-1].strip('"') for row in rows for signature in row[:2]
             if signature]
    return names, [row[2] for row in rows if row[2] is not None]


def find_candidates(database: Database | None = None, limit: int = 10, min_calls: int = 2,
                    min_mean_ms: float = DEFAULT_MIN_MEAN_MS) -> CandidatesReport:
    """The ``limit`` most expensive repeated read queries not yet cached (by total execution time).

    Repeated: called at least ``min_calls`` times; expensive: at least ``min_mean_ms`` per call.
    """
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit must be 1..1000, got {limit}")
    if min_calls < 1:
        raise InvalidInput(f"min_calls must be at least 1, got {min_calls}")
    database = database or get_database()
    with translated_errors(database.url), database.connection() as conn:
        schema = value(conn, """SELECT n.nspname FROM pg_catalog.pg_extension e
                                  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                                  WHERE e.extname = 'pg_stat_statements'""")
        loaded = value(conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_settings "
                               "WHERE name = 'pg_stat_statements.max')")
        if schema is None:
            if not value(conn, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions "
                                 "WHERE name = 'pg_stat_statements')"):
                major = value(conn, "SELECT current_setting('server_version_num')::int / 10000")
                return _unavailable(NOT_INSTALLED.format(major=major))
            return _unavailable(NOT_CREATED if loaded else NOT_LOADED)
        if not loaded:
            return _unavailable(NOT_LOADED)
        view, info = _views(conn, schema)
        cached_names, wrapped = _already_cached(conn)
        try:
            stats_since = value(conn, f"SELECT stats_reset FROM {info}")
            total = value(conn, f"""SELECT sum(total_exec_time) FROM {view}
                                      WHERE dbid = (SELECT oid FROM pg_catalog.pg_database
                                                    WHERE datname = current_database())""")
            rows = conn.execute(
                f"""SELECT queryid, query, calls, total_exec_time, mean_exec_time, rows, {BY_OWNER}
                    FROM {view}
                    WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                      AND toplevel
                      AND calls >= %(min_calls)s
                      AND mean_exec_time >= %(min_mean_ms)s
                      AND query ~* %(read)s
                      AND query !~* %(write)s
                      AND query !~* %(exclude)s
                      AND queryid <> ALL (%(wrapped)s)
                    ORDER BY total_exec_time DESC
                    LIMIT %(limit)s""",
                {"min_calls": min_calls, "min_mean_ms": min_mean_ms, "read": READ_PATTERN, "write": WRITE_PATTERN,
                 "exclude": exclude_pattern(cached_names), "wrapped": wrapped,
                 "limit": limit}).fetchall()
        except psycopg.errors.ObjectNotInPrerequisiteState:
            return _unavailable(NOT_LOADED)
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
            return _unavailable(OUTDATED)
    candidates = [Candidate(int(r[0]), r[1], int(r[2]), round(float(r[3]), 3), round(float(r[4]), 3), int(r[5]),
                            round(100.0 * float(r[3]) / float(total), 1) if total else None, bool(r[6]))
                  for r in rows]
    since = f" since {stats_since:%Y-%m-%d %H:%M %Z}" if stats_since else ""
    if candidates:
        message = (f"{len(candidates)} most expensive repeated read queries not yet cached (pg_stat_statements"
                   f"{since})")
    else:
        message = (f"no uncached read query ran at least {min_calls} times taking {min_mean_ms:g} ms or more "
                   f"per call (pg_stat_statements{since}); nothing worth caching yet")
    return CandidatesReport(True, message, None, stats_since, candidates)


BY_OWNER = """CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = userid)
                   THEN pg_catalog.pg_has_role(userid, (SELECT n.nspowner FROM pg_catalog.pg_namespace n
                                                        WHERE n.nspname = 'cache_private'), 'MEMBER')
                   ELSE false END"""


def _views(conn, schema: str) -> tuple[str, str]:
    quoted = sql.Identifier(schema).as_string(conn)
    return f"{quoted}.pg_stat_statements", f"{quoted}.pg_stat_statements_info"


def owner_query(conn, queryid: int) -> str:
    """The text of candidate ``queryid`` as pg_stat_statements holds it, if the cache's owner ran it in
    this database; raises InvalidInput otherwise (a query anyone else ran is never wrapped from here)."""
    schema = value(conn, """SELECT n.nspname FROM pg_catalog.pg_extension e
                            JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                            WHERE e.extname = 'pg_stat_statements'""")
    if schema is None:
        raise InvalidInput("pg_stat_statements is not created in this database: there are no candidates")
    view, _info = _views(conn, schema)
    found = conn.execute(f"""SELECT query, {BY_OWNER} FROM {view}
                             WHERE queryid = %s AND toplevel
                               AND dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
                             ORDER BY 2 DESC LIMIT 1""", (queryid,)).fetchone()
    if found is None:
        raise InvalidInput(f"no candidate query {queryid} in this database (pg_stat_statements may have been reset)")
    if not found[1]:
        raise InvalidInput(f"candidate {queryid} was not run by the cache's owner: wrap it in a function yourself "
                           "after reading it, then register that (README, 'Adding a cached function')")
    return found[0]


def format_report(report: CandidatesReport) -> str:
    """The text the CLI prints."""
    if not report.available:
        return f"{report.message}\n  how to enable it: {report.how_to_enable}"
    lines = [report.message]
    if report.candidates:
        lines.append(f"{'#':>2} {'calls':>9} {'total ms':>12} {'mean ms':>10} {'rows/call':>9} {'share':>6} "
                     f"{'queryid':>20}  query")
        for rank, c in enumerate(report.candidates, 1):
            share = f"{c.share_pct:5.1f}%" if c.share_pct is not None else "     -"
            mark = "" if c.by_owner else " (not run by the owner: wrap it by hand)"
            lines.append(f"{rank:>2} {c.calls:>9,} {c.total_ms:>12,.1f} {c.mean_ms:>10,.2f} {c.rows_per_call:>9,.1f} "
                         f"{share} {c.queryid:>20}  {c.one_line()}{mark}")
        lines.append("Cache one: python -m cachelib cache add-candidate QUERYID --function NAME "
                     "(put -- before a negative QUERYID)")
    return "\n".join(lines)
