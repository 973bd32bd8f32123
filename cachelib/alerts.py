"""Alerting: the signals the shipped Prometheus rules watch, and a webhook told when health changes.

Health is recorded in cache_private.health_history (0016) by every cleanup (pg_cron, or cron running
``python -m cachelib maintenance cleanup``) and by every health check action. ``python -m cachelib
alerts notify``, run from cron after the cleanup, compares the overall status of the most recent
recorded run (the worst of its checks: cachelib.maintenance.worst) with the status the webhook was
last told (cache_private.alert_state, 0019) and posts a Slack-compatible message to
CACHE_ALERT_WEBHOOK_URL when they differ. The new status is stored only once the webhook took the
message, so a failed send is sent again by the next run; the state row is locked while sending, so
two overlapping runs send once. A deployment that was never notified counts as ok: a first run
that finds ok sends nothing.

The webhook URL is a credential (whoever has a Slack webhook URL can post to the channel): no
message, log line or exception raised here contains it.

GET /metrics (cachelib.api) exports the last recorded run and the keys invalidated today from the
readers below, so the Prometheus rules (deploy/prometheus) and the webhook judge the same runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from cachelib import review
from cachelib.config import Settings, settings
from cachelib.db import Database, get_database, rows, translated_errors
from cachelib.errors import CacheError, ConfigError
from cachelib.maintenance import SEVERITY, worst

log = logging.getLogger("cachelib.alerts")

WEBHOOK_SETTING = "CACHE_ALERT_WEBHOOK_URL"
# Long enough for a chat service on a slow day, short enough that cron never piles runs up.
TIMEOUT_SECONDS = 5.0
# The status a deployment is assumed to have before anything was sent.
UNNOTIFIED = "ok"
HEALTH_CHANNEL = "health"  # cache_private.alert_state.name of the overall-health notification
WHERE_TO_LOOK = ("Open the dashboard's Maintenance & Health page, or run "
                 "python -m cachelib maintenance health, for every check and its recommendation.")


class WebhookFailed(CacheError):
    """The webhook did not take a message (unreachable, too slow, or not a 2xx answer)."""


# --- the signals ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthRun:
    """The checks one cleanup or health check recorded."""

    recorded_at: datetime
    source: str  # 'cleanup' or 'health check'
    checks: list[dict[str, Any]]  # check_name, status, value, recommendation, in their order

    @property
    def overall(self) -> str:
        return worst(check["status"] for check in self.checks)

    @property
    def failing(self) -> list[dict[str, Any]]:
        """The checks that are not ok, the worst first."""
        bad = [check for check in self.checks if check["status"] != "ok"]
        return sorted(bad, key=lambda check: -SEVERITY.get(check["status"], 0))


# One run is the rows one record_health() call wrote: the same recorded_at and source.
LAST_RUN_SQL = """
    WITH last AS (SELECT recorded_at, source FROM cache_private.health_history
                  ORDER BY recorded_at DESC, id DESC LIMIT 1)
    SELECT h.recorded_at, h.source, h.check_name, h.status, h.value, h.recommendation
    FROM cache_private.health_history h JOIN last USING (recorded_at, source)
    ORDER BY h.id"""


def last_health_run(conn) -> HealthRun | None:
    """The most recent recorded health run, or None when nothing was recorded yet."""
    found = rows(conn, LAST_RUN_SQL)
    if not found:
        return None
    checks = [{key: row[key] for key in ("check_name", "status", "value", "recommendation")} for row in found]
    return HealthRun(found[0]["recorded_at"], found[0]["source"], checks)


# Keys invalidated by writes today, per cache, counted by the monthly review's rule.
INVALIDATED_TODAY_SQL = f"""
    SELECT c.cache_name, COALESCE(i.keys_invalidated, 0) AS keys
    FROM cache_private.caches c LEFT JOIN ({review.INVALIDATED_SQL}) i USING (cache_name)
    ORDER BY c.cache_name"""


def keys_invalidated_today(database: Database) -> tuple[datetime, dict[str, int]]:
    """Keys invalidated by writes since 00:00 UTC (the SQL clock's day), per cache, and that midnight."""
    since = database.value("SELECT pg_catalog.date_trunc('day', cache_private.cache_now(), 'UTC')")
    found = database.rows(INVALIDATED_TODAY_SQL, {"start": since, "end": since + timedelta(days=1),
                                                  "end_day": since.astimezone(UTC).date() + timedelta(days=1)})
    return since, {row["cache_name"]: int(row["keys"]) for row in found}


def recorded_health(database: Database) -> HealthRun | None:
    """The most recent recorded health run on a pooled connection (what /metrics exports)."""
    with translated_errors(database.url), database.connection() as conn:
        return last_health_run(conn)


# --- the messages ----------------------------------------------------------------------------------


def _when(moment: datetime) -> str:
    """A moment in UTC, the same whoever reads the message."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def health_message(run: HealthRun, previous: str) -> str:
    """The notification of a change of the overall status from ``previous`` to ``run.overall``."""
    headline = f"pgcache-admin health: {run.overall.upper()} (was {previous})"
    recorded = f"Recorded by the {run.source} at {_when(run.recorded_at)}."
    if not run.failing:
        return "\n".join([headline, recorded, "Every check is ok again."])
    lines = [headline, recorded]
    for check in run.failing:
        lines.append(f"- {check['status']}: {check['check_name']}: {check['value']}")
        lines.append(f"  what to do: {check['recommendation']}")
    lines.append(WHERE_TO_LOOK)
    return "\n".join(lines)


TEST_MESSAGE = ("pgcache-admin: a test notification (python -m cachelib alerts test). The webhook works; it "
                "will be told when the overall health status changes (python -m cachelib alerts notify, run "
                "from cron).")


def payload(text: str) -> dict[str, Any]:
    """Slack-compatible JSON (an incoming webhook's ``text``; Mattermost and Rocket.Chat take it too)."""
    return {"text": text}


# --- sending ---------------------------------------------------------------------------------------


def webhook_url(config: Settings) -> str | None:
    """CACHE_ALERT_WEBHOOK_URL, or None when unset; ConfigError (without the value) when not http(s)."""
    url = config.secret("alert_webhook_url")
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{WEBHOOK_SETTING} must be an http:// or https:// URL (value not shown: it is a secret)")
    return url


def _scrubbed(text: str, url: str) -> str:
    """``text`` without the URL or its secret parts, on one line, short."""
    parts = urlsplit(url)
    for secret in (url, url.rstrip("/"), parts.netloc, parts.path, parts.query):
        if len(secret) > 1:
            text = text.replace(secret, "[webhook URL]")
    return " ".join(text.split())[:200]


def post(url: str, text: str) -> None:
    """POST ``text`` as Slack-compatible JSON; WebhookFailed (never naming the URL) unless answered 2xx."""
    where = f"the alert webhook ({WEBHOOK_SETTING})"
    try:
        response = httpx.post(url, json=payload(text), timeout=TIMEOUT_SECONDS)
    except httpx.TimeoutException:
        raise WebhookFailed(f"{where} did not answer within {TIMEOUT_SECONDS:g} s; nothing was sent") from None
    except httpx.HTTPError as exc:
        # httpx's own messages can quote the URL: only the kind of failure is passed on.
        raise WebhookFailed(f"could not reach {where} ({type(exc).__name__}); nothing was sent") from None
    if not 200 <= response.status_code < 300:
        answer = _scrubbed(response.text, url)
        raise WebhookFailed(f"{where} answered HTTP {response.status_code}"
                            + (f" ({answer})" if answer else "") + "; the message was not taken")


# --- notifying -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """What one ``notify`` run did, in one line for cron's mail."""

    sent: bool
    status: str | None
    message: str


def notify(database: Database | None = None, config: Settings | None = None) -> Notice:
    """Tell the webhook the overall health status if it changed since it was last told.
    Raises WebhookFailed when the webhook did not take it (the next run sends it again), ConfigError
    for a bad CACHE_ALERT_WEBHOOK_URL, DatabaseUnavailable."""
    config = config or settings()
    url = webhook_url(config)
    if url is None:
        return Notice(False, None, f"{WEBHOOK_SETTING} is not set: notifications are off")
    database = database or get_database()
    with translated_errors(database.url), database.connection() as conn, conn.transaction():
        claimed, told = _claim_state(conn)
        if not claimed:
            return Notice(False, None, "another alerts notify run is sending right now; nothing to do")
        run = last_health_run(conn)
        if run is None:
            return Notice(False, None, "no health run recorded yet (every cleanup and health check records one)")
        previous = told or UNNOTIFIED
        if run.overall == previous:
            return Notice(False, run.overall, f"overall health {run.overall}, as last notified: nothing to send")
        post(url, health_message(run, previous))
        conn.execute("""UPDATE cache_private.alert_state
                        SET status = %s, notified_at = cache_private.cache_now(), run_recorded_at = %s
                        WHERE name = %s""", (run.overall, run.recorded_at, HEALTH_CHANNEL))
    log.info("alert webhook told: overall health %s (was %s)", run.overall, previous)
    return Notice(True, run.overall, f"sent: overall health {run.overall} (was {previous})")


def _claim_state(conn) -> tuple[bool, str | None]:
    """Lock the notification's state row for this transaction: (True, the status last sent or None when
    never), or (False, None) when another run holds it (it is sending; waiting could only send twice)."""
    found = rows(conn, "SELECT status FROM cache_private.alert_state WHERE name = %s FOR UPDATE SKIP LOCKED",
                 (HEALTH_CHANNEL,))
    if found:
        return True, found[0]["status"]
    # Held by another run (0019 made the row), or deleted by hand: then this makes it again, locked.
    made = rows(conn, "INSERT INTO cache_private.alert_state (name) VALUES (%s) ON CONFLICT (name) DO NOTHING "
                      "RETURNING status", (HEALTH_CHANNEL,))
    return (True, None) if made else (False, None)


def send_test(config: Settings | None = None) -> str:
    """Post a test message; returns what was done. ConfigError when CACHE_ALERT_WEBHOOK_URL is unset or bad,
    WebhookFailed when the webhook did not take it."""
    url = webhook_url(config or settings())
    if url is None:
        raise ConfigError(f"{WEBHOOK_SETTING} is not set: set it to the webhook's URL to send a test message")
    post(url, TEST_MESSAGE)
    return "sent a test message to the alert webhook"
