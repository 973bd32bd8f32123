"""Real servers for tests: free ports, the admin API in a thread, a PostgreSQL 15 of our own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def api_in_thread(database, app=None) -> Iterator[str]:
    """The real admin API (cachelib.api; ``app`` or one without slowdown) served by uvicorn on a free
    port the way ``python -m cachelib api`` serves it; yields its base URL."""
    import uvicorn

    from cachelib.api import SERVER_OPTIONS, FailureThrottle, create_app

    if app is None:
        app = create_app(database, metrics_key_required=False, throttle=FailureThrottle(base_delay=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **SERVER_OPTIONS))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def pg15_unavailable_reason(needs: tuple[Path, ...] = ()) -> str | None:
    """Why Debian's PostgreSQL 15 cannot be started here, or None when it can."""
    if not (PG15_BIN / "initdb").exists():
        return "Debian's PostgreSQL 15 is not installed (apt-get install postgresql-15; .ci/run does this)"
    for path in needs:
        if not path.exists():
            return f"{path} is missing (.ci/run installs the Debian package that has it)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start PostgreSQL 15 as the postgres user"
    return None


def as_postgres(args: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class Pg15:
    """A PostgreSQL 15 in a temporary directory, listening on a unix socket only."""

    work: Path
    port: int

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.work}&port={self.port}"

    def create_database(self, dbname: str, *, migrated: bool = True) -> str:
        from cachelib import migrate

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        if migrated:
            migrate.apply(self.url(dbname))
        return self.url(dbname)

    def stop(self) -> None:
        subprocess.run(as_postgres([str(PG15_BIN / "pg_ctl"), "-D", str(self.work / "data"), "-m", "immediate",
                                    "stop"]), capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def start_pg15(settings: dict[str, str] | None = None) -> Pg15:
    """initdb and start a PostgreSQL 15 with extra postgresql.conf ``settings``; waits until it answers."""
    work = Path(tempfile.mkdtemp(prefix="pgc15_"))
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    data = work / "data"
    subprocess.run(as_postgres([str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                "-E", "UTF8"]), check=True, capture_output=True)
    if settings:
        with open(data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    port = free_port()
    started = subprocess.run(as_postgres([str(PG15_BIN / "pg_ctl"), "-D", str(data), "-o",
                                          f"-k {work} -h '' -p {port}", "-l", str(work / "log"), "-w", "start"]),
                             capture_output=True, text=True)
    if started.returncode != 0:
        log = (work / "log").read_text() if (work / "log").exists() else started.stderr
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL 15 did not start:\n{log}")
    server = Pg15(work, port)
    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(server.url()).close()
            return server
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def login_url(url: str, user: str) -> str:
    """``url`` with ``user`` as the login role and no password (the test servers trust local logins)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    parts = conninfo_to_dict(url)
    parts.pop("password", None)
    parts["user"] = user
    return make_conninfo(**parts)
