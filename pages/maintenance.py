"""Maintenance & Health: health checks, cleanup log and statistics, admin actions, emergency clear, audit log."""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from cachelib import ui
from cachelib.maintenance import EMERGENCY_TOKEN, Maintenance

ui.require_login()
ui.page_header("Maintenance & Health", "Is the cache healthy, and what has maintenance done?")

CONFIRM_LABEL = "I understand this deletes every cache entry"


def actions() -> None:
    st.subheader("Actions")
    if not ui.is_admin():
        st.info("Maintenance actions are for administrators. You are logged in as a viewer.", icon=":material/lock:")
        return
    maintenance = Maintenance()
    buttons = st.columns(3)
    pressed = {
        "health": buttons[0].button("Run health check", key="run_health_check", icon=":material/stethoscope:"),
        "cleanup": buttons[1].button("Clean up expired", key="run_cleanup", icon=":material/cleaning_services:"),
        "optimize": buttons[2].button("Optimize", key="run_optimize", icon=":material/speed:"),
    }
    actor = ui.current_actor()
    result = None
    if pressed["health"]:
        result = ui.run_action("Health check", lambda: maintenance.health_check(actor))
    elif pressed["cleanup"]:
        result = ui.run_action("Cleanup of expired entries", lambda: maintenance.cleanup(actor))
    elif pressed["optimize"]:
        result = ui.run_action("Optimize", lambda: maintenance.optimize(actor))
    if result is not None:
        with st.expander("Details"):
            st.json(result.to_dict())

    with st.expander("Emergency Clear All", icon=":material/warning:"):
        st.warning(f"Deletes **every** cache entry of every cache. The application keeps working (every call "
                   f"recomputes until the cache refills). Type **{EMERGENCY_TOKEN}** and tick the box to confirm.")
        with st.form("emergency_clear_form", clear_on_submit=True):
            token = st.text_input("Confirmation token", key="emergency_token", placeholder=EMERGENCY_TOKEN,
                                  autocomplete="off")
            understood = st.checkbox(CONFIRM_LABEL, key="emergency_understood")
            submitted = st.form_submit_button("Emergency Clear All", type="primary")
        if submitted:
            if not understood:
                st.error("Nothing was deleted: tick the box to confirm that every cache entry will be deleted.")
            else:
                ui.run_action("Emergency clear", lambda: maintenance.emergency_clear(actor, token.strip()))


def deployment_checks() -> None:
    """The read-only checks of `python -m cachelib verify`, on demand (they take a few seconds)."""
    st.subheader("Deployment verification")
    if not ui.is_admin():
        st.caption("Administrators can run the deployment checks here (python -m cachelib verify).")
        return
    st.caption("The read-only checks of `python -m cachelib verify`: settings, migrations, the 15 functions, "
               "triggers, row-level security, grants, cached calls, health and the cleanup schedule.")
    if not st.button("Verify deployment", key="run_verify", icon=":material/fact_check:"):
        return
    result = ui.run_action("Deployment verification", lambda: Maintenance().verify(ui.current_actor()))
    if result is None:
        return
    checks = pd.DataFrame(result.details["checks"])
    marks = {"pass": "✓", "fail": "✗", "skipped": "–"}
    table = pd.DataFrame({
        "": checks["status"].map(marks),
        "Group": checks["group"], "Check": checks["name"], "Found": checks["detail"],
        "Fix": checks["fix"].fillna(""), "Required": checks["required"]})
    st.dataframe(table, hide_index=True, width="stretch")


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
                f"{counts.get('warning', 0)} warning, {counts.get('ok', 0)} ok")
    table = checks.rename(columns={"check_name": "Check", "value": "Value", "recommendation": "Recommendation"})
    st.dataframe(ui.status_frame(table[["Check", "status", "Value", "Recommendation"]]), hide_index=True,
                 width="stretch", column_config={"status": st.column_config.TextColumn("Status", width="small"),
                                                 "Check": st.column_config.TextColumn(width="medium"),
                                                 "Value": st.column_config.TextColumn(width="medium"),
                                                 "Recommendation": st.column_config.TextColumn(width="large")})


def cleanup_statistics() -> None:
    """the cleanup statistics"""
    st.subheader("Cleanup statistics (last 7 days)")
    stats = ui.numeric(ui.read("cleanup_stats", days=7), "avg_duration_ms")
    if stats.empty:
        ui.no_data()
        return
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for column, label in (("entries_removed", "expired removed"), ("entries_evicted", "evicted (size bound)"),
                          ("never_hit_removed", "never hit before expiry")):
        figure.add_trace(go.Bar(x=stats["day"], y=stats[column], name=label), secondary_y=False)
    figure.add_trace(go.Scatter(x=stats["day"], y=stats["bytes_freed"] / 1024, name="KB freed", mode="lines+markers"),
                     secondary_y=True)
    figure.update_layout(barmode="group", height=320, margin={"t": 30, "b": 40},
                         legend={"orientation": "h", "y": -0.25})
    figure.update_xaxes(title_text="Day (UTC)")
    figure.update_yaxes(title_text="Entries (count)", secondary_y=False)
    figure.update_yaxes(title_text="Freed (KB)", secondary_y=True)
    st.plotly_chart(figure, width="stretch", key="chart_cleanup")
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
    with ui.guard("the health checks"):
        health()
    with ui.guard("the cleanup statistics"):
        cleanup_statistics()
    with ui.guard("the cleanup log"):
        cleanup_log()
    with ui.guard("the audit log"):
        audit()


ui.live(monitoring)
