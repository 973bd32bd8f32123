"""Top Cache Entries: search, filter and order the cached entries; admins can invalidate selected rows."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cachelib import queries, ui

ui.require_login()
ui.page_header("Top Cache Entries", "The entries in public.query_cache, most valuable first.")

ORDER_LABELS = {
    "hits": "Hits", "size": "Size", "age": "Age (oldest first)", "expires": "Expires (soonest first)",
    "compute": "Compute time", "saved": "Time saved", "key": "Key",
}
TABLE_KEY = "top_entries_table"

with ui.guard("the filters"):
    cache_names = ui.read("cache_names")
    controls = st.columns([3, 2, 2, 1])
    search = controls[0].text_input("Search keys", key="top_search", max_chars=200,
                                    placeholder="e.g. expert_sessions:42").strip()
    cache = controls[1].selectbox("Cache", [None, *cache_names], key="top_cache",
                                  format_func=lambda c: "All caches" if c is None else ui.cache_label(c))
    order_by = controls[2].selectbox("Order by", list(queries.ORDER_BY_CHOICES), key="top_order",
                                     format_func=lambda o: ORDER_LABELS.get(o, o))
    limit = controls[3].number_input("Limit", min_value=1, max_value=1000, value=50, step=10, key="top_limit")
    st.button("Refresh", key="top_refresh", on_click=ui.clear_reads, icon=":material/refresh:")

    entries = ui.read("top_entries", limit=int(limit), order_by=order_by, cache=cache, search=search or None)
    entries = ui.numeric(entries, "compute_ms", "time_saved_ms", "age_seconds", "expires_in_seconds")

    if entries.empty:
        ui.no_data("No cache entries match." if search or cache else "No data yet: the cache holds no entries.")
    else:
        table = pd.DataFrame({
            "Key": entries["cache_key"],
            "Cache": entries["cache_name"].map(ui.cache_label),
            "Hits": entries["hit_count"],
            "Size": entries["size_bytes"].map(ui.fmt_bytes),
            "Age": entries["age_seconds"].map(ui.fmt_seconds),
            "Expires": entries["expires_in_seconds"].map(ui.fmt_expires),
            "Compute time": entries["compute_ms"].map(ui.fmt_ms),
            "Time saved": entries["time_saved_ms"].map(ui.fmt_ms),
            "Last hit": entries["last_hit_at"].map(ui.fmt_time),
        })
        admin = ui.is_admin()
        count = f"{len(table)} entr{'y' if len(table) == 1 else 'ies'}"
        st.caption(count + (" — select rows to invalidate them." if admin else "."))
        event = st.dataframe(table, hide_index=True, width="stretch", key=TABLE_KEY,
                             on_select="rerun" if admin else "ignore",
                             selection_mode="multi-row")
        if admin:
            rows = list(event.selection.rows) if event is not None and hasattr(event, "selection") else []
            keys = [table["Key"].iloc[i] for i in rows if 0 <= i < len(table)]
            if st.button(f"Invalidate {len(keys)} selected entr{'y' if len(keys) == 1 else 'ies'}",
                         key="invalidate_selected", disabled=not keys, type="primary",
                         icon=":material/delete_sweep:"):
                def invalidate_all() -> int:
                    progress = st.progress(0.0, text="Invalidating…")
                    total = 0
                    for done, key in enumerate(keys, start=1):
                        total += ui.act("invalidate", key=key).details.get("entries_invalidated", 0)
                        progress.progress(done / len(keys), text=f"Invalidated {done} of {len(keys)}")
                    st.session_state.pop(TABLE_KEY, None)  # the selected rows are gone now
                    return total

                ui.run_action("Invalidate selected entries", invalidate_all,
                              success=lambda n: f"Invalidated {n} entr{'y' if n == 1 else 'ies'}: "
                                                f"{', '.join(keys[:5])}{' …' if len(keys) > 5 else ''}",
                              rerun=True)
