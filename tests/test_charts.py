"""cachelib/charts.py: axes, targets, windows and events on real plotly figures; queries.events on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import plotly.graph_objects as go
import psycopg
import pytest
from plotly.subplots import make_subplots

from cachelib import charts, queries, ui
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.errors import ConfirmationRequired
from cachelib.maintenance import EMERGENCY_TOKEN, Actor, Maintenance

NOV_1, DEC_1 = datetime(2025, 11, 1), datetime(2025, 12, 1)
DAY_MS = 86_400_000


def target(milestone: str, cache: str | None) -> queries.Target:
    return next(t for t in queries.targets(Settings.from_env({})) if t.milestone == milestone
                and t.cache_name == cache)


# --- periods and labels ----------------------------------------------------------------------

def test_weeks_keep_the_first_partial_week_of_a_wednesday_deployment():
    wednesday = datetime(2025, 10, 29)
    assert wednesday.weekday() == 2
    weeks = charts.periods(wednesday, datetime(2025, 11, 20), "week")
    assert list(weeks["label"]) == ["Oct 29-Nov 2", "Nov 3-Nov 9", "Nov 10-Nov 16", "Nov 17-Nov 19"]
    assert list(weeks["partial"]) == [True, False, False, True]
    assert weeks["start"].iloc[0] == wednesday and weeks["end"].iloc[0] == datetime(2025, 11, 3)
    # A moment in the first (partial) week belongs to it, not to the Monday before the range.
    owners = charts.period_of([datetime(2025, 10, 30, 15, tzinfo=UTC), datetime(2025, 11, 4), datetime(2025, 10, 28)],
                              wednesday, datetime(2025, 11, 20), "week")
    assert owners.iloc[0] == wednesday and owners.iloc[1] == datetime(2025, 11, 3) and owners.isna().iloc[2]


def test_days_and_hours_are_whole_buckets():
    days = charts.periods(NOV_1, DEC_1, "day")
    assert len(days) == 30 and days["label"].iloc[0] == "Nov 1" and days["label"].iloc[-1] == "Nov 30"
    assert days["mid"].iloc[0] == datetime(2025, 11, 1, 12)
    hours = charts.periods(NOV_1, NOV_1 + timedelta(days=1), "hour")
    assert len(hours) == 24 and hours["label"].iloc[14] == "Nov 1 14:00"
    with pytest.raises(ValueError):
        charts.periods(NOV_1, DEC_1, "month")


def test_labels_name_their_dates():
    assert charts.period_label(NOV_1, DEC_1) == "Nov 1-Nov 30"
    assert charts.period_label(NOV_1, NOV_1 + timedelta(days=1)) == "Nov 1"
    assert charts.window_label("Week 1", datetime(2025, 10, 28), datetime(2025, 11, 4)) == "Week 1 (Oct 28-Nov 3)"
    assert charts.window_label("Month 1", datetime(2025, 11, 4), datetime(2025, 11, 27)) == "Month 1 (Nov 4-Nov 26)"
    # Not midnight: the times are part of the truth.
    assert charts.period_label(datetime(2025, 10, 28, 10, tzinfo=UTC), datetime(2025, 11, 4, 10, tzinfo=UTC)) \
        == "Oct 28 10:00-Nov 4 10:00"
    assert charts.filename("Hit rate", NOV_1, DEC_1) == "pgcache_hit-rate_2025-11-01_to_2025-11-30"


# --- axes --------------------------------------------------------------------------------------

def test_a_daily_axis_has_day_ticks_and_exactly_the_period():
    figure = go.Figure(go.Bar(x=charts.periods(NOV_1, NOV_1 + timedelta(days=14), "day")["mid"], y=[1] * 14))
    charts.time_axis(figure, NOV_1, NOV_1 + timedelta(days=14), "day")
    axis = figure.layout.xaxis
    assert axis.dtick == DAY_MS and axis.tickformat == "%b %-d" and "%H" not in axis.tickformat
    assert [datetime.fromisoformat(str(v)) for v in axis.range] == [NOV_1, NOV_1 + timedelta(days=14)]
    # The tick sits under the bar (noon), not at an hour of its own.
    assert datetime.fromisoformat(str(axis.tick0)) == datetime(2025, 11, 1, 12)
    month = go.Figure()
    charts.time_axis(month, NOV_1, DEC_1, "day")
    assert month.layout.xaxis.dtick in (2 * DAY_MS, 3 * DAY_MS) and 30 / (month.layout.xaxis.dtick / DAY_MS) <= 16


def test_a_weekly_axis_labels_each_week_with_its_dates():
    figure = go.Figure()
    charts.time_axis(figure, datetime(2025, 10, 29), datetime(2025, 11, 20), "week")
    axis = figure.layout.xaxis
    assert axis.tickmode == "array" and axis.ticktext[0] == "Oct 29-Nov 2" and len(axis.tickvals) == 4
    assert [datetime.fromisoformat(str(v)) for v in axis.range] == [datetime(2025, 10, 29), datetime(2025, 11, 20)]


def test_an_hourly_axis_of_two_days_has_hour_ticks():
    figure = go.Figure()
    charts.time_axis(figure, NOV_1, NOV_1 + timedelta(days=2), "hour")
    assert figure.layout.xaxis.dtick == 3 * 3_600_000 and "%H:%M" in figure.layout.xaxis.tickformat


def test_a_log_axis_reads_in_decades():
    figure = go.Figure(go.Scatter(x=[1, 2], y=[0.3, 42]))
    charts.log_axis(figure, [0.3, 42, None, 0])
    axis = figure.layout.yaxis
    assert axis.type == "log" and axis.dtick == 1 and axis.ticksuffix == " ms"
    assert list(axis.range) == [-1, 2]  # 0.1 ms to 100 ms


def test_bars_start_at_zero():
    figure = go.Figure(go.Bar(x=[1, 2], y=[60, 70]))
    charts.zero_based(figure, top=100)
    assert list(figure.layout.yaxis.range) == [0, 100]
    other = go.Figure(go.Bar(x=[1, 2], y=[60, 70]))
    charts.zero_based(other)
    assert other.layout.yaxis.rangemode == "tozero"


# --- targets and windows -------------------------------------------------------------------

def test_a_target_line_has_its_series_colour_and_name():
    figure = make_subplots(rows=2, cols=1)
    sessions_week1, analytics_month1 = target("Week 1", "expert_sessions"), target("Month 1", "product_performance")
    charts.add_target(figure, sessions_week1, row=1, col=1)
    charts.add_target(figure, analytics_month1, row=2, col=1)
    first, second = figure.layout.shapes
    assert first.line.color == charts.series_color("expert_sessions") == ui.CACHE_COLORS["Expert sessions"]
    assert second.line.color == ui.CACHE_COLORS["Product analytics"]
    assert (first.line.dash, second.line.dash) == ("dot", "dash")
    assert first.y0 == sessions_week1.goal and first.yref == "y" and second.yref == "y2"
    texts = [a.text for a in figure.layout.annotations]
    assert f"Week 1 target: {sessions_week1.name}" in texts and f"Month 1 target: {analytics_month1.name}" in texts
    load = target("Month 1", None)
    single = go.Figure()
    charts.add_target(single, load)
    assert single.layout.shapes[0].line.color == charts.ALL_CACHES_COLOR


def test_the_target_windows_are_shaded_where_they_fall_in_the_period():
    deployed = datetime(2025, 10, 29, 9, 30, tzinfo=UTC)
    figure = go.Figure()
    charts.shade_windows(figure, deployed, datetime(2025, 10, 29), datetime(2025, 11, 20))
    week, month = figure.layout.shapes
    assert datetime.fromisoformat(str(week.x0)) == datetime(2025, 10, 29, 9, 30)
    assert datetime.fromisoformat(str(week.x1)) == datetime(2025, 11, 5, 9, 30)
    assert datetime.fromisoformat(str(month.x1)) == datetime(2025, 11, 20)  # clipped to the period
    assert [a.text for a in figure.layout.annotations] == ["<b>Week 1</b>", "<b>Month 1</b>"]
    later = go.Figure()
    charts.shade_windows(later, deployed, datetime(2026, 1, 1), datetime(2026, 2, 1))
    assert not later.layout.shapes


def test_png_download_config():
    config = charts.png_config("pgcache_hit-rate")
    assert config["toImageButtonOptions"] == {"format": "png", "filename": "pgcache_hit-rate", "scale": 2}
    assert config["displaylogo"] is False


# --- events on a real database ---------------------------------------------------------------

@pytest.fixture(scope="module")
def database(db_url):
    database = Database(db_url, Settings.from_env({}))
    yield database
    database.close()


def test_events_after_an_emergency_clear_and_the_annotation(database, db_url):
    start = datetime.now(UTC) - timedelta(hours=1)
    maintenance = Maintenance(database)
    admin = Actor("alice", "admin", "dashboard")
    with pytest.raises(ConfirmationRequired):
        maintenance.emergency_clear(admin, "yes please")
    assert maintenance.emergency_clear(admin, EMERGENCY_TOKEN).ok
    maintenance.invalidate(admin, cache="expert_sessions")
    maintenance.cleanup(admin)                           # manual: from the dashboard
    maintenance.cleanup(Actor("cron", "admin", "cli"))   # the schedule
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT public.cleanup_expired_cache()")  # pg_cron: the database user
    end = datetime.now(UTC) + timedelta(hours=1)

    events = queries.events(start, end, database)
    assert list(events.columns) == ["at", "kind", "label", "detail"]
    assert events["at"].is_monotonic_increasing
    kinds = list(events["kind"])
    assert kinds.count("emergency_clear") == 1  # the refused attempt is not an event
    assert kinds.count("invalidate") == 1 and kinds.count("cleanup") == 1 and kinds.count("scheduled_cleanup") == 2
    clear = events[events["kind"] == "emergency_clear"].iloc[0]
    assert clear["label"] == "Emergency clear" and "alice (dashboard)" in clear["detail"]
    assert "cache expert_sessions" in events[events["kind"] == "invalidate"].iloc[0]["label"]
    assert queries.events(end, end + timedelta(hours=1), database).empty

    figure = go.Figure(go.Scatter(x=[start, end], y=[0, 1]))
    sentence = charts.add_events(figure, events, start, end)
    texts = [a.text for a in figure.layout.annotations]
    assert "Emergency clear" in texts and "Cleanup" in texts
    assert "Scheduled cleanup" not in texts  # counted in the caption, not drawn one by one
    lines = [s for s in figure.layout.shapes if s.type == "line"]
    drawn = events[events["kind"].isin(charts.EVENT_STYLE)]  # the deployment too when it falls in the hour
    assert set(drawn["kind"]) - {"deployment"} == {"emergency_clear", "invalidate", "cleanup"}
    assert len(lines) == len(drawn) and charts.EVENT_STYLE["emergency_clear"][0] in {s.line.color for s in lines}
    assert "1 emergency clear" in sentence and "2 scheduled cleanups" in sentence and "not drawn" in sentence


def test_the_deployment_is_an_event(database, db_url):
    deployed = datetime(2025, 10, 29, 9, 30, tzinfo=UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        old = conn.execute("SELECT value FROM cache_private.settings WHERE name = 'deployed_at'").fetchone()[0]
        conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (deployed.isoformat(),))
    try:
        events = queries.events(datetime(2025, 10, 29), datetime(2025, 11, 1), database)  # naive: UTC
        assert list(events["kind"]) == ["deployment"] and events["at"].iloc[0] == deployed
        assert queries.events(datetime(2025, 10, 30), datetime(2025, 11, 1), database).empty
    finally:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE cache_private.settings SET value = %s WHERE name = 'deployed_at'", (old,))


@pytest.mark.parametrize("maximum", [0, 1, 3, 6, 13, 99, 457, 12_345])
def test_a_count_axis_ticks_whole_numbers_and_holds_the_largest_value(maximum):
    axis = charts.count_ticks(maximum)
    assert axis["range"][0] == 0 and axis["range"][1] >= maximum
    assert isinstance(axis["dtick"], int) and axis["dtick"] >= 1 and axis["tickformat"] == ",d"
    assert axis["range"][1] / axis["dtick"] <= 6  # a handful of ticks, not one per unit
