"""Cache Management: the caches and their durations (and where they come from), caching on/off,
invalidate and prewarm, and for admins: register a function as a cache, change a duration, remove a cache."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cachelib import catalog, ui
from cachelib.config import SETTINGS, settings

ui.require_login()
ui.page_header("Cache Management", "What the cache is configured to do, and the controls to steer it.")

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

    st.subheader("Caches and their durations")
    listing = ui.read("cache_catalog")
    st.dataframe(pd.DataFrame([{
        "Cache": row["label"], "Name": row["cache"], "Duration": row["duration"], "Comes from": row["duration_source"],
        "Function": row["function"] or "(wired by hand)", "Sources": catalog.sources_text(row["sources"]),
        "Description": row["description"]} for row in listing]), hide_index=True, width="stretch")
    st.caption(f"Caches without a duration of their own use CACHE_DEFAULT_DURATION = {config.default_duration} "
               f"({source_label('CACHE_DEFAULT_DURATION')}). An admin's duration (below) wins over the environment "
               "and over the duration any caller asks for.")

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
        "Duration": overview["cache_name"].map({row["cache"]: row["duration"] for row in ui.read("cache_catalog")}),
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


def catalog_controls(listing: list[dict]) -> None:
    st.subheader("Caches: add, re-time, remove")
    if not ui.is_admin():
        st.info("Only administrators can register caches or change their durations.", icon=":material/lock:")
        return
    with ui.guard("the caching candidates"):
        candidate_form()
    register, retime, remove = st.columns(3)
    with register:
        register_form(ui.read("cacheable_functions"))
    with retime:
        st.markdown("**Change a duration**")
        names = [row["cache"] for row in listing]
        cache = st.selectbox("Cache to re-time", names, key="duration_cache", format_func=ui.cache_label)
        current = next((row for row in listing if row["cache"] == cache), None)
        if current:
            st.caption(f"Now {current['duration']} ({current['duration_source']}).")
        duration = st.text_input("New duration", key="duration_value", max_chars=20,
                                 placeholder="e.g. 30m, 1h30m, or default").strip()
        if st.button("Set duration", key="duration_set", disabled=not names):
            if not duration:
                st.error("Enter a duration such as 30m, or default to undo an earlier change.")
            else:
                ui.run_action(f"Set the duration of {ui.cache_label(cache)}",
                              lambda: ui.act("cache_duration", cache=cache, duration=duration), rerun=True)
    with remove:
        st.markdown("**Remove a registered cache**")
        removable = [row["cache"] for row in listing if not row["builtin"]]
        if not removable:
            st.caption("No cache has been registered besides the guide's two, which cannot be removed.")
            return
        target = st.selectbox("Cache to remove", removable, key="remove_cache_name", format_func=ui.cache_label)
        with ui.guard("what removing the cache would lose"):
            st.caption(impact_text(ui.read("clear_impact", cache=target), f"Removing {ui.cache_label(target)}")
                       + " Its wrapper, triggers and statistics are dropped too.")
        sure = st.checkbox(f"Yes, remove {target}", key=f"remove_confirm_{target}")
        if st.button("Remove cache", key="remove_cache", type="primary", disabled=not sure):
            ui.run_action(f"Remove {ui.cache_label(target)}", lambda: ui.act("cache_remove", cache=target),
                          rerun=True)


def candidate_form() -> None:
    st.markdown("**Cache a caching candidate** (an expensive repeated read query, from pg_stat_statements)")
    report = ui.read("caching_candidates")
    if not report.available:
        st.caption(f"Not available here: {report.how_to_enable or report.message}")
        return
    owned = [c for c in report.candidates if c.by_owner]
    if not owned:
        others = len(report.candidates) - len(owned)
        st.caption(report.message + (f"; {others} were run by other roles: wrap those in a function by hand after "
                                     "reading them (README, \"Adding a cached function\")." if others else "."))
        return
    choice = st.selectbox("Candidate", owned, key="candidate_query",
                          format_func=lambda c: f"{ui.fmt_ms(c.total_ms)} in {c.calls:,} calls: {c.one_line(90)}")
    st.code(choice.query, language="sql", wrap_lines=True)
    name = st.text_input("Function to create (in public)", value=f"cached_query_{abs(choice.queryid) % 100_000}",
                         key=f"candidate_function_{choice.queryid}", max_chars=51).strip()
    st.caption("The query becomes a function returning its rows as JSON, registered as a cache; a change in any "
               "table it reads invalidates the whole cache.")
    if st.button("Wrap and register", key="candidate_register"):
        ui.run_action(f"Cache candidate {choice.queryid}",
                      lambda: ui.act("cache_from_candidate", queryid=choice.queryid, function=name), rerun=True)


def register_form(functions: list[dict]) -> None:
    st.markdown("**Register a function as a cache**")
    if not functions:
        st.caption("No function can be registered as it is. A function can when it returns jsonb, takes at most one "
                   "argument (smallint, integer, bigint or uuid), is STABLE, is owned by the cache's owner and sets "
                   "its own search_path. See README, \"Adding a cached function\".")
        return
    choice = st.selectbox("Function", functions, key="register_function", format_func=lambda f: f["function"])
    sources = st.text_input("Source tables (TABLE or TABLE:KEY_COLUMN, comma-separated)",
                            value=", ".join(choice["suggested_sources"]), key=f"register_sources_{choice['function']}",
                            help="Each table the function reads. With :COLUMN (the column holding the function's "
                                 "argument) a changed row invalidates only its key; without, the whole cache.")
    if choice["suggested_sources"]:
        st.caption("Suggested from the argument's name: check that these are the tables it reads.")
    duration = st.text_input("Duration", key="register_duration", max_chars=20,
                             placeholder=f"default {settings().default_duration}").strip()
    if st.button("Register cache", key="register_cache"):
        ui.run_action(f"Register {choice['function']}",
                      lambda: ui.act("cache_add", function=choice["function"], source=sources,
                                     duration=duration or None), rerun=True)


with ui.guard("the configuration"):
    configuration()
ui.live(cache_state)
with ui.guard("the controls"):
    controls(ui.read("cache_names"))
with ui.guard("the catalog controls"):
    catalog_controls(ui.read("cache_catalog"))
