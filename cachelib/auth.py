"""Dashboard credentials: the users file, the cookie key, roles and login throttling.

The credentials file is streamlit-authenticator's YAML layout with bcrypt
hashes only. It is created on first start with the users ``admin`` and
``viewer``; their passwords come from DASHBOARD_ADMIN_PASSWORD /
DASHBOARD_VIEWER_PASSWORD or are generated, and ``ensure_credentials`` hands
the plaintext back exactly once so the caller can print it. The file must not
be readable by anyone but its owner; the dashboard refuses to start otherwise.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from cachelib.config import Settings, settings
from cachelib.errors import ConfigError

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
        password = getattr(config, attribute, None) or secrets.token_urlsafe(12)
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
        return config.cookie_key
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


# --- failed-login slowdown ------------------------------------------------------

FAILURE_WINDOW_SECONDS = 15 * 60
MAX_DELAY_SECONDS = 4.0
_MAX_TRACKED = 1000
_failures: dict[str, list[float]] = {}
_failures_lock = threading.Lock()


def _user_key(username: str | None) -> str:
    return (username or "").strip().lower()[:100] or "<empty>"


def _recent(key: str, now: float) -> list[float]:
    stamps = [t for t in _failures.get(key, []) if now - t < FAILURE_WINDOW_SECONDS]
    if stamps:
        _failures[key] = stamps
    else:
        _failures.pop(key, None)
    return stamps


def record_failure(username: str | None) -> int:
    """Note a failed login for ``username``; returns its recent failure count."""
    now = time.monotonic()
    key = _user_key(username)
    with _failures_lock:
        if key not in _failures and len(_failures) >= _MAX_TRACKED:
            for other in list(_failures):
                _recent(other, now)
            if len(_failures) >= _MAX_TRACKED:
                _failures.pop(min(_failures, key=lambda k: _failures[k][-1]))
        stamps = _recent(key, now)
        stamps.append(now)
        _failures[key] = stamps[-20:]
        return len(stamps)


def clear_failures(username: str | None) -> None:
    with _failures_lock:
        _failures.pop(_user_key(username), None)


def failure_delay(username: str | None) -> float:
    """Seconds to wait before checking this user's password: 0 for the first failure, then doubling to 4 s."""
    with _failures_lock:
        count = len(_recent(_user_key(username), time.monotonic()))
    if count < 2:
        return 0.0
    return min(2 ** (count - 1) * 0.25, MAX_DELAY_SECONDS)


def throttle(username: str | None) -> float:
    """Sleep for ``failure_delay(username)``; returns how long it slept."""
    delay = failure_delay(username)
    if delay:
        time.sleep(delay)
    return delay
