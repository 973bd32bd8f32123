"""The admin HTTP API (FastAPI): metrics, maintenance, Prometheus and a health probe.

Every route calls the same cachelib functions as the dashboard and the CLI
(queries, maintenance, apikeys); there is no SQL here. Start it with
``python -m cachelib api`` (uvicorn) and read the OpenAPI docs at /docs.

Auth: ``Authorization: Bearer <key>`` (keys from ``python -m cachelib api-key
create``). Missing, malformed, unknown or revoked key: 401. A viewer key may
read; POST (maintenance) needs an admin key, else 403. Every action and every
review export is written to the audit log under the key's name; the reads that
dashboards and scripts poll (metrics, caches, maintenance) write no audit row
per call: the key's last use is recorded instead (api_keys.last_used_at, at
most once a second), and a refused key is audited. Every key check first takes its
turn in the shared failed-authentication throttle (cachelib/throttle.py, kept
in PostgreSQL): a client address that keeps failing waits longer for each
check, and gets 429 with Retry-After instead of waiting more than the cap.

The client address is the connecting address; X-Forwarded-For is believed only
from TRUSTED_PROXIES. Serve the app with uvicorn's own proxy-header handling
off (``SERVER_OPTIONS``; ``python -m cachelib api`` does), or uvicorn would
rewrite the address from the header before we see it.

Errors: bad input 400 (unknown action, bad cache name, missing token, any
query parameter given twice), bad types/ranges 422, wrong method 405, too many
failed keys 429, database down 503; any other failure a generic 500 without
details (the details go to the server log).

Settings: API_METRICS_REQUIRE_KEY (true/false, default false): whether
GET /metrics (Prometheus) needs a key too; API_REPORT_SECONDS (default 5):
how long one metrics report is served to every caller; TRUSTED_PROXIES.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from cachelib import actions, alerts, apikeys, catalog, queries, review
from cachelib.actions import ACTIONS, REGISTRY, actions_for
from cachelib.config import TrustedProxies, parse_boolean, settings
from cachelib.db import Database, get_database, get_read_database
from cachelib.errors import Busy, CacheError, DatabaseUnavailable, InvalidInput, PermissionDenied
from cachelib.jsonsafe import plain
from cachelib.maintenance import SEVERITY, Actor, worst
from cachelib.throttle import API, FailureThrottle, Throttled, address_subject, client_address

log = logging.getLogger("cachelib.api")

METRICS_REQUIRE_KEY_SETTING = "API_METRICS_REQUIRE_KEY"
ADMIN_PREFIX = "/api/admin/cache"



def metrics_require_key(environ: Mapping[str, str] | None = None) -> bool:
    """API_METRICS_REQUIRE_KEY (default false); ConfigError for anything but a yes/no word."""
    env = os.environ if environ is None else environ
    return parse_boolean(METRICS_REQUIRE_KEY_SETTING, (env.get(METRICS_REQUIRE_KEY_SETTING) or "false").strip()
                         or "false")


# --- the request's edge: server options, repeated parameters --------------------------

# How uvicorn must serve this app: never take the client's address from X-Forwarded-For itself
# (by default it believes the header from 127.0.0.1, so any local process could pick its address).
SERVER_OPTIONS: dict[str, Any] = {"proxy_headers": False, "forwarded_allow_ips": ""}


def repeated_parameters(query_string: bytes) -> list[tuple[str, int]]:
    """Query parameters given more than once, with how often, as FastAPI would decode them."""
    counts = Counter(name for name, _value in QueryParams(query_string).multi_items())
    return sorted((name, count) for name, count in counts.items() if count > 1)


class RefuseRepeatedParameters:
    """400 for any request that repeats a query parameter: which value counts must never be a guess
    (``action=health_check&action=emergency_clear`` would otherwise run the last one)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            repeated = repeated_parameters(scope.get("query_string", b""))
            if repeated:
                names = ", ".join(f"{name[:100]!r} ({count} times)" for name, count in repeated[:10])
                response = JSONResponse({"detail": f"query parameter given more than once: {names}; "
                                                   "give each parameter once"}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# --- response bodies (for the OpenAPI document) -------------------------------


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for the person who has to act on it.")


class HealthBody(BaseModel):
    status: str = Field(description="ok or unavailable")
    database: str = Field(description="reachable or unreachable")
    latency_ms: float | None = Field(None, description="Round trip to the database")
    detail: str | None = None


class ActionResultBody(BaseModel):
    action: str
    ok: bool
    message: str
    details: dict[str, Any]
    duration_ms: float


class CallerBody(BaseModel):
    name: str
    role: str


class HealthSummaryBody(BaseModel):
    overall: str = Field(description="Worst status of all checks: ok, warning or critical")
    counts: dict[str, int]
    checks: list[dict[str, Any]]


class MaintenanceBody(BaseModel):
    generated_at: str
    caller: CallerBody
    last_cleanup: dict[str, Any] | None = Field(description="Newest cleanup log row; null when none ran yet")
    health: HealthSummaryBody
    actions: list[str] = Field(description="Maintenance actions this caller may POST")
    action_usage: dict[str, str] = Field(description="Query string of each action available to the caller")


class MetricsBody(BaseModel):
    generated_at: str
    deployment: dict[str, Any]
    caches: list[dict[str, Any]] = Field(description="queries.overview(): one row per cache")
    hit_rates: dict[str, dict[str, float | None]] = Field(description="Per cache: hit rate % today, 7d, 30d")
    load_reduction: dict[str, Any] = Field(description="Share of query time avoided (%), overall and per cache")
    fallbacks: dict[str, Any] = Field(description="Fallbacks to the direct queries, per cache and per day")
    targets: list[dict[str, Any]] = Field(description="Week 1 / Month 1 targets and their state")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    meaning = {400: "Bad input, or a query parameter given more than once",
               401: "Missing, malformed, unknown or revoked API key",
               403: "The key's role may not do this",
               409: "Another transaction held what the action needs; nothing changed, try again (Retry-After)",
               429: "Too many failed API keys from this client address; see Retry-After",
               503: "The database is unavailable",
               500: "Internal error (no details are sent)"}
    return {code: {"model": ErrorBody, "description": meaning[code]} for code in codes}


# --- JSON from DataFrames --------------------------------------------------------


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [plain(row) for row in frame.to_dict(orient="records")]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


# --- what the routes return --------------------------------------------------------


def metrics_report(database: Database) -> dict[str, Any]:
    """Overview per cache, hit rates (today/7d/30d), load reduction, fallbacks, targets."""
    caches = _records(queries.overview(database))
    hit_rates = {c["cache_name"]: {"today": c["hit_rate_today"], "7d": c["hit_rate_7d"], "30d": c["hit_rate_30d"]}
                 for c in caches}
    series = queries.load_reduction_series(30, "day", database)
    saved = float(series["compute_ms_saved"].sum()) if not series.empty else 0.0
    spent = float(series["compute_ms_spent"].sum()) if not series.empty else 0.0
    overall = queries.load_reduction(series)
    info = queries.deployment(database)
    return {
        "generated_at": _now_iso(),
        "deployment": plain({"deployed_at": info.deployed_at, "source": info.source, "demo_data": info.demo_data,
                              "database_now": info.now}),
        "caches": caches,
        "hit_rates": hit_rates,
        "load_reduction": {
            "overall_30d": overall,
            "compute_ms_saved_30d": round(saved, 2),
            "compute_ms_spent_30d": round(spent, 2),
            "per_cache_30d": {c["cache_name"]: c["load_reduction_30d"] for c in caches},
        },
        "fallbacks": {
            "per_cache_7d": {c["cache_name"]: c["fallbacks_7d"] for c in caches},
            "by_day_7d": _records(queries.fallback_usage(7, database)),
        },
        "targets": _records(queries.target_status(database=database)),
    }


def maintenance_report(database: Database, actor: Actor) -> dict[str, Any]:
    """Last cleanup, health summary and the actions available to ``actor``."""
    last = _records(queries.cleanup_log(1, database))
    checks = _records(queries.health(database))
    statuses = [c.get("status") for c in checks]
    overall = worst(statuses)
    allowed = actions_for(actor)
    return {
        "generated_at": _now_iso(),
        "caller": {"name": actor.name, "role": actor.role},
        "last_cleanup": last[0] if last else None,
        "health": {"overall": overall, "counts": {s: statuses.count(s) for s in ("ok", "warning", "critical")},
                   "checks": checks},
        "actions": allowed,
        "action_usage": {a: REGISTRY[a].usage for a in allowed},
    }


DAYS = next(p for a in REGISTRY.values() for p in a.parameters if p.name == "days")


def _described(parameter: str) -> str:
    """A query parameter's description: the actions that take it and what it is, from the registry."""
    users = [(a.name, p) for a in REGISTRY.values() for p in a.parameters if p.name == parameter]
    return " ".join(f"{name}: {p.help}" for name, p in users)


def run_action(database: Database, actor: Actor, action: str, params: dict[str, Any]) -> dict[str, Any]:
    """One POSTed maintenance action, through the registry's one path."""
    return actions.run(database, actor, action, params).to_dict()


# --- Prometheus ----------------------------------------------------------------------


class CacheCollector(Collector):
    """Reads the cache's state from the database at every scrape."""

    def __init__(self, database_getter):
        self._database = database_getter

    def describe(self):
        return []  # nothing is read when the collector is registered

    def collect(self):
        database = self._database()
        overview = _records(queries.overview(database))
        by_cache = queries.lifetime_totals(database).set_index("cache_name")

        def gauge(name, doc, labels=("cache",)):
            return GaugeMetricFamily(name, doc, labels=list(labels))

        entries = gauge("pgcache_entries", "Cache entries holding data (live and expired).")
        live = gauge("pgcache_live_entries", "Cache entries not yet expired.")
        expired = gauge("pgcache_expired_entries", "Expired entries waiting for cleanup.")
        size = gauge("pgcache_bytes", "Bytes of cached data.")
        ratio = gauge("pgcache_hit_ratio", "Hit ratio (0..1) over a window: today (UTC), 7d or 30d.",
                      ("cache", "window"))
        load = gauge("pgcache_load_reduction_ratio", "Share (0..1) of query time avoided over the last 30 days.")
        fallbacks_7d = gauge("pgcache_fallbacks_7d", "Fallbacks to the direct query in the last 7 days.")
        hits = CounterMetricFamily("pgcache_hits", "Cache hits since the cache was first counted (never lowered "
                                   "by the statistics retention).", labels=["cache"])
        misses = CounterMetricFamily("pgcache_misses", "Cache misses since the cache was first counted.",
                                     labels=["cache"])
        fallbacks = CounterMetricFamily("pgcache_fallbacks", "Fallbacks to the direct query since the cache was "
                                        "first counted.", labels=["cache"])
        for row in overview:
            name = row["cache_name"]
            entries.add_metric([name], row["entries"] or 0)
            live.add_metric([name], row["live_entries"] or 0)
            expired.add_metric([name], row["expired_entries"] or 0)
            size.add_metric([name], row["total_bytes"] or 0)
            fallbacks_7d.add_metric([name], row["fallbacks_7d"] or 0)
            for window, column in (("today", "hit_rate_today"), ("7d", "hit_rate_7d"), ("30d", "hit_rate_30d")):
                if row[column] is not None:
                    ratio.add_metric([name, window], row[column] / 100.0)
            if row["load_reduction_30d"] is not None:
                load.add_metric([name], row["load_reduction_30d"] / 100.0)
            counts = by_cache.loc[name] if name in by_cache.index else None
            hits.add_metric([name], float(counts["hits"]) if counts is not None else 0.0)
            misses.add_metric([name], float(counts["misses"]) if counts is not None else 0.0)
            fallbacks.add_metric([name], float(counts["fallbacks"]) if counts is not None else 0.0)
        yield from (entries, live, expired, size, hits, misses, ratio, load, fallbacks, fallbacks_7d)

        cleanups = [row["last_cleanup_at"] for row in overview if row.get("last_cleanup_at")]
        since = GaugeMetricFamily("pgcache_seconds_since_last_cleanup",
                                  "Seconds since the last cleanup (absent when none ever ran).")
        if cleanups:
            last = max(datetime.fromisoformat(text) for text in cleanups)
            since.add_metric([], max(0.0, (datetime.now(UTC) - last).total_seconds()))
        yield since
        yield from alerting_metrics(database)


def alerting_metrics(database: Database):
    """What the alert rules in deploy/prometheus need beyond the figures above: the target each cache's
    hit ratio is held to, the last recorded health run (the one the webhook judges) and invalidations."""
    target = GaugeMetricFamily("pgcache_hit_ratio_target", "Hit-ratio goal (0..1) a cache is held to now: its "
                               "Week 1 target in the first 7 days after deployment, then its Month 1 target.",
                               labels=["cache", "milestone"])
    for goal in targets_in_effect(database):
        target.add_metric([goal.cache_name, goal.milestone], goal.goal / 100.0)
    yield target

    run = alerts.recorded_health(database)
    overall = GaugeMetricFamily("pgcache_health_status", "Overall health of the last recorded health run (every "
                                "cleanup and health check records one): 0 ok, 1 warning, 2 critical.")
    checks = GaugeMetricFamily("pgcache_health_check_status", "Each check of the last recorded health run: "
                               "0 ok, 1 warning, 2 critical.", labels=["check"])
    if run is not None:
        overall.add_metric([], SEVERITY[run.overall])
        for check in run.checks:
            checks.add_metric([check["check_name"]], SEVERITY.get(check["status"], 0))
    yield from (overall, checks)

    # A counter that starts again at 00:00 UTC (its _created says when): rate() takes the reset in its stride.
    since, counts = alerts.keys_invalidated_today(database)
    invalidated = CounterMetricFamily("pgcache_invalidated_keys", "Keys invalidated by writes since 00:00 UTC "
                                      "(the monthly review's count; starts again every UTC day).", labels=["cache"])
    for name, keys in counts.items():
        invalidated.add_metric([name], keys, created=since.timestamp())
    yield invalidated


def targets_in_effect(database: Database) -> list[queries.Target]:
    """The hit-rate targets of the last milestone whose window has started (the first before any has);
    Month 1's, the steady-state goals, stay in effect after its window."""
    info = queries.deployment(database)
    age = info.now - info.deployed_at
    by_start = sorted(queries.WINDOWS, key=lambda name: queries.WINDOWS[name][0])
    started = [name for name in by_start if queries.WINDOWS[name][0] <= age]
    milestone = started[-1] if started else by_start[0]
    return [t for t in queries.targets() if t.milestone == milestone and t.metric == "hit_rate"]


# --- the application -------------------------------------------------------------------

bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey", bearerFormat="pgc_<prefix>_<secret>",
                    description="An API key from `python -m cachelib api-key create --name NAME --role admin|viewer`.")


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": challenge})


def _short_reason(exc: DatabaseUnavailable) -> str:
    """'database unavailable: Connection refused', without hosts, users or paths."""
    text = str(exc)
    if text.startswith("cannot reach the database at ") and ": " in text:
        reason = text.rsplit(": ", 1)[-1].strip()[:120]
        return f"database unavailable: {reason}" if reason else "database unavailable"
    return "database unavailable"


class SharedReport:
    """One report served to every caller for ``seconds``: a metrics endpoint polled by many dashboards and
    scripts costs one computation per period, and callers arriving together wait for one computation
    instead of each running it. A failed computation is not kept."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._made: tuple[float, Any] = (-math.inf, None)  # (when, report): replaced whole, read without the lock

    def fresh(self) -> Any | None:
        """The report when it is still fresh (cheap, never blocks: for the event loop), else None."""
        made_at, report = self._made
        return report if time.monotonic() - made_at < self.seconds else None

    def get(self, make: Callable[[], Any]) -> Any:
        if self.seconds <= 0:
            return make()
        with self._lock:
            report = self.fresh()
            if report is None:
                report = make()
                self._made = (time.monotonic(), report)
            return report


def create_app(database: Database | None = None, *, metrics_key_required: bool | None = None,
               throttle: FailureThrottle | None = None, trusted_proxies: TrustedProxies | None = None,
               read_database: Database | None = None, report_seconds: float | None = None) -> FastAPI:
    """The API. ``database`` defaults to the configured one (looked up at the first request), the primary
    for keys, throttles, the audit and actions; ``read_database`` (a hot standby) takes the reads;
    ``metrics_key_required`` to API_METRICS_REQUIRE_KEY; ``throttle`` to FailureThrottle();
    ``trusted_proxies`` to TRUSTED_PROXIES; ``report_seconds`` to API_REPORT_SECONDS. Raises ConfigError
    for a bad setting."""
    require_key = metrics_require_key() if metrics_key_required is None else metrics_key_required
    shared_metrics = SharedReport(settings().api_report_seconds if report_seconds is None else report_seconds)
    throttle = throttle or FailureThrottle()
    trusted = settings().trusted_proxies if trusted_proxies is None else trusted_proxies
    app = FastAPI(
        title="pgcache-admin API",
        version="1.0.0",
        description="Metrics and maintenance of the PostgreSQL query cache. Admin routes need "
                    "`Authorization: Bearer <key>`; POST needs an admin key.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.add_middleware(RefuseRepeatedParameters)
    app.state.database = database
    app.state.read_database = read_database
    app.state.throttle = throttle
    app.state.metrics_key_required = require_key

    def current_database() -> Database:
        """The primary: keys, throttles, the audit and every action."""
        if app.state.database is None:
            app.state.database = get_database()
        return app.state.database

    def current_read_database() -> Database:
        """Where the reads go: ``read_database``, else DATABASE_READ_URL's replica when the API was built
        for the configured database, else the primary."""
        if app.state.read_database is None:
            app.state.read_database = get_read_database() if database is None else current_database()
        return app.state.read_database

    async def authenticated(request: Request, _credentials=Security(bearer)) -> Actor:
        headers = request.headers.getlist("authorization")
        if not headers:  # not a guess: nothing to count
            raise _unauthorized("missing API key: send the header Authorization: Bearer <key>")
        database = await run_in_threadpool(current_database)
        peer = request.client.host if request.client else None
        subjects = [address_subject(client_address(peer, request.headers.getlist("x-forwarded-for"), trusted))]
        scheme, _, token = headers[0].strip().partition(" ")
        token = token.strip()
        malformed = len(headers) > 1 or scheme.lower() != "bearer" or not token or any(c.isspace() for c in token)

        def check(conn) -> Actor | None:  # a malformed header is a failed guess like any other
            return None if malformed else apikeys.authenticate_on(conn, token)

        # Keys are checked one turn at a time per address: a free turn while the address is within its free
        # failures; beyond them, a reserved slot, waited for here (not in a thread or under a lock).
        turn = await run_in_threadpool(throttle.free_turn, API, subjects, check, database)
        if turn is not None:
            actor = turn.result
        else:
            admission = await run_in_threadpool(throttle.reserve, API, subjects, database)
            if admission.wait:
                await asyncio.sleep(admission.wait)
            actor = None if malformed else await run_in_threadpool(apikeys.authenticate, token, database)
            if actor is not None:
                await run_in_threadpool(throttle.succeeded, API, subjects, database)
        if malformed:
            raise _unauthorized("malformed Authorization header: expected one header 'Bearer <key>'",
                                "invalid_request")
        if actor is None:
            raise _unauthorized("unknown or revoked API key", "invalid_token")
        return actor

    async def metrics_guard(request: Request, _credentials=Security(bearer)) -> Actor | None:
        if not require_key:
            return None
        return await authenticated(request, _credentials)

    # --- errors: never a stack trace, never a 500 for what a client sent -----------

    @app.exception_handler(InvalidInput)
    async def _invalid(_request: Request, exc: InvalidInput):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Busy)
    async def _busy(_request: Request, exc: Busy):
        return JSONResponse({"detail": str(exc)}, status_code=409, headers={"Retry-After": "5"})

    @app.exception_handler(PermissionDenied)
    async def _denied(_request: Request, exc: PermissionDenied):
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(Throttled)
    async def _throttled(_request: Request, exc: Throttled):
        return JSONResponse({"detail": f"too many failed API keys from this address: {exc}"}, status_code=429,
                            headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(_request: Request, exc: DatabaseUnavailable):
        log.warning("database unavailable: %s", exc)
        return JSONResponse({"detail": _short_reason(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(CacheError)
    async def _server_problem(request: Request, exc: CacheError):
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return JSONResponse({"detail": "internal server error; the cause is in the server log"}, status_code=500)

    @app.exception_handler(Exception)
    async def _last_resort(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    # --- routes ----------------------------------------------------------------------

    @app.get(f"{ADMIN_PREFIX}/metrics", response_model=MetricsBody, tags=["admin"],
             summary="Cache metrics: overview, hit rates, load reduction, fallbacks, targets",
             responses=_errors(400, 401, 429, 503, 500))
    async def get_metrics(_actor: Actor = Depends(authenticated)):
        # The body as served (validated by its model once, when the report is made, not per request); a
        # fresh one is served from here, only making one needs a worker thread.
        body = shared_metrics.fresh() or await run_in_threadpool(shared_metrics.get, lambda: MetricsBody.model_validate(
            metrics_report(current_read_database())).model_dump_json())
        return Response(body, media_type="application/json")

    @app.get(f"{ADMIN_PREFIX}/caches", tags=["admin"],
             summary="The catalog of caches: function, wrapper, sources, and the duration in effect and why",
             responses=_errors(400, 401, 429, 503, 500))
    def get_caches(_actor: Actor = Depends(authenticated)):
        return {"caches": catalog.listing(settings(), current_read_database())}

    @app.get(f"{ADMIN_PREFIX}/maintenance", response_model=MaintenanceBody, tags=["admin"],
             summary="Last cleanup, health summary and the actions available to the caller",
             responses=_errors(400, 401, 429, 503, 500))
    def get_maintenance(actor: Actor = Depends(authenticated)):
        return maintenance_report(current_read_database(), actor)

    @app.post(f"{ADMIN_PREFIX}/maintenance", response_model=ActionResultBody, tags=["admin"],
              summary="Run one maintenance action (admin key)",
              description="Actions and their parameters:\n\n" + "\n".join(f"- `{a.usage}`" for a in REGISTRY.values()),
              responses=_errors(400, 401, 403, 409, 429, 503, 500))
    def post_maintenance(
        actor: Actor = Depends(authenticated),
        action: str = Query(description="One of: " + ", ".join(ACTIONS), examples=list(ACTIONS)),
        # The registry's parameters, one query parameter each (tests/test_api.py checks they match).
        days: int | None = Query(None, ge=DAYS.integer_range[0], le=DAYS.integer_range[1],
                                 description=_described("days")),
        cache: str | None = Query(None, description=_described("cache")),
        key: str | None = Query(None, description=_described("key")),
        confirm: str | None = Query(None, description=_described("confirm")),
        queryid: int | None = Query(None, description=_described("queryid"), ge=-2**63, le=2**63 - 1),
        function: str | None = Query(None, description=_described("function"), max_length=300),
        source: list[str] | None = Query(None, description=_described("source")
                                         + " Repeat it, or separate tables with commas."),
        duration: str | None = Query(None, description=_described("duration"), max_length=40),
        name: str | None = Query(None, description=_described("name"), max_length=100),
        description: str | None = Query(None, description=_described("description"), max_length=500),
    ):
        params = {"days": days, "cache": cache, "key": key, "confirm": confirm, "queryid": queryid,
                  "function": function, "source": source, "duration": duration, "name": name,
                  "description": description}
        return run_action(current_database(), actor, action, params)

    @app.get(f"{ADMIN_PREFIX}/review", tags=["admin"],
             summary="The monthly review of one month: JSON, the daily rows as CSV, or the HTML report",
             responses={200: {"content": {"application/json": {}, "text/csv": {}, "text/html": {}},
                              "description": "The review"}, **_errors(400, 401, 429, 503, 500)})
    def get_review(
        actor: Actor = Depends(authenticated),
        month: str | None = Query(None, description="YYYY-MM (UTC); default: the last full month",
                                  examples=["2026-11"], max_length=7),
        output: str = Query("json", alias="format", pattern="^(json|csv|html)$",
                            description="json, csv (daily rows per cache) or html (self-contained report)"),
    ):
        database = current_database()
        data = review.build(review.parse_month(month) if month is not None else None, current_read_database())
        apikeys.audit(actor, "api_get_review", {"route": f"GET {ADMIN_PREFIX}/review", "month": month,
                                                "format": output}, "ok", {"month": f"{data.period.month:%Y-%m}"},
                      database=database)
        name = f"cache-review-{data.period.month:%Y-%m}"
        if output == "csv":
            return Response(review.to_csv(data), media_type="text/csv",
                            headers={"Content-Disposition": f'attachment; filename="{name}-daily.csv"'})
        if output == "html":
            from cachelib import report

            return Response(report.to_html(data), media_type="text/html",
                            headers={"Content-Disposition": f'attachment; filename="{name}.html"'})
        return review.to_dict(data)

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics",
             description=f"Prometheus text format. Needs a key when {METRICS_REQUIRE_KEY_SETTING}=true.",
             response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus exposition"}, **_errors(400, 401, 429, 503, 500)})
    def prometheus_metrics(_actor: Actor | None = Depends(metrics_guard)):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(CacheCollector(current_read_database))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", response_model=HealthBody, tags=["monitoring"], summary="Liveness and database reachability",
             responses={503: {"model": HealthBody, "description": "The database is unreachable"},
                        **_errors(400)})
    def healthz():
        try:
            latency = apikeys.ping(current_database())
        except DatabaseUnavailable as exc:
            return JSONResponse({"status": "unavailable", "database": "unreachable", "latency_ms": None,
                                 "detail": _short_reason(exc)}, status_code=503)
        except CacheError as exc:
            log.error("health check failed: %s", exc)
            return JSONResponse({"status": "unavailable", "database": "unreachable", "latency_ms": None,
                                 "detail": "server misconfigured; the cause is in the server log"}, status_code=503)
        return {"status": "ok", "database": "reachable", "latency_ms": latency, "detail": None}

    return app
