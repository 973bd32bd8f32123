"""cachelib/charts.py: axes, targets, windows and events on real plotly figures; queries.events on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
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

def checked(spec: charts.Spec) -> go.Figure:
    """The Spec as plotly checks and reads it."""
    return spec.figure()


def x_axis(start, end, bucket) -> go.layout.XAxis:
    return checked(charts.Spec(layout={"xaxis": charts.time_axis_props(start, end, bucket)})).layout.xaxis


def test_a_daily_axis_has_day_ticks_and_exactly_the_period():
    axis = x_axis(NOV_1, NOV_1 + timedelta(days=14), "day")
    assert axis.dtick == DAY_MS and axis.tickformat == "%b %-d" and "%H" not in axis.tickformat
    assert [datetime.fromisoformat(str(v)) for v in axis.range] == [NOV_1, NOV_1 + timedelta(days=14)]
    # The tick sits under the bar (noon), not at an hour of its own.
    assert datetime.fromisoformat(str(axis.tick0)) == datetime(2025, 11, 1, 12)
    month = x_axis(NOV_1, DEC_1, "day")
    assert month.dtick in (2 * DAY_MS, 3 * DAY_MS) and 30 / (month.dtick / DAY_MS) <= 16


def test_a_weekly_axis_labels_each_week_with_its_dates():
    axis = x_axis(datetime(2025, 10, 29), datetime(2025, 11, 20), "week")
    assert axis.tickmode == "array" and axis.ticktext[0] == "Oct 29-Nov 2" and len(axis.tickvals) == 4
    assert [datetime.fromisoformat(str(v)) for v in axis.range] == [datetime(2025, 10, 29), datetime(2025, 11, 20)]


def test_an_hourly_axis_of_two_days_has_hour_ticks():
    axis = x_axis(NOV_1, NOV_1 + timedelta(days=2), "hour")
    assert axis.dtick == 3 * 3_600_000 and "%H:%M" in axis.tickformat


def test_a_log_axis_reads_in_decades():
    axis = checked(charts.Spec([{"type": "scatter", "x": [1, 2], "y": [0.3, 42]}],
                             {"yaxis": charts.log_axis_props([0.3, 42, None, 0])})).layout.yaxis
    assert axis.type == "log" and axis.dtick == 1 and axis.ticksuffix == " ms"
    assert list(axis.range) == [-1, 2]  # 0.1 ms to 100 ms


def test_bars_start_at_zero():
    bars = [{"type": "bar", "x": [1, 2], "y": [60, 70]}]
    assert list(checked(charts.Spec(bars, {"yaxis": charts.zero_based_props(top=100)})).layout.yaxis.range) == [0, 100]
    assert checked(charts.Spec(bars, {"yaxis": charts.zero_based_props()})).layout.yaxis.rangemode == "tozero"


# --- targets and windows -------------------------------------------------------------------

def test_a_target_line_has_its_series_colour_and_name():
    spec = charts.Spec.rows(["Sessions", "Analytics"], spacing=0.14)
    sessions_week1, analytics_month1 = target("Week 1", "expert_sessions"), target("Month 1", "product_performance")
    spec.mark(*charts.target_marks(sessions_week1))
    spec.mark(*charts.target_marks(analytics_month1, x="x2", y="y2"))
    figure = checked(spec)
    first, second = figure.layout.shapes
    assert first.line.color == charts.series_color("expert_sessions") == ui.CACHE_COLORS["Expert sessions"]
    assert second.line.color == ui.CACHE_COLORS["Product analytics"]
    assert (first.line.dash, second.line.dash) == ("dot", "dash")
    assert first.y0 == sessions_week1.goal and first.yref == "y" and second.yref == "y2"
    texts = [a.text for a in figure.layout.annotations]
    assert f"Week 1 target: {sessions_week1.name}" in texts and f"Month 1 target: {analytics_month1.name}" in texts
    load = target("Month 1", None)
    single = charts.Spec()
    single.mark(*charts.target_marks(load))
    assert checked(single).layout.shapes[0].line.color == charts.ALL_CACHES_COLOR


def test_the_target_windows_are_shaded_where_they_fall_in_the_period():
    deployed = datetime(2025, 10, 29, 9, 30, tzinfo=UTC)
    spec = charts.Spec()
    spec.mark(*charts.window_marks(deployed, datetime(2025, 10, 29), datetime(2025, 11, 20)))
    figure = checked(spec)
    week, month = figure.layout.shapes
    assert datetime.fromisoformat(str(week.x0)) == datetime(2025, 10, 29, 9, 30)
    assert datetime.fromisoformat(str(week.x1)) == datetime(2025, 11, 5, 9, 30)
    assert datetime.fromisoformat(str(month.x1)) == datetime(2025, 11, 20)  # clipped to the period
    assert [a.text for a in figure.layout.annotations] == ["<b>Week 1</b>", "<b>Month 1</b>"]
    assert charts.window_marks(deployed, datetime(2026, 1, 1), datetime(2026, 2, 1)) == ([], [])


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

    spec = charts.Spec([{"type": "scatter", "x": charts.utc_values([start, end]), "y": [0, 1]}])
    shapes, annotations, sentence = charts.event_marks(events, start, end)
    spec.mark(shapes, annotations)
    figure = checked(spec)
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


# --- figures as plotly JSON ------------------------------------------------------------------------

def test_a_spec_merges_layout_like_plotly_and_never_shares_what_it_was_given():
    spec = charts.Spec.rows(["One", "Two"], spacing=0.14)
    axis = charts.time_axis_props(NOV_1, DEC_1, "day")
    charts.frame_time_chart(spec, "Two rows", NOV_1, DEC_1, "day", height=500)
    assert spec.axes("x") == ["xaxis", "xaxis2"] and spec.axes("y") == ["yaxis", "yaxis2"]
    for name in spec.axes("x"):  # the time axis on every row, the grid's own settings kept
        assert spec.layout[name]["dtick"] == axis["dtick"] and "domain" in spec.layout[name]
    spec.update({"xaxis": {"title": {"text": "first"}}})
    assert "title" not in spec.layout["xaxis2"]  # each axis got a copy of the settings
    assert charts.time_axis_props(NOV_1, DEC_1, "day") == axis
    figure = checked(spec)
    assert figure.layout.title.text == "Two rows" and figure.layout.height == 500
    assert spec.to_dict()["layout"]["template"] == go.Figure().to_dict()["layout"]["template"]


def test_a_wrong_property_fails_when_checked_and_is_sent_as_built_otherwise(monkeypatch):
    spec = charts.Spec([{"type": "bar", "x": [1], "y": [2], "colour": "red"}])
    with pytest.raises(ValueError, match="colour"):
        spec.figure()
    monkeypatch.setenv(charts.CHECK_SPECS_SETTING, "1")
    with pytest.raises(ValueError, match="colour"):
        spec.for_streamlit()
    monkeypatch.setenv(charts.CHECK_SPECS_SETTING, "0")
    assert spec.for_streamlit().to_dict() is not None and spec.for_streamlit().to_dict()["data"][0]["colour"] == "red"


def test_moments_are_sent_as_naive_utc():
    berlin = datetime(2025, 11, 1, 13, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    assert charts.utc_values([berlin, pd.Timestamp("2025-11-01 12:00"), None, pd.NaT]) == [
        datetime(2025, 11, 1, 13, 0), datetime(2025, 11, 1, 12, 0), None, None]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_rows_are_laid_out_as_make_subplots_lays_them_out(count):
    titles = [f"Cache {n}" for n in range(count)]
    ours = charts.Spec.rows(titles, spacing=0.14).layout
    plotly = make_subplots(rows=count, cols=1, shared_xaxes=True, vertical_spacing=0.14,
                           subplot_titles=titles).to_dict()["layout"]
    plotly.pop("template")
    assert ours.keys() == plotly.keys()
    for name, settings in plotly.items():
        if name == "annotations":
            def rounded(notes):
                return [{**note, "y": round(note["y"], 9)} for note in notes]
            assert rounded(ours[name]) == rounded(settings)
        else:
            assert {**ours[name], "domain": [round(v, 9) for v in ours[name]["domain"]]} == \
                   {**settings, "domain": [round(v, 9) for v in settings["domain"]]}, name


def test_period_of_keeps_the_index_of_a_filtered_column():
    frame = pd.DataFrame({"at": pd.to_datetime(["2025-11-01 10:00", "2025-11-01 11:00", "2025-11-02 09:00"], utc=True),
                          "cache": ["a", "b", "b"]})
    only_b = frame[frame["cache"] == "b"]
    owners = charts.period_of(only_b["at"], NOV_1, DEC_1, "day")
    assert list(owners.index) == [1, 2]
    assert list(only_b.assign(day=owners)["day"]) == [datetime(2025, 11, 1), datetime(2025, 11, 2)]


# --- regrouping series into the buckets of a range ------------------------------------------------

def _period_by_flooring(moments, start, end, bucket):
    """The reference rule of a moment's bucket, by flooring (as period_of was written before it searched the
    grid): a test of the search, not a copy of it."""
    values = pd.to_datetime(moments, utc=True).dt.tz_localize(None)
    floored = values.dt.floor("h" if bucket == "hour" else "D")
    if bucket == "week":
        floored = floored - pd.to_timedelta(floored.dt.day_of_week, unit="D")
    floored = floored.where(floored >= start, pd.Timestamp(start))
    return floored.where((values >= start) & (values < end))


def _regroup_by_pandas(frame, sums, grid, by, start, end, bucket):
    """The reference: regrouping as the Performance page did it with pandas (period_of, groupby, merge)."""
    keys = [by] if by else []
    frame = frame.assign(start=_period_by_flooring(frame["bucket"], start, end, bucket)).dropna(subset=["start"])
    if frame.empty:
        return frame
    grouped = frame.groupby(["start", *keys], as_index=False)[sums].sum()
    return grouped.merge(grid, on="start", how="inner").sort_values(["start", *keys]).reset_index(drop=True)


def _on_grid_by_pandas(series, grid):
    caches = list(dict.fromkeys(series["cache_name"]))
    values = series.drop(columns=["end", "mid", "label", "partial"]).set_index(["cache_name", "start"])
    full = values.reindex(pd.MultiIndex.from_product([caches, grid["start"]], names=["cache_name", "start"]))
    buckets = grid.set_index("start")
    return {cache: buckets.join(full.loc[cache]).reset_index() for cache in caches}


def _random_series(seed: int, start: datetime, end: datetime) -> pd.DataFrame:
    import random

    rng = random.Random(seed)
    span = (end - start) / timedelta(hours=1)
    rows = []
    for _ in range(rng.randint(1, 400)):
        hour = start + timedelta(hours=rng.randint(-30, int(span) + 30))  # some outside the range
        rows.append({"bucket": hour.replace(tzinfo=UTC), "cache_name": rng.choice(["c", "a", "b"]),
                     "hits": rng.randint(0, 500), "misses": rng.randint(0, 50),
                     "hit_ms": rng.choice([None, rng.random() * 1e4]), "spent": rng.random() * 1e6})
    return pd.DataFrame(rows).astype({"hit_ms": "float64"})


@pytest.mark.parametrize("bucket", ["hour", "day", "week"])
def test_regroup_sums_as_the_pandas_groupby_did(bucket):
    """On 60 random series (rows outside the range, missing values, caches in any order): the same rows,
    columns, values and integer types as period_of + groupby + merge."""
    for seed in range(60):
        start = datetime(2025, 10, 29) + timedelta(hours=seed * 7 if bucket == "hour" else 0, days=seed % 5)
        end = start + (timedelta(days=3) if bucket == "hour" else timedelta(days=10 + seed))
        grid = charts.periods(start, end, bucket)
        series = _random_series(seed, start, end)
        for by, sums in (("cache_name", ["hits", "misses", "hit_ms"]), (None, ["spent", "hits"])):
            ours = charts.regroup(series, sums, grid, by=by)
            theirs = _regroup_by_pandas(series, sums, grid, by, start, end, bucket)
            if theirs.empty:
                assert ours.empty
                continue
            pd.testing.assert_frame_equal(ours, theirs[ours.columns], check_exact=False, rtol=1e-12)
            assert list(ours.columns) == list(theirs.columns)
            if by:
                pd.testing.assert_frame_equal(pd.concat(charts.on_grid(ours, grid)),
                                              pd.concat(_on_grid_by_pandas(ours, grid)),
                                              check_exact=False, rtol=1e-12)
                assert list(charts.on_grid(ours, grid)) == list(_on_grid_by_pandas(ours, grid))


def test_regroup_of_rows_all_outside_the_range_is_empty():
    grid = charts.periods(NOV_1, DEC_1, "day")
    series = pd.DataFrame({"bucket": [datetime(2025, 10, 31, 23, tzinfo=UTC), datetime(2025, 12, 1, tzinfo=UTC)],
                           "cache_name": ["a", "a"], "hits": [1, 2]})
    assert charts.regroup(series, ["hits"], grid, by="cache_name").empty
    assert charts.regroup(series.iloc[0:0], ["hits"], grid).empty


def test_a_spec_shown_unchecked_sends_the_json_plotly_would(monkeypatch):
    """Datetimes go to the browser as the same text plotly's own JSON encoder makes of them (the Spec passes
    them as text to skip its slow path): naive datetimes, Timestamps, microseconds, in data, customdata and
    layout, next to None and NaN."""
    import json
    import math

    import plotly.io as pio

    monkeypatch.setenv(charts.CHECK_SPECS_SETTING, "0")
    moments = [datetime(2025, 11, 1, 12), pd.Timestamp("2025-11-02 00:00:00.250000"), None,
               datetime(2025, 11, 3, 5, 6, 7, 89)]
    spec = charts.Spec()
    spec.add({"type": "scatter", "x": moments, "y": [1.5, math.nan, None, 2],
              "customdata": [["Nov 1", moments[0]], ["Nov 2", 3], ["Nov 3", None], ("Nov 4", moments[1])]})
    spec.update({"xaxis": {"range": [moments[0], moments[3]], "tick0": moments[1]}})
    spec.mark([{"type": "line", "x0": moments[0], "x1": moments[0], "y0": 0, "y1": 1}], [])
    sent = json.loads(pio.to_json(spec.for_streamlit(), validate=False))
    assert sent == json.loads(pio.to_json(spec.to_dict(), validate=False))
    assert sent["data"][0]["x"][1] == "2025-11-02T00:00:00.250000"
