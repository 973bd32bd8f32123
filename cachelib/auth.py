"""Dashboard credentials: the users file, the cookie key, roles, login throttling and sessions.

The credentials file is streamlit-authenticator's YAML layout with bcrypt
hashes only. It is created on first start with the users ``admin`` and
``viewer``; their passwords come from DASHBOARD_ADMIN_PASSWORD /
DASHBOARD_VIEWER_PASSWORD or are generated, and ``ensure_credentials`` hands
the plaintext back exactly once so the caller can print it. The file must not
be readable by anyone but its owner; the dashboard refuses to start otherwise.

Every password check takes its turn in the failed-authentication throttle the
API uses too (cachelib/throttle.py), counted per client address and per
username in PostgreSQL, so parallel sessions and replicas share one budget.
A login opens a server-side session (cache_private.dashboard_sessions); the
login cookie carries its id, and logging out deletes it, so a copy of the
cookie stops working everywhere.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import yaml

from cachelib.config import Settings, settings
from cachelib.db import Database
from cachelib.errors import ConfigError
from cachelib.throttle import (
    LOGIN,
    FailureThrottle,
    address_subject,
    owner_connection,
    streamlit_client_address,
    user_subject,
)

COOKIE_NAME = "pgcache_admin_auth"
COOKIE_EXPIRY_DAYS = 1.0
COOKIE_KEY_FILE = "cookie_key"
USERS = (
    # username, display name, role, the Settings attribute holding its initial password
    ("admin", "Cache administrator", "admin", "admin_password"),
    ("viewer", "Cache viewer", "viewer", "viewer_password"),
)
ROLES = ("admin", "viewer")


# --- the credentials file -------------------------------------------------------

def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def ensure_credentials(config: Settings | None = None) -> list[tuple[str, str]]:
    """Create the credentials file when it is missing; returns the (user, password) pairs it created.

    Returns [] when the file already exists (its passwords are never shown again).
    """
    config = config or settings()
    path = Path(config.auth_file)
    if path.exists():
        return []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"DASHBOARD_AUTH_FILE={path}: cannot create its directory ({exc.strerror})") from None
    created: list[tuple[str, str]] = []
    users: dict[str, dict[str, Any]] = {}
    for username, name, role, attribute in USERS:
        password = config.secret(attribute) or secrets.token_urlsafe(12)
        created.append((username, password))
        users[username] = {"name": name, "email": f"{username}@localhost", "password": hash_password(password),
                           "roles": [role]}
    document = {"credentials": {"usernames": users}}
    text = ("# pgcache-admin dashboard users (bcrypt hashes). Keep this file private (chmod 600).\n"
            + yaml.safe_dump(document, sort_keys=False))
    try:
        _write_private(path, text)
    except FileExistsError:
        return []  # another process created it first; its passwords are its to print
    except OSError as exc:
        raise ConfigError(f"DASHBOARD_AUTH_FILE={path}: cannot write it ({exc.strerror})") from None
    return created


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 (fails if it exists) and write ``text``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def check_file_permissions(path: Path | str) -> None:
    """Raise ConfigError when ``path`` is missing or group/others may access it."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"the dashboard credentials file {path} does not exist; start the dashboard with "
                          "`python -m cachelib setup` (or `make run`), which creates it and prints the passwords "
                          "once") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard credentials file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the dashboard credentials file {path} is accessible by other users "
                          f"(mode {stat.filemode(mode)}); restrict it with: chmod 600 {path}")


def load_credentials(config: Settings | None = None) -> dict[str, Any]:
    """The ``credentials`` mapping of the file ({'usernames': {...}}), checked; raises ConfigError."""
    config = config or settings()
    path = Path(config.auth_file)
    check_file_permissions(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard credentials file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"the dashboard credentials file {path} is not valid YAML: "
                          f"{str(exc).splitlines()[0]}") from None
    usernames = (document or {}).get("credentials", {}).get("usernames") if isinstance(document, dict) else None
    if not isinstance(usernames, dict) or not usernames:
        raise ConfigError(f"the dashboard credentials file {path} lists no users under credentials.usernames; "
                          "delete it and start the dashboard again to recreate it")
    for username, user in usernames.items():
        password = user.get("password") if isinstance(user, dict) else None
        if not isinstance(password, str) or not password.startswith("$2"):
            raise ConfigError(f"user {username!r} in {path} has no bcrypt password hash; plaintext passwords "
                              "are not accepted")
    return {"usernames": {str(k).lower(): v for k, v in usernames.items()}}


def role_of(username: str | None, credentials: dict[str, Any]) -> str:
    """'admin' when the user's roles include admin, otherwise 'viewer' (also for unknown users)."""
    if not username:
        return "viewer"
    usernames = credentials.get("credentials", credentials).get("usernames", {})
    user = usernames.get(str(username).lower()) or {}
    roles = user.get("roles") or []
    if isinstance(roles, str):
        roles = [roles]
    return "admin" if "admin" in roles else "viewer"


# --- the cookie key --------------------------------------------------------------

def cookie_key(config: Settings | None = None) -> str:
    """The secret that signs login cookies.

    DASHBOARD_COOKIE_KEY, else ``cookie_key`` in Streamlit's secrets, else a random
    key created once and kept (mode 0600) next to the credentials file.
    """
    config = config or settings()
    if config.cookie_key:
        return config.secret("cookie_key")
    from_secrets = _secrets_cookie_key()
    if from_secrets:
        return from_secrets
    path = Path(config.auth_file).parent / COOKIE_KEY_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read the cookie key file {path}: {exc.strerror}; "
                          "or set DASHBOARD_COOKIE_KEY") from None
    key = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_private(path, key + "\n")
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()  # another process won the race
    except OSError as exc:
        raise ConfigError(f"cannot create the cookie key file {path}: {exc.strerror}; "
                          "or set DASHBOARD_COOKIE_KEY") from None
    return key


def _secrets_cookie_key() -> str | None:
    try:
        import streamlit as st

        value = st.secrets.get("cookie_key")
    except Exception:  # no secrets.toml, or not running under Streamlit: both mean "not configured"
        return None
    return str(value) if value else None


# --- failed logins: the shared throttle ------------------------------------------

# The same rule as the API's failed keys (cachelib/throttle.py); the delays are documented there.
LOGIN_THROTTLE = FailureThrottle()


@dataclass(frozen=True)
class LoginAttempt:
    ok: bool
    failures: int  # attempts since the last success, this one included; 0 after a success
    waited: float  # seconds this attempt waited for its turn


def request_address(config: Settings | None = None) -> str:
    """The address of the browser this Streamlit session serves, by the API's rule (TRUSTED_PROXIES)."""
    import streamlit as st

    try:
        reported = st.context.ip_address
        forwarded = st.context.headers.get_all("X-Forwarded-For")
    except Exception:  # no Streamlit session (bare mode): nothing to go on
        reported, forwarded = None, []
    return streamlit_client_address(reported, forwarded if isinstance(forwarded, list) else [],
                                    (config or settings()).trusted_proxies)


def attempt_login(username: str | None, address: str, check: Callable[[], bool], *,
                  database: Database | None = None, throttle: FailureThrottle | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> LoginAttempt:
    """Check one password under the throttle: take a turn (counted for ``address`` and ``username``),
    wait for it, call ``check``, and forget both counts when it says yes.

    Raises Throttled when the turn is more than the throttle's cap away (nothing is checked),
    DatabaseUnavailable or MigrationError.
    """
    throttle = throttle or LOGIN_THROTTLE
    subjects = [address_subject(address), user_subject(username)]
    admission = throttle.reserve(LOGIN, subjects, database)
    if admission.wait:
        sleep(admission.wait)
    ok = bool(check())
    if ok:
        throttle.succeeded(LOGIN, subjects, database)
    return LoginAttempt(ok, 0 if ok else admission.failures, admission.wait)


# --- sessions: what a logout ends -----------------------------------------------

SESSION_ID_KEY = "dashboard_session_id"  # st.session_state key of the open session's id
_SESSIONS = "the table cache_private.dashboard_sessions"


@dataclass(frozen=True)
class Session:
    id: str = field(repr=False)
    username: str
    expires_at: datetime


def _session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def start_session(username: str, database: Database | None = None,
                  days: float = COOKIE_EXPIRY_DAYS) -> Session:
    """Open a server-side session for ``username`` (expired ones are pruned); its id is returned only here."""
    session_id = secrets.token_urlsafe(32)
    with owner_connection(database, _SESSIONS) as conn, conn.transaction():
        conn.execute("DELETE FROM cache_private.dashboard_sessions WHERE expires_at <= pg_catalog.now()")
        expires_at = conn.execute(
            """INSERT INTO cache_private.dashboard_sessions (session_hash, username, expires_at)
               VALUES (%s, %s, pg_catalog.now() + pg_catalog.make_interval(secs => %s))
               RETURNING expires_at""", (_session_hash(session_id), username, days * 86400)).fetchone()[0]
    return Session(session_id, username, expires_at)


def session_active(session_id: object, username: object, database: Database | None = None) -> bool:
    """Whether ``session_id`` is an open, unexpired session of ``username``."""
    if not isinstance(session_id, str) or not session_id or not isinstance(username, str) or not username:
        return False
    with owner_connection(database, _SESSIONS) as conn:
        row = conn.execute("""SELECT 1 FROM cache_private.dashboard_sessions
                              WHERE session_hash = %s AND username = %s AND expires_at > pg_catalog.now()""",
                           (_session_hash(session_id), username)).fetchone()
    return row is not None


def end_session(session_id: object, database: Database | None = None) -> bool:
    """Close a session: its cookie no longer logs in anywhere. Returns whether it was open."""
    if not isinstance(session_id, str) or not session_id:
        return False
    with owner_connection(database, _SESSIONS) as conn:
        cursor = conn.execute("DELETE FROM cache_private.dashboard_sessions WHERE session_hash = %s",
                              (_session_hash(session_id),))
        return cursor.rowcount > 0


def cookie_token(session: Session, key: str) -> str:
    """The login cookie's value: streamlit-authenticator's signed token (username, exp_date) plus
    the session id, which ``session_active`` checks whenever the cookie is presented."""
    return jwt.encode({"username": session.username, "exp_date": session.expires_at.timestamp(),
                       "sid": session.id}, key, algorithm="HS256")
