"""The monthly review: every figure is the chosen month's, from history kept for it, bounded.

Traffic is made through the real CacheManager with the SQL clock moved, and the
history is rolled up and compacted by the engine's own functions.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta

import pandas as pd
import psycopg
import pytest

from cachelib import report, review
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.errors import InvalidInput
from cachelib.manager import CacheManager

DEPLOYED = datetime(2026, 9, 20, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 12, 15, 30, tzinfo=UTC)


def _one_connection(url: str) -> Database:
    """A Database whose pool has one connection, so a clock set on it holds for every read."""
    return Database(url, Settings.from_env({}).model_copy(update={"pool_size": 1}))


def _set_clock(conn, moment: datetime) -> None:
    conn.execute("SELECT set_config('cachelib.now', %s, false)", (moment.isoformat(),))


def _traffic(database: Database, moment: datetime, calls: list[tuple[str, int | None]]) -> None:
    manager = CacheManager(database, Settings.from_env({}), clock=lambda: moment)
    for cache, ident in calls:
        manager.call(cache, ident)


def _rollup(url: str, moment: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        _set_clock(conn, moment)
        conn.execute("SELECT cache_private.rollup_stats()")


@pytest.fixture(scope="module")
def history(pg18):
    """A deployment on Sep 20: traffic in October (experts 1-3) and November (experts 4-5 only)."""
    url = pg18.fresh_database("review_history")
    database = _one_connection(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'",
                     (DEPLOYED.isoformat(),))
    october = datetime(2026, 10, 14, 10, 0, tzinfo=UTC)
    _traffic(database, october, [("expert_sessions", 1)] * 4 + [("expert_sessions", 2)] * 2
             + [("expert_sessions", 3)] + [("product_performance", 1)] * 3)
    _rollup(url, october + timedelta(minutes=1))
    november = datetime(2026, 11, 3, 16, 0, tzinfo=UTC)
    _traffic(database, november, [("expert_sessions", 4)] * 3 + [("expert_sessions", 5)])
    _rollup(url, november + timedelta(minutes=1))
    yield url, database
    database.close()


def _build(database: Database, month: date | None) -> review.MonthlyReview:
    config = Settings.from_env({"CACHE_DEPLOYED_AT": DEPLOYED.isoformat()})
    with database.connection() as conn:
        _set_clock(conn, NOW)
    try:
        return review.build(month, database, config)
    finally:
        with database.connection() as conn:
            conn.execute("RESET cachelib.now")


# --- which month -------------------------------------------------------------------------------

def test_the_default_is_the_last_full_month():
    assert review.default_month(DEPLOYED, NOW) == date(2026, 10, 1)
    # Deployed this month: there is no full month yet, so the current one (so far).
    assert review.default_month(datetime(2026, 11, 2, tzinfo=UTC), NOW) == date(2026, 11, 1)
    assert review.months(DEPLOYED, NOW) == [date(2026, 11, 1), date(2026, 10, 1), date(2026, 9, 1)]


def test_a_period_is_clipped_to_the_deployment_and_to_now():
    september = review.period(date(2026, 9, 1), DEPLOYED, NOW)
    assert (september.start, september.end, september.partial) == (DEPLOYED, datetime(2026, 10, 1, tzinfo=UTC),
                                                                    False)
    assert september.from_deployment and september.span == "Sep 20-Sep 30"
    november = review.period(date(2026, 11, 1), DEPLOYED, NOW)
    assert november.partial and november.end == NOW and november.title == "November 2026 (so far)"
    assert len(november.days) == 12
    with pytest.raises(InvalidInput):
        review.period(date(2026, 8, 1), DEPLOYED, NOW)
    with pytest.raises(InvalidInput):
        review.parse_month("11/2026")


# --- figures of the month, not of today ---------------------------------------------------------

def test_every_figure_is_the_months(history):
    _url, database = history
    october = _build(database, None)
    assert october.period.month == date(2026, 10, 1)
    # Top entries come from October's calls only (expert 4 and 5 were called in November).
    keys = set(october.top_keys["cache_key"])
    assert {k.split(":")[-1] for k in keys if k.startswith("expert_sessions")} <= {"1", "2", "3"}
    top = october.top_keys.set_index("cache_key")
    assert top["hits"].max() >= 3  # expert 1: one miss, three hits
    assert review.calls(october) == 10
    per_cache = october.daily.groupby("cache_name")["calls"].sum()
    assert per_cache["expert_sessions"] == 7 and per_cache["product_performance"] == 3
    # One daily row per cache and day of the month, days without calls included.
    assert len(october.daily) == 31 * 2
    november = _build(database, date(2026, 11, 1))
    assert review.calls(november) == 4
    assert set(november.top_keys["cache_name"]) == {"expert_sessions"}


def test_targets_name_their_window_and_agree_with_the_daily_rows(history):
    _url, database = history
    october = _build(database, date(2026, 10, 1))
    month_rows = october.targets[october.targets["window"].str.startswith("October 2026")]
    assert len(month_rows) == 3  # the three Month 1 targets, measured over the month
    sessions = month_rows[month_rows["cache"] == "expert_sessions"].iloc[0]
    daily = october.daily[october.daily["cache_name"] == "expert_sessions"]
    assert sessions["measured"] == round(100.0 * daily["hits"].sum() / daily["calls"].sum(), 2)
    assert sessions["result"] == ("pass" if sessions["measured"] > sessions["goal"] else "fail")
    # The Month 1 milestone window (days 8-30 after the deployment) overlaps October: its own row, its own window named.
    windows = october.targets[october.targets["window"].str.startswith("Month 1 window")]
    assert len(windows) == 3 and windows["window"].iloc[0] == "Month 1 window (Sep 27 09:00-Oct 20 09:00)"
    assert not october.targets["window"].str.startswith("Week 1").any()  # Sep 20-26 does not overlap October


def test_csv_has_daily_rows_per_cache(history):
    _url, database = history
    csv = review.to_csv(_build(database, date(2026, 10, 1))).splitlines()
    assert csv[0] == "month," + ",".join(review.DAILY_COLUMNS)
    assert len(csv) == 1 + 31 * 2
    assert all(line.startswith("2026-10,2026-10-") for line in csv[1:])


def test_html_report_is_self_contained_and_printable(history):
    _url, database = history
    page = report.to_html(_build(database, date(2026, 10, 1)))
    assert page.startswith("<!DOCTYPE html>") and "October 2026" in page
    assert "@media print" in page
    assert not re.search(r"<script[^>]+src=", page), "the report must not load scripts from elsewhere"
    assert page.count("Plotly.newPlot") == 3  # every chart, with plotly.js inline once
    assert "Month 1 window (Sep 27 09:00-Oct 20 09:00)" in page


def test_the_charts_label_each_axis_with_what_it_counts(history):
    _url, database = history
    drawn = {name: spec.figure() for name, spec in report.figures(_build(database, date(2026, 10, 1))).items()}
    calls = drawn["calls"].layout
    assert calls.yaxis.title.text == "Calls" and calls.yaxis2.title.text == "Keys invalidated"
    assert calls.yaxis2.dtick >= 1 and calls.yaxis2.tickformat == ",d"  # whole keys, never 3.58
    for figure in drawn.values():  # one tick a day under each day's bar, as "Oct 3"
        assert figure.layout.xaxis.tickformat == "%b %-d"


# --- the history itself --------------------------------------------------------------------------

def test_finished_days_keep_their_top_keys_and_fold_the_rest(pg18):
    url = pg18.fresh_database("review_compaction")
    database = Database(url, Settings.from_env({}))
    day = datetime(2026, 10, 5, 12, 0, tzinfo=UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.settings SET value = '3' WHERE name = 'key_history_keys_per_day'")
    _traffic(database, day, [("expert_sessions", ident) for ident in range(1, 9) for _ in range(ident % 3 + 1)])
    _rollup(url, day + timedelta(minutes=1))
    totals = "SELECT count(*), sum(hits), sum(misses), sum(compute_ms_saved) FROM cache_private.key_activity_daily"
    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute(totals).fetchone()
        assert before[0] == 8
        # The next day is within the grace day: nothing folds yet.
        _set_clock(conn, day + timedelta(days=1))
        conn.execute("SELECT cache_private.compact_history()")
        assert conn.execute(totals).fetchone()[0] == 8
        _set_clock(conn, day + timedelta(days=2, hours=1))
        conn.execute("SELECT cache_private.compact_history()")
        after = conn.execute(totals).fetchone()
        kept = [r[0] for r in conn.execute("SELECT cache_key FROM cache_private.key_activity_daily "
                                           "ORDER BY compute_ms_saved DESC, hits DESC, cache_key")]
        _set_clock(conn, day + timedelta(days=2, hours=3))
        conn.execute("SELECT cache_private.compact_history()")
        again = conn.execute(totals).fetchone()
    assert after[0] == 4 and "(other keys)" in kept  # three keys plus the folded row
    assert after[1:3] == before[1:3] and after[3] == pytest.approx(before[3])  # nothing lost, only folded
    assert again == after
    database.close()


def test_history_past_retention_goes(pg18):
    url = pg18.fresh_database("review_retention")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""INSERT INTO cache_private.key_activity_daily (day, cache_name, cache_key, hits)
                        VALUES ('2025-01-01', 'expert_sessions', 'expert_sessions:1', 5),
                               ('2026-10-01', 'expert_sessions', 'expert_sessions:1', 5)""")
        conn.execute("""INSERT INTO cache_private.invalidations_daily (day, cache_name, keys_invalidated)
                        VALUES ('2025-01-01', 'expert_sessions', 3), ('2026-10-01', 'expert_sessions', 3)""")
        _set_clock(conn, datetime(2026, 11, 1, tzinfo=UTC))  # retention: 450 days
        conn.execute("SELECT cache_private.compact_history()")
        days = [r[0] for r in conn.execute("SELECT day FROM cache_private.key_activity_daily UNION ALL "
                                           "SELECT day FROM cache_private.invalidations_daily")]
    assert days == [date(2026, 10, 1), date(2026, 10, 1)]


def test_invalidations_are_counted_once_before_and_after_cleanup_prunes_the_log(pg18):
    url = pg18.fresh_database("review_invalidations")
    database = _one_connection(url)
    moment = datetime(2026, 10, 7, 9, 0, tzinfo=UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'",
                     (DEPLOYED.isoformat(),))
        _set_clock(conn, moment)
        for expert in (1, 2, 3):
            conn.execute("""INSERT INTO public.expert_sessions (expert_id, started_at, duration_minutes, status)
                            VALUES (%s, %s, 30, 'completed')""", (expert, moment))
    config = Settings.from_env({"CACHE_DEPLOYED_AT": DEPLOYED.isoformat()})

    def invalidated() -> int:
        with database.connection() as conn:
            _set_clock(conn, NOW)
        try:
            data = review.build(date(2026, 10, 1), database, config)
        finally:
            with database.connection() as conn:
                conn.execute("RESET cachelib.now")
        return int(data.daily.loc[data.daily["cache_name"] == "expert_sessions", "keys_invalidated"].sum())

    # Each insert invalidates the expert's key and the all-experts key: 3 + 3 key rows.
    before = invalidated()
    assert before == 6
    with psycopg.connect(url, autocommit=True) as conn:
        _set_clock(conn, NOW)
        conn.execute("SELECT public.cleanup_expired_cache()")
        left = conn.execute("SELECT count(*) FROM cache_private.invalidations "
                            "WHERE strpos(cache_key, ':') > 0").fetchone()[0]
    assert left == 0, "the cleanup should have pruned the log (nothing holds it back here)"
    assert invalidated() == before
    database.close()


# --- the same review from the API ----------------------------------------------------------------

def test_the_api_serves_the_same_review_as_json_csv_and_html(history):
    from fastapi.testclient import TestClient

    from cachelib import api, apikeys

    url, database = history
    key = apikeys.create_key("review-viewer", "viewer", database)
    app = api.create_app(database, metrics_key_required=False, throttle=api.FailureThrottle(base_delay=0))
    headers = {"Authorization": f"Bearer {key}"}
    expected = _build(database, date(2026, 10, 1))
    with database.connection() as conn:
        _set_clock(conn, NOW)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            body = client.get("/api/admin/cache/review", params={"month": "2026-10"}, headers=headers)
            csv = client.get("/api/admin/cache/review", params={"month": "2026-10", "format": "csv"}, headers=headers)
            page = client.get("/api/admin/cache/review", params={"month": "2026-10", "format": "html"},
                              headers=headers)
            bad_month = client.get("/api/admin/cache/review", params={"month": "October"}, headers=headers)
            outside = client.get("/api/admin/cache/review", params={"month": "2025-01"}, headers=headers)
            bad_format = client.get("/api/admin/cache/review", params={"format": "pdf"}, headers=headers)
            anonymous = client.get("/api/admin/cache/review")
    finally:
        with database.connection() as conn:
            conn.execute("RESET cachelib.now")
    assert body.status_code == 200, body.text
    data = body.json()
    assert data["month"] == "2026-10" and data["calls"] == review.calls(expected) == 10
    assert [t["measured"] for t in data["targets"]] == list(expected.targets["measured"])
    assert csv.status_code == 200 and csv.text == review.to_csv(expected)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "October 2026" in page.text
    assert bad_month.status_code == 400 and "2026-11" in bad_month.json()["detail"]
    assert outside.status_code == 400
    assert bad_format.status_code == 422
    assert anonymous.status_code == 401


# --- the same review from the command line ---------------------------------------------------------

def test_the_command_line_prints_and_exports_the_review(history, tmp_path):
    from tests.test_cli import run_cli

    url, _database = history
    env = {"DATABASE_URL": url}
    csv_path, html_path = tmp_path / "review.csv", tmp_path / "review.html"
    result = run_cli("review", "--month", "2026-11", "--json", "--csv", str(csv_path), "--html", str(html_path),
                     env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["month"] == "2026-11" and data["calls"] == 4  # experts 4 and 5, called in November
    assert {row["cache_key"].split(":")[-1] for row in data["top_keys"]} == {"4", "5"}
    assert len(csv_path.read_text().splitlines()) == 1 + 30 * 2
    assert "November 2026" in html_path.read_text() and "Plotly.newPlot" in html_path.read_text()
    text = run_cli("review", "--month", "2026-11", env=env)
    assert text.returncode == 0 and text.stdout.startswith("Monthly review: November 2026, Nov 1-Nov 30")
    assert "Sessions hit rate above 70%" in text.stdout and "expert_sessions:4" in text.stdout


def test_the_command_line_refuses_a_bad_month_or_path_in_one_line(history, tmp_path):
    from tests.test_cli import run_cli

    url, _database = history
    env = {"DATABASE_URL": url}
    for args, cause in [(("--month", "November"), "month must look like 2026-11"),
                        (("--month", "2025-01"), "outside the deployment"),
                        (("--month", "2026-11", "--csv", str(tmp_path / "missing" / "x.csv")), "cannot write")]:
        result = run_cli("review", *args, env=env)
        assert result.returncode != 0 and cause in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "missing").exists()


def test_retention_counts_utc_days_whatever_the_sessions_time_zone(pg18):
    """At 02:00 UTC it is still yesterday in Honolulu: the first day kept must not move with the session."""
    url = pg18.fresh_database("review_retention_tz")
    first_kept = date(2026, 11, 1) - timedelta(days=450)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'Pacific/Honolulu'")
        for day in (first_kept - timedelta(days=1), first_kept):
            conn.execute("INSERT INTO cache_private.key_activity_daily (day, cache_name, cache_key, hits) "
                         "VALUES (%s, 'expert_sessions', 'expert_sessions:1', 5)", (day,))
            conn.execute("INSERT INTO cache_private.invalidations_daily (day, cache_name, keys_invalidated) "
                         "VALUES (%s, 'expert_sessions', 3)", (day,))
        _set_clock(conn, datetime(2026, 11, 1, 2, 0, tzinfo=UTC))
        conn.execute("SELECT cache_private.compact_history()")
        days = [r[0] for r in conn.execute("SELECT day FROM cache_private.key_activity_daily UNION ALL "
                                           "SELECT day FROM cache_private.invalidations_daily")]
    assert days == [first_kept, first_kept]


def test_the_health_summary_keeps_each_checks_worst_and_latest():
    at = datetime(2026, 10, 5, tzinfo=UTC)
    records = [  # (minutes after `at`, check, status, value, recommendation), not in time order
        (30, "fallbacks", "critical", "9", "fix the function"), (10, "fallbacks", "warning", "3", "look"),
        (50, "fallbacks", "critical", "12", "fix it now"), (70, "fallbacks", "ok", "0", ""),
        (20, "hit_rate", "ok", "80%", ""), (40, "hit_rate", "ok", "82%", ""),
        (60, "size", "warning", "90%", "raise the bound"), (5, "size", "mystery", "?", "unknown status"),
    ]
    history = pd.DataFrame([{"recorded_at": at + timedelta(minutes=m), "source": "cleanup", "check_name": c,
                             "status": s, "value": v, "recommendation": r} for m, c, s, v, r in records])
    summary = review.health_summary(history).set_index("check_name")
    assert list(summary.index) == ["fallbacks", "size", "hit_rate"]  # worst first, then by name
    fallbacks = summary.loc["fallbacks"]
    assert (fallbacks["worst"], fallbacks["recommendation"]) == ("critical", "fix it now")  # the latest at its worst
    assert (fallbacks["not_ok"], fallbacks["runs"]) == (3, 4)
    assert (fallbacks["last_status"], fallbacks["last_value"]) == ("ok", "0")
    assert (summary.loc["size", "worst"], summary.loc["size", "not_ok"]) == ("warning", 1)  # unknown counts as ok
    assert (summary.loc["hit_rate", "worst"], summary.loc["hit_rate", "not_ok"]) == ("ok", 0)
    assert review.health_summary(history.iloc[0:0]).empty
