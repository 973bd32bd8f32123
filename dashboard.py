"""pgcache-admin dashboard (/admin/cache): login, then the pages under pages/.

Run with ``streamlit run dashboard.py`` (``make run`` does this). This file is
only the router: it checks the credentials file, logs the user in through
streamlit-authenticator, keeps the role in ``st.session_state['role']`` and
builds the navigation. No page is registered before the login succeeds.

Password checks take their turn in the throttle shared with the API, and every
login is a server-side session (cachelib/auth.py): a run whose session was
logged out, here or from any other tab or replica, is sent back to the login.
"""

from __future__ import annotations

import logging

import streamlit as st
import streamlit_authenticator as stauth

from cachelib import auth, ui
from cachelib.config import settings
from cachelib.errors import CacheError, DatabaseUnavailable
from cachelib.throttle import Throttled

log = logging.getLogger("dashboard")

PAGES = [
    ("pages/overview.py", "Overview", ":material/dashboard:"),
    ("pages/top_entries.py", "Top Cache Entries", ":material/format_list_numbered:"),
    ("pages/performance.py", "Performance Analysis", ":material/monitoring:"),
    ("pages/management.py", "Cache Management", ":material/tune:"),
    ("pages/maintenance.py", "Maintenance & Health", ":material/health_and_safety:"),
    ("pages/monthly_review.py", "Monthly Review", ":material/calendar_month:"),
]
LOGIN_FORM_KEY = "login_form"
SESSION_ENDED_KEY = "_session_ended"


def load_authenticator() -> tuple[stauth.Authenticate, dict]:
    """The authenticator over the credentials file; st.error and stop when the file is unusable."""
    try:
        config = settings()
        credentials = auth.load_credentials(config)
        key = auth.cookie_key(config)
    except CacheError as exc:
        st.error(f"**The dashboard cannot start:** {exc}", icon=":material/lock:")
        st.stop()
    except Exception as exc:  # a broken file must not show a traceback either
        log.exception("loading the dashboard credentials failed")
        st.error(f"**The dashboard cannot start:** the credentials could not be loaded ({type(exc).__name__}).",
                 icon=":material/lock:")
        st.stop()
    # Credentials are passed as a dict (not the path), so the library never rewrites the file
    # and the cookie key is ours rather than one stored in the YAML.
    authenticator = stauth.Authenticate(credentials, auth.COOKIE_NAME, key, auth.COOKIE_EXPIRY_DAYS,
                                        auto_hash=False)
    return authenticator, credentials


def login_from_cookie(authenticator: stauth.Authenticate) -> None:
    """Re-authenticate from a valid signed cookie whose server-side session is still open."""
    if st.session_state.get("authentication_status"):
        return
    try:
        token = authenticator.cookie_controller.get_cookie()
        if token and auth.session_active(token.get("sid"), token.get("username")):
            authenticator.authentication_controller.login(token=token)
            st.session_state[auth.SESSION_ID_KEY] = token["sid"]
    except DatabaseUnavailable as exc:
        ui.database_down(exc)
    except Exception:  # an unknown user or a tampered cookie just means: log in again
        st.session_state["authentication_status"] = None


def end_closed_session(authenticator: stauth.Authenticate) -> None:
    """Log this run out when its session was closed (logged out anywhere) or has expired."""
    if not st.session_state.get("authentication_status"):
        return
    try:
        active = auth.session_active(st.session_state.get(auth.SESSION_ID_KEY), st.session_state.get("username"))
    except DatabaseUnavailable as exc:
        ui.database_down(exc)
    if not active:
        authenticator.authentication_controller.logout()
        st.session_state.pop(auth.SESSION_ID_KEY, None)
        st.session_state[SESSION_ENDED_KEY] = "Your session has ended (logged out or expired). Please log in again."


def check_password(authenticator: stauth.Authenticate, username: str, password: str) -> bool:
    try:
        return bool(authenticator.authentication_controller.login(username, password))
    except Exception as exc:
        log.warning("login for %r failed: %s", username, exc)
        return False


def set_login_cookie(authenticator: stauth.Authenticate, session: auth.Session) -> None:
    """The login cookie for ``session``, written with streamlit-authenticator's cookie manager."""
    model = authenticator.cookie_controller.cookie_model
    try:
        model.cookie_manager.set(model.cookie_name, auth.cookie_token(session, model.cookie_key),
                                 expires_at=session.expires_at)
    except Exception:  # no cookie only means logging in again after a reload
        log.warning("could not set the login cookie", exc_info=True)


def login_form(authenticator: stauth.Authenticate) -> None:
    """The login form; on success the rest of this run renders the app. Stops the run otherwise."""
    placeholder = st.empty()
    with placeholder.container():
        st.title("pgcache-admin")
        st.caption("Cache administration dashboard — please log in.")
        ended = st.session_state.pop(SESSION_ENDED_KEY, None)
        if ended:
            st.info(ended)
        with st.form(LOGIN_FORM_KEY):
            st.subheader("Log in")
            username = st.text_input("Username", key="login_username", autocomplete="username")
            password = st.text_input("Password", type="password", key="login_password",
                                     autocomplete="current-password")
            submitted = st.form_submit_button("Log in", type="primary")
        if not submitted:
            st.stop()
        username = (username or "").strip().lower()
        if not username or not password:
            st.error("Enter a username and a password.")
            st.stop()
        try:
            attempt = auth.attempt_login(username, auth.request_address(),
                                         lambda: check_password(authenticator, username, password))
            session = auth.start_session(username) if attempt.ok else None
        except Throttled as exc:
            st.session_state["authentication_status"] = None
            st.error(f"Too many failed logins from your address or for this user: try again in "
                     f"{exc.retry_after} s.")
            st.stop()
        except DatabaseUnavailable as exc:
            st.session_state["authentication_status"] = None
            ui.database_down(exc)
        if session is None:
            st.session_state["authentication_status"] = None
            message = "Username or password is incorrect."
            if attempt.failures > 1:
                message += f" ({attempt.failures} failed attempts: each further attempt is slowed down.)"
            st.error(message)
            st.stop()
    st.session_state[auth.SESSION_ID_KEY] = session.id
    placeholder.empty()
    set_login_cookie(authenticator, session)


def close_session(_details: dict) -> None:
    """Logout callback: close the session on the server, so no copy of its cookie logs in again."""
    try:
        auth.end_session(st.session_state.pop(auth.SESSION_ID_KEY, None))
    except CacheError as exc:
        log.error("logout could not close the session on the server: %s", exc)
        st.session_state[SESSION_ENDED_KEY] = ("Logged out here, but the database could not be reached to close "
                                               "the session: a copy of the login cookie works until it expires.")


def show_sidebar(authenticator: stauth.Authenticate, credentials: dict) -> None:
    """The user, their role and the logout button (always visible), then the live-refresh controls."""
    role = auth.role_of(st.session_state.get("username"), credentials)
    st.session_state["role"] = role
    with st.sidebar:
        who = st.empty()
        name = st.session_state.get("name") or st.session_state.get("username")
        who.markdown(f"**{name}**  \n`{st.session_state.get('username')}` · role **{role}**")
        authenticator.logout("Log out", "sidebar", key="logout_button", callback=close_session)
        if not st.session_state.get("authentication_status"):  # just logged out
            who.empty()
            return
        st.divider()
        ui.refresh_controls()


def show_login_page(authenticator: stauth.Authenticate) -> None:
    """Make the login page the only page there is and run it; returns only when the login succeeded."""
    st.session_state.pop("role", None)

    def log_in() -> None:
        login_form(authenticator)

    st.navigation([st.Page(log_in, title="Log in", icon=":material/login:", url_path="login")],
                  position="hidden").run()


@st.cache_resource(show_spinner=False)
def demo_traffic():
    """Live demo traffic (CACHE_DEMO_TRAFFIC): one generator for this server process, however many
    browser sessions; its daemon thread stops with the process. None when the setting says no."""
    from cachelib import demo

    return demo.start_live_traffic(settings())


def start_demo_traffic() -> None:
    try:
        demo_traffic()
    except Exception:  # the demo must never keep the dashboard from serving
        log.warning("live demo traffic could not be started", exc_info=True)


def main() -> None:
    st.set_page_config(page_title="pgcache-admin · /admin/cache", page_icon=":material/database:", layout="wide")
    authenticator, credentials = load_authenticator()
    login_from_cookie(authenticator)
    end_closed_session(authenticator)
    if not st.session_state.get("authentication_status"):
        # Not logged in: no page but the login page exists, so no page URL reaches any content.
        show_login_page(authenticator)
    navigation = st.navigation([st.Page(path, title=title, icon=icon) for path, title, icon in PAGES])
    # The sidebar comes after st.navigation so its widgets keep their identity on every page.
    show_sidebar(authenticator, credentials)
    if not st.session_state.get("authentication_status"):  # the logout button was just pressed
        show_login_page(authenticator)
    start_demo_traffic()
    navigation.run()


main()
