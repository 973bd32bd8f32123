"""Dump and restore: a database holding the cache survives ``pg_dump -Fc`` and ``pg_restore``.

On Debian's PostgreSQL 15, with its own pg_dump and pg_restore run as the postgres user, a copy
of the demo database gets everything a deployment has: a third cache registered through the
catalog (as tests/test_catalog.py registers it), entries of all three caches with hits rolled
up into the hourly statistics, a cleanup, the audit, and one entry that a write made stale
after the last roll-up (so the dump holds it with its data). It is dumped once and restored

* into a new database of the same cluster, owners kept (pg_restore as postgres);
* into a new database of the same cluster with ``--no-owner``, by a role that owns only that
  database and nothing else (how a managed service without superuser restores);
* into a new database of another cluster (a second PostgreSQL 15), whose transaction ids
  are behind the dumped entries' snapshots.

After each restore into the same cluster: pg_restore reports nothing, ``python -m cachelib
verify`` passes, every table holds exactly what was dumped, an entry is served only while the
engine's rule (``cache_private.entry_is_current``, 0012) says it is current, and never stale, a
write invalidates, hits add to the restored statistics, and the grants hold (a login in
``authenticated`` calls the caches, one in ``anon`` cannot).

In another cluster the roles must exist before the restore, and the rule refuses every entry
whose snapshot is ahead of that cluster's transaction ids. There the restored entries and
invalidations are forgotten (0020, run by ``migrate`` and by every roll-up and cleanup): the cache
hits again right after ``migrate``, and once that cluster's ids pass the dump's, no entry that a
local write made stale is served again (both failed before 0020).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from cachelib import migrate, verify
from cachelib.config import PROJECT_ROOT, Settings
from tests.servers import PG15_BIN, Pg15, as_postgres, login_url, start_pg15
from tests.test_catalog import THIRD, THIRD_FUNCTION

# cache -> (the cached wrapper, the direct function it caches)
CACHES = {
    "expert_sessions": ("public.get_expert_sessions_with_stats_cached", "public.get_expert_sessions_with_stats"),
    "product_performance": ("public.get_product_performance_cached", "public.get_product_performance"),
    THIRD: ("public.get_expert_session_counts_cached", "public.get_expert_session_counts"),
}
IDS = (None, 1, 2, 3)
STALE_EXPERT = 2  # a session of this expert is added after the last roll-up, before the dump
# What that write makes stale: every key reading expert 2's sessions.
STALE_KEYS = {"expert_sessions:2", "expert_sessions:all", f"{THIRD}:2", f"{THIRD}:all"}
SCHEMAS = ("public", "cache_private")
# Login roles are cluster-wide, like the four roles the migrations create: unique names, since
# the session's PostgreSQL 15 is shared with other test modules.
MEMBER = "dumprestore_member"  # a login in authenticated
ANON = "dumprestore_anon"  # a login in anon
OWNER = "dumprestore_owner"  # owns only the database it restores into with --no-owner
# The source cluster's transaction ids are pushed at least this far, so that a freshly
# initialised cluster (about 1,000 after initdb and a restore) is well behind the dumped snapshots.
SOURCE_XIDS_AT_LEAST = 20_000


# --- running PostgreSQL 15's own tools ----------------------------------------------------------


def pg_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run one of PostgreSQL 15's client programs as the postgres user (it owns the socket directory)."""
    return subprocess.run(as_postgres([str(PG15_BIN / tool), *args]), capture_output=True, text=True, timeout=300)


def connection_args(url: str) -> list[str]:
    """-h/-p/-U/-d for a PostgreSQL client program, from a libpq URL."""
    parts = conninfo_to_dict(url)
    return ["-h", parts["host"], "-p", str(parts["port"]), "-U", parts.get("user", "postgres"), "-d", parts["dbname"]]


def dump(url: str, path: Path) -> subprocess.CompletedProcess:
    return pg_tool("pg_dump", "-Fc", "-f", str(path), *connection_args(url))


def restore(url: str, path: Path, *options: str) -> subprocess.CompletedProcess:
    return pg_tool("pg_restore", *options, *connection_args(url), str(path))


@pytest.fixture(scope="module")
def postgres_dir() -> Iterator[Path]:
    """A directory the postgres user can write the dump into (pytest's tmp dirs are closed to it)."""
    path = Path(tempfile.mkdtemp(prefix="pgc_dump_"))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- looking at a database --------------------------------------------------------------------


def val(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def table_digests(url: str) -> dict[str, tuple[int, str]]:
    """Every table of the cache and the demo: its row count and a digest of its rows (as text)."""
    with psycopg.connect(url) as conn:
        tables = [row[0] for row in conn.execute(
            """SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) ORDER BY 1""", [list(SCHEMAS)])]
        return {table: conn.execute(f"SELECT count(*), md5(COALESCE(string_agg(t::text, ',' ORDER BY t::text), ''))"
                                    f" FROM {table} t").fetchone() for table in tables}


def cached(conn, cache: str, ident: int | None) -> tuple[object, list[str]]:
    """One cached call, and the kinds of the events it wrote (hit or miss)."""
    with conn.transaction():
        data = val(conn, f"SELECT {CACHES[cache][0]}(%s, '1 hour')", [ident])
        kinds = [r[0] for r in conn.execute(
            "SELECT kind FROM cache_private.cache_events WHERE cache_key = %s AND xmin = pg_current_xact_id()::xid",
            [key(cache, ident)])]
    return data, kinds


def direct(conn, cache: str, ident: int | None):
    return val(conn, f"SELECT {CACHES[cache][1]}(%s)", [ident])


def key(cache: str, ident: int | None) -> str:
    return f"{cache}:{'all' if ident is None else ident}"


def current_entries(conn, computed_since: int = 0) -> dict[str, bool]:
    """Every entry holding data (computed from a snapshot whose xmin is at least ``computed_since``),
    and whether the engine's rule says it may be served."""
    return dict(conn.execute("""
        SELECT cache_key, cache_private.entry_is_current(cache_name, cache_key, computed_snapshot)
        FROM public.query_cache WHERE data IS NOT NULL AND computed_xmin >= %s::text::xid8""",
                             [computed_since]))


def add_session(conn, expert_id: int) -> None:
    conn.execute("""INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status)
                    SELECT %s, started_at, duration_minutes, status FROM public.expert_sessions LIMIT 1""",
                 [expert_id])


def sessions_of(data) -> int:
    return data[0]["sessions"]


def burn_xids(conn, at_least: int) -> None:
    """Commit empty transactions until this cluster has handed out ``at_least`` transaction ids."""
    missing = at_least - int(val(conn, "SELECT pg_current_xact_id()::text"))
    if missing > 0:
        conn.execute("SET synchronous_commit = off")  # thousands of commits; nothing here needs to survive a crash
        conn.execute(f"DO $$ BEGIN FOR i IN 1..{missing} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$")
        conn.execute("RESET synchronous_commit")


def create_login_roles(conn) -> None:
    for role, member_of in ((MEMBER, "authenticated"), (ANON, "anon"), (OWNER, None)):
        if not val(conn, "SELECT count(*) FROM pg_roles WHERE rolname = %s", [role]):
            conn.execute(f"CREATE ROLE {role} LOGIN" + (f" IN ROLE {member_of}" if member_of else ""))


def create_cache_roles(conn) -> None:
    """The four roles, as migration 0001 creates them: a restore into another cluster needs them first."""
    for role in ("anon", "authenticated", "service_role", "cache_admin"):
        conn.execute(f"CREATE ROLE {role} NOLOGIN")


# --- the dumped database ----------------------------------------------------------------------


@dataclass
class Source:
    url: str
    dump: Path
    digests: dict[str, tuple[int, str]]  # every table as dumped
    entries: dict[str, object]  # cache key -> data, as dumped
    hits: int  # hits in the hourly statistics, as dumped
    oldest_xmin: int  # of the dumped entries' snapshots
    newest_xmax: int


@pytest.fixture(scope="module")
def source(pg15, postgres_dir) -> Source:
    url = pg15.fresh_database("dump_source")
    with psycopg.connect(url, autocommit=True) as conn:
        create_login_roles(conn)
        burn_xids(conn, SOURCE_XIDS_AT_LEAST)
        conn.execute(THIRD_FUNCTION)
        conn.execute("SELECT cache_private.register_cache('public.get_expert_session_counts', %s, '1 hour', %s)",
                     [["public.expert_sessions:expert_id", "public.experts:id"], THIRD])
        conn.execute("SELECT public.cleanup_expired_cache()")  # a cleanup log row, a prune horizon
        for cache in CACHES:
            for ident in IDS:
                assert cached(conn, cache, ident)[1] == ["miss"]
                assert cached(conn, cache, ident)[1] == ["hit"]
        conn.execute("SELECT cache_private.try_rollup()")
        add_session(conn, STALE_EXPERT)  # after the roll-up: the entries it makes stale still hold data
        entries = dict(conn.execute("SELECT cache_key, data FROM public.query_cache WHERE data IS NOT NULL"))
        assert set(entries) == {key(c, i) for c in CACHES for i in IDS}
        hits = val(conn, "SELECT sum(hits) FROM cache_private.cache_stats_hourly")
        assert hits == len(CACHES) * len(IDS)
        snapshots = [int(v) for v in conn.execute(
            "SELECT min(computed_xmin)::text, max(computed_xmax)::text FROM public.query_cache").fetchone()]
    path = postgres_dir / "source.dump"
    dumped = dump(url, path)
    assert dumped.returncode == 0 and dumped.stderr == "", dumped.stderr
    return Source(url, path, table_digests(url), entries, hits, *snapshots)



def run_verify(url: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m cachelib verify`` (read-only) with DATABASE_URL pointing at ``url``."""
    return subprocess.run([sys.executable, "-m", "cachelib", "verify"], capture_output=True, text=True, timeout=180,
                          env={**os.environ, **env, "DATABASE_URL": url}, cwd=PROJECT_ROOT)


# --- restored into the same cluster -----------------------------------------------------------


@dataclass
class Restored:
    url: str  # the application's connection: the role that owns the cache there
    admin_url: str  # a superuser's, for looking
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module", params=["owners kept", "no owner"])
def restored(request, pg15, source) -> Restored:
    admin_url = pg15.empty_database("restored_" + request.param.replace(" ", "_"))
    if request.param == "owners kept":
        return Restored(admin_url, admin_url, restore(admin_url, source.dump))
    with psycopg.connect(pg15.admin_url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {conninfo_to_dict(admin_url)['dbname']} OWNER TO {OWNER}")
    url = login_url(admin_url, OWNER)
    return Restored(url, admin_url, restore(url, source.dump, "--no-owner"))


def test_pg_restore_reports_nothing(restored):
    assert restored.result.returncode == 0 and restored.result.stderr == "", restored.result.stderr


def test_every_table_holds_what_was_dumped(source, restored):
    # The entries, invalidation log, statistics, catalog, sources, cleanup log, audit, settings, migrations
    # and the demo's tables, row for row.
    assert table_digests(restored.admin_url) == source.digests


def test_the_restored_database_belongs_to_the_restoring_role(restored):
    with psycopg.connect(restored.url) as conn:
        # The cache's own sessions are the owner's: they may roll up, move the clock and name the actor.
        assert val(conn, "SELECT cache_private.session_is_owner()") is True
        owner = val(conn, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'public.query_cache'::regclass")
    assert owner == conninfo_to_dict(restored.url).get("user", "postgres")


def test_verify_passes_on_the_restored_database(restored, dashboard_env):
    result = run_verify(restored.url, dashboard_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all required checks pass" in result.stdout.strip().splitlines()[-1]
    for line in ("✓ database: migrations", "✓ database: cache catalog", "✓ database: invalidation triggers",
                 "✓ database: grants: authenticated", "✓ database: grants: anon", "✓ database: row-level security",
                 f"✓ operations: cached call: {THIRD}", "✓ operations: recent cleanup"):
        assert line in result.stdout, result.stdout


def test_restored_entries_are_served_while_current_and_never_stale(source, restored):
    with psycopg.connect(restored.url, autocommit=True) as conn:
        # Same cluster: the snapshots' transaction ids mean the same here, and the invalidation log
        # came along, so the rule accepts every entry except those the write after the roll-up made stale.
        assert current_entries(conn) == {k: k not in STALE_KEYS for k in source.entries}
        for cache in CACHES:
            for ident in IDS:
                data, kinds = cached(conn, cache, ident)
                assert data == direct(conn, cache, ident), key(cache, ident)  # never a stale read
                if key(cache, ident) in STALE_KEYS:
                    assert kinds == ["miss"], key(cache, ident)
                else:  # served from the restored entry
                    assert kinds == ["hit"] and data == source.entries[key(cache, ident)], key(cache, ident)
        assert sessions_of(cached(conn, THIRD, STALE_EXPERT)[0]) == sessions_of(
            source.entries[key(THIRD, STALE_EXPERT)]) + 1


def test_a_write_invalidates_in_the_restored_database(restored):
    with psycopg.connect(restored.url, autocommit=True) as conn:
        before = {cache: cached(conn, cache, 3)[0] for cache in CACHES}
        assert all(cached(conn, cache, 3)[1] == ["hit"] for cache in CACHES)
        add_session(conn, 3)
        conn.execute("UPDATE public.orders SET quantity = quantity + 1 WHERE product_id = 3")
        for cache in CACHES:
            data, kinds = cached(conn, cache, 3)
            assert kinds == ["miss"] and data == direct(conn, cache, 3), cache
        assert sessions_of(cached(conn, THIRD, 3)[0]) == sessions_of(before[THIRD]) + 1
        assert cached(conn, "product_performance", 3)[0] != before["product_performance"]


def test_grants_hold_in_the_restored_database(restored):
    with psycopg.connect(login_url(restored.url, MEMBER), autocommit=True) as member:
        for cache, (wrapper, _direct) in CACHES.items():
            assert isinstance(val(member, f"SELECT {wrapper}(1, '1 hour')"), list), cache
        assert val(member, "SELECT count(*) FROM public.cache_catalog") == len(CACHES)
    with psycopg.connect(login_url(restored.url, ANON), autocommit=True) as anon:
        for wrapper, _direct in CACHES.values():
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                anon.execute(f"SELECT {wrapper}(1, '1 hour')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            anon.execute("SELECT * FROM public.cache_catalog")


def test_hits_after_the_restore_add_to_the_restored_statistics(source, restored):
    with psycopg.connect(restored.url, autocommit=True) as conn:
        served = val(conn, "SELECT count(*) FROM cache_private.cache_events WHERE kind = 'hit'")
        assert served > 0
        conn.execute("SELECT cache_private.try_rollup()")
        assert val(conn, "SELECT sum(hits) FROM cache_private.cache_stats_hourly") == source.hits + served
        calls = dict(conn.execute("SELECT cache_name, calls_30d FROM public.get_cache_metrics_overview()"))
    assert set(calls) == set(CACHES) and all(calls.values())  # the dashboard's overview reads them


# --- restored into another cluster ------------------------------------------------------------
# The tests below run in this order on one restored database; each says what it leaves behind.

@dataclass
class Foreign:
    server: Pg15
    url: str
    without_roles: subprocess.CompletedProcess
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def foreign(source) -> Iterator[Foreign]:
    """The dump restored into a second, freshly initialised PostgreSQL 15: first without the
    cluster-wide roles, then again after creating them."""
    server = start_pg15()
    try:
        url = server.create_database("restored", migrated=False)
        without_roles = restore(url, source.dump)
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute("DROP DATABASE restored")
            conn.execute("CREATE DATABASE restored")
            create_cache_roles(conn)
            create_login_roles(conn)
        yield Foreign(server, url, without_roles, restore(url, source.dump))
    finally:
        server.stop()


def xid_now(conn) -> int:
    return int(val(conn, "SELECT pg_current_xact_id()::text"))


def test_another_cluster_needs_the_roles_before_the_restore(foreign):
    assert foreign.without_roles.returncode == 1
    assert 'ERROR:  role "cache_admin" does not exist' in foreign.without_roles.stderr


def test_restore_into_another_cluster_reports_nothing_once_the_roles_exist(foreign):
    assert foreign.result.returncode == 0 and foreign.result.stderr == "", foreign.result.stderr


def test_entries_from_another_cluster_are_not_served_while_its_ids_are_behind(source, foreign):
    """Leaves key 1 of each cache computed here."""
    with psycopg.connect(foreign.url, autocommit=True) as conn:
        assert xid_now(conn) < source.oldest_xmin, "this cluster must be behind the dumped snapshots"
        # A snapshot from the future belongs to another cluster: the rule refuses every entry.
        assert current_entries(conn) == dict.fromkeys(source.entries, False)
        for cache in CACHES:
            data, kinds = cached(conn, cache, 1)
            assert kinds == ["miss"] and data == direct(conn, cache, 1), cache


def test_the_cache_hits_right_after_the_restore_and_migrate(foreign, dashboard_env):
    migrate.apply(foreign.url)  # what the operator runs after a restore: nothing to apply
    checks = verify.run_checks(foreign.url, config=Settings.from_env(dashboard_env))
    assert verify.all_required_pass(checks), "\n".join(c.line() for c in checks if c.status == "fail")


def test_one_cleanup_after_the_restore_lets_the_cache_hit_again(source, foreign, dashboard_env):
    """A cleanup after the restore keeps the cache hitting (it checks the cluster too, 0020).
    Leaves a cleanup done."""
    with psycopg.connect(foreign.url, autocommit=True) as conn:
        conn.execute("SELECT public.cleanup_expired_cache()")
        # Nothing of the other cluster is served: its snapshots are still ahead (and migrate forgot them).
        assert not any(current_entries(conn, computed_since=source.oldest_xmin).values())
    checks = verify.run_checks(foreign.url, config=Settings.from_env(dashboard_env))
    assert verify.all_required_pass(checks), "\n".join(c.line() for c in checks if c.status == "fail")


def test_a_write_made_before_this_cluster_catches_up_is_never_missed(source, foreign):
    """Leaves this cluster's ids past the dumped snapshots."""
    migrate.apply(foreign.url)
    with psycopg.connect(foreign.url, autocommit=True) as conn:
        add_session(conn, 3)  # no cached call of expert 3 in between
        burn_xids(conn, source.newest_xmax + 10)
        data, _kinds = cached(conn, THIRD, 3)
        assert data == direct(conn, THIRD, 3)
        assert sessions_of(data) == sessions_of(source.entries[key(THIRD, 3)]) + 1


def test_a_cluster_ahead_of_the_dump_serves_no_stale_read(source, foreign):
    # The same dump restored again, now that this cluster's ids are past its snapshots: every write
    # made here from now on has a newer id than any snapshot in the dump, so the rule cannot mistake it.
    url = foreign.server.create_database("restored_later", migrated=False)
    result = restore(url, source.dump)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        assert xid_now(conn) > source.newest_xmax
        for cache in CACHES:
            for ident in IDS:
                assert cached(conn, cache, ident)[0] == direct(conn, cache, ident), key(cache, ident)
        before = sessions_of(cached(conn, THIRD, 1)[0])
        add_session(conn, 1)
        assert sessions_of(cached(conn, THIRD, 1)[0]) == before + 1
