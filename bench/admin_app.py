"""The dashboard under Streamlit's AppTest, signed in as admin, as the page benches render it.

Shared by bench/run.py (section 7b) and bench/pages_ab.py (which runs it in a child process
whose ``cachelib`` and ``dashboard.py`` are another revision's).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path


def signed_in_app(dashboard: Path, database_url: str):
    """An AppTest of ``dashboard`` on ``database_url``, its session signed in as admin (as a successful login
    leaves it), with live refresh off, run once."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    from cachelib import auth, config

    auth_file = Path(tempfile.mkdtemp(prefix="benchauth_")) / "auth.yaml"
    os.environ.update({"DATABASE_URL": database_url, "DASHBOARD_AUTH_FILE": str(auth_file),
                       "DASHBOARD_COOKIE_KEY": "bench-cookie-key-0123456789abcdef"})
    config._cached = None
    auth.ensure_credentials(config.settings())
    original = PagesManager.__init__

    def init(self, *args, **kwargs):  # a running server decides this once; AppTest before every run
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init
    at = AppTest.from_file(str(dashboard), default_timeout=60)
    at.session_state[auth.SESSION_ID_KEY] = auth.start_session("admin").id
    at.session_state["authentication_status"] = True
    at.session_state["username"] = "admin"
    at.session_state["name"] = "Admin"
    at.session_state["live_refresh"] = False
    at.run()
    return at


def render_times(at, page: str, renders: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of switching ``at`` to ``page`` with the read cache cleared."""
    import streamlit as st

    wall, cpu = [], []
    for _ in range(renders):
        st.cache_data.clear()
        started, cpu_started = time.perf_counter(), time.process_time()
        at.switch_page(f"pages/{page}.py").run()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        assert not at.exception, [e.value for e in at.exception]
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000
