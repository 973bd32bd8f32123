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


def _work_directory(prefix: str) -> Path:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    return work


def _start_cluster(work: Path, what: str) -> Pg15:
    """pg_ctl start the cluster in ``work``/data on a unix socket in ``work`` and a free port."""
    port = free_port()
    started = subprocess.run(as_postgres([str(PG15_BIN / "pg_ctl"), "-D", str(work / "data"), "-o",
                                          f"-k {work} -h '' -p {port}", "-l", str(work / "log"), "-w", "start"]),
                             capture_output=True, text=True)
    if started.returncode != 0:
        log = (work / "log").read_text() if (work / "log").exists() else started.stderr
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"{what} did not start:\n{log}")
    return Pg15(work, port)


def start_pg15(settings: dict[str, str] | None = None) -> Pg15:
    """initdb and start a PostgreSQL 15 with extra postgresql.conf ``settings``; waits until it answers."""
    work = _work_directory("pgc15_")
    data = work / "data"
    subprocess.run(as_postgres([str(PG15_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                "-E", "UTF8"]), check=True, capture_output=True)
    if settings:
        with open(data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
    server = _start_cluster(work, "PostgreSQL 15")
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


PGBOUNCER = Path("/usr/sbin/pgbouncer")


@dataclass
class PgBouncer:
    """Debian's PgBouncer in transaction mode in front of one PostgreSQL, on a local TCP port."""

    work: Path
    port: int
    process: subprocess.Popen

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.work, ignore_errors=True)


def start_pgbouncer(server: Pg15, users: tuple[str, ...] = ("postgres",), pool_size: int = 4) -> PgBouncer:
    """PgBouncer in transaction mode for every database of ``server`` (trusting ``users``), with a small
    server pool so that clients really share server connections; waits until it answers."""
    work = Path(tempfile.mkdtemp(prefix="pgbouncer_"))
    port = free_port()
    (work / "users.txt").write_text("".join(f'"{user}" ""\n' for user in users))
    (work / "pgbouncer.ini").write_text(f"""[databases]
* = host={server.work} port={server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {work / 'users.txt'}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 200
logfile = {work / 'pgbouncer.log'}
""")
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
        for path in work.iterdir():
            shutil.chown(path, "postgres", "postgres")
    process = subprocess.Popen(as_postgres([str(PGBOUNCER), str(work / "pgbouncer.ini")]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    bouncer = PgBouncer(work, port, process)
    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(bouncer.url("postgres"), prepare_threshold=None).close()
            return bouncer
        except psycopg.OperationalError:
            if process.poll() is not None or time.monotonic() > deadline:
                log = (work / "pgbouncer.log").read_text() if (work / "pgbouncer.log").exists() else ""
                bouncer.stop()
                raise RuntimeError(f"PgBouncer did not start:\n{log}{process.stderr.read().decode()}") from None
            time.sleep(0.1)


def start_standby(primary: Pg15) -> Pg15:
    """A streaming hot standby of ``primary`` (pg_basebackup -R), on its own socket and port; waits until it
    accepts read-only connections. initdb's trust rules already let local sockets replicate."""
    work = _work_directory("pgc15_standby_")
    subprocess.run(as_postgres([str(PG15_BIN / "pg_basebackup"), "-h", str(primary.work), "-p", str(primary.port),
                                "-U", "postgres", "-D", str(work / "data"), "-R", "-X", "stream", "-c", "fast"]),
                   check=True, capture_output=True)
    return _start_cluster(work, "the standby")


def wait_for_replay(primary_url: str, standby_url: str, timeout: float = 20.0) -> None:
    """Return once the standby has replayed everything the primary had written when this was called."""
    with psycopg.connect(primary_url, autocommit=True) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby_url, autocommit=True) as conn:
        while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]:
            assert time.monotonic() < deadline, "the standby did not catch up"
            time.sleep(0.05)


def flush_fast_hits(conn) -> None:
    """Move the hits the optional C path (pgcache_hit) counted in shared memory into the event log, as
    every roll-up does first: a test that reads or clears the event log then sees every hit."""
    if conn.execute("SELECT cache_private.fast_hits_installed()").fetchone()[0]:
        conn.execute("SELECT cache_private.forward_fast_hits()")
