"""Performance Analysis: hit-rate trends against the targets, load reduction, response times, entry sizes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cachelib import queries, ui
from cachelib.config import settings

ui.require_login()
ui.page_header("Performance Analysis", "How well the cache works over time, against the deployment guide's targets.")

BUCKET_LABELS = {"hour": "Hour", "day": "Day", "week": "Week"}
WINDOW_COLORS = {"Week 1": "#f59e0b", "Month 1": "#6366f1"}
MAX_DAYS = 3650


def cache_targets(cache: str) -> dict[str, float]:
    """The Week 1 and Month 1 hit-rate targets of one cache (none for caches the guide does not name)."""
    t = settings().targets
    return {"expert_sessions": {"Week 1": t.week1_sessions, "Month 1": t.month1_sessions},
            "product_performance": {"Week 1": t.week1_analytics, "Month 1": t.month1_analytics}}.get(cache, {})


def utc_naive(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).dt.tz_convert("UTC").dt.tz_localize(None)


def to_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


with ui.guard("the controls"):
    deployment = ui.read("deployment")
    today = deployment.now.astimezone(UTC).date()
    first_day = max(deployment.deployed_at.astimezone(UTC).date(), today - timedelta(days=MAX_DAYS - 1))
    controls = st.columns([1, 2, 2])
    bucket = controls[0].selectbox("Bucket", list(queries.BUCKETS), index=1, key="perf_bucket",
                                   format_func=BUCKET_LABELS.get)
    default_start = max(first_day, today - timedelta(days=29))
    picked = controls[1].date_input("Date range (UTC)", value=(default_start, today), min_value=min(first_day,
                                    default_start), max_value=today, key="perf_range")
    cache_names = ui.read("cache_names")
    chosen = controls[2].multiselect("Caches", cache_names, default=cache_names, key="perf_caches",
                                     format_func=ui.cache_label)

    if isinstance(picked, (tuple, list)):
        start_day = picked[0] if picked else default_start
        end_day = picked[1] if len(picked) > 1 else today
    else:
        start_day = end_day = picked if isinstance(picked, date) else today
    range_start = datetime.combine(start_day, time.min)
    range_end = datetime.combine(end_day, time.min) + timedelta(days=1)
    days = min(MAX_DAYS, max(1, (today - start_day).days + 1))


def in_range(frame: pd.DataFrame, column: str = "bucket") -> pd.DataFrame:
    if frame.empty:
        return frame
    frame = frame.copy()
    frame[column] = utc_naive(frame[column])
    return frame[(frame[column] >= range_start) & (frame[column] < range_end)]


def target_windows() -> dict[str, tuple[datetime, datetime]]:
    """The Week 1 / Month 1 windows clipped to the shown range (missing when outside it)."""
    start = to_naive(deployment.deployed_at)
    windows = {}
    for name, (offset_start, offset_end) in queries.WINDOWS.items():
        x0, x1 = max(start + offset_start, range_start), min(start + offset_end, range_end)
        if x0 < x1:
            windows[name] = (x0, x1)
    return windows


def shade_windows(figure: go.Figure, **where) -> None:
    for name, (x0, x1) in target_windows().items():
        figure.add_vrect(x0=x0, x1=x1, fillcolor=WINDOW_COLORS[name], opacity=0.10, line_width=0, layer="below",
                         annotation_text=name, annotation_position="top left" if name == "Week 1" else "top right",
                         **where)


def hit_rate_chart(series: pd.DataFrame) -> None:
    st.subheader("Hit rate per cache")
    if series.empty:
        ui.no_data()
        return
    caches = [c for c in chosen if c in set(series["cache_name"])]
    figure = make_subplots(rows=len(caches), cols=1, shared_xaxes=True, vertical_spacing=0.12,
                           subplot_titles=[ui.cache_label(c) for c in caches])
    for row, cache in enumerate(caches, start=1):
        data = series[series["cache_name"] == cache]
        figure.add_trace(go.Scatter(x=data["bucket"], y=data["hit_rate"], mode="lines+markers",
                                    name=ui.cache_label(cache),
                                    line={"color": ui.CACHE_COLORS.get(ui.cache_label(cache), "#2563eb")},
                                    customdata=data[["hits", "misses", "fallbacks"]],
                                    hovertemplate="%{x}<br>hit rate %{y:.1f}%<br>hits %{customdata[0]}, "
                                                  "misses %{customdata[1]}, fallbacks %{customdata[2]}"
                                                  "<extra></extra>"),
                         row=row, col=1)
        for milestone, goal in cache_targets(cache).items():
            figure.add_hline(y=goal, line_dash="dot" if milestone == "Week 1" else "dash",
                             line_color=WINDOW_COLORS[milestone], row=row, col=1,
                             annotation_text=f"{milestone} target > {goal:.0f}%", annotation_position="bottom right")
        figure.update_yaxes(title_text="Hit rate (%)", range=[0, 100], row=row, col=1)
    shade_windows(figure, row="all", col=1)
    figure.update_xaxes(title_text="Time (UTC)", row=len(caches), col=1)
    figure.update_layout(height=280 * len(caches) + 60, showlegend=False, margin={"t": 40, "b": 40})
    st.plotly_chart(figure, width="stretch", key="chart_hit_rate")
    st.caption("Shaded: the Week 1 (days 1-7) and Month 1 (days 8-30) windows after deployment. "
               "Dotted line: Week 1 target; dashed: Month 1 target.")


def load_chart(load: pd.DataFrame) -> None:
    st.subheader("Database load reduction")
    if load.empty:
        ui.no_data()
        return
    goal = settings().targets.load_reduction
    figure = px.bar(load, x="bucket", y="load_reduction",
                    labels={"bucket": "Time (UTC)", "load_reduction": "Load reduction (%)"},
                    hover_data={"compute_ms_saved": ":.1f", "compute_ms_spent": ":.1f"})
    figure.add_hline(y=goal, line_dash="dash", line_color="#dc2626",
                     annotation_text=f"Month 1 target ≥ {goal:.0f}%", annotation_position="top left",
                     annotation_bgcolor="rgba(255,255,255,0.85)")
    shade_windows(figure)
    figure.update_yaxes(range=[0, 100])
    figure.update_layout(height=340, margin={"t": 30, "b": 40})
    st.plotly_chart(figure, width="stretch", key="chart_load")
    saved, spent = load["compute_ms_saved"].sum(), load["compute_ms_spent"].sum()
    if saved + spent > 0:
        st.caption(f"Over the range: {ui.fmt_ms(saved)} of query time avoided, {ui.fmt_ms(spent)} spent "
                   f"({100 * saved / (saved + spent):.1f}% reduction).")


def response_chart(series: pd.DataFrame) -> None:
    st.subheader("Response time: hit vs miss")
    timed = series.dropna(subset=["avg_hit_ms", "avg_miss_ms"], how="all")
    if timed.empty:
        ui.no_data()
        return
    long = timed.melt(id_vars=["bucket", "cache_name"], value_vars=["avg_hit_ms", "avg_miss_ms"],
                      var_name="kind", value_name="ms").dropna(subset=["ms"])
    long["kind"] = long["kind"].map({"avg_hit_ms": "hit (from cache)", "avg_miss_ms": "miss (computed)"})
    long["cache"] = long["cache_name"].map(ui.cache_label)
    figure = px.line(long, x="bucket", y="ms", color="cache", line_dash="kind", markers=True, log_y=True,
                     color_discrete_map=ui.CACHE_COLORS,
                     labels={"bucket": "Time (UTC)", "ms": "Mean response time (ms, log scale)",
                             "kind": "Call", "cache": "Cache"})
    figure.update_layout(height=340, margin={"t": 30, "b": 40})
    st.plotly_chart(figure, width="stretch", key="chart_response")
    hits = (timed["avg_hit_ms"] * timed["hits"]).sum() / max(timed["hits"].sum(), 1)
    misses = (timed["avg_miss_ms"] * timed["misses"]).sum() / max(timed["misses"].sum(), 1)
    columns = st.columns(3)
    columns[0].metric("Mean hit time", ui.fmt_ms(hits))
    columns[1].metric("Mean miss time", ui.fmt_ms(misses))
    columns[2].metric("A hit is faster by", f"{misses / hits:,.1f}×" if hits > 0 and misses > 0 else "—")


def size_chart() -> None:
    st.subheader("Entry size distribution")
    sizes = ui.read("size_distribution")
    if sizes.empty or sizes["entries"].sum() == 0:
        ui.no_data("No data yet: the cache holds no entries.")
        return
    figure = px.bar(sizes, x="size_class", y="entries", text="entries",
                    labels={"size_class": "Entry size", "entries": "Entries (count)"},
                    hover_data={"total_bytes": True})
    figure.update_layout(height=300, margin={"t": 30, "b": 40})
    st.plotly_chart(figure, width="stretch", key="chart_sizes")


def charts() -> None:
    """the performance charts"""
    series = ui.numeric(ui.read("hit_rate_series", days=days, bucket=bucket), "hit_rate", "avg_hit_ms",
                        "avg_miss_ms")
    series = in_range(series)
    series = series[series["cache_name"].isin(chosen)] if not series.empty else series
    load = in_range(ui.numeric(ui.read("load_reduction_series", days=days, bucket=bucket), "load_reduction",
                               "compute_ms_spent", "compute_ms_saved"))
    with ui.guard("the hit-rate chart"):
        hit_rate_chart(series)
    with ui.guard("the load-reduction chart"):
        load_chart(load)
    with ui.guard("the response-time chart"):
        response_chart(series)
    with ui.guard("the size distribution"):
        size_chart()


ui.live(charts)
