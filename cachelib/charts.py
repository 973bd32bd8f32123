"""Plotly figures that read the same on every page.

A time chart here shows exactly the period it is about (no half day before the first bar), labels
days as "Nov 3" and weeks by their dates (a first or last partial week included), starts bars and
percentages at zero, labels log axes by decades, draws each target in the colour of the series it
judges, shades the Week 1 and Month 1 windows, marks what happened (deployment, emergency clears,
invalidations, optimize runs, duration changes, manual cleanups), and downloads as a PNG named after
what it shows. Times are UTC; naive datetimes are taken as UTC.

Charts are built as plotly JSON (``Spec``), not through plotly's objects, which cost tens of
milliseconds a chart. Typical use on a page::

    grid = charts.periods(start, end, "day")               # one row per bar
    spec = charts.Spec([{"type": "bar", "x": grid["mid"].tolist(), "y": values,
                         "marker": {"color": charts.series_color(cache)}}])
    spec.update({"yaxis": charts.zero_based_props(top=100)})
    spec.mark(*charts.target_marks(target))
    note = charts.frame_time_chart(spec, "Hit rate", start, end, "day", height=360,
                                   deployed_at=deployment.deployed_at, events=ui.read("events", start=start, end=end))
    charts.show(spec, key="chart_x", filename=charts.filename("hit-rate", start, end))
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from cachelib import formats, queries

# Every figure's look. Set as the default, not per figure: plotly validates a template given to
# update_layout into the figure (about 25 ms a figure, most of a page's render), while the default is
# merged when the figure is serialized (the same JSON, about 5 ms).
pio.templates.default = "plotly_white"

ALL_CACHES_COLOR = "#0f766e"   # series of all caches together (load reduction of every cache)
OTHER_COLOR = "#475569"        # a window without a fill of its own
WINDOW_FILL = {"Week 1": "#f59e0b", "Month 1": "#6366f1"}
TARGET_DASH = {"Week 1": "dot", "Month 1": "dash"}
# kind -> (colour, dash) of the event line; kinds not listed (scheduled_cleanup) are counted, not drawn.
EVENT_STYLE = {"deployment": ("#111827", "solid"), "emergency_clear": ("#dc2626", "solid"),
               "invalidate": ("#ea580c", "dot"), "optimize": ("#7c3aed", "dot"),
               "duration_change": ("#0369a1", "dashdot"), "cleanup": ("#0891b2", "dot")}
BUCKET_SPAN = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}
MAX_TICKS = 16
DAY_MS = 86_400_000


# --- periods ------------------------------------------------------------------------------

def naive_utc(moment: Any) -> datetime:
    """``moment`` (datetime, Timestamp or ISO string) as a naive UTC datetime."""
    stamp = pd.Timestamp(moment)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert(UTC).tz_localize(None)
    return stamp.to_pydatetime()


def _floor(moment: datetime, bucket: str) -> datetime:
    if bucket == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday()) if bucket == "week" else day


def _day(moment: datetime) -> str:
    return f"{moment:%b} {moment.day}"


def period_label(start: Any, end: Any) -> str:
    """Dates of [start, end) as people say them, end inclusive: "Nov 1-Nov 30"; "Nov 3" for one day;
    with times ("Oct 28 10:00-Nov 4 10:00") when the bounds are not midnights."""
    start, end = naive_utc(start), naive_utc(end)
    if start.time() == end.time() == datetime.min.time():
        last = end - timedelta(days=1)
        return _day(start) if last <= start else f"{_day(start)}-{_day(last)}"
    return f"{_day(start)} {start:%H:%M}-{_day(end)} {end:%H:%M}"


def window_label(name: str, start: Any, end: Any) -> str:
    """A named window with its dates: "Week 1 (Oct 28-Nov 3)"."""
    return f"{name} ({period_label(start, end)})"


def periods(start: Any, end: Any, bucket: str) -> pd.DataFrame:
    """The buckets of [start, end): start, end, mid, label, partial; one row per bar or point.

    Hours and days are whole; weeks run Monday to Sunday (as date_trunc('week') counts them) and the
    first and last week are clipped to the period, so a deployment on a Wednesday has a first week
    from that Wednesday to the Sunday ("Oct 29-Nov 2")."""
    if bucket not in BUCKET_SPAN:
        raise ValueError(f"bucket must be one of {', '.join(BUCKET_SPAN)}, got {bucket!r}")
    start, end = naive_utc(start), naive_utc(end)
    rows, cursor = [], start
    while cursor < end:
        stop = min(_floor(cursor, bucket) + BUCKET_SPAN[bucket], end)
        if bucket == "hour":
            label = f"{_day(cursor)} {cursor:%H:%M}"
        else:
            first, last = cursor.date(), (stop - timedelta(microseconds=1)).date()
            label = _day(first) if first == last else f"{_day(first)}-{_day(last)}"
        rows.append({"start": cursor, "end": stop, "mid": cursor + (stop - cursor) / 2, "label": label,
                     "partial": stop - cursor < BUCKET_SPAN[bucket]})
        cursor = stop
    return pd.DataFrame(rows, columns=["start", "end", "mid", "label", "partial"])


def period_of(moments: Iterable, start: Any, end: Any, bucket: str) -> pd.Series:
    """For each moment, the start of its bucket in ``periods(start, end, bucket)`` (NaT outside [start, end)),
    indexed as ``moments`` when it is a Series (a filtered frame's index has gaps: assigning the result to
    its frame lines up row by row)."""
    values = moments if isinstance(moments, pd.Series) else pd.Series(list(moments), dtype=object)
    grid = periods(start, end, bucket)
    if grid.empty:  # an empty range holds no moment
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    position = _bucket_positions(values, grid)
    starts = grid["start"].to_numpy()
    owners = np.where(position >= 0, starts[np.maximum(position, 0)], np.datetime64("NaT").astype(starts.dtype))
    return pd.Series(owners, index=values.index)


def _bucket_positions(moments: pd.Series, grid: pd.DataFrame) -> np.ndarray:
    """For each moment, the row of ``grid`` (from ``periods``) whose bucket holds it, -1 outside the grid: the
    last bucket starting at or before it. (Naive moments are UTC; a datetime column is converted as it is:
    through Python objects it cost a chart 70 ms a month of hours.)"""
    if grid.empty:
        return np.full(len(moments), -1)
    starts = grid["start"].to_numpy(dtype="datetime64[ns]")
    last_end = grid["end"].iloc[-1].to_datetime64()
    at = pd.to_datetime(moments, utc=True).dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    position = np.searchsorted(starts, at, side="right") - 1
    return np.where((position >= 0) & (at < last_end), position, -1)


def regroup(series: pd.DataFrame, sums: list[str], grid: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Rows of a series (moments in its ``bucket`` column) summed into the buckets of ``grid`` (from
    ``periods``), per value of the column ``by`` if given: the grid's columns, ``by``, and the sums,
    one row per bucket (and value) that has rows, sorted by start (then ``by``). Rows outside the grid
    are left out; a missing value adds nothing.

    In numpy, with one frame built at the end: a page regroups a month of hours per cache on every run,
    and a pandas groupby and merge cost it tens of milliseconds."""
    if series.empty or grid.empty:
        return series.iloc[0:0]
    position = _bucket_positions(series["bucket"], grid)
    inside = position >= 0
    if by:
        codes, names = pd.factorize(series[by].to_numpy(dtype=object), sort=True)
    else:
        codes, names = np.zeros(len(series), dtype=np.int64), np.array([None], dtype=object)
    width = len(names)
    keys, row_of = np.unique((position * width + codes)[inside], return_inverse=True)
    bucket_rows = keys // width
    columns: dict[str, Any] = {"start": grid["start"].to_numpy()[bucket_rows]}
    if by:
        columns[by] = np.asarray(names, dtype=object)[keys % width]
    for column in sums:
        values = np.nan_to_num(pd.to_numeric(series[column], errors="coerce").to_numpy(dtype="float64")[inside])
        summed = np.bincount(row_of, weights=values, minlength=len(keys))
        columns[column] = summed.round().astype("int64") if pd.api.types.is_integer_dtype(series[column]) else summed
    for column in ("end", "mid", "label", "partial"):
        columns[column] = grid[column].to_numpy()[bucket_rows]
    return pd.DataFrame(columns)


def on_grid(series: pd.DataFrame, grid: pd.DataFrame, by: str = "cache_name") -> dict[str, pd.DataFrame]:
    """Each value of ``by`` in a regrouped series: the grid with that value's columns on every bucket, empty
    (NaN) where it has no row, so that a line breaks there instead of bridging the gap. In order of first
    appearance."""
    starts = grid["start"].to_numpy(dtype="datetime64[ns]")
    bucket_columns = {column: grid[column].to_numpy() for column in grid.columns}
    names = series[by].to_numpy(dtype=object)
    values = {column: series[column].to_numpy() for column in series.columns
              if column not in (by, "start", "end", "mid", "label", "partial")}
    at_all = np.searchsorted(starts, series["start"].to_numpy(dtype="datetime64[ns]"))
    grids = {}
    for name in dict.fromkeys(names):
        mine = names == name
        at = at_all[mine]
        whole = len(at) == len(starts)  # no gap: whole numbers stay whole
        columns = dict(bucket_columns)
        for column, source in values.items():
            if whole and np.issubdtype(source.dtype, np.integer):
                filled = np.empty(len(starts), dtype="int64")
            else:
                filled = np.full(len(starts), np.nan)
            filled[at] = source[mine]
            columns[column] = filled
        grids[name] = pd.DataFrame(columns)
    return grids


# --- axes ---------------------------------------------------------------------------------

def time_axis_props(start: Any, end: Any, bucket: str) -> dict[str, Any]:
    """Settings of an x axis covering exactly [start, end), with ticks that suit the bucket: hours
    "14:00 / Nov 3", days "Nov 3" (one tick every 1, 2, 3 or 7 days, under the bar), weeks labelled with
    their dates (partial weeks too)."""
    start, end = naive_utc(start), naive_utc(end)
    days = (end - start) / timedelta(days=1)
    axis: dict[str, Any] = {"range": [start, end], "type": "date", "showgrid": True, "ticks": "outside"}
    if bucket == "hour":
        step = next((hours for hours in (1, 2, 3, 6, 12, 24) if days * 24 / hours <= MAX_TICKS), 24)
        axis.update(tick0=start, dtick=step * 3_600_000, tickformat="%H:%M<br>%b %-d" if step < 24 else "%b %-d",
                    hoverformat="%b %-d %H:%M")
    elif bucket == "day" and days <= 7 * 4 * MAX_TICKS:
        step = next((n for n in (1, 2, 3, 7, 14, 28) if days / n <= MAX_TICKS), 28)
        axis.update(tick0=start + timedelta(hours=12), dtick=step * DAY_MS, tickformat="%b %-d",
                    hoverformat="%b %-d, %Y")
    elif bucket == "day":
        axis.update(dtick="M1" if days <= 31 * MAX_TICKS else "M12", tickformat="%b %Y", hoverformat="%b %-d, %Y")
    else:
        grid = periods(start, end, "week")
        every = max(1, math.ceil(len(grid) / (MAX_TICKS // 2)))  # week labels are wider than day labels
        shown = grid.iloc[::every]
        text = shown["label"] if every == 1 else shown["start"].map(_day)
        axis.update(tickmode="array", tickvals=list(shown["mid"]), ticktext=list(text), hoverformat="%b %-d, %Y")
    return axis


def zero_based_props(top: float | None = None) -> dict[str, Any]:
    """Settings of a y axis from 0 (to ``top`` when given, e.g. 100 for percentages)."""
    return {"rangemode": "tozero"} if top is None else {"range": [0, top]}


def count_ticks(maximum: float, ticks: int = 5) -> dict[str, Any]:
    """Axis settings for a count: from 0, ticks on whole numbers only (1, 2, 5, 10, 20, 50, ... apart),
    about ``ticks`` of them, so an axis of invalidations never reads 3.58."""
    top = max(float(maximum) if maximum is not None and not pd.isna(maximum) else 0.0, 1.0)
    decade = 1
    while True:
        step = next((decade * f for f in (1, 2, 5) if top / (decade * f) <= ticks), None)
        if step is not None:
            break
        decade *= 10
    return {"range": [0, math.ceil(top * 1.08 / step) * step], "tick0": 0, "dtick": step, "tickformat": ",d"}


def log_axis_props(values: Iterable[float], suffix: str = " ms") -> dict[str, Any]:
    """Settings of a log y axis labelled by decades (0.1 ms, 1 ms, 10 ms, ...), spanning whole decades
    around ``values`` (the positive ones)."""
    positive = [float(v) for v in values if v is not None and not pd.isna(v) and float(v) > 0]
    low = math.floor(math.log10(min(positive))) if positive else -1
    high = math.ceil(math.log10(max(positive))) if positive else 2
    if high <= low:
        high = low + 1
    return {"type": "log", "dtick": 1, "range": [low, high], "tickformat": "~g", "ticksuffix": suffix,
            "exponentformat": "none", "minor": {"ticks": "", "showgrid": True, "gridcolor": "#f1f5f9"}}


# --- colours, targets, windows, events ------------------------------------------------------

def series_color(cache: str | None) -> str:
    """The colour of a cache's series on every page (formats.cache_color); None: all caches together."""
    if cache is None:
        return ALL_CACHES_COLOR
    return formats.cache_color(cache)


def target_marks(target: queries.Target, color: str | None = None, x: str = "x",
                 y: str = "y") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The shape and annotation of a horizontal line at ``target.goal`` on the axes ``x`` and ``y`` ("x2",
    "y2" in the second row), in its series' colour (Week 1 dotted, Month 1 dashed), labelled "Week 1
    target: Sessions hit rate above 50%"."""
    color = color or series_color(target.cache_name)
    left = target.milestone == "Week 1"  # Week 1's label at the left end of its line, Month 1's at the right
    return ([{"type": "line", "xref": f"{x} domain", "x0": 0, "x1": 1, "yref": y, "y0": target.goal,
              "y1": target.goal, "line": {"dash": TARGET_DASH.get(target.milestone, "dash"), "color": color,
                                          "width": 2}}],
            [{"xref": f"{x} domain", "x": 0 if left else 1, "xanchor": "left" if left else "right", "yref": y,
              "y": target.goal, "yanchor": "bottom", "showarrow": False,
              "text": f"{target.milestone} target: {target.name}", "font": {"size": 11, "color": color},
              "bgcolor": "rgba(255,255,255,0.8)"}])


def target_windows(deployed_at: Any, start: Any, end: Any) -> dict[str, tuple[datetime, datetime]]:
    """queries.WINDOWS after ``deployed_at``, clipped to [start, end) (a window outside it is left out)."""
    deployed, start, end = naive_utc(deployed_at), naive_utc(start), naive_utc(end)
    windows = {}
    for name, (offset_start, offset_end) in queries.WINDOWS.items():
        x0, x1 = max(deployed + offset_start, start), min(deployed + offset_end, end)
        if x0 < x1:
            windows[name] = (x0, x1)
    return windows


def window_marks(deployed_at: Any, start: Any, end: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The shapes and annotations that shade the Week 1 and Month 1 windows (queries.WINDOWS after
    ``deployed_at``) within [start, end), over every row of the figure, each named at the bottom of its
    shading."""
    shapes, annotations = [], []
    for name, (x0, x1) in target_windows(deployed_at, start, end).items():
        color = WINDOW_FILL.get(name, OTHER_COLOR)
        shapes.append({"type": "rect", "xref": "x", "yref": "paper", "x0": x0, "x1": x1, "y0": 0, "y1": 1,
                       "fillcolor": color, "opacity": 0.08, "line": {"width": 0}, "layer": "below"})
        annotations.append({"xref": "x", "yref": "paper", "x": x0, "y": 0, "xanchor": "left", "yanchor": "bottom",
                            "showarrow": False, "text": f"<b>{name}</b>", "font": {"size": 11, "color": color},
                            "xshift": 2, "yshift": 2, "bgcolor": "rgba(255,255,255,0.7)"})
    return shapes, annotations


def _events_in(events: pd.DataFrame, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The events of [start, end) as records, ``at`` as naive UTC. (A handful of rows: plain Python, where
    pandas' filtering cost every chart milliseconds.)"""
    records = ({**event, "at": naive_utc(event["at"])} for event in events.to_dict("records"))
    return [event for event in records if start <= event["at"] < end]


def event_marks(events: pd.DataFrame, start: Any, end: Any, max_labels: int = 10,
                labels_above: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """The shapes and annotations that mark what happened in [start, end) (rows of queries.events) with a
    vertical line each, labelled (hover a label for who and what), and events_caption(): what is drawn
    and what is not (scheduled cleanups are counted, never drawn one by one). Beyond ``max_labels`` events the
    lines stay and the labels go. ``labels_above``: the labels sit over the plot, clear of the data and
    the targets' labels (for a figure without subplots, whose top margin has the room)."""
    if events is None or events.empty:
        return [], [], events_caption(events, start, end, max_labels)
    start, end = naive_utc(start), naive_utc(end)
    within = _events_in(events, start, end)
    drawn = [event for event in within if event["kind"] in EVENT_STYLE]
    labelled = len(drawn) <= max_labels
    shapes, annotations = [], []
    last_x, stack = None, 0
    for event in drawn:
        at = event["at"]
        color, dash = EVENT_STYLE[event["kind"]]
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": at, "x1": at, "y0": 0, "y1": 1,
                       "line": {"color": color, "dash": dash, "width": 1.5}})
        if not labelled:
            continue
        # Labels of events close together are stacked downwards instead of printed over each other.
        close = last_x is not None and (at - last_x) < (end - start) / 8
        stack = stack + 1 if close else 0
        last_x = at
        # Near the right edge the label reads leftwards from its line, so that it is not cut off.
        right = at - start > (end - start) * 0.8
        shift = 2 + 15 * stack if labels_above else -4 - 16 * stack
        annotations.append({"xref": "x", "yref": "paper", "x": at, "y": 1,
                            "yanchor": "bottom" if labels_above else "top", "xanchor": "right" if right else "left",
                            "yshift": shift, "showarrow": False, "text": event["label"],
                            "hovertext": f"{formats.fmt_time(at)}: {event['detail']}",
                            "font": {"size": 11, "color": color}, "bgcolor": "rgba(255,255,255,0.85)"})
    return shapes, annotations, _caption(within, max_labels)


def events_caption(events: pd.DataFrame, start: Any, end: Any, max_labels: int = 10) -> str:
    """The sentence under a chart that says which events of [start, end) add_events() draws, which it
    counts only (scheduled cleanups), and whether they are labelled."""
    if events is None or events.empty:
        return "Nothing was recorded in this period (no deployment, clears, invalidations or manual cleanups)."
    return _caption(_events_in(events, naive_utc(start), naive_utc(end)), max_labels)


def _caption(within: list[dict[str, Any]], max_labels: int) -> str:
    """events_caption() for the events already within the period."""
    drawn = [event["kind"] for event in within if event["kind"] in EVENT_STYLE]
    parts = [f"{n} {_KIND_WORDS[kind][n != 1]}" for kind, n in Counter(drawn).most_common()]
    scheduled = sum(event["kind"] == "scheduled_cleanup" for event in within)
    sentence = ("Vertical lines: " + ", ".join(parts) + "." if parts else "No deployment, clears, invalidations "
                "or manual cleanups in this period.")
    if len(drawn) > max_labels:
        sentence += " Too many to label: see the audit log on Maintenance & Health."
    if scheduled:
        sentence += (f" {scheduled} scheduled cleanup{'s' * (scheduled != 1)} (pg_cron, cron or the CLI) "
                     "ran in this period and are not drawn; manual cleanups (dashboard, API) are.")
    return sentence


_KIND_WORDS = {"deployment": ("deployment", "deployments"), "emergency_clear": ("emergency clear", "emergency clears"),
               "invalidate": ("invalidation", "invalidations"), "optimize": ("optimize run", "optimize runs"),
               "duration_change": ("duration change", "duration changes"),
               "cleanup": ("manual cleanup", "manual cleanups")}


# --- layout and download ------------------------------------------------------------------

LEGEND_GAP_PX = 42  # from the bottom of the plot to the legend: below the day ticks


def layout_props(title: str, height: int = 340, legend: bool = True, top: int = 70) -> dict[str, Any]:
    """Layout settings: the title inside the figure (so a downloaded PNG says what it is), the legend (if any)
    under the x axis' tick labels, where it covers neither the title, the ticks nor the data. ``top``: the
    top margin in px (more when event labels sit above the plot)."""
    bottom = 110 if legend else 50
    plot_height = max(height - top - bottom, 1)
    return {"title": {"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, "height": height,
            "showlegend": legend, "hovermode": "closest", "margin": {"t": top, "b": bottom, "l": 60, "r": 20},
            "legend": {"orientation": "h", "yanchor": "top", "y": -LEGEND_GAP_PX / plot_height, "x": 0,
                       "xanchor": "left"}}


def frame_time_chart(spec: Spec, title: str, start: Any, end: Any, bucket: str, *, height: int,
                     legend: bool = True, top: int = 70, deployed_at: Any = None, events: pd.DataFrame | None = None,
                     events_span: tuple[Any, Any] | None = None, labels_above: bool = False) -> str:
    """A time chart's frame: layout_props(), time_axis_props() on every x axis, window_marks() (when
    ``deployed_at`` is given) and event_marks() (over ``events_span``, default [start, end)). Returns the
    events' caption."""
    spec.update(layout_props(title, height, legend, top))
    axis = time_axis_props(start, end, bucket)
    for name in spec.axes("x"):
        spec.update({name: axis})
    if deployed_at is not None:
        spec.mark(*window_marks(deployed_at, start, end))
    shapes, annotations, caption = event_marks(events, *(events_span or (start, end)), labels_above=labels_above)
    spec.mark(shapes, annotations)
    return caption


def filename(name: str, start: Any = None, end: Any = None) -> str:
    """A PNG file name without extension: "pgcache_hit-rate_2025-11-01_to_2025-11-30" (end inclusive)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "chart"
    if start is None or end is None:
        return f"pgcache_{slug}"
    first, last = naive_utc(start), naive_utc(end) - timedelta(microseconds=1)
    return f"pgcache_{slug}_{first:%Y-%m-%d}_to_{last:%Y-%m-%d}"


def png_config(name: str) -> dict[str, Any]:
    """The plotly config whose camera button downloads a 2x PNG called ``name``.png."""
    return {"toImageButtonOptions": {"format": "png", "filename": name, "scale": 2}, "displaylogo": False}


def show(figure: go.Figure | Spec, key: str, filename: str) -> None:
    """st.plotly_chart at full width; the modebar's camera button downloads ``filename``.png."""
    import streamlit as st

    if isinstance(figure, Spec):
        figure = figure.for_streamlit()
    st.plotly_chart(figure, width="stretch", key=key, config=png_config(filename))


# --- figures as plotly JSON -------------------------------------------------------------------

def utc_values(values: Iterable[Any]) -> list[Any]:
    """Moments for a Spec's data or axis range, as naive UTC (plotly.js does not read UTC offsets; a
    checked go.Figure converts them the same way); None for a missing one."""
    return [None if value is None or pd.isna(value) else naive_utc(value) for value in values]


# Set (to anything but 0) by the tests: every Spec shown or written is checked by plotly first.
CHECK_SPECS_SETTING = "PGCACHE_CHECK_CHART_SPECS"


@dataclass
class Spec:
    """A figure kept as plotly JSON: traces and layout as dicts and lists.

    Building a chart through plotly's objects cost tens of milliseconds a chart (every property set is
    looked up, checked and copied), most of a page's render; building the same JSON is plain Python. A
    Spec is shown as it is; ``figure()`` gives the checked go.Figure, and with PGCACHE_CHECK_CHART_SPECS
    set (the tests) every Spec shown or written is checked, so a wrong property still fails loudly."""

    data: list[dict[str, Any]] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def rows(cls, titles: list[str], spacing: float) -> Spec:
        """Rows sharing one x axis (tick labels under the bottom row), each titled: the layout of
        make_subplots(rows=len(titles), cols=1, shared_xaxes=True, vertical_spacing=spacing,
        subplot_titles=titles). Row n's axes are "x{n}"/"y{n}" ("x"/"y" for the first)."""
        count = len(titles)
        height = (1 - spacing * (count - 1)) / count
        layout: dict[str, Any] = {"annotations": []}
        for row in range(1, count + 1):
            suffix = "" if row == 1 else str(row)
            top = 1 - (row - 1) * (height + spacing)
            bottom = 0.0 if row == count else top - height
            layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": [0.0, 1.0]}
            if row < count:
                layout[f"xaxis{suffix}"].update(matches=f"x{count if count > 1 else ''}", showticklabels=False)
            layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": [bottom, top]}
            layout["annotations"].append({"font": {"size": 16}, "showarrow": False, "text": titles[row - 1],
                                          "x": 0.5, "xanchor": "center", "xref": "paper", "y": top,
                                          "yanchor": "bottom", "yref": "paper"})
        return cls([], layout)

    def add(self, trace: dict[str, Any]) -> None:
        self.data.append(trace)

    def update(self, props: dict[str, Any]) -> None:
        """Merge ``props`` into the layout, nested dicts key by key (as update_layout does)."""
        _merge(self.layout, props)

    def axes(self, letter: str) -> list[str]:
        """The layout's axes of ``letter`` ("x" or "y"): "xaxis", "xaxis2", ... ("xaxis" when there is none)."""
        names = sorted((k for k in self.layout if re.fullmatch(f"{letter}axis[0-9]*", k)),
                       key=lambda k: int(k[5:] or 1))
        return names or [f"{letter}axis"]

    def mark(self, shapes: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> None:
        self.layout.setdefault("shapes", []).extend(shapes)
        self.layout.setdefault("annotations", []).extend(annotations)

    def to_dict(self) -> dict[str, Any]:
        """The figure's JSON with the default template, as go.Figure.to_dict() gives it."""
        return {"data": self.data, "layout": {**self.layout, "template": _default_template()}}

    def figure(self) -> go.Figure:
        """The checked plotly figure (raises ValueError for a property plotly does not know)."""
        return go.Figure(self.to_dict())

    def for_streamlit(self) -> go.Figure:
        """What st.plotly_chart takes without checking the figure again (it re-checks a dict)."""
        if _checking():
            return self.figure()
        return _AsBuilt(_dates_as_text(self.to_dict()))

    def to_html(self, **options: Any) -> str:
        if _checking():
            self.figure()
        return pio.to_html(_dates_as_text(self.to_dict()), validate=False, **options)


def _dates_as_text(value: Any) -> Any:
    """``value`` with every datetime as the ISO text plotly's JSON makes of it. plotly.io.to_json takes each
    datetime down a slow path (about 20 µs each: 4 ms for a chart of 180 points); text it passes through."""
    if isinstance(value, dict):
        return {key: _dates_as_text(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        if any(isinstance(item, (datetime, dict, list, tuple)) for item in value):
            return [_dates_as_text(item) for item in value]
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


class _AsBuilt(go.Figure):
    """A go.Figure whose JSON is given: st.plotly_chart serializes a figure's to_dict() unchecked."""

    def __init__(self, as_json: dict[str, Any]):
        super().__init__()
        self._as_json = as_json

    def to_dict(self) -> dict[str, Any]:
        return self._as_json


def _checking() -> bool:
    """Whether PGCACHE_CHECK_CHART_SPECS asks for every Spec to be checked before it is shown or written."""
    return os.environ.get(CHECK_SPECS_SETTING, "0") not in ("", "0")


@cache
def _default_template() -> dict[str, Any]:
    return go.Figure().to_dict()["layout"]["template"]


def _merge(target: dict[str, Any], props: dict[str, Any]) -> None:
    for key, value in props.items():
        if isinstance(value, dict):  # merged into a dict of the layout's own, never shared with ``props``
            if not isinstance(target.get(key), dict):
                target[key] = {}
            _merge(target[key], value)
        else:
            target[key] = value
