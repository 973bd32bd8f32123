"""Maintenance & Health: health checks and their history, cleanup log and statistics, admin actions,
emergency clear, deployment verification, audit log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from cachelib import charts, ui
from cachelib.maintenance import EMERGENCY_TOKEN

ui.require_login()
ui.page_header("Maintenance & Health", "Is the cache healthy, and what has maintenance done?")

CONFIRM_LABEL = "I understand this deletes every cache entry"
EMERGENCY_BUTTON_KEY = "emergency_clear_submit"
# Streamlit gives every keyed element the CSS class st-key-<key>: the one destructive button is red.
DESTRUCTIVE_STYLE = f"""<style>
.st-key-{EMERGENCY_BUTTON_KEY} button {{
  background-color: {ui.STATUS_CHART_COLOR['critical']}; border-color: {ui.STATUS_CHART_COLOR['critical']};
  color: #ffffff;
}}
.st-key-{EMERGENCY_BUTTON_KEY} button:hover, .st-key-{EMERGENCY_BUTTON_KEY} button:focus {{
  background-color: #b91c1c; border-color: #b91c1c; color: #ffffff;
}}
</style>"""
HISTORY_DAYS = (7, 30, 90, 365)
# A recorded status stands until the next record of its check, for at most this long (cleanups run
# hourly, daily at the least); after that the timeline shows a gap: nothing was recorded.
HISTORY_HOLD = pd.Timedelta(hours=25)
DAY_MS = 24 * 3600 * 1000
CLEANUP_COLORS = ("#2563eb", "#7c3aed", "#94a3b8")


def impact_text(impact: dict, what: str) -> str:
    """One sentence: what ``what`` loses (from queries.clear_impact)."""
    if impact["entries"] == 0:
        return f"{what} loses no live entry: nothing is cached there right now."
    entries = ui.fmt_number(impact["entries"])
    return (f"{what} loses **{entries} live {'entry' if impact['entries'] == 1 else 'entries'}** "
            f"({ui.fmt_bytes(impact['bytes'])} of cached results); computing them again costs about "
            f"**{ui.fmt_ms(impact['compute_ms'])}** of query time, spread over the next calls.")


def actions() -> None:
    st.subheader("Actions")
    if not ui.is_admin():
        st.info("Maintenance actions are for administrators. You are logged in as a viewer.", icon=":material/lock:")
        return
    buttons = st.columns(3)
    pressed = {
        "health": buttons[0].button("Run health check", key="run_health_check", icon=":material/stethoscope:",
                                    help="Runs the health checks and adds them to the health history."),
        "cleanup": buttons[1].button("Clean up expired", key="run_cleanup", icon=":material/cleaning_services:"),
        "optimize": buttons[2].button("Optimize", key="run_optimize", icon=":material/speed:"),
    }
    result = None
    if pressed["health"]:
        result = ui.run_action("Health check", lambda: ui.act("health_check"))
    elif pressed["cleanup"]:
        result = ui.run_action("Cleanup of expired entries", lambda: ui.act("cleanup"))
    elif pressed["optimize"]:
        result = ui.run_action("Optimize", lambda: ui.act("optimize_cache"))
    if result is not None:
        with st.expander("Details"):
            st.json(result.to_dict())
    emergency_clear()


def emergency_clear() -> None:
    with st.expander("Emergency Clear All", icon=":material/warning:"):
        st.markdown(DESTRUCTIVE_STYLE, unsafe_allow_html=True)
        st.warning("Deletes **every** cache entry of every cache. The application keeps working: every call "
                   "computes from the database until the cache has filled again.", icon=":material/warning:")
        with ui.guard("what an emergency clear would delete"):
            st.markdown(impact_text(ui.read("clear_impact"), "Clearing now"))
        st.markdown(f"To confirm, type `{EMERGENCY_TOKEN}` exactly into the box below, tick the box, then press "
                    "the red button.")
        with st.form("emergency_clear_form", clear_on_submit=True):
            token = st.text_input("Confirmation token", key="emergency_token", autocomplete="off",
                                  help=f"Exactly {EMERGENCY_TOKEN}, in capitals.")
            understood = st.checkbox(CONFIRM_LABEL, key="emergency_understood")
            submitted = st.form_submit_button("Emergency Clear All", key=EMERGENCY_BUTTON_KEY,
                                              icon=":material/delete_forever:")
        if submitted:
            if not understood:
                ui.show_outcome("**Nothing was deleted:** tick the box to confirm that every cache entry will be "
                                "deleted.", "critical")
            else:
                ui.run_action("Emergency clear", lambda: ui.act("emergency_clear", confirm=token.strip()))


def deployment_checks() -> None:
    """The read-only checks of `python -m cachelib verify`, on demand (they take a few seconds)."""
    st.subheader("Deployment verification")
    if not ui.is_admin():
        st.caption("Administrators can run the deployment checks here (python -m cachelib verify).")
        return
    st.caption("Read-only: the checks of `python -m cachelib verify` (settings, migrations, the 15 functions, "
               "triggers, row-level security, grants, cached calls, health and the cleanup schedule). The two "
               "cached calls and the health analysis run in a transaction that is rolled back, so entries, hit "
               "counts and statistics stay as they are; the one row written is this check's line in the audit "
               "log.")
    if not st.button("Verify deployment", key="run_verify", icon=":material/fact_check:"):
        return
    result = ui.run_action("Deployment verification",
                           lambda: ui.act("verify"))
    if result is None:
        return
    checks = pd.DataFrame(result.details["checks"])
    table = pd.DataFrame({
        "Result": checks["status"],
        "Group": checks["group"], "Check": checks["name"], "Found": checks["detail"],
        "Fix": checks["fix"].fillna(""), "Required": checks["required"]})
    st.dataframe(ui.verdict_frame(table, "Result"), hide_index=True, width="stretch")


def health() -> None:
    """the health checks"""
    st.subheader("Health checks")
    checks = ui.read("health")
    if checks.empty:
        ui.no_data()
        return
    status = ui.worst_status(checks)
    counts = checks["status"].value_counts()
    st.markdown(f"Overall: {ui.STATUS_ICON.get(status, '')} **{status}** — {counts.get('critical', 0)} critical, "
                f"{counts.get('warning', 0)} warning, {counts.get('ok', 0)} ok. A check that judges a share says "
                "\"not judged\" until it has its minimum sample.")
    table = checks.rename(columns={"check_name": "Check", "status": "Status", "value": "Value",
                                   "recommendation": "Recommendation"})
    st.table(ui.status_frame(table[["Check", "Status", "Value", "Recommendation"]], "Status"), hide_index=True)


def status_segments(history: pd.DataFrame, end: pd.Timestamp) -> pd.DataFrame:
    """Runs of one status per check: check, status, start, end, records, value (the first record's),
    source; checks in the order they first appear. A record's status stands until the next record of its
    check, at most HISTORY_HOLD. (One pass over all records: a pass per check cost 50 ms and more.)"""
    if history.empty:
        return pd.DataFrame(columns=["check", "status", "start", "end", "records", "value", "source"])
    first_seen = {check: n for n, check in enumerate(pd.unique(history["check_name"]))}
    frame = (history.assign(recorded_at=pd.to_datetime(history["recorded_at"], utc=True),
                            order=history["check_name"].map(first_seen))
             .sort_values(["order", "recorded_at"], kind="stable").reset_index(drop=True))
    check, starts, status = frame["check_name"], frame["recorded_at"], frame["status"]
    next_same_check = check.shift(-1) == check
    following = starts.shift(-1).where(next_same_check, end)
    ends = pd.concat([following, starts + HISTORY_HOLD], axis=1).min(axis=1).clip(upper=end)
    previous_same_check = check.shift() == check
    new_run = ~previous_same_check | (status != status.shift()) | (starts != ends.shift())
    records = pd.DataFrame({"check": check, "status": status, "start": starts, "end": ends, "value": frame["value"],
                            "source": frame["source"], "run": new_run.cumsum()})
    return (records.groupby("run", sort=False)
            .agg(check=("check", "first"), status=("status", "first"), start=("start", "min"), end=("end", "max"),
                 records=("status", "size"), value=("value", "first"), source=("source", "first"))
            .reset_index(drop=True))


def timeline(segments: pd.DataFrame) -> charts.Spec:
    """One horizontal bar per run of a status (from ``status_segments``), a row per check, in the status
    colours; hovering a bar tells its check, status, span, records, first value and recorder."""
    figure = charts.Spec()
    for status in ("ok", "warning", "critical"):
        rows = segments[segments["status"] == status]
        if rows.empty:
            continue
        figure.add({
            "type": "bar", "orientation": "h", "base": charts.utc_values(rows["start"]),
            "x": ((rows["end"] - rows["start"]).dt.total_seconds() * 1000).tolist(), "y": rows["check"].tolist(),
            # The legend says what the colours mean even when every run has one status.
            "name": status, "legendgroup": status, "showlegend": True,
            "marker": {"color": ui.STATUS_CHART_COLOR[status]},
            "customdata": rows[["since", "until", "records", "value", "source"]].to_numpy().tolist(),
            "hovertemplate": "<b>%{y}</b>: " + status + "<br>From %{customdata[0]} to %{customdata[1]}"
                             "<br>Records: %{customdata[2]}<br>Value: %{customdata[3]}"
                             "<br>Recorded by: %{customdata[4]}<extra></extra>"})
    return figure


def health_history() -> None:
    """the health history"""
    st.subheader("Health history")
    days = st.columns([1, 3])[0].selectbox("Period", HISTORY_DAYS, index=HISTORY_DAYS.index(30),
                                           key="health_history_days", format_func=lambda d: f"last {d} days")
    end = pd.Timestamp(datetime.now(UTC)).ceil("min")
    start = end - timedelta(days=days)
    history = ui.read("health_history", start=start.to_pydatetime(), end=end.to_pydatetime())
    if history.empty:
        ui.no_data(f"No health history in the last {days} days: every cleanup and every Run health check "
                   "records the checks.")
        return
    segments = status_segments(history, end)
    order = [c for c in ui.read("health")["check_name"] if c in set(segments["check"])]
    order += sorted(set(segments["check"]) - set(order))
    segments = segments.assign(since=segments["start"].map(ui.fmt_time), until=segments["end"].map(ui.fmt_time))
    figure = timeline(segments)
    # A warning or critical spell too short to see as a bar (one bad hour in 30 days) is also marked with a
    # diamond; longer spells are bars wide enough on their own.
    too_narrow = (segments["end"] - segments["start"]) < (end - start) / 150
    flagged = segments[(segments["status"] != "ok") & too_narrow]
    for status in ("warning", "critical"):
        rows = flagged[flagged["status"] == status]
        if not rows.empty:
            figure.add({
                "type": "scatter", "x": charts.utc_values(rows["start"] + (rows["end"] - rows["start"]) / 2),
                "y": rows["check"].tolist(), "mode": "markers",
                "marker": {"symbol": "diamond", "size": 11, "line": {"width": 1, "color": "#ffffff"},
                           "color": ui.STATUS_CHART_COLOR[status]},
                "name": status, "legendgroup": status, "showlegend": False,
                "customdata": rows[["value"]].to_numpy().tolist(),
                "hovertemplate": "%{y}: " + status + " at %{x}<br>%{customdata[0]}<extra></extra>"})
    # A history younger than the period is drawn from its first record (a few slivers at the right edge of
    # 30 days would say nothing); the caption says so.
    first = segments["start"].min()
    shown_from = max(start, first - max((end - first) * 0.05, pd.Timedelta(minutes=10)))
    figure.update({
        "height": 90 + 34 * len(order), "margin": {"t": 40, "b": 40, "l": 10, "r": 10}, "barmode": "overlay",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "title": {"text": "Status"}},
        "yaxis": {"title": {"text": None}, "categoryorder": "array", "categoryarray": order, "autorange": "reversed"},
        "xaxis": {"type": "date", "title": {"text": "Time (UTC)"},
                  "range": charts.utc_values([shown_from, end + (end - shown_from) * 0.015])}})
    charts.show(figure, key="chart_health_history", filename=charts.filename("health-history", start, end))
    since = f"First record in the last {days} days: {ui.fmt_time(first)}. " if shown_from > start else ""
    st.caption(since + "Recorded by every cleanup (scheduled or by hand: the state the cleanup found, before it "
               "removed anything) and by every Run health check. A status stands until the next record, at most "
               f"{int(HISTORY_HOLD.total_seconds() // 3600)} hours; a gap means nothing was recorded.")
    changes = segments[segments["status"] != segments.groupby("check")["status"].shift()]
    changes = changes[changes["start"] > changes.groupby("check")["start"].transform("min")]
    if not changes.empty:
        with st.expander(f"Status changes ({len(changes)})"):
            latest = changes.sort_values("start", ascending=False).head(30)
            st.table(ui.status_frame(pd.DataFrame({
                "Time": latest["since"], "Check": latest["check"], "Status": latest["status"],
                "Value": latest["value"], "Recorded by": latest["source"]}), "Status"), hide_index=True)


def cleanup_statistics() -> None:
    """the cleanup statistics"""
    st.subheader("Cleanup statistics (last 7 days)")
    stats = ui.numeric(ui.read("cleanup_stats", days=7), "avg_duration_ms")
    if stats.empty:
        ui.no_data()
        return
    stats = stats.assign(day=pd.to_datetime(stats["day"]))
    counts = ("entries_removed", "entries_evicted", "never_hit_removed")
    most = float(stats[list(counts)].max().max() or 0)
    freed_max = float(stats["bytes_freed"].max() or 0)
    unit, scale = ("MB", 1024 * 1024) if freed_max >= 1024 * 1024 else ("KB", 1024)
    # Neutral colours: green, orange and red mean ok, warning and critical on this page.
    days = charts.utc_values(stats["day"])
    bars = [{"type": "bar", "x": days, "y": stats[column].tolist(), "name": label, "marker": {"color": colour}}
            for column, label, colour in zip(counts, ("expired removed", "evicted (size bound)",
                                                      "never hit before expiry"), CLEANUP_COLORS, strict=True)]
    freed = {"type": "scatter", "x": days, "y": (stats["bytes_freed"] / scale).tolist(), "name": f"{unit} freed",
             "mode": "lines+markers", "line": {"color": "#334155"}, "yaxis": "y2"}
    # Both axes start at zero (a dip must not look like a collapse); the legend sits above the plot,
    # clear of the axis titles; one tick per day for daily figures.
    figure = charts.Spec([*bars, freed], {
        "barmode": "group", "height": 340, "margin": {"t": 60, "b": 40},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        "xaxis": {"title": {"text": "Day (UTC)"}, "dtick": DAY_MS, "tickformat": "%b %d"},
        "yaxis": {"title": {"text": "Entries (count)"}, "range": [0, max(most * 1.15, 5)], "rangemode": "tozero",
                  **({"dtick": 1} if most <= 5 else {})},
        "yaxis2": {"title": {"text": f"Freed ({unit})"}, "range": [0, max(freed_max / scale * 1.15, 1)],
                   "rangemode": "tozero", "showgrid": False, "tickmode": "auto", "nticks": 6, "overlaying": "y",
                   "side": "right"}})
    charts.show(figure, key="chart_cleanup", filename=charts.filename("cleanups-7-days"))
    total = stats[["entries_removed", "entries_evicted"]].sum().sum()
    st.caption(f"{int(stats['cleanups'].sum())} cleanups removed {int(total)} entries and freed "
               f"{ui.fmt_bytes(stats['bytes_freed'].sum())} in 7 days.")


def cleanup_log() -> None:
    """the cleanup log"""
    st.subheader("Cleanup log")
    log = ui.read("cleanup_log", limit=50)
    if log.empty:
        ui.no_data("No cleanup has run yet.")
        return
    st.dataframe(pd.DataFrame({
        "Time": log["cleanup_time"].map(ui.fmt_time),
        "Removed": log["entries_removed"], "Evicted": log["entries_evicted"],
        "Never hit": log["never_hit_removed"], "Freed": log["bytes_freed"].map(ui.fmt_bytes),
        "Duration": log["duration_ms"].map(ui.fmt_ms), "Triggered by": log["triggered_by"],
    }), hide_index=True, width="stretch", height=260)


def audit() -> None:
    """the audit log"""
    st.subheader("Audit log")
    entries = ui.read("audit_log", limit=100)
    if entries.empty:
        ui.no_data("No maintenance actions yet.")
        return
    st.dataframe(pd.DataFrame({
        "Time": entries["at"].map(ui.fmt_time), "Actor": entries["actor"], "Role": entries["actor_role"],
        "Action": entries["action"], "Outcome": entries["outcome"],
        "Parameters": entries["parameters"].map(_compact), "Result": entries["result"].map(_compact),
        "Duration": entries["duration_ms"].map(ui.fmt_ms),
    }), hide_index=True, width="stretch", height=300)


def _compact(value) -> str:
    if value is None or value == {}:
        return ""
    return json.dumps(value, default=str, separators=(", ", ": "))[:300]


with ui.guard("the maintenance actions"):
    actions()
with ui.guard("the deployment verification"):
    deployment_checks()


def monitoring() -> None:
    """the maintenance monitoring"""
    # The sections' fixed reads side by side: the time of the slowest instead of the sum.
    ui.prefetch("health", ("cleanup_stats", {"days": 7}), ("cleanup_log", {"limit": 50}), ("audit_log", {"limit": 100}))
    with ui.guard("the health checks"):
        health()
    with ui.guard("the health history"):
        health_history()
    with ui.guard("the cleanup statistics"):
        cleanup_statistics()
    with ui.guard("the cleanup log"):
        cleanup_log()
    with ui.guard("the audit log"):
        audit()


ui.live(monitoring)
