"""Shared pieces of the dashboard pages: who is acting, cached reads, banners, formatting.

Pages never talk SQL: they call ``read("overview")`` and friends, which call
``cachelib.queries`` through a short-lived ``st.cache_data`` cache, and run
actions through ``cachelib.maintenance``. ``guard()`` turns every error a page
can meet into a message (database down: a banner with a Retry button), so a
traceback never reaches the browser.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from cachelib import auth, queries
from cachelib.config import settings
from cachelib.db import database_url, get_database, read_database_url
from cachelib.errors import CacheError, DatabaseUnavailable
from cachelib.formats import (  # noqa: F401  (the pages format and label through ui)
    CACHE_COLORS,
    CACHE_LABELS,
    cache_label,
    fmt_ago,
    fmt_bytes,
    fmt_expires,
    fmt_ms,
    fmt_number,
    fmt_pct,
    fmt_seconds,
    fmt_time,
)
from cachelib.maintenance import SEVERITY, Actor, worst

log = logging.getLogger("cachelib.ui")

READ_TTL_SECONDS = 3
PREFETCH_THREADS = 8  # reads warmed at once, for all sessions of this server (a page asks for at most six)
# Markdown icons (material symbols ship with Streamlit; emoji fonts are often missing on servers).
STATUS_ICON = {"ok": ":green[:material/check_circle:]", "warning": ":orange[:material/warning:]",
               "critical": ":red[:material/error:]"}
STATUS_COLOR = {"ok": "#dcfce7", "warning": "#ffedd5", "critical": "#fee2e2"}
# The same three hues, strong enough for chart marks (the pale ones above are table backgrounds).
STATUS_CHART_COLOR = {"ok": "#16a34a", "warning": "#ea580c", "critical": "#dc2626"}
# The message box an outcome of each severity is shown in: never green for a warning or worse.
STATUS_BOX = {"ok": "success", "warning": "warning", "critical": "error"}
STATUS_BOX_ICON = {"ok": ":material/check_circle:", "warning": ":material/warning:", "critical": ":material/error:"}
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


def act(action: str, **params) -> Any:
    """Run the maintenance ``action`` (cachelib.actions) as the signed-in user: the same path as the API
    and the CLI, so the same checks, refusals and audit."""
    from cachelib import actions

    return actions.run(get_database(), current_actor(), action, params)


def current_actor() -> Actor:
    """The Actor for maintenance calls: the logged-in user, via the dashboard."""
    return Actor(str(st.session_state.get("username") or "unknown"), role(), "dashboard")


# --- reads ------------------------------------------------------------------------

@st.cache_data(ttl=READ_TTL_SECONDS, show_spinner=False, max_entries=512)
def _cached_read(name: str, url: str, kwargs: tuple[tuple[str, Any], ...]) -> Any:
    return getattr(queries, name)(database=get_database(url), **dict(kwargs))


def reads_url() -> str:
    """Where the dashboard reads: DATABASE_READ_URL's replica when set, else the configured database.
    Actions (``act``) always go to the primary."""
    return read_database_url() or database_url()


def read(name: str, **kwargs) -> Any:
    """``cachelib.queries.<name>(**kwargs)`` where the reads go, cached for a few seconds."""
    return _cached_read(name, reads_url(), tuple(sorted(kwargs.items())))


def prefetch(*reads: str | tuple[str, dict[str, Any]]) -> None:
    """Warm the read cache for several reads at once: ``"health"`` or ``("top_entries", {"limit": 10})``.
    (Each read attaches its session's context to the pool thread that runs it.)

    Several of these scan the entries once each; run side by side they cost the
    time of the slowest instead of the sum (the pool has a connection for each).
    """
    from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

    ctx = get_script_run_ctx()
    url = reads_url()
    calls = [(read, {}) if isinstance(read, str) else read for read in reads]

    def warm(call: tuple[str, dict[str, Any]]) -> None:
        add_script_run_ctx(ctx=ctx)
        try:
            _cached_read(call[0], url, tuple(sorted(call[1].items())))
        except CacheError:
            pass  # the page's own read shows the error where it belongs

    try:
        queries.rollup(get_database(url))  # once, so that the reads below all see the same figures
    except CacheError:
        pass  # the page's own read shows the error where it belongs
    list(_prefetch_pool().map(warm, calls))


@st.cache_resource(show_spinner=False)
def _prefetch_pool():
    """Threads kept for prefetch: starting a thread per read cost a page 10-25 ms (more on a busy machine)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="prefetch")


def clear_reads() -> None:
    """Forget cached reads (after an action changed the data, or on Retry)."""
    _cached_read.clear()


def numeric(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Copy of ``frame`` with ``columns`` as floats (NUMERIC arrives as Decimal objects, NULL as None)."""
    present = [column for column in columns if column in frame]
    try:
        return frame.astype(dict.fromkeys(present, "float64"))  # one copy for all columns
    except (TypeError, ValueError):  # something not a number: NaN, as to_numeric(errors="coerce") gives
        return frame.assign(**{column: pd.to_numeric(frame[column], errors="coerce").astype("float64")
                               for column in present})


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
    """Keep a message to show at the top of the page after the next rerun; ``kind`` is success, info,
    warning or error (the box it is shown in)."""
    st.session_state.setdefault(FLASH_KEY, []).append((kind, message))


def show_flashes() -> None:
    icons = {STATUS_BOX[s]: STATUS_BOX_ICON[s] for s in STATUS_BOX}
    for kind, message in st.session_state.pop(FLASH_KEY, []):
        show = getattr(st, kind, None) if kind in ("success", "info", "warning", "error") else None
        (show or st.info)(message, icon=icons.get(kind))


def outcome_severity(result: Any) -> str:
    """ok, warning or critical: how an action's result must look. A failed result, a health check whose
    worst check is critical and a verification with a failed required check are critical."""
    if not getattr(result, "ok", True):
        return "critical"
    details = getattr(result, "details", None) or {}
    if details.get("overall") in SEVERITY:
        return details["overall"]
    if details.get("all_required_pass") is False:
        return "critical"
    return "ok"


def show_outcome(message: str, severity: str) -> None:
    """``message`` in the box of its severity: ok green, warning orange, critical red."""
    severity = severity if severity in STATUS_BOX else "critical"
    getattr(st, STATUS_BOX[severity])(message, icon=STATUS_BOX_ICON[severity])


def run_action(label: str, action: Callable[[], Any], *, success: Callable[[Any], str] | None = None,
               rerun: bool = False) -> Any | None:
    """Run a maintenance action with a spinner, then show its outcome at once, in the box of its severity
    (ok green, warning orange, critical red); a refusal or an error in a red box with its reason. Returns
    the result, or None when the action did not run.

    With ``rerun=True`` a successful action reruns the page (so tables show the new state) and its
    message is shown at the top of the page, in the same box."""
    error = None
    with st.spinner(f"{label}…"):
        try:
            result = action()
        except DatabaseUnavailable as exc:
            error = f"**{label} failed:** the database is not reachable. {exc}"
        except CacheError as exc:
            reason = str(exc)
            error = f"**{label} was not run.** {reason[:1].upper()}{reason[1:]}"
        except Exception as exc:
            log.exception("dashboard action %s failed", label)
            error = (f"**{label} failed unexpectedly:** {type(exc).__name__}: {exc}. "
                     "Details are in the server log.")
    if error is not None:
        show_outcome(error, "critical")
        return None
    clear_reads()
    message = success(result) if success else getattr(result, "message", "done")
    severity = outcome_severity(result)
    if rerun and getattr(result, "ok", True):
        flash(message, STATUS_BOX[severity])
        st.rerun()
    show_outcome(message, severity)
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
    from cachelib import demo

    live = demo.live_traffic()
    if live is not None and live.running:
        st.badge("Live demo traffic", icon=":material/sensors:", color="green",
                 help=f"This dashboard's server makes about {live.visits_per_minute:g} demo visits a minute "
                      "(a few cache calls a second, an occasional write that invalidates, an hourly cleanup) "
                      "over the demo rows, so live refresh moves. Set CACHE_DEMO_TRAFFIC=off and restart the "
                      "dashboard to stop it.")
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


def status_frame(health: pd.DataFrame, column: str = "status") -> Any:
    """The health table with each row's background in its status's colour (ok green, warning orange,
    critical red) and the status itself in the strong shade (a pandas Styler). Give it to st.table: that
    shows every value and recommendation in full, wrapped, where st.dataframe would cut them off."""
    def colour(row: pd.Series) -> list[str]:
        status = row[column]
        background = f"background-color: {STATUS_COLOR.get(status, 'transparent')}"
        strong = f"; color: {STATUS_CHART_COLOR[status]}; font-weight: 600" if status in STATUS_CHART_COLOR else ""
        return [background + (strong if name == column else "") for name in row.index]

    return health.style.apply(colour, axis=1)


VERDICT_COLOR = {"met": STATUS_COLOR["ok"], "pass": STATUS_COLOR["ok"], "on track": STATUS_COLOR["ok"],
                 "missed": STATUS_COLOR["critical"], "fail": STATUS_COLOR["critical"],
                 "below target so far": STATUS_COLOR["warning"]}


def verdict_frame(frame: pd.DataFrame, column: str) -> Any:
    """``frame`` with the cells of ``column`` coloured by verdict (met/pass green, missed/fail red)."""
    return frame.style.map(lambda v: f"background-color: {VERDICT_COLOR[v]}" if v in VERDICT_COLOR else "",
                           subset=[column])


def worst_status(health: pd.DataFrame) -> str:
    return worst(health["status"]) if not health.empty else "ok"

