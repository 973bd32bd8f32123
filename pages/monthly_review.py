"""Monthly Review: one month against the targets, its trends, top entries, cleanups and recommendations."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from cachelib import ui
from cachelib.config import settings

ui.require_login()
ui.page_header("Monthly Review", "The deployment guide's monthly review: targets, trends, cleanups, recommendations.")

MAX_DAYS = 3650
RESULT = {True: "pass", False: "fail", None: "no data"}


def months_between(first: date, last: date) -> list[date]:
    months, current = [], date(first.year, first.month, 1)
    while current <= last:
        months.append(current)
        current = date(current.year + (current.month == 12), current.month % 12 + 1, 1)
    return months[::-1][:120]


def next_month(month: date) -> date:
    return date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def in_month(frame: pd.DataFrame, column: str, start: datetime, end: datetime) -> pd.DataFrame:
    if frame.empty:
        return frame
    frame = frame.copy()
    frame[column] = pd.to_datetime(frame[column], utc=True).dt.tz_localize(None)
    return frame[(frame[column] >= start) & (frame[column] < end)]


def review(month: date, now: datetime) -> pd.DataFrame:
    """Draw the review of ``month``; returns the rows of the downloadable report."""
    start = datetime.combine(month, datetime.min.time())
    end = datetime.combine(next_month(month), datetime.min.time())
    days = min(MAX_DAYS, max(1, (now.date() - month).days + 1))
    partial = now.replace(tzinfo=None) < end
    report: list[dict] = []
    targets = settings().targets

    series = in_month(ui.numeric(ui.read("hit_rate_series", days=days, bucket="day"), "hit_rate"),
                      "bucket", start, end)
    load = in_month(ui.numeric(ui.read("load_reduction_series", days=days, bucket="day"), "load_reduction",
                               "compute_ms_spent", "compute_ms_saved"), "bucket", start, end)

    st.subheader(f"Targets — {month:%B %Y}{' (so far)' if partial else ''}")
    goals = [("expert_sessions", "Sessions hit rate above", targets.month1_sessions),
             ("product_performance", "Analytics hit rate above", targets.month1_analytics)]
    rows = []
    for cache, label, goal in goals:
        data = series[series["cache_name"] == cache] if not series.empty else series
        calls = data[["hits", "misses", "fallbacks"]].to_numpy().sum() if not data.empty else 0
        measured = round(100.0 * data["hits"].sum() / calls, 2) if calls else None
        rows.append({"Target": f"{label} {goal:g}%", "Cache": ui.cache_label(cache), "Measured": measured,
                     "Calls": int(calls), "Result": RESULT[None if measured is None else measured > goal]})
    saved, spent = (load["compute_ms_saved"].sum(), load["compute_ms_spent"].sum()) if not load.empty else (0, 0)
    reduction = round(100.0 * saved / (saved + spent), 2) if saved + spent > 0 else None
    rows.append({"Target": f"Database load reduction at least {targets.load_reduction:g}%", "Cache": "all caches",
                 "Measured": reduction, "Calls": int(series[["hits", "misses", "fallbacks"]].to_numpy().sum())
                 if not series.empty else 0,
                 "Result": RESULT[None if reduction is None else reduction >= targets.load_reduction]})
    table = pd.DataFrame(rows)
    st.dataframe(ui.verdict_frame(table.assign(Measured=table["Measured"].map(ui.fmt_pct)), "Result"),
                 hide_index=True, width="stretch")
    st.caption("Steady-state (Month 1) targets applied to the whole month.")
    report += [{"section": "targets", "item": f"{r['Target']} ({r['Cache']})", "value": r["Measured"],
                "result": r["Result"]} for r in rows]

    milestones = ui.numeric(ui.read("target_status"), "measured", "goal")
    if not milestones.empty:
        windows = milestones[(pd.to_datetime(milestones["window_start"], utc=True).dt.tz_localize(None) < end)
                             & (pd.to_datetime(milestones["window_end"], utc=True).dt.tz_localize(None) > start)]
        if not windows.empty:
            st.markdown("**Deployment milestones in this month**")
            st.dataframe(pd.DataFrame({
                "Milestone": windows["milestone"],
                "Target": [f"{t} {g:g}%" for t, g in zip(windows["target"], windows["goal"], strict=True)],
                "Cache": windows["cache_name"].map(lambda c: ui.cache_label(None if c == "all caches" else c)),
                "Measured": windows["measured"].map(ui.fmt_pct), "State": windows["state"],
            }), hide_index=True, width="stretch")
            report += [{"section": "milestones", "item": f"{r.milestone}: {r.target} {r.goal:g}% ({r.cache_name})",
                        "value": r.measured, "result": r.state} for r in windows.itertuples()]

    st.subheader("Trends")
    left, right = st.columns(2)
    with left:
        if series.empty:
            ui.no_data()
        else:
            chart = series.assign(cache=series["cache_name"].map(ui.cache_label))
            figure = px.line(chart, x="bucket", y="hit_rate", color="cache", markers=True,
                             color_discrete_map=ui.CACHE_COLORS,
                             labels={"bucket": "Day (UTC)", "hit_rate": "Hit rate (%)", "cache": "Cache"},
                             title="Hit rate per day")
            for cache, _, goal in goals:
                figure.add_hline(y=goal, line_dash="dash", line_width=1,
                                 annotation_text=f"{ui.cache_label(cache)} target {goal:g}%")
            figure.update_yaxes(range=[0, 100])
            figure.update_layout(height=340, margin={"t": 50, "b": 40}, legend={"orientation": "h", "y": -0.3})
            st.plotly_chart(figure, width="stretch", key="review_hit_rate")
    with right:
        if load.empty:
            ui.no_data()
        else:
            figure = px.bar(load, x="bucket", y="load_reduction", title="Database load reduction per day",
                            labels={"bucket": "Day (UTC)", "load_reduction": "Load reduction (%)"})
            figure.add_hline(y=targets.load_reduction, line_dash="dash", line_color="#dc2626",
                             annotation_text=f"target ≥ {targets.load_reduction:g}%",
                             annotation_bgcolor="rgba(255,255,255,0.85)")
            figure.update_yaxes(range=[0, 100])
            figure.update_layout(height=340, margin={"t": 50, "b": 40})
            st.plotly_chart(figure, width="stretch", key="review_load")

    st.subheader("Top entries by time saved")
    st.caption("The entries in the cache now (entries do not outlive their duration, so this is not per month).")
    top = ui.numeric(ui.read("top_entries", limit=10, order_by="saved"), "time_saved_ms", "compute_ms")
    if top.empty:
        ui.no_data("No data yet: the cache holds no entries.")
    else:
        st.dataframe(pd.DataFrame({
            "Key": top["cache_key"], "Cache": top["cache_name"].map(ui.cache_label), "Hits": top["hit_count"],
            "Compute time": top["compute_ms"].map(ui.fmt_ms), "Time saved": top["time_saved_ms"].map(ui.fmt_ms),
        }), hide_index=True, width="stretch")
        report += [{"section": "top entries", "item": r.cache_key, "value": r.time_saved_ms, "result": "ms saved"}
                   for r in top.itertuples()]

    st.subheader("Cleanup summary")
    stats = in_month(ui.read("cleanup_stats", days=days), "day", start, end)
    if stats.empty:
        ui.no_data("No cleanups in this month.")
    else:
        summary = {"Cleanups": int(stats["cleanups"].sum()),
                   "Expired entries removed": int(stats["entries_removed"].sum()),
                   "Entries evicted": int(stats["entries_evicted"].sum()),
                   "Never hit before expiry": int(stats["never_hit_removed"].sum())}
        columns = st.columns(5)
        for column, (label, value) in zip(columns, summary.items(), strict=False):
            column.metric(label, f"{value:,}")
        columns[4].metric("Space freed", ui.fmt_bytes(stats["bytes_freed"].sum()))
        report += [{"section": "cleanup", "item": label, "value": value, "result": ""}
                   for label, value in summary.items()]
        report.append({"section": "cleanup", "item": "Bytes freed", "value": int(stats["bytes_freed"].sum()),
                       "result": ""})

    st.subheader("Recommendations")
    checks = ui.read("health")
    problems = checks[checks["status"] != "ok"] if not checks.empty else checks
    if checks.empty:
        ui.no_data()
    elif problems.empty:
        st.success("All health checks are ok — no action needed.")
    else:
        with st.container(border=True):
            for row in problems.sort_values("status").itertuples():  # critical before warning
                st.markdown(f"{ui.STATUS_ICON.get(row.status, '')} **{row.check_name}** — {row.status} "
                            f"({row.value}): {row.recommendation}")
    report += [{"section": "recommendations", "item": r.check_name, "value": r.value,
                "result": f"{r.status}: {r.recommendation}"} for r in checks.itertuples()]
    return pd.DataFrame(report, columns=["section", "item", "value", "result"])


with ui.guard("the monthly review"):
    ui.prefetch("deployment", "health", "target_status", ("top_entries", {"limit": 10, "order_by": "saved"}))
    deployment = ui.read("deployment")
    now = deployment.now.astimezone(UTC)
    first = max(deployment.deployed_at.astimezone(UTC).date(), now.date() - timedelta(days=MAX_DAYS - 1))
    month = st.selectbox("Month", months_between(first, now.date()), key="review_month",
                         format_func=lambda m: f"{m:%B %Y}")
    report = review(month, now)
    st.download_button("Download the review as CSV", report.to_csv(index=False).encode(),
                       file_name=f"cache-review-{month:%Y-%m}.csv", mime="text/csv", key="review_download",
                       icon=":material/download:")
