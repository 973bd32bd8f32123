"""Schema migrations: the numbered .sql files in sql/migrations, applied with yoyo.

yoyo runs each file in one transaction, so a failing file leaves the database
exactly as it was before it; we add the file name and the failing statement to
the error so the person running it knows where to look.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg
from yoyo import read_migrations
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import parse_uri

from cachelib.config import PROJECT_ROOT, settings
from cachelib.db import connection_kwargs, unavailable_error
from cachelib.errors import MigrationError

MIGRATIONS_DIR = PROJECT_ROOT / "sql" / "migrations"
MIGRATION_TABLE = "_cachelib_migrations"

log = logging.getLogger(__name__)


class _RecordingCursor:
    """Remembers the statement it last ran, so a failure can name it."""

    def __init__(self, cursor, backend):
        self._cursor = cursor
        self._backend = backend

    def execute(self, statement, *args, **kwargs):
        # yoyo runs each migration on a copy of the backend; record on the class they share.
        type(self._backend).last_statement = statement
        return self._cursor.execute(statement, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def _backend_for(url: str):
    """A yoyo backend that connects with our own connection string and timeouts."""

    class Backend(PostgresqlPsycopgBackend):
        last_statement: str | None = None

        def connect(self, dburi):
            conn = psycopg.connect(url, autocommit=True, **connection_kwargs(settings()))
            # yoyo's lock table and log must not be slowed by our statement timeout.
            conn.execute("SET statement_timeout = 0")
            return conn

        def cursor(self):
            return _RecordingCursor(self.connection.cursor(), self)

    # yoyo wants a parsed URI to pick a driver; the real connection uses ``url``.
    return Backend(parse_uri("postgresql+psycopg://localhost/db"), MIGRATION_TABLE)


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    already_applied: int

    def describe(self) -> str:
        if not self.applied:
            return f"Nothing to apply: all {self.already_applied} migrations are already applied."
        return f"Applied {len(self.applied)} migration(s): " + ", ".join(self.applied)


def _open_backend(url: str):
    try:
        backend = _backend_for(url)
        # yoyo's own lock and log tables. Creating them is done by trial (errors in the
        # server log every time), so only when they are not there yet.
        exists = backend.connection.execute("SELECT to_regclass('public.yoyo_lock') IS NOT NULL").fetchone()[0]
        if exists:
            backend.has_transactional_ddl = True  # PostgreSQL runs DDL in transactions
        else:
            backend.init_database()
        return backend
    except psycopg.OperationalError as exc:
        raise unavailable_error(url, exc) from None


def pending(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Ids of migrations present on disk but not applied to the database."""
    backend = _open_backend(url)
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(migrations_dir)))]
    finally:
        backend.connection.close()


def apply(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> MigrationReport:
    """Apply every pending migration in order; raises MigrationError naming file and statement."""
    backend = _open_backend(url)
    try:
        migrations = read_migrations(str(migrations_dir))
        with backend.lock():
            todo = backend.to_apply(migrations)
            applied = []
            for migration in todo:
                _apply_one(backend, migration)
                applied.append(migration.id)
            _forget_other_cluster(backend)
        return MigrationReport(applied, len(migrations) - len(applied))
    finally:
        backend.connection.close()


def _forget_other_cluster(backend) -> None:
    """After a dump is restored into another cluster, its entries' transaction ids mean nothing here:
    forget them now, before the application writes (0020; roll-ups and cleanups also check)."""
    with backend.connection.cursor() as cursor:
        cursor.execute("SELECT cache_private.forget_other_cluster()")


def _apply_one(backend, migration) -> None:
    try:
        backend.apply_one(migration)
    except psycopg.Error as exc:
        statement = (getattr(backend, "last_statement", None) or "").strip()
        first_lines = "\n".join(statement.splitlines()[:6])
        raise MigrationError(
            f"migration {Path(migration.path).name} failed and was rolled back: "
            f"{str(exc).strip().splitlines()[0]}\n  in statement:\n    "
            + first_lines.replace("\n", "\n    ")
        ) from None
