"""Overview: the cache at a glance, the guide's performance overview and the Week 1 / Month 1 scorecard."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cachelib import charts, queries, ui
from cachelib.config import settings

ui.require_login()
ui.page_header("Cache Overview", "Entries, hit rates, load reduction and the deployment targets, live.")


def kpis() -> None:
    """the cache KPIs"""
    ui.prefetch("overview", "health", "guide_overview")
    overview = ui.numeric(ui.read("overview"), "avg_hits", "hit_rate_today", "hit_rate_7d", "hit_rate_30d",
                          "load_reduction_30d")
    health = ui.read("health")
    load = ui.numeric(ui.read("load_reduction_series", days=30, bucket="day"), "compute_ms_spent",
                      "compute_ms_saved")
    reduction = queries.load_reduction(load)
    last_cleanup = overview["last_cleanup_at"].dropna().max() if not overview.empty else None
    status = ui.worst_status(health)

    columns = st.columns(6)
    columns[0].metric("Entries", ui.fmt_number(overview["entries"].sum() if not overview.empty else 0),
                      help="Entries holding a value (live or expired, not yet cleaned up).")
    columns[1].metric("Cache size", ui.fmt_bytes(overview["total_bytes"].sum() if not overview.empty else 0))
    columns[2].metric("Load reduction", ui.fmt_pct(reduction),
                      help="Database load reduction over 30 days: the share of direct-query time avoided by "
                           f"cache hits. Month 1 target: at least {settings().targets.load_reduction:.0f}%.")
    columns[3].metric("Fallbacks 7 d", ui.fmt_number(overview["fallbacks_7d"].sum() if not overview.empty else 0),
                      help="Calls served by the direct query because the cache failed.")
    columns[4].metric("Last cleanup", ui.fmt_ago(last_cleanup), help=ui.fmt_time(last_cleanup))
    columns[5].metric("Health", status,
                      help="The worst status of the health checks (see Maintenance & Health).")

    st.subheader("Per cache")
    if overview.empty:
        ui.no_data()
        return
    table = pd.DataFrame({
        "Cache": overview["cache_name"].map(ui.cache_label),
        "Hit rate today": overview["hit_rate_today"],
        "Hit rate 7 d": overview["hit_rate_7d"],
        "Hit rate 30 d": overview["hit_rate_30d"],
        "Load reduction 30 d": overview["load_reduction_30d"],
        "Calls 30 d": overview["calls_30d"],
        "Fallbacks 7 d": overview["fallbacks_7d"],
        "Entries": overview["entries"],
        "Live": overview["live_entries"],
        "Expired": overview["expired_entries"],
        "Size": overview["total_bytes"].map(ui.fmt_bytes),
    })
    percent = st.column_config.NumberColumn(format="%.1f%%")
    st.dataframe(table, hide_index=True, width="stretch",
                 column_config={c: percent for c in ("Hit rate today", "Hit rate 7 d", "Hit rate 30 d",
                                                     "Load reduction 30 d")})


def guide_numbers() -> None:
    """the cache performance overview"""
    st.subheader("Cache performance overview")
    st.caption("The deployment guide's overview figures for the entries holding data (invalidated keys awaiting "
               "cleanup are not entries), from the counts the database keeps as entries are written.")
    frame = ui.numeric(ui.read("guide_overview"), "avg_hits")
    row = frame.iloc[0] if not frame.empty else pd.Series(dtype=object)
    columns = st.columns(4)
    columns[0].metric("Total entries", ui.fmt_number(row.get("total_entries", 0)), help="total_entries")
    columns[1].metric("Entries with hits", ui.fmt_number(row.get("hit_entries", 0)), help="hit_entries")
    columns[2].metric("Average hits per entry", ui.fmt_number(row.get("avg_hits", 0), 2), help="avg_hits")
    columns[3].metric("Expired entries", ui.fmt_number(row.get("expired_entries", 0)), help="expired_entries")


def scorecard() -> None:
    """the Week 1 / Month 1 scorecard"""
    st.subheader("Deployment targets")
    info = ui.read("deployment")
    st.caption(f"Deployed {ui.fmt_time(info.deployed_at)} ({info.source}). Week 1 is days 1-7, "
               "Month 1 days 8-30 after deployment.")
    targets = ui.numeric(ui.read("target_status"), "measured", "goal")
    if targets.empty:
        ui.no_data()
        return
    summary = []
    for milestone in ("Week 1", "Month 1"):
        rows = targets[targets["milestone"] == milestone]
        met = int((rows["met"] == True).sum())  # noqa: E712 (met is True/False/None)
        summary.append(f"**{milestone}** ({ui.fmt_time(rows['window_start'].iloc[0])[:10]} to "
                       f"{ui.fmt_time(rows['window_end'].iloc[0])[:10]}): {met} of {len(rows)} targets met")
    st.markdown("  \n".join(summary))
    st.dataframe(ui.verdict_frame(pd.DataFrame({
        "Window": [charts.window_label(m, start, end) for m, start, end
                   in zip(targets["milestone"], targets["window_start"], targets["window_end"], strict=True)],
        "Target": [f"{t} {g:g}%" for t, g in zip(targets["target"], targets["goal"], strict=True)],
        "Cache": targets["cache_name"].map(lambda c: ui.cache_label(None if c == "all caches" else c)),
        "Measured": targets["measured"].map(ui.fmt_pct),
        "Result": [_verdict(s, m) for s, m in zip(targets["state"], targets["met"], strict=True)],
    }), "Result"), hide_index=True, width="stretch")


def _verdict(state: str, met) -> str:
    if state == "in progress":
        return "on track" if met else "below target so far"
    return state


def everything() -> None:
    """the overview"""
    with ui.guard("the cache KPIs"):
        kpis()
    with ui.guard("the cache performance overview"):
        guide_numbers()
    with ui.guard("the deployment targets"):
        scorecard()


ui.live(everything)
