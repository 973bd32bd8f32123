"""The monthly review drawn: its charts, and the self-contained HTML report for sharing it.

The page (pages/monthly_review.py) and ``python -m cachelib review --html`` draw
the same figures from the same ``review.MonthlyReview``. The HTML report embeds
plotly.js and every chart, so it opens offline; it prints one section per page
where it can, and each chart downloads as PNG from its camera button.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta

import pandas as pd

from cachelib import charts, formats, queries, review
from cachelib.config import Settings, settings

REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #e5e7eb; padding-bottom: .2rem; }
.meta { color: #4b5563; } .demo { color: #b45309; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #e5e7eb; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f9fafb; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass, .ok { background: #dcfce7; } .fail, .critical { background: #fee2e2; } .warning { background: #ffedd5; }
.nodata { color: #6b7280; }
.chart { break-inside: avoid; page-break-inside: avoid; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } .chart { width: 100%; } }
"""


def figures(data: review.MonthlyReview, config: Settings | None = None) -> dict[str, charts.Spec]:
    """The review's charts by name (hit_rate, load_reduction, calls)."""
    config = config or settings()
    return {"hit_rate": hit_rate_figure(data, config), "load_reduction": load_figure(data, config),
            "calls": calls_figure(data)}


def events_note(data: review.MonthlyReview) -> str:
    """The sentence that says which events the charts mark (the same on every chart)."""
    return charts.events_caption(data.events, data.period.start, data.period.end)


def _days(data: review.MonthlyReview) -> pd.DataFrame:
    daily = data.daily.copy()
    daily["x"] = pd.to_datetime(daily["day"]) + pd.Timedelta(hours=12)  # a day's bar or point sits mid-day
    return daily


def _frame_days(spec: charts.Spec, data: review.MonthlyReview, title: str, legend: bool = True) -> None:
    """Whole UTC days of the period on the x axis, day ticks, the events marked, title and layout."""
    days = data.period.days
    start = datetime.combine(days[0], datetime.min.time())
    end = datetime.combine(days[-1], datetime.min.time()) + timedelta(days=1)
    # The events' labels sit above the plot, in a taller top margin.
    charts.frame_time_chart(spec, title, start, end, "day", height=400, legend=legend, top=95, events=data.events,
                            events_span=(data.period.start, data.period.end), labels_above=True)


def _percent_axis(spec: charts.Spec, title: str, targets: list[queries.Target]) -> None:
    """A y axis of 0-100% titled ``title``, with a line for each of ``targets``."""
    for target in targets:
        spec.mark(*charts.target_marks(target))
    spec.update({"yaxis": {**charts.zero_based_props(top=100), "title": {"text": title}}})


def hit_rate_figure(data: review.MonthlyReview, config: Settings) -> charts.Spec:
    daily = _days(data)
    spec = charts.Spec()
    for cache, rows in daily.groupby("cache_name", sort=True):
        spec.add({"type": "scatter", "x": rows["x"].tolist(), "y": rows["hit_rate"].tolist(), "mode": "lines+markers",
                  "name": formats.cache_label(cache), "line": {"color": charts.series_color(cache)},
                  "customdata": rows[["calls"]].to_numpy().tolist(),
                  "hovertemplate": "%{x|%b %-d}: %{y:.1f}% of %{customdata[0]:,} calls<extra>"
                                   + formats.cache_label(cache) + "</extra>"})
    _percent_axis(spec, "Hit rate (%)", [t for t in queries.targets(config)
                                         if t.milestone == "Month 1" and t.metric == "hit_rate"])
    _frame_days(spec, data, f"Hit rate per day, {data.period.title}")
    return spec


def load_figure(data: review.MonthlyReview, config: Settings) -> charts.Spec:
    daily = _days(data)
    per_day = daily.groupby("x", as_index=False)[["compute_ms_saved", "compute_ms_spent"]].sum()
    shares = [queries.reduction(saved, spent)
              for saved, spent in zip(per_day["compute_ms_saved"], per_day["compute_ms_spent"], strict=True)]
    spec = charts.Spec()
    spec.add({"type": "bar", "x": per_day["x"].tolist(), "y": shares, "name": "all caches",
              "marker": {"color": charts.series_color(None)}, "hovertemplate": "%{x|%b %-d}: %{y:.1f}%<extra></extra>"})
    goal = next(t for t in queries.targets(config) if t.metric == "load_reduction")
    _percent_axis(spec, "Load reduction (%)", [goal])
    _frame_days(spec, data, f"Database load reduction per day, {data.period.title}", legend=False)
    return spec


def calls_figure(data: review.MonthlyReview) -> charts.Spec:
    daily = _days(data)
    spec = charts.Spec()
    for cache, rows in daily.groupby("cache_name", sort=True):
        spec.add({"type": "bar", "x": rows["x"].tolist(), "y": rows["calls"].tolist(),
                  "name": f"{formats.cache_label(cache)} calls", "marker": {"color": charts.series_color(cache)},
                  "hovertemplate": "%{x|%b %-d}: %{y:,} calls<extra></extra>"})
    invalidated = daily.groupby("x", as_index=False)["keys_invalidated"].sum()
    # Invalidations are far fewer than calls: their own axis, so the line does not lie flat at zero.
    spec.add({"type": "scatter", "x": invalidated["x"].tolist(), "y": invalidated["keys_invalidated"].tolist(),
              "mode": "lines+markers", "name": "keys invalidated by writes (right axis)", "yaxis": "y2",
              "line": {"color": "#475569", "dash": "dot"},
              "hovertemplate": "%{x|%b %-d}: %{y:,} keys invalidated<extra></extra>"})
    spec.update({"barmode": "stack", "yaxis": {"title": {"text": "Calls"}, **charts.zero_based_props()},
                 "yaxis2": {"title": {"text": "Keys invalidated"}, "overlaying": "y", "side": "right",
                            "showgrid": False, **charts.zero_based_props(),
                            **charts.count_ticks(invalidated["keys_invalidated"].max())}})
    _frame_days(spec, data, f"Calls and invalidations per day, {data.period.title}")
    return spec


# --- the HTML report --------------------------------------------------------------------------

def chart_filename(data: review.MonthlyReview, name: str) -> str:
    return charts.filename(f"review-{name}", data.period.start, data.period.end)


def _cell(value, css: str = "") -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return '<td class="nodata">—</td>'
    cls = f' class="{html.escape(css)}"' if css else ""
    return f"<td{cls}>{html.escape(str(value))}</td>"


def _table(headers: list[str], rows: list[list[tuple]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v, css) for v, css in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(data: review.MonthlyReview, config: Settings | None = None) -> str:
    """The whole review as one HTML document: tables and charts, plotly.js inline (opens offline)."""
    config = config or settings()
    span = data.period
    parts = [f"<h1>Cache monthly review — {html.escape(span.title)}</h1>",
             f'<p class="meta">Period {html.escape(span.span)} (UTC); deployed {data.deployed_at:%Y-%m-%d %H:%M} UTC; '
             f"generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>"]
    if data.demo_data:
        parts.append('<p class="demo">These figures come from generated demo traffic.</p>')

    parts.append("<h2>Targets</h2>")
    parts.append(_table(["Target", "Cache", "Window", "Measured", "Result"], [
        [(r.target, ""), (formats.cache_label(None if r.cache == "all caches" else r.cache), ""), (r.window, ""),
         (formats.fmt_pct(r.measured), "num"), (r.result, r.result.replace(" ", ""))]
        for r in data.targets.itertuples()]))

    parts.append("<h2>Trends</h2>")
    for index, (name, figure) in enumerate(figures(data, config).items()):
        figure_html = figure.to_html(full_html=False, include_plotlyjs="inline" if index == 0 else False,
                                     config=charts.png_config(chart_filename(data, name)))
        parts.append(f'<div class="chart">{figure_html}</div>')
    parts.append(f'<p class="meta">Dashed lines: the Month 1 targets. {html.escape(events_note(data))}</p>')

    parts.append("<h2>Top entries by time saved</h2>")
    if data.top_keys.empty:
        parts.append('<p class="nodata">No cached calls in this month.</p>')
    else:
        parts.append(_table(["Key", "Cache", "Hits", "Calls", "Time saved", "Days active"], [
            [(r.cache_key, ""), (formats.cache_label(r.cache_name), ""), (f"{r.hits:,}", "num"),
             (f"{r.calls:,}", "num"),
             (formats.fmt_ms(r.compute_ms_saved), "num"), (r.days_active, "num")] for r in data.top_keys.itertuples()]))

    parts.append("<h2>Invalidations, fallbacks and cleanups</h2>")
    parts.append(_table(["Cache", "Keys invalidated by writes", "Fallbacks", "Calls"], [
        [(formats.cache_label(r.cache_name), ""), (f"{int(r.keys_invalidated):,}", "num"),
         (f"{int(r.fallbacks):,}", "num"), (f"{int(r.calls):,}", "num")]
        for r in data.per_cache.itertuples()]))
    c = data.cleanups
    parts.append(_table(["Cleanups", "of them by hand", "Expired removed", "Evicted", "Never hit", "Space freed"], [
        [(f"{c.get('cleanups', 0):,}", "num"), (f"{c.get('by_hand', 0):,}", "num"),
         (f"{c.get('entries_removed', 0):,}", "num"), (f"{c.get('entries_evicted', 0):,}", "num"),
         (f"{c.get('never_hit_removed', 0):,}", "num"), (formats.fmt_bytes(c.get("bytes_freed", 0)), "num")]]))
    if not data.events.empty:
        parts.append("<h3>What happened</h3>")
        parts.append(_table(["Time (UTC)", "Event", "Detail"], [
            [(f"{pd.Timestamp(r.at).tz_convert(UTC):%Y-%m-%d %H:%M}", ""), (r.label, ""), (r.detail or "", "")]
            for r in data.events.itertuples()]))

    parts.append("<h2>Recommendations</h2>")
    parts.append(f'<p class="meta">From {data.health_runs} health snapshots recorded in the month '
                 "(each cleanup and health check records one).</p>")
    if data.health.empty:
        parts.append('<p class="nodata">No health snapshots were recorded in this month.</p>')
    else:
        parts.append(_table(["Check", "Worst in month", "Times not ok", "Latest", "Latest value", "Recommendation"], [
            [(r.check_name, ""), (r.worst, r.worst), (f"{r.not_ok} of {r.runs}", "num"),
             (r.last_status, r.last_status), (r.last_value, ""), (r.recommendation, "")]
            for r in data.health.itertuples()]))

    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Cache monthly review {span.month:%Y-%m}</title><style>{REPORT_CSS}</style></head>"
            f"<body>{body}</body></html>")
