"""Shared pieces of the dashboard pages: who is acting, cached reads, banners, formatting.

Pages never talk SQL: they call ``read("overview")`` and friends, which call
``cachelib.queries`` through a short-lived ``st.cache_data`` cache, and run
actions through ``cachelib.maintenance``. ``guard()`` turns every error a page
can meet into a message (database down: a banner with a Retry button), so a
traceback never reaches the browser.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from cachelib import auth, queries
from cachelib.config import settings
from cachelib.db import database_url, get_database
from cachelib.errors import CacheError, DatabaseUnavailable
from cachelib.maintenance import Actor

log = logging.getLogger("cachelib.ui")

READ_TTL_SECONDS = 3
# Markdown icons (material symbols ship with Streamlit; emoji fonts are often missing on servers).
STATUS_ICON = {"ok": ":green[:material/check_circle:]", "warning": ":orange[:material/warning:]",
               "critical": ":red[:material/error:]"}
STATUS_COLOR = {"ok": "#dcfce7", "warning": "#ffedd5", "critical": "#fee2e2"}
SEVERITY = {"ok": 0, "warning": 1, "critical": 2}
CACHE_LABELS = {"expert_sessions": "Expert sessions", "product_performance": "Product analytics"}
CACHE_COLORS = {"Expert sessions": "#2563eb", "Product analytics": "#db2777"}
REFRESH_TOGGLE_KEY = "live_refresh"
REFRESH_INTERVAL_KEY = "refresh_interval"


# --- who is acting --------------------------------------------------------------

def role() -> str:
    """The logged-in user's role ('admin' or 'viewer'); 'viewer' when unknown."""
    value = st.session_state.get("role")
    return value if value in ("admin", "viewer") else "viewer"


def is_admin() -> bool:
    return bool(st.session_state.get("authentication_status")) and role() == "admin"


def require_login() -> None:
    """Stop a page that was reached without logging in.

    The router registers the pages only after the login, so normally a page cannot run for an
    anonymous visitor. The exception is the first request a fresh server process gets: until
    st.navigation has been called once, Streamlit treats the pages/ folder as an automatic
    multipage app and may run a page file directly. Then send the visitor to the router.
    """
    if not st.session_state.get("authentication_status"):
        try:
            st.switch_page("dashboard.py")
        except Exception:  # the router is not a registered page: just refuse
            pass
        st.warning("Please log in on the dashboard's start page first.", icon=":material/lock:")
        st.stop()


def current_actor() -> Actor:
    """The Actor for maintenance calls: the logged-in user, via the dashboard."""
    return Actor(str(st.session_state.get("username") or "unknown"), role(), "dashboard")


# --- reads ------------------------------------------------------------------------

@st.cache_data(ttl=READ_TTL_SECONDS, show_spinner=False, max_entries=512)
def _cached_read(name: str, url: str, kwargs: tuple[tuple[str, Any], ...]) -> Any:
    return getattr(queries, name)(database=get_database(url), **dict(kwargs))


def read(name: str, **kwargs) -> Any:
    """``cachelib.queries.<name>(**kwargs)`` on the configured database, cached for a few seconds."""
    return _cached_read(name, database_url(), tuple(sorted(kwargs.items())))


def prefetch(*reads: str | tuple[str, dict[str, Any]]) -> None:
    """Warm the read cache for several reads at once: ``"health"`` or ``("top_entries", {"limit": 10})``.

    Several of these scan the entries once each; run side by side they cost the
    time of the slowest instead of the sum (the pool has a connection for each).
    """
    from concurrent.futures import ThreadPoolExecutor

    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    ctx = get_script_run_ctx()
    url = database_url()
    calls = [(read, {}) if isinstance(read, str) else read for read in reads]

    def warm(call: tuple[str, dict[str, Any]]) -> None:
        add_script_run_ctx(ctx=ctx)
        try:
            _cached_read(call[0], url, tuple(sorted(call[1].items())))
        except CacheError:
            pass  # the page's own read shows the error where it belongs

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        list(pool.map(warm, calls))


def clear_reads() -> None:
    """Forget cached reads (after an action changed the data, or on Retry)."""
    _cached_read.clear()


def numeric(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Copy of ``frame`` with ``columns`` as floats (NUMERIC arrives as Decimal objects)."""
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


# --- errors -----------------------------------------------------------------------

def _retry() -> None:
    clear_reads()


def database_down(exc: DatabaseUnavailable) -> None:
    """The friendly banner for an unreachable database, with a Retry button; stops this run."""
    st.error(f"**The cache database is not reachable right now.** {exc}\n\n"
             "The figures on this page need it. Check that PostgreSQL is running, then retry.",
             icon=":material/cloud_off:")
    st.button("Retry", key="database_retry", on_click=_retry, type="primary")
    st.stop()


@contextmanager
def guard(what: str = "this section") -> Iterator[None]:
    """Show errors of the block as messages: DatabaseUnavailable stops with a banner, other
    CacheErrors show their message, anything unexpected a short notice (details in the server log)."""
    try:
        yield
    except DatabaseUnavailable as exc:
        database_down(exc)
    except CacheError as exc:
        st.error(str(exc))
    except Exception as exc:  # never a traceback in the browser
        log.exception("dashboard: %s failed", what)
        st.error(f"Could not show {what}: {type(exc).__name__}: {exc}. Details are in the server log.")


FLASH_KEY = "_flash_messages"


def flash(message: str, kind: str = "success") -> None:
    """Keep a message to show at the top of the page after the next rerun."""
    st.session_state.setdefault(FLASH_KEY, []).append((kind, message))


def show_flashes() -> None:
    for kind, message in st.session_state.pop(FLASH_KEY, []):
        getattr(st, kind, st.info)(message)


def run_action(label: str, action: Callable[[], Any], *, success: Callable[[Any], str] | None = None,
               rerun: bool = False) -> Any | None:
    """Run a maintenance action with a status box; report success or a clear error. Returns its result.

    With ``rerun=True`` a successful action reruns the page (so tables show the new state) and its
    message is shown at the top of the page."""
    with st.status(f"{label}…", expanded=False) as status:
        try:
            result = action()
        except DatabaseUnavailable as exc:
            status.update(label=f"{label}: failed", state="error")
            st.error(f"{label} failed: the database is not reachable. {exc}")
            return None
        except CacheError as exc:
            status.update(label=f"{label}: refused", state="error")
            st.error(f"{label} failed: {exc}")
            return None
        except Exception as exc:
            log.exception("dashboard action %s failed", label)
            status.update(label=f"{label}: failed", state="error")
            st.error(f"{label} failed unexpectedly: {type(exc).__name__}: {exc}")
            return None
        message = success(result) if success else getattr(result, "message", "done")
        status.update(label=f"{label}: done", state="complete")
    clear_reads()
    ok = getattr(result, "ok", True)
    if rerun and ok:
        flash(message)
        st.rerun()
    (st.success if ok else st.error)(message)
    return result


# --- page furniture ---------------------------------------------------------------

def page_header(title: str, caption: str | None = None) -> None:
    """Title, the demo-data badge and the caching-off banner."""
    st.title(title)
    if caption:
        st.caption(caption)
    show_flashes()
    with guard("the deployment information"):
        info = read("deployment")
        if info.demo_data:
            st.badge("Demo data", icon=":material/science:", color="orange",
                     help="These figures come from generated demo traffic, not real users.")
    if not settings().cache_enabled:
        st.warning("**Caching is OFF (CACHE_ENABLED=false):** every call goes straight to the direct query. "
                   "Hit rates fall to zero while it is off.", icon=":material/warning:")


def refresh_controls() -> None:
    """Sidebar controls for live refresh (rendered once by the router for every page)."""
    default = settings().refresh_seconds
    st.toggle("Live refresh", value=True, key=REFRESH_TOGGLE_KEY,
              help="Re-read the figures on this page periodically.")
    st.number_input("Refresh every (seconds)", min_value=2, max_value=3600, value=default, step=1,
                    key=REFRESH_INTERVAL_KEY, disabled=not st.session_state.get(REFRESH_TOGGLE_KEY, True))


def run_every() -> timedelta | None:
    """The live-refresh interval chosen in the sidebar, or None when live refresh is off."""
    if not st.session_state.get(REFRESH_TOGGLE_KEY, True):
        return None
    seconds = st.session_state.get(REFRESH_INTERVAL_KEY) or settings().refresh_seconds
    return timedelta(seconds=max(2, int(seconds)))


def live(render: Callable[[], None]) -> None:
    """Run ``render`` as a fragment that re-runs at the live-refresh interval, with a "last updated" note."""
    def body() -> None:
        with guard(render.__doc__ or render.__name__):
            if not auth.session_active(st.session_state.get(auth.SESSION_ID_KEY), st.session_state.get("username")):
                st.rerun()  # logged out elsewhere: the full run (dashboard.py) sends this tab to the login
            render()
        interval = run_every()
        note = f"every {int(interval.total_seconds())} s" if interval else "live refresh off"
        st.caption(f"Last updated {datetime.now().strftime('%H:%M:%S')} ({note})")

    body.__qualname__ = f"live.{render.__module__}.{render.__qualname__}"
    st.fragment(run_every=run_every())(body)()


def no_data(message: str = "No data yet") -> None:
    st.info(message, icon=":material/inbox:")


def status_frame(health: pd.DataFrame) -> Any:
    """The health table with each row coloured by its status (a pandas Styler)."""
    def colour(row: pd.Series) -> list[str]:
        return [f"background-color: {STATUS_COLOR.get(row['status'], 'transparent')}"] * len(row)

    return health.style.apply(colour, axis=1)


VERDICT_COLOR = {"met": STATUS_COLOR["ok"], "pass": STATUS_COLOR["ok"], "on track": STATUS_COLOR["ok"],
                 "missed": STATUS_COLOR["critical"], "fail": STATUS_COLOR["critical"],
                 "below target so far": STATUS_COLOR["warning"]}


def verdict_frame(frame: pd.DataFrame, column: str) -> Any:
    """``frame`` with the cells of ``column`` coloured by verdict (met/pass green, missed/fail red)."""
    return frame.style.map(lambda v: f"background-color: {VERDICT_COLOR[v]}" if v in VERDICT_COLOR else "",
                           subset=[column])


def worst_status(health: pd.DataFrame) -> str:
    if health.empty:
        return "ok"
    return max(health["status"], key=lambda s: SEVERITY.get(s, 0))


def cache_label(name: str | None) -> str:
    if name is None:
        return "all caches"
    return CACHE_LABELS.get(name, name)


# --- formatting -------------------------------------------------------------------

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
