"""API keys for the admin HTTP API: create, revoke, list, authenticate.

A key looks like ``pgc_<prefix>_<secret>``: ``prefix`` is 8 hex characters that
find the row (and tell keys apart in listings), ``secret`` 256 random bits.
Only the SHA-256 of the whole key is stored (cache_private.api_keys, migration
0010); the plaintext is returned once by create_key and never again. A fast
hash is right here because the key is a random token, not a password: there is
no dictionary to try. Hashes are compared with hmac.compare_digest.

The API audits every use of a key through ``audit`` below, which writes the
same cache_private.maintenance_audit rows as the maintenance actions.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from cachelib.db import Database
from cachelib.errors import InvalidInput
from cachelib.maintenance import ROLES, Actor, identify, write_audit
from cachelib.throttle import owner_connection

KEY_PATTERN = re.compile(r"^pgc_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
NAME_RULE = "1 to 63 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
# last_used_at is written at most this often per key, so a busy client does not
# turn every request into a row update.
LAST_USED_RESOLUTION_SECONDS = 1
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidInput(f"API key name must be {NAME_RULE}; got {name!r}")
    return name


def _check_role(role: Any) -> str:
    if role not in ROLES:
        raise InvalidInput(f"API key role must be admin or viewer; got {role!r}")
    return role


def _connection(database: Database | None):
    """A pooled connection; MigrationError when the key table is missing."""
    return owner_connection(database, "the API key table cache_private.api_keys")


def audit(actor: Actor | None, action: str, params: dict | None = None, outcome: str = "ok",
          result: dict | None = None, duration_ms: float = 0.0, database: Database | None = None) -> None:
    """Write one audit row (cache_private.write_audit) as ``actor``; outcome is ok, refused or error."""
    if outcome not in ("ok", "refused", "error"):
        raise InvalidInput(f"audit outcome must be ok, refused or error; got {outcome!r}")
    with _connection(database) as conn, conn.transaction():
        identify(conn, actor)
        write_audit(conn, action, params or {}, outcome, result or {}, duration_ms)


def create_key(name: str, role: str, database: Database | None = None, actor: Actor | None = None) -> str:
    """Create a key; returns the plaintext key, which is not stored and cannot be shown again."""
    _check_name(name)
    _check_role(role)
    for _attempt in range(5):
        prefix = secrets.token_hex(4)
        key = f"pgc_{prefix}_{secrets.token_urlsafe(32)}"
        try:
            with _connection(database) as conn, conn.transaction():
                identify(conn, actor)
                conn.execute("INSERT INTO cache_private.api_keys (name, role, key_hash, key_prefix) "
                             "VALUES (%s, %s, %s, %s)", (name, role, _hash(key), prefix))
                write_audit(conn, "api_key_create", {"name": name, "role": role}, "ok", {"key_prefix": prefix})
            return key
        except pg_errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "api_keys_name_key":
                raise InvalidInput(f"an API key named {name!r} already exists (revoked keys keep their name); "
                                   "choose another name") from None
            # Two keys drew the same 32-bit prefix: draw again.
    raise InvalidInput("could not draw an unused key prefix; try again")  # pragma: no cover (2^32 space)


def revoke_key(name: str, database: Database | None = None, actor: Actor | None = None) -> None:
    """Revoke the key called ``name``; it stops working at once. InvalidInput if there is no active such key."""
    _check_name(name)
    with _connection(database) as conn, conn.transaction():
        identify(conn, actor)
        row = conn.execute("SELECT revoked_at FROM cache_private.api_keys WHERE name = %s FOR UPDATE",
                           (name,)).fetchone()
        if row is None:
            raise InvalidInput(f"there is no API key named {name!r}; see: python -m cachelib api-key list")
        if row[0] is not None:
            raise InvalidInput(f"the API key {name!r} was already revoked at {row[0]:%Y-%m-%d %H:%M:%S %Z}")
        conn.execute("UPDATE cache_private.api_keys SET revoked_at = pg_catalog.now() WHERE name = %s", (name,))
        write_audit(conn, "api_key_revoke", {"name": name}, "ok", {})


def list_keys(database: Database | None = None) -> list[dict[str, Any]]:
    """Every key (hashes left out): name, role, key_prefix, created_at, last_used_at, revoked_at, active."""
    with _connection(database) as conn:
        cursor = conn.execute("""SELECT name, role, key_prefix, created_at, last_used_at, revoked_at,
                                        revoked_at IS NULL AS active
                                 FROM cache_private.api_keys ORDER BY created_at, id""")
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def authenticate(key: str | None, database: Database | None = None) -> Actor | None:
    """The Actor (name, role, via='api') a key belongs to; None for a malformed, unknown or revoked key.

    Records last_used_at (at most once per second per key). A revoked key that
    is still being used leaves a 'refused' audit row under its name.
    """
    if not isinstance(key, str) or KEY_PATTERN.match(key) is None:
        return None
    with _connection(database) as conn:
        return authenticate_on(conn, key)


def authenticate_on(conn: psycopg.Connection, key: str | None) -> Actor | None:
    """authenticate() on ``conn`` (inside its transaction, when it has one)."""
    match = KEY_PATTERN.match(key) if isinstance(key, str) else None
    if match is None:
        return None
    row = conn.execute("SELECT id, name, role, key_hash, revoked_at FROM cache_private.api_keys "
                       "WHERE key_prefix = %s", (match.group(1),)).fetchone()
    if row is None:
        hmac.compare_digest(_hash(key), _DUMMY_HASH)  # same work as for a known prefix
        return None
    key_id, name, role, stored_hash, revoked_at = row
    if not hmac.compare_digest(_hash(key), stored_hash):
        return None
    actor = Actor(name=name, role=role, via="api")
    if revoked_at is not None:
        with conn.transaction():
            identify(conn, actor)
            write_audit(conn, "api_auth", {}, "refused", {"reason": "key revoked",
                                                            "revoked_at": _iso(revoked_at)})
        return None
    conn.execute("""UPDATE cache_private.api_keys SET last_used_at = pg_catalog.now()
                    WHERE id = %s AND (last_used_at IS NULL
                                       OR last_used_at < pg_catalog.now() - make_interval(secs => %s))""",
                 (key_id, LAST_USED_RESOLUTION_SECONDS))
    return actor


def ping(database: Database | None = None) -> float:
    """Round trip to the database in milliseconds; DatabaseUnavailable when it cannot be reached."""
    started = time.perf_counter()
    with _connection(database) as conn:
        conn.execute("SELECT 1").fetchone()
    return round((time.perf_counter() - started) * 1000, 2)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
