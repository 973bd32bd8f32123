"""Performance Analysis: the selected range against the targets, then hit rate, load reduction, response
times and entry sizes over that range, for the chosen caches."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pandas as pd
import streamlit as st

from cachelib import charts, queries, ui

ui.require_login()
ui.page_header("Performance Analysis", "How well the cache works over the selected range, against the deployment "
                                       "guide's targets.")

BUCKET_LABELS = {"hour": "Hour", "day": "Day", "week": "Week"}
MAX_DAYS = 3650          # the read functions go back at most this far
HOUR_MAX_DAYS = 7        # hourly points beyond a week are an unreadable band
YOUNG_DAYS = 90          # a deployment younger than this is shown from its first day
SUBSET_MAX_PERIODS = 120  # load reduction of some caches costs one read per bucket
CHOOSE = "Choose at least one cache in the Caches filter above to see this chart."
STATE_RESULT = {"met": "pass", "missed": "fail", "no data": "no data", "not started": "not started"}
told: set[str] = set()  # the events sentences already under a chart in this run


def aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def default_start(info: queries.Deployment, today: date) -> date:
    """The deployment's first day while it is younger than YOUNG_DAYS, else the last 30 days."""
    age = info.now - info.deployed_at
    if timedelta(0) <= age < timedelta(days=YOUNG_DAYS):
        return info.deployed_at.astimezone(UTC).date()
    return today - timedelta(days=29)


with ui.guard("the controls"):
    deployment = ui.read("deployment")
    today = deployment.now.astimezone(UTC).date()
    first_allowed = today - timedelta(days=MAX_DAYS - 1)
    start_default = max(first_allowed, default_start(deployment, today))
    controls = st.columns([1, 2, 2])
    # A deployment of a day or two is seen by the hour; anything longer by the day.
    young = (today - start_default).days + 1 <= 2
    chosen_bucket = controls[0].selectbox("Bucket", list(queries.BUCKETS), index=0 if young else 1, key="perf_bucket",
                                          format_func=BUCKET_LABELS.get,
                                          help=f"Hours are shown for ranges up to {HOUR_MAX_DAYS} days.")
    picked = controls[1].date_input("Date range (UTC)", value=(start_default, today), min_value=first_allowed,
                                    max_value=today, key="perf_range",
                                    help="Defaults to the whole deployment while it is younger than "
                                         f"{YOUNG_DAYS} days, else the last 30 days.")
    cache_names = ui.read("cache_names")
    chosen = controls[2].multiselect("Caches", cache_names, default=cache_names, key="perf_caches",
                                     format_func=ui.cache_label)

    if isinstance(picked, (tuple, list)):
        start_day = picked[0] if picked else start_default
        end_day = picked[1] if len(picked) > 1 else start_day
    else:
        start_day = end_day = picked if isinstance(picked, date) else today
    range_start = datetime.combine(start_day, time.min)
    range_end = datetime.combine(end_day, time.min) + timedelta(days=1)
    span_days = (end_day - start_day).days + 1
    days = min(MAX_DAYS, max(1, (today - start_day).days + 1))
    bucket = chosen_bucket
    if chosen_bucket == "hour" and span_days > HOUR_MAX_DAYS:
        bucket = "day"
        st.info(f"Hourly buckets are shown for ranges up to {HOUR_MAX_DAYS} days; this range has {span_days} "
                "days, so it is shown by day. Pick a shorter range to see hours.", icon=":material/info:")
    grid = charts.periods(range_start, range_end, bucket)
    period = charts.period_label(range_start, range_end)
    every = {"hour": "hourly", "day": "daily", "week": "weekly"}[bucket]
    all_chosen = set(chosen) == set(cache_names)
    # Series are read in UTC hours or days (queries cut them in UTC whatever the session's TimeZone) and
    # summed here into the range's buckets (weeks clipped to the range).
    source_bucket = "hour" if bucket == "hour" else "day"


def hit_rates() -> pd.DataFrame:
    """Per bucket and chosen cache: hits, misses, fallbacks, hit_rate, avg_hit_ms, avg_miss_ms."""
    series = ui.numeric(ui.read("hit_rate_series", days=days, bucket=source_bucket),
                        "hit_rate", "avg_hit_ms", "avg_miss_ms")
    if series.empty:
        return series
    series = series[series["cache_name"].isin(chosen)]
    series = series.assign(hit_ms=series["avg_hit_ms"].fillna(0) * series["hits"],
                           miss_ms=series["avg_miss_ms"].fillna(0) * series["misses"])
    series = charts.regroup(series, ["hits", "misses", "fallbacks", "hit_ms", "miss_ms"], grid, by="cache_name")
    if series.empty:
        return series
    calls = series["hits"] + series["misses"] + series["fallbacks"]
    return series.assign(hit_rate=(100.0 * series["hits"] / calls.where(calls > 0)).round(2),
                         avg_hit_ms=series["hit_ms"] / series["hits"].where(series["hits"] > 0),
                         avg_miss_ms=series["miss_ms"] / series["misses"].where(series["misses"] > 0))


def load_series() -> tuple[pd.DataFrame, str | None]:
    """Per bucket: compute_ms_spent, compute_ms_saved, load_reduction of the chosen caches; and a note
    when the buckets had to be coarser than the chosen ones."""
    if all_chosen:
        load = ui.numeric(ui.read("load_reduction_series", days=days, bucket=source_bucket),
                          "compute_ms_spent", "compute_ms_saved")
        load = charts.regroup(load, ["compute_ms_spent", "compute_ms_saved"], grid)
        note = None
    else:
        # No series read splits load by cache: sum period_totals of the chosen caches bucket by bucket.
        buckets, note = grid, None
        if len(buckets) > SUBSET_MAX_PERIODS:
            buckets = charts.periods(range_start, range_end, "week")
            note = (f"Load reduction of some of the caches is drawn by week for ranges of more than "
                    f"{SUBSET_MAX_PERIODS} {bucket}s.")
        if len(buckets) > SUBSET_MAX_PERIODS:
            return pd.DataFrame(), (f"This range has {len(buckets)} weeks: too long to split load reduction by "
                                    "cache. Choose all caches or a shorter range.")
        rows = []
        for part in buckets.itertuples(index=False):
            totals = ui.read("period_totals", start=aware(part.start), end=aware(part.end))
            if totals.empty:
                continue
            mine = totals[totals["cache_name"].isin(chosen)]
            rows.append({"start": part.start, "compute_ms_spent": float(mine["compute_ms_spent"].sum()),
                         "compute_ms_saved": float(mine["compute_ms_saved"].sum()), "calls": float(
                             (mine["hits"] + mine["misses"] + mine["fallbacks"]).sum())})
        load = pd.DataFrame(rows, columns=["start", "compute_ms_spent", "compute_ms_saved", "calls"])
        load = load[load["calls"] > 0].merge(buckets, on="start") if not load.empty else load
    if load.empty:
        return load, note
    shares = [queries.reduction(saved, spent) for saved, spent in zip(load["compute_ms_saved"],
                                                                      load["compute_ms_spent"], strict=True)]
    return load.assign(load_reduction=pd.to_numeric(pd.Series(shares, index=load.index), errors="coerce")), note


def finish(figure: charts.Spec, title: str, events: pd.DataFrame, height: int, legend: bool = True) -> str:
    """The shared look: exact time axis, the target windows, what happened. Returns the sentence about the
    vertical lines for the caption: in full under the first chart of the page, then a pointer to it."""
    sentence = charts.frame_time_chart(figure, title, range_start, range_end, bucket, height=height, legend=legend,
                                       deployed_at=deployment.deployed_at, events=events)
    if sentence in told:
        return " Vertical lines as on the chart above." if not events.empty else ""
    told.add(sentence)
    return " " + sentence


# --- the figures -------------------------------------------------------------------------------

def scorecard(totals: pd.DataFrame, status: pd.DataFrame) -> None:
    st.subheader(f"Targets: selected range ({period}) and target windows")
    if chosen:
        columns = st.columns(len(chosen) + 1)
        by_cache = {row["cache_name"]: row for row in totals.to_dict("records")}
        for column, cache in zip(columns, chosen, strict=False):
            row = by_cache.get(cache)
            calls = int(row["hits"] + row["misses"] + row["fallbacks"]) if row else 0
            value = row["hit_rate"] if calls else None
            column.metric(f"{ui.cache_label(cache)} hit rate", ui.fmt_pct(value),
                          help=f"{calls:,} calls from {period} (UTC)")
        mine = totals[totals["cache_name"].isin(chosen)] if not totals.empty else totals
        which = "all caches" if all_chosen else ", ".join(ui.cache_label(c) for c in chosen)
        columns[-1].metric(f"Load reduction ({which})", ui.fmt_pct(queries.load_reduction(mine)),
                           help="Share of direct-query time that hits avoided, " + period)
    rows = []
    # Each target's own window, looked up by what names it (one pass, not a filter of the frame per target).
    windows = {(row["milestone"], row["target"], row["cache_name"]): row for row in status.to_dict("records")}
    for target in queries.targets():
        if target.cache_name is not None and target.cache_name not in chosen:
            continue
        value = queries.measure(totals, target)
        met = target.met(value)
        rows.append({"Target": f"{target.milestone}: {target.name}", "Cache": ui.cache_label(target.cache_name),
                     "Window": f"selected range {period}", "Measured": ui.fmt_pct(value),
                     "Result": "no data" if met is None else ("pass" if met else "fail")})
        own = windows.get((target.milestone, target.label, target.cache_name or "all caches"))
        if own is None:
            continue
        state = own["state"]
        if state == "in progress":
            result = "no data" if own["met"] is None or pd.isna(own["met"]) else \
                ("on track" if own["met"] else "below target so far")
        else:
            result = STATE_RESULT.get(state, state)
        window = charts.window_label(target.milestone, own["window_start"], own["window_end"])
        rows.append({"Target": f"{target.milestone}: {target.name}", "Cache": ui.cache_label(target.cache_name),
                     "Window": window + (" so far" if state == "in progress" else ""),
                     "Measured": ui.fmt_pct(own["measured"]), "Result": result})
    # A static table: ten rows at most, all of them readable at once (and in a screenshot).
    st.table(ui.verdict_frame(pd.DataFrame(rows, columns=["Target", "Cache", "Window", "Measured", "Result"]),
                              "Result").hide(axis="index"))
    st.caption("Each target judged over the selected range (as it stands, today so far) and over its own window "
               f"after the deployment on {ui.fmt_time(deployment.deployed_at)}: Week 1 is days 1-7, Month 1 "
               "days 8-30. Hit-rate targets must be exceeded, load reduction reached. Hit-rate targets of caches "
               "outside the filter are left out; load reduction is judged on all caches together.")


def hit_rate_chart(series: pd.DataFrame, grids: dict[str, pd.DataFrame], events: pd.DataFrame) -> None:
    st.subheader("Hit rate per cache")
    if not chosen:
        ui.no_data(CHOOSE)
        return
    caches = [c for c in chosen if not series.empty and c in set(series["cache_name"])]
    if not caches:
        ui.no_data(f"No calls to the chosen caches in {period}.")
        return
    figure = charts.Spec.rows([ui.cache_label(c) for c in caches], spacing=0.14)
    for row, cache in enumerate(caches, start=1):
        data = grids[cache]
        color = charts.series_color(cache)
        x, y = ("x", "y") if row == 1 else (f"x{row}", f"y{row}")
        figure.add({
            "type": "scatter", "xaxis": x, "yaxis": y, "x": data["mid"].tolist(), "y": data["hit_rate"].tolist(),
            "mode": "lines+markers", "name": ui.cache_label(cache), "line": {"color": color, "width": 2},
            "marker": {"size": 6 if bucket != "hour" else 4}, "cliponaxis": False, "connectgaps": False,
            "customdata": data[["label", "hits", "misses", "fallbacks"]].to_numpy().tolist(),
            "hovertemplate": "%{customdata[0]}<br>hit rate %{y:.1f}%<br>hits %{customdata[1]:,}, misses "
                             "%{customdata[2]:,}, fallbacks %{customdata[3]:,}<extra>" + ui.cache_label(cache)
                             + "</extra>"})
        for target in queries.targets():
            if target.cache_name == cache:
                figure.mark(*charts.target_marks(target, x=x, y=y))
        figure.update({f"yaxis{row if row > 1 else ''}": {"title": {"text": "Hit rate (%)"}, "ticksuffix": "%",
                                                           **charts.zero_based_props(top=100)}})
    note = finish(figure, f"Hit rate per cache, {period} ({every}, UTC)", events, 250 * len(caches) + 130,
                  legend=False)
    charts.show(figure, key="chart_hit_rate", filename=charts.filename("hit-rate", range_start, range_end))
    st.caption("Hits as a share of all calls per bucket (a gap: no calls). Each cache's target lines are drawn "
               "in its colour: dotted the Week 1 target, dashed the Month 1 target. Shaded: the Week 1 and Month 1 "
               "windows." + note)


def load_chart(load: pd.DataFrame, note: str | None, events: pd.DataFrame) -> None:
    st.subheader("Database load reduction")
    if not chosen:
        ui.no_data(CHOOSE)
        return
    if load.empty:
        ui.no_data(note if note else f"No calls to the chosen caches in {period}.")
        return
    which = "all caches" if all_chosen else ", ".join(ui.cache_label(c) for c in chosen)
    color = charts.series_color(chosen[0]) if len(chosen) == 1 else charts.ALL_CACHES_COLOR
    widths = [(end - start) / timedelta(milliseconds=1) * 0.8 for start, end in zip(load["start"], load["end"],
                                                                                      strict=True)]
    figure = charts.Spec()
    figure.add({
        # Lighter bars, so that the target line in the same colour shows where it crosses them.
        "type": "bar", "x": load["mid"].tolist(), "y": load["load_reduction"].tolist(), "width": widths,
        "marker": {"color": color, "opacity": 0.55}, "name": f"Load reduction ({which})",
        "customdata": load[["label", "compute_ms_saved", "compute_ms_spent"]].to_numpy().tolist(),
        "hovertemplate": "%{customdata[0]}<br>load reduction %{y:.1f}%<br>query time avoided %{customdata[1]:,.0f} ms,"
                         " spent %{customdata[2]:,.0f} ms<extra></extra>"})
    goal = next(t for t in queries.targets() if t.metric == "load_reduction")
    figure.mark(*charts.target_marks(goal, color=color))
    figure.update({"yaxis": {"title": {"text": "Load reduction (%)"}, "ticksuffix": "%",
                             **charts.zero_based_props(top=100)}})
    events_note = finish(figure, f"Database load reduction ({which}), {period} ({every}, UTC)", events, 360,
                         legend=False)
    charts.show(figure, key="chart_load", filename=charts.filename("load-reduction", range_start, range_end))
    saved, spent = load["compute_ms_saved"].sum(), load["compute_ms_spent"].sum()
    share = queries.reduction(saved, spent)
    summary = (f"Over {period}: {ui.fmt_ms(saved)} of query time avoided, {ui.fmt_ms(spent)} spent "
               f"({share:.1f}% reduction). ") if share is not None else ""
    target_note = "" if all_chosen else "The target applies to all caches together. "
    st.caption(summary + "Share of direct-query time that hits avoided, per bucket; dashed: the Month 1 target. "
               + target_note + (note if note else "") + events_note)


def response_chart(series: pd.DataFrame, grids: dict[str, pd.DataFrame], events: pd.DataFrame) -> None:
    st.subheader("Response time: hit vs miss")
    if not chosen:
        ui.no_data(CHOOSE)
        return
    timed = series.dropna(subset=["avg_hit_ms", "avg_miss_ms"], how="all") if not series.empty else series
    if timed.empty:
        ui.no_data(f"No timed calls to the chosen caches in {period}.")
        return
    figure = charts.Spec()
    for cache in [c for c in chosen if c in set(timed["cache_name"])]:
        data = grids[cache]
        for column, kind, dash in (("avg_hit_ms", "hit (from cache)", "solid"),
                                   ("avg_miss_ms", "miss (computed)", "dot")):
            figure.add({
                "type": "scatter", "x": data["mid"].tolist(), "y": data[column].tolist(), "mode": "lines+markers",
                "name": f"{ui.cache_label(cache)}: {kind}",
                "line": {"color": charts.series_color(cache), "dash": dash, "width": 2},
                "marker": {"size": 5 if bucket != "hour" else 4, "symbol": "circle" if dash == "solid" else "diamond"},
                "connectgaps": False, "customdata": data[["label"]].to_numpy().tolist(),
                "hovertemplate": "%{customdata[0]}<br>%{y:.2f} ms<extra>" + f"{ui.cache_label(cache)}: {kind}</extra>"})
    figure.update({"yaxis": {"title": {"text": "Mean response time (log scale)"},
                             **charts.log_axis_props(pd.concat([timed["avg_hit_ms"], timed["avg_miss_ms"]]))}})
    note = finish(figure, f"Mean response time, hit vs miss, {period} ({every}, UTC)", events, 460)
    charts.show(figure, key="chart_response", filename=charts.filename("response-time", range_start, range_end))
    hits = (timed["avg_hit_ms"].fillna(0) * timed["hits"]).sum() / max(timed["hits"].sum(), 1)
    misses = (timed["avg_miss_ms"].fillna(0) * timed["misses"]).sum() / max(timed["misses"].sum(), 1)
    st.caption("Solid: hits served from the cache; dotted: misses that ran the direct query. Each grid line is "
               "ten times the one below." + note)
    columns = st.columns(3)
    columns[0].metric("Mean hit time", ui.fmt_ms(hits) if timed["hits"].sum() else "—")
    columns[1].metric("Mean miss time", ui.fmt_ms(misses) if timed["misses"].sum() else "—")
    columns[2].metric("A hit is faster by", f"{misses / hits:,.1f}×" if hits > 0 and misses > 0 else "—")


def size_chart() -> None:
    st.subheader("Entry size distribution (now)")
    if not chosen:
        ui.no_data(CHOOSE)
        return
    classes = ui.read("size_distribution")
    if classes.empty:
        ui.no_data("No data yet: the cache holds no entries.")
        return
    figure = charts.Spec()
    truncated = []
    if all_chosen:
        figure.add({"type": "bar", "x": classes["size_class"].tolist(), "y": classes["entries"].tolist(),
                    "text": classes["entries"].tolist(), "marker": {"color": charts.ALL_CACHES_COLOR},
                    "name": "all caches", "customdata": classes["total_bytes"].map(ui.fmt_bytes).tolist(),
                    "hovertemplate": "%{x}: %{y:,} entries, %{customdata}<extra></extra>"})
        shown = int(classes["entries"].sum())
    else:
        # No size read per cache: class the chosen caches' entries (up to 10,000 each) by the same bounds.
        bounds = list(classes["lower_bytes"].astype(float))
        shown = 0
        for cache in chosen:
            entries = ui.read("top_entries", limit=10000, order_by="size", cache=cache)
            if len(entries) >= 10000:
                truncated.append(ui.cache_label(cache))
            position = pd.cut(entries["size_bytes"].astype(float), bins=[*bounds, float("inf")], right=False,
                              labels=False) if not entries.empty else pd.Series(dtype=float)
            counts = [int(n) for n in position.value_counts().reindex(range(len(bounds)), fill_value=0)]
            shown += sum(counts)
            figure.add({"type": "bar", "x": classes["size_class"].tolist(), "y": counts, "text": counts,
                        "marker": {"color": charts.series_color(cache)}, "name": ui.cache_label(cache),
                        "hovertemplate": "%{x}: %{y:,} entries<extra>" + ui.cache_label(cache) + "</extra>"})
    if shown == 0:
        ui.no_data("No data yet: the chosen caches hold no entries.")
        return
    figure.update(charts.layout_props("Entries by size, now" + ("" if all_chosen else " (" + ", ".join(
        ui.cache_label(c) for c in chosen) + ")"), height=320, legend=not all_chosen))
    figure.update({"barmode": "group", "xaxis": {"title": {"text": "Entry size"}},
                   "yaxis": {"title": {"text": "Entries (count)"}, **charts.zero_based_props()}})
    charts.show(figure, key="chart_sizes", filename=charts.filename("entry-sizes"))
    st.caption("Entries held now (live and expired, not yet cleaned up), by stored size."
               + (f" Largest 10,000 entries only for {', '.join(truncated)}." if truncated else ""))


def page() -> None:
    """the performance figures"""
    told.clear()
    # The page's reads side by side: the time of the slowest instead of the sum.
    span = {"start": aware(range_start), "end": aware(range_end)}
    ui.prefetch(("period_totals", span), "target_status", ("events", span), "size_distribution",
                ("hit_rate_series", {"days": days, "bucket": source_bucket}),
                *([("load_reduction_series", {"days": days, "bucket": source_bucket})] if all_chosen else []))
    totals = ui.numeric(ui.read("period_totals", **span), "hit_rate",
                        "compute_ms_spent", "compute_ms_saved")
    status = ui.numeric(ui.read("target_status"), "measured", "goal")
    events = ui.read("events", **span)
    with ui.guard("the targets"):
        scorecard(totals, status)
    series = hit_rates() if chosen else pd.DataFrame()
    # Each chosen cache's series with a row for every bucket, for the hit-rate and response-time charts.
    grids = charts.on_grid(series, grid) if not series.empty else {}
    with ui.guard("the hit-rate chart"):
        hit_rate_chart(series, grids, events)
    with ui.guard("the load-reduction chart"):
        load, note = load_series() if chosen else (pd.DataFrame(), None)
        load_chart(load, note, events)
    with ui.guard("the response-time chart"):
        response_chart(series, grids, events)
    with ui.guard("the size distribution"):
        size_chart()


ui.live(page)
