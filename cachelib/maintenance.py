"""The write side: health check, cleanup, statistics, optimize, invalidate, emergency clear, prewarm,
and the catalog of caches (add, remove, duration).

(Verify, which reads the whole deployment, is run by cachelib.actions: verify sits above this module.)

Each action takes the acting user, refuses non-admins with PermissionDenied
(the rule lives here, so the dashboard, the API and the CLI cannot disagree),
leaves an audit row, and returns an ActionResult all three can show.
Write actions are audited by their SQL functions in the same transaction as
the change; refusals and read-only actions are audited here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg

from cachelib import db
from cachelib.candidates import owner_query
from cachelib.catalog import find, parse_sources
from cachelib.config import Duration
from cachelib.db import Database, get_database, translated_errors
from cachelib.errors import ConfirmationRequired, InvalidInput, PermissionDenied
from cachelib.jsonsafe import plain

EMERGENCY_TOKEN = "EMERGENCY_CLEAR_CONFIRMED"
Role = Literal["admin", "viewer"]
ROLES = ("admin", "viewer")
# What the health check action writes into cache_private.health_history.source (cleanups write 'cleanup').
HEALTH_CHECK_SOURCE = "health check"


@dataclass(frozen=True)
class Actor:
    """Who is acting, in which role, and through what (dashboard, api, cli)."""

    name: str
    role: Role
    via: str = "cli"

    def __post_init__(self):
        if self.role not in ROLES:
            raise InvalidInput(f"role must be admin or viewer, got {self.role!r}")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.via})"


@dataclass
class ActionResult:
    action: str
    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def may_maintain(actor: Actor) -> bool:
    """Maintenance is for admins: the one place this rule is written (cachelib.actions lists the actions)."""
    return actor.role == "admin"


class Maintenance:
    def __init__(self, database: Database | None = None):
        self.database = database or get_database()

    # --- the actions -------------------------------------------------------

    def health_check(self, actor: Actor) -> ActionResult:
        """Run analyze_cache_health() and record it in the health history (source 'health check');
        details: checks (list) and overall status."""
        def run(conn):
            checks = db.rows(conn, "SELECT * FROM cache_private.record_health(%s)", (HEALTH_CHECK_SOURCE,))
            overall = worst(check["status"] for check in checks)
            self._audit(conn, "health_check", {}, "ok", {"overall": overall})
            counts = {s: sum(c["status"] == s for c in checks) for s in ("ok", "warning", "critical")}
            message = f"Health: {overall} ({counts['critical']} critical, {counts['warning']} warning)"
            return message, {"overall": overall, "checks": checks}
        return self.act(actor, "health_check", {}, run)

    def cleanup(self, actor: Actor) -> ActionResult:
        """Delete expired entries (and evict beyond the size bound); details: the cleanup log row."""
        def run(conn):
            removed = conn.execute("SELECT public.cleanup_expired_cache()").fetchone()[0]
            row = db.row(conn, "SELECT * FROM public.cache_cleanup_log ORDER BY id DESC LIMIT 1")
            return f"Cleanup removed {removed} entries, freed {row['bytes_freed']:,} bytes", row
        return self.act(actor, "cleanup", {}, run)

    def cleanup_stats(self, actor: Actor, days: int = 7) -> ActionResult:
        """Cleanup statistics per day for the last ``days`` days (1..3650)."""
        _check_days(days)

        def run(conn):
            rows = db.rows(conn, "SELECT * FROM public.get_cache_cleanup_stats(%s)", (days,))
            self._audit(conn, "cleanup_stats", {"days": days}, "ok", {"days_returned": len(rows)})
            total = sum(r["entries_removed"] + r["entries_evicted"] for r in rows)
            cleanups = sum(r["cleanups"] for r in rows)
            return f"{cleanups} cleanups removed {total} entries in {days} days", {"days": rows}
        return self.act(actor, "cleanup_stats", {"days": days}, run)

    def optimize(self, actor: Actor) -> ActionResult:
        """Cleanup, drop unprofitable entries, refresh planner statistics."""
        def run(conn):
            result = conn.execute("SELECT public.optimize_cache()").fetchone()[0]
            removed = result["expired_removed"] + result["evicted"] + result["unprofitable_removed"]
            return f"Optimize removed {removed} entries and refreshed statistics", result
        return self.act(actor, "optimize_cache", {}, run)

    def invalidate(self, actor: Actor, cache: str | None = None, key: str | None = None) -> ActionResult:
        """Mark one cache's entries, or one key, stale."""
        if (cache is None) == (key is None):
            raise InvalidInput("give exactly one of cache or key")
        _check_text("cache", cache)
        _check_text("key", key)
        params = {"cache": cache} if cache is not None else {"key": key}

        def run(conn):
            count = conn.execute("SELECT public.invalidate_cache(%s, %s)", (cache, key)).fetchone()[0]
            target = f"cache {cache}" if cache is not None else f"key {key}"
            return f"Invalidated {count} entries of {target}", {"entries_invalidated": count}
        return self.act(actor, "invalidate", params, run)

    def emergency_clear(self, actor: Actor, confirm: str | None) -> ActionResult:
        """Delete every entry; refuses (and audits the refusal) without the exact token."""
        if confirm != EMERGENCY_TOKEN:
            self.refuse(actor, "emergency_clear", {}, "wrong or missing confirmation token")
            raise ConfirmationRequired(f"emergency clear refused: type {EMERGENCY_TOKEN} exactly to confirm; "
                                       "nothing was deleted")

        def run(conn):
            deleted = conn.execute("SELECT public.emergency_clear_cache(%s)", (confirm,)).fetchone()[0]
            return f"Emergency clear deleted {deleted} entries", {"entries_deleted": deleted}
        return self.act(actor, "emergency_clear", {}, run)

    def prewarm(self, actor: Actor, cache: str, manager=None, top_ids: int = 20) -> ActionResult:
        """Fill one cache: its all-rows key and its most requested keys."""
        from cachelib.manager import CacheManager

        manager = manager or CacheManager(self.database)
        entry = find(cache, manager.caches())
        if not entry.callable:
            raise InvalidInput(f"cache {cache} was wired by hand: prewarm it by calling its function")

        def run(conn):
            keys = [] if entry.key_type is None else [r[0] for r in conn.execute(
                """SELECT split_part(cache_key, ':', 2) FROM public.query_cache
                   WHERE cache_name = %s AND cache_key <> cache_name || ':all'
                   ORDER BY hit_count DESC, cache_key LIMIT %s""", (cache, top_ids)).fetchall()]
            for key in [None, *keys]:
                manager.call(cache, key if entry.key_type == "uuid" or key is None else int(key))
            self._audit(conn, "prewarm", {"cache": cache}, "ok", {"keys_warmed": len(keys) + 1})
            return f"Prewarmed {len(keys) + 1} keys of {cache}", {"keys_warmed": len(keys) + 1}
        return self.act(actor, "prewarm", {"cache": cache}, run)

    # --- the catalog of caches (cachelib.catalog reads it) -----------------

    def add_cache(self, actor: Actor, function: str, sources: str | list[str], duration: Duration,
                  name: str | None = None, description: str | None = None) -> ActionResult:
        """Register ``function`` as a cache (wrapper, triggers, grants); the SQL refuses what cannot be cached."""
        for label, text in (("function", function), ("name", name), ("description", description)):
            _check_text(label, text)
        source_list = parse_sources(sources)
        params = {"function": function, "sources": source_list, "duration": str(duration), "name": name}

        def run(conn):
            result = conn.execute(
                "SELECT cache_private.register_cache(%s, %s, %s::interval, %s, %s)",
                (function, source_list, f"{duration.seconds} seconds", name, description)).fetchone()[0]
            wrapper = result["wrapper"].split("(")[0]
            return (f"Registered cache {result['cache']}: call {wrapper}(…); "
                    f"{len(result['sources'])} source table(s), {duration}"), result
        return self.act(actor, "cache_add", params, run)

    def add_cache_from_candidate(self, actor: Actor, queryid: int, function: str, duration: Duration,
                                 description: str | None = None) -> ActionResult:
        """Wrap caching candidate ``queryid`` (a read query the owner ran) in public.``function`` and register
        it, its sources being the tables it reads (any change invalidates the whole cache); one transaction."""
        _check_text("function", function)
        _check_text("description", description)
        params = {"queryid": queryid, "function": function, "duration": str(duration)}

        def run(conn):
            query = owner_query(conn, queryid)
            result = db.value(conn, """
                SELECT cache_private.register_cache(f::text, cache_private.tables_read(f), %s::interval, NULL, %s)
                FROM cache_private.wrap_query(%s, %s) f""",
                              (f"{duration.seconds} seconds", description, function, query))
            conn.execute("UPDATE cache_private.caches SET from_queryid = %s WHERE cache_name = %s",
                         (queryid, result["cache"]))
            wrapper = result["wrapper"].split("(")[0]
            return (f"Wrapped candidate {queryid} as {result['function']} and registered cache {result['cache']}: "
                    f"call {wrapper}(…); sources {', '.join(s['table'] for s in result['sources'])}, {duration}"), \
                {**result, "query": query}
        return self.act(actor, "cache_add", params, run)

    def remove_cache(self, actor: Actor, cache: str) -> ActionResult:
        """Drop a registered cache: its wrapper, triggers, entries and statistics."""
        _check_text("cache", cache)

        def run(conn):
            result = conn.execute("SELECT cache_private.unregister_cache(%s)", (cache,)).fetchone()[0]
            return (f"Removed cache {cache}: dropped {result['wrapper'].split('(')[0]}, its triggers and "
                    f"{result['entries_deleted']} entries"), result
        return self.act(actor, "cache_remove", {"cache": cache}, run)

    def set_cache_duration(self, actor: Actor, cache: str, duration: Duration | None) -> ActionResult:
        """Set how long ``cache`` keeps results, for every caller (None: back to its default)."""
        _check_text("cache", cache)

        def run(conn):
            result = conn.execute("SELECT cache_private.set_cache_duration(%s, %s::interval)",
                                  (cache, None if duration is None else f"{duration.seconds} seconds")).fetchone()[0]
            message = (f"Cache {cache} runs with its default duration again" if duration is None
                       else f"Cache {cache} now keeps results for {duration}, whatever a caller asks")
            return message, result
        return self.act(actor, "cache_duration",
                        {"cache": cache, "duration": "default" if duration is None else str(duration)}, run)

    # --- shared plumbing -----------------------------------------------------

    def act(self, actor: Actor, action: str, params: dict, run: Callable) -> ActionResult:
        """Run ``run(conn)`` as ``actor`` in one transaction, admins only (refusals audited); ``run``
        returns (message, details). cachelib.actions runs its own actions (verify) through this too."""
        if not may_maintain(actor):
            self.refuse(actor, action, params, f"role {actor.role} may not run maintenance")
            raise PermissionDenied(f"{actor.name} ({actor.role}) may not run {action}: maintenance is for admins")
        started = time.perf_counter()
        with translated_errors(self.database.url), self.database.connection() as conn:
            with conn.transaction():
                identify(conn, actor)
                message, details = run(conn)
        return ActionResult(action, True, message, plain(details), round((time.perf_counter() - started) * 1000, 2))

    def refuse(self, actor: Actor, action: str, params: dict, why: str) -> None:
        """Write the audit row of a refused action (cachelib.actions refuses at the edge through this too)."""
        try:
            with self.database.connection() as conn, conn.transaction():
                identify(conn, actor)
                self._audit(conn, action, params, "refused", {"reason": why})
        except psycopg.Error:
            pass  # the refusal stands even if it cannot be written down

    @staticmethod
    def _audit(conn, action: str, params: dict, outcome: str, result: dict) -> None:
        write_audit(conn, action, params, outcome, result)


def identify(conn, actor: Actor | None) -> None:
    """Tell the SQL audit who is acting, for this transaction only (no actor: the database user)."""
    if actor is not None:
        conn.execute("SELECT set_config('cachelib.actor', %s, true), set_config('cachelib.actor_role', %s, true)",
                     (actor.label, actor.role))


def write_audit(conn, action: str, params: dict, outcome: str, result: dict, duration_ms: float = 0.0) -> None:
    """One audit row through cache_private.write_audit, as whoever ``identify`` named."""
    conn.execute("SELECT cache_private.write_audit(%s, %s::jsonb, %s, %s::jsonb, %s)",
                 (action, json.dumps(params, default=str), outcome, json.dumps(result, default=str), duration_ms))


def _check_text(name: str, value: str | None) -> None:
    # PostgreSQL text cannot hold NUL; say so instead of failing inside the driver.
    if value is not None and "\x00" in value:
        raise InvalidInput(f"{name} must not contain NUL characters")


def _check_days(days) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 3650:
        raise InvalidInput(f"days must be a whole number from 1 to 3650, got {days!r}")


# How bad a health status is; the one ranking the pages, the API, the CLI and the review use.
SEVERITY = {"ok": 0, "warning": 1, "critical": 2}


def worst(statuses) -> str:
    """The worst of some health statuses (ok when there are none)."""
    return max(statuses, key=lambda s: SEVERITY.get(s, 0), default="ok")
