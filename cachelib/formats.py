"""Formatting of figures for people: sizes, durations, percentages, times.

One place for the dashboard pages, the CLI and the HTML report, so a figure reads
the same wherever it is shown.
"""

from __future__ import annotations

import math
import zlib
from datetime import UTC, datetime
from typing import Any

import pandas as pd

# What each cache is called on every page, chart and report, and the colour of its series.
CACHE_LABELS = {"expert_sessions": "Expert sessions", "product_performance": "Product analytics"}
CACHE_COLORS = {"Expert sessions": "#2563eb", "Product analytics": "#db2777"}
# Registered caches take one of these, by name, so each keeps its colour on every page and in every
# report. None is red, orange or green: those mean severity here.
REGISTERED_CACHE_COLORS = ("#0d9488", "#7c3aed", "#4338ca", "#92400e", "#0e7490", "#475569")


def cache_label(name: str | None) -> str:
    """A cache's name for people; None means every cache together."""
    if name is None:
        return "all caches"
    return CACHE_LABELS.get(name) or name.replace("_", " ").capitalize()


def cache_color(name: str) -> str:
    """The colour of a cache's series: the guide's caches their own, any other one from a fixed palette."""
    return CACHE_COLORS.get(cache_label(name)) or REGISTERED_CACHE_COLORS[zlib.crc32(name.encode())
                                                                          % len(REGISTERED_CACHE_COLORS)]


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def fmt_bytes(value: Any) -> str:
    if _missing(value):
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def fmt_ms(value: Any) -> str:
    if _missing(value):
        return "—"
    ms = float(value)
    if abs(ms) >= 60_000:
        return fmt_seconds(ms / 1000)
    if abs(ms) >= 1000:
        return f"{ms / 1000:,.2f} s"
    return f"{ms:,.2f} ms" if abs(ms) < 100 else f"{ms:,.0f} ms"


def fmt_seconds(value: Any) -> str:
    """A span of seconds as 45s, 3m 20s, 2h 5m, 3d 4h; negative spans with a minus sign."""
    if _missing(value):
        return "—"
    seconds = float(value)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{sign}{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{sign}{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{sign}{days}d {hours}h"


def fmt_expires(value: Any) -> str:
    if _missing(value):
        return "—"
    return f"expired {fmt_seconds(-float(value))} ago" if float(value) <= 0 else f"in {fmt_seconds(value)}"


def fmt_pct(value: Any, digits: int = 1) -> str:
    if _missing(value):
        return "—"
    number = float(value)
    return "—" if math.isnan(number) else f"{number:.{digits}f}%"


def fmt_number(value: Any, digits: int = 0) -> str:
    if _missing(value):
        return "—"
    return f"{float(value):,.{digits}f}"


def fmt_time(value: Any) -> str:
    """A timestamp as 'YYYY-MM-DD HH:MM UTC', or 'never'."""
    if _missing(value):
        return "never"
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize(UTC)
    return stamp.tz_convert(UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_ago(value: Any, now: datetime | None = None) -> str:
    """How long ago, in one rounded unit: 'just now', '16 min ago', '3 h ago', '2 d ago'."""
    if _missing(value):
        return "never"
    now = now or datetime.now(UTC)
    seconds = (pd.Timestamp(now) - pd.Timestamp(value)).total_seconds()
    if seconds < 60:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{round(seconds / size)} {unit} ago"
    return "just now"
