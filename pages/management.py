"""Cache Management: durations and where they come from, caching on/off, invalidate and prewarm."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cachelib import ui
from cachelib.config import SETTINGS, settings

ui.require_login()
ui.page_header("Cache Management", "What the cache is configured to do, and the controls to steer it.")

DURATION_SETTINGS = {
    "expert_sessions": "CACHE_EXPERT_SESSIONS_DURATION",
    "product_performance": "CACHE_ANALYTICS_DURATION",
}
MEANINGS = {s.name: s.meaning for s in SETTINGS}


def impact_text(impact: dict, what: str) -> str:
    """What an invalidation loses, from queries.clear_impact: live entries, bytes, the time to compute them."""
    if impact["entries"] == 0:
        return f"{what} loses no live entry: nothing is cached there right now."
    count = impact["entries"]
    return (f"{what} loses {ui.fmt_number(count)} live {'entry' if count == 1 else 'entries'} "
            f"({ui.fmt_bytes(impact['bytes'])}); computing {'it' if count == 1 else 'them'} again costs about "
            f"{ui.fmt_ms(impact['compute_ms'])} of query time.")


def source_label(name: str) -> str:
    source = settings().sources.get(name, "default")
    return "environment variable" if source == "environment" else "built-in default"


def configuration() -> None:
    config = settings()
    st.subheader("Caching state")
    state, where = st.columns([1, 3])
    state.metric("Caching", "ON" if config.cache_enabled else "OFF")
    where.markdown(f"`CACHE_ENABLED` = `{str(config.cache_enabled).lower()}` — from the "
                   f"{source_label('CACHE_ENABLED')}.  \n{MEANINGS['CACHE_ENABLED']}  \n"
                   "Change it in the environment of the application and the dashboard, then restart them.")

    st.subheader("Cache durations in effect")
    rows = []
    for cache, variable in DURATION_SETTINGS.items():
        duration = config.duration_for(cache)
        rows.append({"Cache": ui.cache_label(cache), "Setting": variable, "Duration": str(duration),
                     "Seconds": duration.seconds, "Source": source_label(variable), "Meaning": MEANINGS[variable]})
    rows.append({"Cache": "any other cached function", "Setting": "CACHE_DEFAULT_DURATION",
                 "Duration": str(config.default_duration), "Seconds": config.default_duration.seconds,
                 "Source": source_label("CACHE_DEFAULT_DURATION"), "Meaning": MEANINGS["CACHE_DEFAULT_DURATION"]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

    st.subheader("Targets in effect")
    targets = config.targets
    st.dataframe(pd.DataFrame([
        {"Setting": name, "Value": f"{value:g}%", "Source": source_label(name), "Meaning": MEANINGS[name]}
        for name, value in (("CACHE_TARGET_WEEK1_SESSIONS", targets.week1_sessions),
                            ("CACHE_TARGET_WEEK1_ANALYTICS", targets.week1_analytics),
                            ("CACHE_TARGET_MONTH1_SESSIONS", targets.month1_sessions),
                            ("CACHE_TARGET_MONTH1_ANALYTICS", targets.month1_analytics),
                            ("CACHE_TARGET_LOAD_REDUCTION", targets.load_reduction))
    ]), hide_index=True, width="stretch")


def cache_state() -> None:
    """the cache state"""
    st.subheader("Entries per cache")
    overview = ui.read("overview")
    if overview.empty:
        ui.no_data()
        return
    st.dataframe(pd.DataFrame({
        "Cache": overview["cache_name"].map(ui.cache_label),
        "Entries": overview["entries"], "Live": overview["live_entries"], "Expired": overview["expired_entries"],
        "Size": overview["total_bytes"].map(ui.fmt_bytes),
        "Duration": overview["cache_name"].map(lambda c: str(settings().duration_for(c))),
    }), hide_index=True, width="stretch")


def controls(cache_names: list[str]) -> None:
    st.subheader("Controls")
    if not ui.is_admin():
        st.info("Only administrators can invalidate or prewarm the cache. You are logged in as a viewer.",
                icon=":material/lock:")
        return
    by_cache, by_key, prewarm = st.columns(3)
    with by_cache:
        st.markdown("**Invalidate a whole cache**")
        cache = st.selectbox("Cache to invalidate", cache_names, key="invalidate_cache_name",
                             format_func=ui.cache_label)
        if cache:
            with ui.guard("what invalidating the cache would lose"):
                st.caption(impact_text(ui.read("clear_impact", cache=cache), f"Invalidating {ui.cache_label(cache)}"))
        if st.button("Invalidate cache", key="invalidate_cache", disabled=not cache_names):
            ui.run_action(f"Invalidate {ui.cache_label(cache)}",
                          lambda: ui.act("invalidate", cache=cache), rerun=True)
    with by_key:
        st.markdown("**Invalidate one key**")
        key = st.text_input("Cache key", key="invalidate_key_text", max_chars=500,
                            placeholder="e.g. expert_sessions:42").strip()
        if key and "\x00" not in key:
            with ui.guard("what invalidating the key would lose"):
                st.caption(impact_text(ui.read("clear_impact", key=key), f"Invalidating {key}"))
        if st.button("Invalidate key", key="invalidate_key"):
            if not key:
                st.error("Enter the cache key to invalidate (see Top Cache Entries).")
            else:
                ui.run_action(f"Invalidate {key}", lambda: ui.act("invalidate", key=key),
                              rerun=True)
    with prewarm:
        st.markdown("**Prewarm a cache**")
        target = st.selectbox("Cache to prewarm", cache_names, key="prewarm_cache_name", format_func=ui.cache_label)
        if st.button("Prewarm", key="prewarm", disabled=not cache_names):
            ui.run_action(f"Prewarm {ui.cache_label(target)}",
                          lambda: ui.act("prewarm", cache=target), rerun=True)
    if not settings().cache_enabled:
        st.caption("Caching is off, so prewarming fills nothing until CACHE_ENABLED is true again.")


with ui.guard("the configuration"):
    configuration()
ui.live(cache_state)
with ui.guard("the controls"):
    controls(ui.read("cache_names"))
