"""Alerting (issue 16): the shipped Prometheus rules pass promtool's check and their unit tests, the
Grafana dashboard is a dashboard, both name only metrics the real GET /metrics exports, and the
health webhook (cachelib/alerts.py) tells a real local receiver about each change of the overall
health status once, again after a failed send, and never shows its URL.

Health changes for real: a cache entry above 5 MB makes the largest_entries check critical, and the
health check action records the run, as a cleanup would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cachelib import alerts, queries
from cachelib.config import PROJECT_ROOT, Settings
from cachelib.db import Database
from cachelib.errors import ConfigError
from cachelib.maintenance import Actor, Maintenance
from tests.servers import api_in_thread, free_port
from tests.test_cli import run_cli

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "pgcache-alerts.yml"
RULE_TESTS = PROJECT_ROOT / "deploy" / "prometheus" / "pgcache-alerts.test.yml"
DASHBOARD = PROJECT_ROOT / "deploy" / "grafana" / "pgcache-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package "
                                    "prometheus: apt-get install prometheus; .ci/run installs it)")

ADMIN = Actor("alerting-test", "admin", "test")
BIG_ENTRY = "expert_sessions:alerting-big-entry"
SECRET = "XXsecret-webhook-tokenXX"  # the part of a Slack webhook URL that is the credential


# --- metric names in PromQL ------------------------------------------------------------------------

METRIC_PREFIX = "pgcache_"
# A metric name of ours: not the tail of a longer identifier, bare or followed by '{'.
METRIC = re.compile(r"(?<![A-Za-z0-9_:])pgcache_[A-Za-z0-9_:]*")
# PromQL strings (label values, which may look like anything): double, single or back quotes.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def metric_names(promql: str) -> set[str]:
    """The product's metric names a PromQL expression selects (names inside label values do not count)."""
    return set(METRIC.findall(STRING.sub('""', promql)))


def template_metric_names(template: str) -> set[str]:
    """The product's metric names the queries of an annotation template select (they are in its strings)."""
    return set(METRIC.findall(template))


def test_metric_names_are_read_from_promql():
    expr = ('sum by (cache) (rate(pgcache_hits_total{cache="pgcache_not_a_metric", job=~"$job"}[5m])) '
            '/ on (cache) pgcache_misses_total > 0 and my_pgcache_other or pgcache_health_status')
    assert metric_names(expr) == {"pgcache_hits_total", "pgcache_misses_total", "pgcache_health_status"}


# --- the rules -------------------------------------------------------------------------------------


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)


@needs_promtool
def test_the_rules_pass_promtool_check():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout


@needs_promtool
def test_the_rules_pass_their_unit_tests():
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested_firing_and_quiet():
    cases = [case for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in group.get("alert_rule_test", [])]
    for severity_rule in rules():
        name, severity = severity_rule["alert"], severity_rule["labels"]["severity"]
        fired = [alert for case in cases if case["alertname"] == name for alert in case["exp_alerts"]
                 if alert["exp_labels"]["severity"] == severity]
        quiet = [case for case in cases if case["alertname"] == name and not case["exp_alerts"]]
        assert fired, f"no unit test shows {name} ({severity}) firing"
        assert quiet, f"no unit test shows {name} not firing"
    assert {rule["alert"] for rule in rules()} == {"PgcacheHitRateBelowTarget", "PgcacheHealthCritical",
                                                    "PgcacheFallbackSpike", "PgcacheCleanupLate",
                                                    "PgcacheInvalidationStorm"}


def test_every_alert_waits_has_a_severity_and_tells_the_admin_what_to_do():
    for rule in rules():
        assert re.fullmatch(r"\d+[mh]", rule.get("for", "")), f"{rule['alert']} has no for: duration"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        description = rule["annotations"]["description"]
        assert "python -m cachelib " in description, f"{rule['alert']} names no command to run"
        assert re.search(r"Maintenance & Health|Performance Analysis|Overview|Cache Management|Monthly Review",
                         description), f"{rule['alert']} names no dashboard page"


# --- the dashboard ---------------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(model: dict) -> list[str]:
    """Every PromQL query of the dashboard: the panels' targets and the template variables'."""
    found = [target["expr"] for panel in model["panels"] for target in panel.get("targets", [])]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_query_in_every_panel():
    model = dashboard()
    assert model["title"] and model["uid"] and isinstance(model["schemaVersion"], int)
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in model["templating"]["list"])
    panels = model["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert metric_names(target["expr"]), f"panel {panel['title']!r} queries none of our metrics"
            assert target["datasource"]["type"] == "prometheus"
    titles = " ".join(panel["title"] for panel in panels).lower()
    for subject in ("hit rate", "target", "load reduction", "fallbacks", "entries", "data", "health",
                    "cleanup", "invalidated"):
        assert subject in titles, f"no panel shows {subject}"


# --- /metrics names every metric the rules and the dashboard use ------------------------------------


@pytest.fixture(scope="module")
def database(db_url) -> Iterator[Database]:
    database = Database(db_url, Settings.from_env({}))
    yield database
    database.close()


def scrape(database: Database) -> str:
    with api_in_thread(database) as url:
        response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def samples(text: str) -> dict[str, list]:
    """Sample name (counters' with _total) -> its samples, from Prometheus text."""
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_the_rules_and_the_dashboard_name_only_metrics_that_metrics_exports(database, traffic):
    Maintenance(database).cleanup(ADMIN)  # a cleanup time and a recorded health run
    exported = set(samples(scrape(database)))
    assert {"pgcache_hits_total", "pgcache_hit_ratio"} <= exported

    used: dict[str, set[str]] = {}
    for rule in rules():
        names = metric_names(rule["expr"]) | set().union(
            *(template_metric_names(text) for text in rule["annotations"].values()))
        used[f"rule {rule['alert']}"] = names
    for query in dashboard_queries(dashboard()):
        used[f"dashboard query {query}"] = metric_names(query)
    assert all(used.values())
    missing = {where: sorted(names - exported) for where, names in used.items() if names - exported}
    assert not missing, f"names /metrics does not export: {missing}; it exports {sorted(exported)}"


def test_metrics_export_the_health_run_the_webhook_judges(database, fresh):
    assert record_health(database, critical=True) == "critical"
    found = samples(scrape(database))
    assert [s.value for s in found["pgcache_health_status"]] == [2.0]
    checks = {s.labels["check"]: s.value for s in found["pgcache_health_check_status"]}
    assert checks["largest_entries"] == 2.0
    assert set(checks) == {check["check_name"] for check in alerts.recorded_health(database).checks}

    assert record_health(database, critical=False) == "ok"
    assert [s.value for s in samples(scrape(database))["pgcache_health_status"]] == [0.0]


def test_the_target_in_effect_moves_from_week_1_to_month_1(database, conn):
    original = conn.execute("SELECT value FROM cache_private.settings WHERE name = 'deployed_at'").fetchone()[0]

    def targets_when_deployed(ago: timedelta) -> dict[str, tuple[str, float]]:
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'",
                     [(datetime.now(UTC) - ago).isoformat()])
        return {s.labels["cache"]: (s.labels["milestone"], s.value)
                for s in samples(scrape(database))["pgcache_hit_ratio_target"]}

    goals = {(t.milestone, t.cache_name): t.goal / 100 for t in queries.targets() if t.metric == "hit_rate"}
    try:
        for ago, milestone in ((timedelta(days=2), "Week 1"), (timedelta(days=8), "Month 1"),
                               (timedelta(days=90), "Month 1")):
            assert targets_when_deployed(ago) == {
                cache: (milestone, goals[(milestone, cache)])
                for cache in ("expert_sessions", "product_performance")}, ago
    finally:
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", [original])


def test_invalidated_keys_count_todays_writes_like_the_monthly_review(database, conn):
    def invalidated() -> dict[str, float]:
        return {s.labels["cache"]: s.value for s in samples(scrape(database))["pgcache_invalidated_keys_total"]}

    before = invalidated()
    conn.execute("UPDATE public.experts SET name = name WHERE id IN (1, 2, 3)")  # keys :all, :1, :2, :3
    after = invalidated()
    assert after["expert_sessions"] == before["expert_sessions"] + 4
    # Cleanup prunes the log into the daily counts: the count of the day stays the same.
    Maintenance(database).cleanup(ADMIN)
    assert invalidated()["expert_sessions"] == after["expert_sessions"]


# --- the webhook -----------------------------------------------------------------------------------


class Receiver:
    """What a real HTTP receiver got: each POSTed JSON body; ``status`` and ``delay`` set how it answers."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.status = 200
        self.delay = 0.0
        self.url = ""

    @property
    def texts(self) -> list[str]:
        return [body["text"] for body in self.bodies]


@contextmanager
def receiver() -> Iterator[Receiver]:
    hook = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(hook.delay)
            hook.bodies.append(json.loads(body))
            self.send_response(hook.status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            # A failing receiver that echoes the path it was called on, as some do: it must not leak.
            self.wfile.write(b"ok" if hook.status < 300 else f"no_service at {self.path}".encode())

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{port}/services/T0000/B0000/{SECRET}"
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def webhook(url: str | None) -> Settings:
    return Settings.from_env({"CACHE_ALERT_WEBHOOK_URL": url} if url else {})


def record_health(database: Database, *, critical: bool) -> str:
    """Make the health critical (an entry above 5 MB: largest_entries) or take that away, and record a
    run with the health check action; returns the overall status it recorded."""
    with psycopg.connect(database.url, autocommit=True) as conn:
        conn.execute("DELETE FROM public.query_cache WHERE cache_key = %s", [BIG_ENTRY])
        if critical:
            conn.execute("""
                INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at, ttl, size_bytes,
                                                compute_ms, hit_count)
                VALUES (%s, 'expert_sessions', '[]'::jsonb, now() + interval '1 hour', now(), interval '1 hour',
                        6000000, 1, 0)""", [BIG_ENTRY])
    return Maintenance(database).health_check(ADMIN).details["overall"]


def told(conn) -> str | None:
    found = conn.execute("SELECT status FROM cache_private.alert_state WHERE name = 'health'").fetchone()
    return found[0] if found else None


@pytest.fixture
def fresh(database, conn):
    """No health recorded and nothing told yet; a cleanup just ran, so that health is ok to begin with."""
    Maintenance(database).cleanup(ADMIN)
    conn.execute("DELETE FROM cache_private.health_history")
    conn.execute("UPDATE cache_private.alert_state SET status = NULL, notified_at = NULL, run_recorded_at = NULL")
    conn.execute("DELETE FROM public.query_cache WHERE cache_key = %s", [BIG_ENTRY])
    yield conn
    conn.execute("DELETE FROM public.query_cache WHERE cache_key = %s", [BIG_ENTRY])


def test_without_a_webhook_url_nothing_is_sent(database, fresh):
    record_health(database, critical=True)
    notice = alerts.notify(database, webhook(None))
    assert not notice.sent and "CACHE_ALERT_WEBHOOK_URL is not set" in notice.message
    assert told(fresh) is None


def test_nothing_recorded_means_nothing_to_send(database, fresh):
    with receiver() as hook:
        notice = alerts.notify(database, webhook(hook.url))
    assert not notice.sent and "no health run recorded" in notice.message
    assert hook.bodies == []


def test_an_unchanged_status_is_not_sent(database, fresh):
    with receiver() as hook:
        assert record_health(database, critical=False) == "ok"
        first = alerts.notify(database, webhook(hook.url))  # never told: ok is what it assumes
        assert record_health(database, critical=False) == "ok"
        second = alerts.notify(database, webhook(hook.url))
    assert hook.bodies == []
    assert not first.sent and not second.sent and "nothing to send" in second.message


def test_a_change_is_sent_once_with_the_status_and_what_to_do(database, fresh):
    with receiver() as hook:
        record_health(database, critical=False)
        alerts.notify(database, webhook(hook.url))
        assert record_health(database, critical=True) == "critical"
        run = alerts.recorded_health(database)
        sent = alerts.notify(database, webhook(hook.url))
        assert sent.sent and sent.status == "critical"
        assert record_health(database, critical=True) == "critical"  # still critical: nothing new to say
        again = alerts.notify(database, webhook(hook.url))
        assert not again.sent

        assert len(hook.bodies) == 1
        text = hook.texts[0]
        assert text.startswith("pgcache-admin health: CRITICAL (was ok)")
        largest = next(check for check in run.checks if check["check_name"] == "largest_entries")
        assert largest["status"] == "critical"
        assert f"critical: largest_entries: {largest['value']}" in text
        for check in run.failing:  # every failing check with its recommendation
            assert check["recommendation"] in text
        assert "Maintenance & Health" in text and "python -m cachelib maintenance health" in text
        assert told(fresh) == "critical"

        assert record_health(database, critical=False) == "ok"
        recovered = alerts.notify(database, webhook(hook.url))
    assert recovered.sent and len(hook.bodies) == 2
    assert hook.texts[1].startswith("pgcache-admin health: OK (was critical)")
    assert "Every check is ok again." in hook.texts[1]
    assert told(fresh) == "ok"


def test_a_failed_send_is_sent_again_by_the_next_run_without_showing_the_url(database, fresh):
    with receiver() as hook:
        record_health(database, critical=True)
        hook.status = 500
        with pytest.raises(alerts.WebhookFailed) as failed:
            alerts.notify(database, webhook(hook.url))
        message = str(failed.value)
        assert "HTTP 500" in message and "CACHE_ALERT_WEBHOOK_URL" in message
        assert SECRET not in message and hook.url not in message and "/services/" not in message
        assert "\n" not in message
        assert told(fresh) is None  # nothing stored: the next run tries again

        hook.status = 200
        retried = alerts.notify(database, webhook(hook.url))
    assert retried.sent
    assert len(hook.bodies) == 2 and hook.texts[0] == hook.texts[1]  # the same message, taken the second time
    assert told(fresh) == "critical"


def test_a_state_row_deleted_by_hand_is_made_again(database, fresh):
    fresh.execute("DELETE FROM cache_private.alert_state")
    record_health(database, critical=True)
    with receiver() as hook:
        assert alerts.notify(database, webhook(hook.url)).sent
        assert not alerts.notify(database, webhook(hook.url)).sent
    assert len(hook.bodies) == 1 and told(fresh) == "critical"


def test_an_unreachable_or_slow_webhook_is_one_line_without_the_url(database, fresh, monkeypatch):
    record_health(database, critical=True)
    nobody = f"http://127.0.0.1:{free_port()}/services/T0000/B0000/{SECRET}"
    with pytest.raises(alerts.WebhookFailed) as failed:
        alerts.notify(database, webhook(nobody))
    assert "could not reach the alert webhook" in str(failed.value) and SECRET not in str(failed.value)

    monkeypatch.setattr(alerts, "TIMEOUT_SECONDS", 0.5)
    with receiver() as hook:
        hook.delay = 2
        with pytest.raises(alerts.WebhookFailed, match=r"did not answer within 0.5 s") as slow:
            alerts.notify(database, webhook(hook.url))
    assert SECRET not in str(slow.value)
    assert told(fresh) is None


def test_a_webhook_url_that_is_not_http_is_refused_without_showing_it(database, fresh):
    with pytest.raises(ConfigError, match="CACHE_ALERT_WEBHOOK_URL must be an http") as refused:
        alerts.notify(database, webhook(f"ftp://files.example/{SECRET}"))
    assert SECRET not in str(refused.value)


def test_overlapping_runs_send_once(database, fresh):
    record_health(database, critical=True)
    with receiver() as hook:
        hook.delay = 1.0
        notices: list[alerts.Notice] = []
        runs = [threading.Thread(target=lambda: notices.append(alerts.notify(database, webhook(hook.url))))
                for _ in range(2)]
        for run in runs:
            run.start()
            time.sleep(0.2)  # the first one is sending when the second one looks
        for run in runs:
            run.join(30)
    assert len(hook.bodies) == 1
    assert sorted(notice.sent for notice in notices) == [False, True]
    # The other one did not wait for the sender (which could only have sent twice) but left it alone.
    assert "another alerts notify run is sending" in next(n.message for n in notices if not n.sent)
    assert told(fresh) == "critical"


def test_the_state_table_is_private_and_holds_one_row_per_notification(conn):
    assert [r[0] for r in conn.execute("SELECT name FROM cache_private.alert_state")] == ["health"]
    assert conn.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'cache_private.alert_state'::regclass"
                        ).fetchone()[0] is True
    for role in ("anon", "authenticated", "service_role", "cache_admin"):
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            assert conn.execute("SELECT has_table_privilege(%s, 'cache_private.alert_state', %s)",
                                [role, privilege]).fetchone()[0] is False, (role, privilege)


# --- the command line ------------------------------------------------------------------------------


def test_alerts_commands(db_url, database, fresh):
    record_health(database, critical=True)
    with receiver() as hook:
        env = {"DATABASE_URL": db_url, "CACHE_ALERT_WEBHOOK_URL": hook.url}
        tested = run_cli("alerts", "test", env=env)
        assert tested.returncode == 0, tested.stderr
        assert len(hook.bodies) == 1 and "test notification" in hook.texts[0]

        hook.status = 500
        failed = run_cli("alerts", "notify", env=env)
        assert failed.returncode == 1
        assert failed.stderr.strip().startswith("error: the alert webhook (CACHE_ALERT_WEBHOOK_URL) answered HTTP 500")
        assert len(failed.stderr.strip().splitlines()) == 1
        assert SECRET not in failed.stdout + failed.stderr and "127.0.0.1" not in failed.stdout + failed.stderr
        assert run_cli("alerts", "test", env=env).returncode == 1

        hook.status = 200
        sent = run_cli("alerts", "notify", env=env)
        assert sent.returncode == 0, sent.stderr
        assert "sent: overall health critical (was ok)" in sent.stdout
        unchanged = run_cli("alerts", "notify", env=env)
        assert unchanged.returncode == 0 and "nothing to send" in unchanged.stdout
    assert [text.startswith("pgcache-admin health: CRITICAL") for text in hook.texts] == [False, True, False, True]

    unset = run_cli("alerts", "notify", env={"DATABASE_URL": db_url, "CACHE_ALERT_WEBHOOK_URL": ""})
    assert unset.returncode == 0 and "not set" in unset.stdout
    assert run_cli("alerts", "test", env={"DATABASE_URL": db_url, "CACHE_ALERT_WEBHOOK_URL": ""}).returncode == 1
