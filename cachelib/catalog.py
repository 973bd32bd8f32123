"""The catalog of caches: which caches exist, what each serves, and how long it keeps results.

A cache is a row in PostgreSQL (``cache_private.caches``, read through the view
``public.cache_catalog``; sql/migrations/0017_cache_catalog.sql). Registering a function
there creates its wrapper ``<function>_cached``, its invalidation triggers and its grants;
every page, route, metric and check iterates ``caches()`` instead of naming caches. The
actions that change the catalog (add, remove, duration) are Maintenance's, like every other.

Durations: the rule of which duration a cache runs with is ``duration_in_effect``. An admin's
runtime duration wins (the SQL wrapper applies it for every caller); otherwise the guide's
caches take their environment variable (CACHE_EXPERT_SESSIONS_DURATION, CACHE_ANALYTICS_DURATION)
and a registered cache the duration it was registered with (CACHE_DEFAULT_DURATION by default).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cachelib.config import Duration, Settings
from cachelib.db import Database, get_database, translated_errors
from cachelib.errors import ConfigError, InvalidInput
from cachelib.formats import cache_label as label

CATALOG_SQL = """
    SELECT cache_name, description, function_signature, wrapper_signature, key_type, key_argument, default_duration,
           duration_override, duration_setting, duration_changed_at, builtin, registered_at, sources
    FROM public.cache_catalog ORDER BY builtin DESC, cache_name"""


@dataclass(frozen=True)
class Cache:
    """One cache of the catalog."""

    name: str
    description: str
    function: str | None       # the function it serves, e.g. public.get_product_performance(bigint)
    wrapper: str | None        # its generated wrapper, e.g. public.get_product_performance_cached(bigint,interval)
    key_type: str | None       # the argument's type; None: the function takes none
    key_argument: str | None   # the argument's name (None: unnamed, or no argument)
    default_duration: timedelta
    duration_override: timedelta | None = None
    duration_setting: str | None = None  # environment variable of the guide's caches
    duration_changed_at: datetime | None = None
    builtin: bool = False
    registered_at: datetime | None = None
    sources: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def callable(self) -> bool:
        """Whether the application can call it (it was registered, not wired by hand)."""
        return self.function is not None and self.wrapper is not None

    @property
    def function_name(self) -> str:
        """The function's qualified name without argument types, as SQL can call it."""
        return (self.function or "").split("(", 1)[0]

    @property
    def wrapper_name(self) -> str:
        return (self.wrapper or "").split("(", 1)[0]

    @property
    def key_label(self) -> str:
        """What the key argument is called for people: p_expert_id -> expert_id."""
        return re.sub(r"^p_", "", self.key_argument or "") or "key"


def caches(database: Database | None = None) -> list[Cache]:
    """Every cache of the catalog, the guide's first; raises DatabaseUnavailable."""
    database = database or get_database()
    with translated_errors(database.url), database.connection() as conn:
        return read(conn)


def read(conn) -> list[Cache]:
    """The catalog through an open connection (verify holds one)."""
    return [_cache(row) for row in conn.execute(CATALOG_SQL).fetchall()]


def _cache(row) -> Cache:
    (name, description, function, wrapper, key_type, key_argument, default_duration, override, setting, changed_at,
     builtin, registered_at, sources) = row
    return Cache(name, description, function, wrapper, key_type, key_argument, default_duration, override, setting,
                 changed_at, builtin, registered_at, tuple(sources or ()))


def names(database: Database | None = None) -> list[str]:
    """The cache names, the guide's first."""
    return [cache.name for cache in caches(database)]


def find(name: str, known: list[Cache]) -> Cache:
    """The cache called ``name``; raises InvalidInput naming the known ones."""
    for cache in known:
        if cache.name == name:
            return cache
    raise InvalidInput(f"unknown cache {name!r}; known: {', '.join(c.name for c in known) or 'none'}")


def listing(config: Settings, database: Database | None = None) -> list[dict[str, Any]]:
    """The catalog for people and scripts (the CLI's cache list, the API's GET caches, the dashboard)."""
    rows = []
    for cache in caches(database):
        duration, source = duration_in_effect(cache, config)
        rows.append({"cache": cache.name, "label": label(cache.name), "description": cache.description,
                     "function": cache.function, "wrapper": cache.wrapper, "key_type": cache.key_type,
                     "duration": str(duration), "duration_seconds": duration.seconds, "duration_source": source,
                     "builtin": cache.builtin, "sources": list(cache.sources),
                     "registered_at": cache.registered_at.isoformat() if cache.registered_at else None})
    return rows


def sources_text(sources) -> str:
    """public.orders:product_id, public.audit (whole cache)."""
    return ", ".join(s["table"] + (f":{s['column']}" if s.get("column") else " (whole cache)")
                     for s in sources) or "none"


CACHEABLE_SQL = """
    SELECT format('%I.%I(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes)) AS function,
           n.nspname AS schema, p.proargnames[1] AS argument,
           CASE WHEN p.pronargs = 1 THEN format_type(p.proargtypes[0], NULL) END AS key_type,
           COALESCE(obj_description(p.oid, 'pg_proc'), '') AS comment
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'cache_private') AND n.nspname NOT LIKE 'pg\\_%'
      AND p.prokind = 'f' AND NOT p.proretset AND p.prorettype = 'jsonb'::regtype AND p.proallargtypes IS NULL
      AND (p.pronargs = 0 OR (p.pronargs = 1 AND p.proargtypes[0] IN ('int2'::regtype, 'int4'::regtype,
                                                                       'int8'::regtype, 'uuid'::regtype)))
      AND p.proname NOT LIKE '%\\_cached'
      AND p.provolatile <> 'v'  -- a volatile function may change things or answer differently each call
      AND NOT EXISTS (SELECT 1 FROM cache_private.caches c WHERE to_regprocedure(c.function_signature) = p.oid)
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                      AND d.deptype = 'e')
      AND pg_has_role(p.proowner, (SELECT nspowner FROM pg_namespace WHERE nspname = 'cache_private'), 'MEMBER')
      AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%')
    ORDER BY 1"""
KEY_COLUMNS_SQL = """
    SELECT format('%%I.%%I', n.nspname, c.relname), c.relname, a.attname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND n.nspname = %s AND a.atttypid = ANY (%s::regtype[])"""


def cacheable_functions(database: Database | None = None) -> list[dict[str, Any]]:
    """Stable functions that could be registered as they are (what register_cache would accept), each with
    the sources it probably reads: for an argument p_customer_id, the tables with a customer_id
    column and a customers table's id. A suggestion for the admin to check, not a dependency list."""
    database = database or get_database()
    with translated_errors(database.url), database.connection() as conn:
        functions = [dict(zip(("function", "schema", "argument", "key_type", "comment"), row, strict=True))
                     for row in conn.execute(CACHEABLE_SQL).fetchall()]
        for function in functions:
            function["suggested_sources"] = _suggested_sources(conn, function)
    return functions


def _suggested_sources(conn, function: dict[str, Any]) -> list[str]:
    column = re.sub(r"^p_", "", function["argument"] or "")
    if not function["key_type"] or not column:
        return []
    kinds = ["uuid"] if function["key_type"] == "uuid" else ["smallint", "integer", "bigint"]
    found = conn.execute(KEY_COLUMNS_SQL, (function["schema"], kinds)).fetchall()
    named = column.removesuffix("_id")
    return sorted({f"{table}:{attname}" for table, relname, attname in found
                   if attname == column or (attname == "id" and relname in (named, named + "s"))})


# --- durations ------------------------------------------------------------------------------


def duration_in_effect(cache: Cache, config: Settings) -> tuple[Duration, str]:
    """The duration ``cache`` runs with, and where it comes from (for people)."""
    if cache.duration_override is not None:
        changed = cache.duration_changed_at
        when = f" on {changed.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if changed else ""
        return _duration(cache.duration_override), f"set by an admin at runtime{when}"
    if cache.duration_setting:
        source = config.sources.get(cache.duration_setting, "default")
        return config.duration_from(cache.duration_setting), f"{cache.duration_setting} ({source})"
    return _duration(cache.default_duration), "registered with the cache"


def _duration(span: timedelta) -> Duration:
    seconds = int(span.total_seconds())
    text = "".join(f"{n}{unit}" for n, unit in _split(seconds) if n) or "0s"
    return Duration(text, seconds)


def _split(seconds: int):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        yield seconds // size, unit
        seconds %= size


def parse_duration(text: str | None, *, what: str = "duration") -> Duration:
    """An admin's duration ("15m", "1h30m"); raises InvalidInput with the accepted forms."""
    try:
        return Duration.parse(text or "", setting=what)
    except ConfigError as exc:
        raise InvalidInput(str(exc)) from None


def parse_sources(text: str | list[str] | None) -> list[str]:
    """Sources as the API and the CLI take them: TABLE or TABLE:KEY_COLUMN, comma-separated or repeated."""
    items = text if isinstance(text, list) else (text or "").split(",")
    sources = [item.strip() for part in items for item in part.split(",") if item.strip()]
    if not sources:
        raise InvalidInput("give at least one source: TABLE or TABLE:KEY_COLUMN (a column holding the key), "
                           "e.g. public.orders:customer_id")
    return sources
