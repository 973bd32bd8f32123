"""The maintenance actions, in one registry.

The API's ``POST /api/admin/cache/maintenance`` and the CLI's ``maintenance`` and ``cache`` commands
are built from this list, and both call ``run``. That makes ``run`` the one path for the rules at the edge:
unknown actions, NUL characters, who may run an action (a refusal is audited), and which parameters
an action takes. Each action's own rules (ranges, the emergency token, known caches) are checked by
``Maintenance``, which the dashboard also calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachelib.catalog import parse_duration
from cachelib.config import Duration, settings
from cachelib.db import Database
from cachelib.errors import InvalidInput, PermissionDenied
from cachelib.maintenance import EMERGENCY_TOKEN, ActionResult, Actor, Maintenance, may_maintain, write_audit


@dataclass(frozen=True)
class Parameter:
    name: str
    help: str
    placeholder: str                              # how the usage line shows the value: NAME, 7
    integer_range: tuple[int, int] | None = None  # an integer in this range (both ends allowed)
    default: Any = None
    required: bool = False
    argument: bool = False  # on the command line a positional argument, not an option
    multiple: bool = False  # may be given more than once (the API also takes a comma-separated list)


@dataclass(frozen=True)
class Action:
    name: str            # the API's action=NAME and the audit log's action
    command: str | None  # python -m cachelib maintenance COMMAND (None: a command of its own elsewhere)
    summary: str
    call: Callable[[Maintenance, Actor, dict[str, Any]], ActionResult]
    parameters: tuple[Parameter, ...] = ()
    one_of: bool = False  # the parameters are alternatives (for the usage line; Maintenance checks it)
    note: str = ""
    group: str = "maintenance"  # python -m cachelib GROUP COMMAND

    @property
    def usage(self) -> str:
        """How to call it over HTTP, e.g. ``action=cleanup_stats&days=7 (days 1..3650, default 7)``."""
        if self.one_of:
            text = " or ".join(f"action={self.name}&{p.name}={p.placeholder}" for p in self.parameters)
        else:
            text = f"action={self.name}" + "".join(f"&{p.name}={p.placeholder}" for p in self.parameters)
        ranges = [f"{p.name} {p.integer_range[0]}..{p.integer_range[1]}, default {p.default}"
                  for p in self.parameters if p.integer_range and p.default is not None]
        notes = [*ranges, *([self.note] if self.note else [])]
        return text + (f" ({'; '.join(notes)})" if notes else "")


REGISTRY: dict[str, Action] = {action.name: action for action in (
    Action("health_check", "health", "Run the health analysis and record it in the health history; "
           "the command exits 1 when any check is critical.",
           lambda m, actor, p: m.health_check(actor)),
    Action("cleanup", "cleanup", "Delete expired entries and log it (run hourly from cron).",
           lambda m, actor, p: m.cleanup(actor)),
    Action("cleanup_stats", "stats", "Cleanup statistics per day.",
           lambda m, actor, p: m.cleanup_stats(actor, p.get("days", 7)),
           (Parameter("days", "How many days to summarize.", "7", integer_range=(1, 3650), default=7),)),
    Action("optimize_cache", "optimize", "Cleanup, drop entries that cost more than they save, refresh statistics.",
           lambda m, actor, p: m.optimize(actor)),
    Action("invalidate", "invalidate", "Mark one cache, or one key, stale (give exactly one).",
           lambda m, actor, p: m.invalidate(actor, cache=p.get("cache"), key=p.get("key")),
           (Parameter("cache", "Cache name, e.g. expert_sessions.", "NAME"),
            Parameter("key", "One cache key, e.g. expert_sessions:42.", "CACHE_KEY")), one_of=True),
    Action("emergency_clear", "emergency-clear", "Delete every cache entry (needs the confirmation token).",
           lambda m, actor, p: m.emergency_clear(actor, p.get("confirm")),
           # Not required here: a missing token is refused by Maintenance like a wrong one, and audited.
           (Parameter("confirm", f"Must be exactly {EMERGENCY_TOKEN}.", EMERGENCY_TOKEN),)),
    Action("prewarm", "prewarm", "Compute a cache's all-rows key and its most used ids ahead of traffic.",
           lambda m, actor, p: m.prewarm(actor, p["cache"]),
           (Parameter("cache", "The cache to prewarm, e.g. product_performance.", "NAME", required=True),)),
    Action("cache_add", "add", "Register a function returning jsonb as a cache: creates FUNCTION_cached, its "
           "invalidation triggers on each source table and its grants.",
           lambda m, actor, p: m.add_cache(actor, p["function"], p["source"], _duration(p.get("duration")),
                                           p.get("name"), p.get("description")),
           (Parameter("function", "The function to cache, e.g. public.get_order_summary (add its argument types "
                                  "when the name is overloaded).", "FUNCTION", required=True, argument=True),
            Parameter("source", "A table the function reads, as TABLE or TABLE:COLUMN where COLUMN holds the "
                                "function's argument (then a changed row invalidates only its key).",
                      "TABLE[:COLUMN]", required=True, multiple=True),
            Parameter("duration", "How long results stay cached, e.g. 10m (default CACHE_DEFAULT_DURATION).", "10m"),
            Parameter("name", "The cache's name (default: the function's name without get_).", "NAME"),
            Parameter("description", "What the cache holds, for people.", "TEXT")), group="cache"),
    Action("cache_from_candidate", "add-candidate", "Wrap a caching candidate (python -m cachelib candidates; a read "
           "query the cache's owner ran) in a new function and register it as a cache; its sources are the "
           "tables the query reads.",
           lambda m, actor, p: m.add_cache_from_candidate(actor, p["queryid"], p["function"],
                                                          _duration(p.get("duration")), p.get("description")),
           (Parameter("queryid", "The candidate's queryid (the candidates list shows it).", "QUERYID",
                      integer_range=(-2**63, 2**63 - 1), required=True, argument=True),
            Parameter("function", "The new function's name in public (its cache is named after it).",
                      "FUNCTION", required=True),
            Parameter("duration", "How long results stay cached, e.g. 10m (default CACHE_DEFAULT_DURATION).", "10m"),
            Parameter("description", "What the cache holds, for people.", "TEXT")), group="cache"),
    Action("cache_remove", "remove", "Drop a registered cache: its wrapper, triggers, entries and statistics.",
           lambda m, actor, p: m.remove_cache(actor, p["cache"]),
           (Parameter("cache", "The cache to remove.", "NAME", required=True, argument=True),), group="cache"),
    Action("cache_duration", "duration", "Set how long a cache keeps results, for every caller, until set again "
           "(default: back to its environment variable or registered duration).",
           lambda m, actor, p: m.set_cache_duration(actor, p["cache"], _duration_or_default(p["duration"])),
           (Parameter("cache", "The cache.", "NAME", required=True, argument=True),
            Parameter("duration", "A duration such as 15m or 1h30m, or default.", "DURATION", required=True,
                      argument=True)), group="cache"),
    Action("verify", None, "The read-only deployment checks (python -m cachelib verify has more options).",
           lambda m, actor, p: verify_deployment(m, actor), note="the read-only deployment checks"),
)}
ACTIONS = tuple(REGISTRY)


def _duration(text: str | None) -> Duration:
    return parse_duration(text) if text else settings().default_duration


def _duration_or_default(text: str) -> Duration | None:
    return None if text.strip().lower() == "default" else parse_duration(text)


def verify_deployment(maintenance: Maintenance, actor: Actor) -> ActionResult:
    """The read-only checks of `python -m cachelib verify`; details: checks and whether all required pass.

    Leaves entries and statistics as they were (the cached calls run in a transaction that is rolled
    back, see cachelib.verify); the only row written is this action's audit row."""
    from cachelib import verify

    def run(conn):
        checks = verify.run_checks(maintenance.database.url, allow_writes=False)
        passed = verify.all_required_pass(checks)
        write_audit(conn, "verify", {}, "ok", {"all_required_pass": passed})
        return verify.summary(checks), {"all_required_pass": passed, "checks": [c.to_dict() for c in checks]}
    return maintenance.act(actor, "verify", {}, run)


def actions_for(actor: Actor) -> list[str]:
    """The maintenance actions this actor may run."""
    return list(ACTIONS) if may_maintain(actor) else []


def run(database: Database, actor: Actor, name: str, params: dict[str, Any]) -> ActionResult:
    """Check one request for action ``name`` at the edge, then run it through Maintenance.

    ``params`` maps parameter names to values; None means not given."""
    action = REGISTRY.get(name)
    if action is None:
        raise InvalidInput(f"unknown action {name!r}; valid actions: {', '.join(ACTIONS)}")
    given = {key: value for key, value in params.items() if value is not None}
    for key, value in given.items():
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):  # PostgreSQL text cannot hold NUL
            raise InvalidInput(f"{key} must not contain NUL characters")
    maintenance = Maintenance(database)
    if not may_maintain(actor):
        # Refused before the parameters are looked at: a viewer learns nothing about them.
        shown = {key: value[:200] if isinstance(value, str) else value for key, value in given.items()}
        maintenance.refuse(actor, name, shown, f"role {actor.role} may not run maintenance")
        raise PermissionDenied(f"{actor.name} ({actor.role}) may not run {name}: maintenance is for admins")
    known = {p.name for p in action.parameters}
    extra = sorted(set(given) - known)
    if extra:
        raise InvalidInput(f"{name} does not take {', '.join(extra)}; usage: {action.usage}")
    for parameter in action.parameters:
        if parameter.required and parameter.name not in given:
            raise InvalidInput(f"{name} needs {parameter.name}={parameter.placeholder}; usage: {action.usage}")
    # Rules of the action itself (exactly one of cache or key, ranges, the token) are Maintenance's.
    return action.call(maintenance, actor, given)
