"""Monthly Review: one month against the targets, its trends, top entries, invalidations, cleanups and
recommendations, every figure that month's (cachelib.review builds it; cachelib.report draws it)."""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from cachelib import charts, report, review, ui

log = logging.getLogger(__name__)

ui.require_login()
ui.page_header("Monthly Review", "The deployment guide's monthly review: every figure on this page is the "
                                 "chosen month's.")


@st.cache_data(ttl=60, show_spinner="Building the review…", max_entries=24)
def build_review(month, url: str) -> review.MonthlyReview:
    from cachelib.db import get_database

    return review.build(month, get_database(url))


@st.cache_data(ttl=300, show_spinner="Writing the HTML report…", max_entries=4)
def html_report(month, url: str) -> bytes:
    return report.to_html(build_review(month, url)).encode()


def html_on_click(month, url: str) -> bytes:
    """The HTML report, written when its button is clicked (not on every render: it draws every chart
    again). A failure gives a page that says so; the details go to the log."""
    try:
        return html_report(month, url)
    except Exception:  # noqa: BLE001 - the download is all the admin sees of this
        log.exception("the HTML review of %s could not be written", month)
        return (b"<!doctype html><meta charset='utf-8'><title>Cache review not written</title>"
                b"<p>The review could not be written (the database could not be read). Try the download "
                b"again; the dashboard's log has the details.</p>")


def targets_section(data: review.MonthlyReview) -> None:
    st.subheader("Targets")
    table = data.targets
    shown = pd.DataFrame({"Target": table["target"], "Cache": table["cache"].map(
        lambda c: ui.cache_label(None if c == "all caches" else c)), "Window": table["window"],
        "Measured": table["measured"].map(ui.fmt_pct), "Result": table["result"]})
    st.dataframe(ui.verdict_frame(shown, "Result"), hide_index=True, width="stretch")
    st.caption("The month is judged against the steady-state (Month 1) targets. Deployment milestone windows "
               "that overlap the month are judged over their own window, as on the Overview page.")


def summary_section(data: review.MonthlyReview) -> None:
    columns = st.columns(5)
    columns[0].metric("Calls", f"{review.calls(data):,}")
    columns[1].metric("Load reduction", ui.fmt_pct(review.month_load_reduction(data)))
    per_cache = data.per_cache
    columns[2].metric("Keys invalidated by writes", f"{int(per_cache['keys_invalidated'].sum()):,}")
    columns[3].metric("Fallbacks", f"{int(per_cache['fallbacks'].sum()):,}")
    columns[4].metric("Cleanups", f"{data.cleanups.get('cleanups', 0):,}")


def trends_section(data: review.MonthlyReview) -> None:
    st.subheader("Trends")
    if review.calls(data) == 0:
        ui.no_data("No cached calls in this month.")
        return
    drawn = report.figures(data)
    # Full width each: a month of day ticks, the targets' labels and the events' labels need the room.
    for name in ("hit_rate", "load_reduction", "calls"):
        charts.show(drawn[name], key=f"review_{name}", filename=report.chart_filename(data, name))
    st.caption("Dashed lines: the Month 1 targets, each in the colour of what it judges. "
               + report.events_note(data) + " The camera button of a chart downloads it as PNG.")


def top_entries_section(data: review.MonthlyReview) -> None:
    st.subheader("Top entries by time saved")
    if data.top_keys.empty:
        ui.no_data("No cached calls in this month.")
        return
    top = data.top_keys
    st.dataframe(pd.DataFrame({
        "Key": top["cache_key"], "Cache": top["cache_name"].map(ui.cache_label), "Hits": top["hits"],
        "Calls": top["calls"], "Time saved": top["compute_ms_saved"].map(ui.fmt_ms),
        "Days active": top["days_active"]}), hide_index=True, width="stretch")
    st.caption("Summed over the month from the per-key daily history (each day keeps its top keys; see the "
               "README's \"History kept for the review\").")


def activity_section(data: review.MonthlyReview) -> None:
    st.subheader("Invalidations, fallbacks and cleanups")
    left, right = st.columns(2)
    with left:
        per_cache = data.per_cache
        st.dataframe(pd.DataFrame({
            "Cache": per_cache["cache_name"].map(ui.cache_label),
            "Keys invalidated by writes": per_cache["keys_invalidated"].astype(int),
            "Fallbacks": per_cache["fallbacks"].astype(int), "Calls": per_cache["calls"].astype(int)}),
            hide_index=True, width="stretch")
    with right:
        c = data.cleanups
        if not c.get("cleanups"):
            ui.no_data("No cleanups in this month.")
        else:
            st.dataframe(pd.DataFrame({"": ["Cleanups (by hand)", "Expired entries removed", "Entries evicted",
                                            "Never hit before expiry", "Space freed"],
                                       "Month": [f"{c['cleanups']:,} ({c['by_hand']:,})", f"{c['entries_removed']:,}",
                                                 f"{c['entries_evicted']:,}", f"{c['never_hit_removed']:,}",
                                                 ui.fmt_bytes(c["bytes_freed"])]}),
                         hide_index=True, width="stretch")
    if not data.events.empty:
        with st.expander(f"What happened ({len(data.events)} events)", expanded=len(data.events) <= 8):
            st.dataframe(pd.DataFrame({"Time": data.events["at"].map(ui.fmt_time), "Event": data.events["label"],
                                       "Detail": data.events["detail"]}), hide_index=True, width="stretch")


def recommendations_section(data: review.MonthlyReview) -> None:
    st.subheader("Recommendations")
    health = data.health
    if health.empty:
        ui.no_data("No health snapshots were recorded in this month (each cleanup and health check records one).")
        return
    problems = health[health["worst"] != "ok"]
    st.caption(f"From {data.health_runs:,} health snapshots recorded in the month.")
    if problems.empty:
        st.success("Every health check stayed ok all month — no action needed.", icon=":material/check_circle:")
        return
    for row in problems.itertuples():
        show = st.error if row.worst == "critical" else st.warning
        show(f"**{row.check_name}** — {row.worst} in {row.not_ok} of {row.runs} snapshots "
             f"(latest: {row.last_status}, {row.last_value}). {row.recommendation}",
             icon=":material/error:" if row.worst == "critical" else ":material/warning:")


def downloads(data: review.MonthlyReview, url: str) -> None:
    month = data.period.month
    left, right = st.columns(2)
    left.download_button("Download daily rows per cache (CSV)", review.to_csv(data).encode(),
                         file_name=f"cache-review-{month:%Y-%m}-daily.csv", mime="text/csv", key="review_download",
                         icon=":material/download:")
    right.download_button("Download the review as HTML (opens offline, printable)",
                          lambda: html_on_click(month, url), file_name=f"cache-review-{month:%Y-%m}.html",
                          mime="text/html", key="review_html", icon=":material/description:")


with ui.guard("the monthly review"):
    deployment = ui.read("deployment")
    choices = review.months(deployment.deployed_at, deployment.now)
    default = review.default_month(deployment.deployed_at, deployment.now)
    month = st.selectbox("Month", choices, index=choices.index(default), key="review_month",
                         format_func=lambda m: review.period(m, deployment.deployed_at, deployment.now).title)
    url = ui.reads_url()
    data = build_review(month, url)
    span = data.period
    st.caption(f"{span.title}: {span.span} (UTC)"
               + (f", from the deployment on {deployment.deployed_at:%b %-d}" if span.from_deployment else "")
               + ". Defaults to the last full month.")
    summary_section(data)
    targets_section(data)
    trends_section(data)
    top_entries_section(data)
    activity_section(data)
    recommendations_section(data)
    downloads(data, url)
