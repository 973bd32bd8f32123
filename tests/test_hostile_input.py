"""Hostile input at every edge a person can type into: dashboard boxes, crafted session state, the CLI."""

import psycopg
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachelib import config
from cachelib.__main__ import cli
from tests.test_dashboard_apptest import ADMIN_BUTTONS, button_keys, logged_in, scalar, texts

HOSTILE = ["'", "\"; DROP TABLE query_cache; --", "%", "_", "%_%", "\\", "' OR '1'='1", "expert_sessions:all' --",
           "é∂ƒ©˙∆˚¬…æ≈ç√∫˜µ≤≥÷", "🙂" * 50, "\t\n\r", "x" * 199, "$$; SELECT pg_sleep(10); $$",
           "<script>alert(1)</script>", "{{7*7}}"]


def table_still_there(url) -> bool:
    return scalar(url, "SELECT to_regclass('public.query_cache') IS NOT NULL")


@pytest.mark.parametrize("text", HOSTILE)
def test_search_box_takes_anything(dashboard, text):
    at = logged_in("viewer", "pages/top_entries.py")
    at.text_input(key="top_search").input(text).run()
    assert not at.exception, [e.value for e in at.exception]
    assert table_still_there(dashboard)
    shown = at.dataframe[0].value if at.dataframe else None
    needle = text.strip()  # the page ignores surrounding blanks, as a search box should
    if shown is not None and needle:  # whatever matched contains the text literally
        assert all(needle.lower() in key.lower() for key in shown["Key"])


@pytest.mark.parametrize("text", HOSTILE)
def test_invalidate_key_box_takes_anything(dashboard, text):
    live_before = scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL")
    at = logged_in("admin", "pages/management.py")
    at.text_input(key="invalidate_key_text").input(text)
    at.button(key="invalidate_key").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("Traceback" in t for t in texts(at, "error"))
    assert table_still_there(dashboard)
    assert scalar(dashboard, "SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL") == live_before


def test_a_viewer_cannot_promote_itself_through_session_state(dashboard):
    at = logged_in("viewer", "pages/maintenance.py")
    at.session_state["role"] = "admin"  # as if the browser had smuggled it in
    at.run()
    assert not at.exception
    assert at.session_state["role"] == "viewer"  # recomputed from the credentials file every run
    assert not (button_keys(at) & ADMIN_BUTTONS)
    assert not [b for b in at.button if "Emergency" in b.label]


# --- the command line ---------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300)


@pytest.fixture(scope="module")
def cli_env(db_url):
    return {"DATABASE_URL": db_url}


def invoke(args, env):
    config._cached = None
    try:
        return CliRunner().invoke(cli, args, env=env, catch_exceptions=True)
    finally:
        config._cached = None


def assert_clean(result):
    # Either it worked, or it said why with a documented exit code; never an unexpected exception.
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=TEXT)
def test_cli_invalidate_key_takes_any_text(cli_env, key):
    with psycopg.connect(cli_env["DATABASE_URL"]) as conn:
        before = conn.execute("SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL").fetchone()[0]
    result = invoke(["maintenance", "invalidate", "--key", key, "--json"], cli_env)
    assert_clean(result)
    with psycopg.connect(cli_env["DATABASE_URL"]) as conn:
        after = conn.execute("SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL").fetchone()[0]
    assert after <= before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cache=TEXT)
def test_cli_invalidate_cache_takes_any_text(cli_env, cache):
    assert_clean(invoke(["maintenance", "invalidate", "--cache", cache], cli_env))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.one_of(st.integers(min_value=-10**6, max_value=10**6), TEXT))
def test_cli_days_take_anything(cli_env, days):
    result = invoke(["maintenance", "stats", "--days", str(days)], cli_env)
    assert_clean(result)
    if result.exit_code == 0:
        assert 1 <= int(str(days).strip()) <= 3650


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=TEXT)
def test_cli_emergency_clear_refuses_every_other_token(cli_env, token):
    if token == "EMERGENCY_CLEAR_CONFIRMED":
        return
    with psycopg.connect(cli_env["DATABASE_URL"]) as conn:
        before = conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0]
    result = invoke(["maintenance", "emergency-clear", "--confirm", token], cli_env)
    assert_clean(result)
    assert result.exit_code != 0
    with psycopg.connect(cli_env["DATABASE_URL"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.query_cache").fetchone()[0] == before


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=TEXT, role=TEXT)
def test_cli_api_key_create_takes_any_name_and_role(cli_env, name, role):
    result = invoke(["api-key", "create", "--name", name, "--role", role], cli_env)
    assert_clean(result)
    if result.exit_code == 0:
        assert role in ("admin", "viewer")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.one_of(st.integers(max_value=0), st.integers(min_value=401), TEXT.filter(lambda t: not t.isdigit())))
def test_cli_demo_traffic_refuses_bad_days(cli_env, days):
    result = invoke(["demo", "traffic", "--days", str(days)], cli_env)
    assert_clean(result)
    assert result.exit_code == 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(every=TEXT)
def test_cli_schedule_install_takes_any_interval(cli_env, every):
    assert_clean(invoke(["schedule", "install", "--every", every], cli_env))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.one_of(st.integers(min_value=-10**9, max_value=10**9), TEXT))
def test_cli_candidates_takes_any_limit(cli_env, limit):
    assert_clean(invoke(["candidates", "--limit", str(limit)], cli_env))


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from([s.name for s in config.SETTINGS]), value=TEXT)
def test_every_setting_either_parses_or_stops_start_up_cleanly(name, value):
    from cachelib.config import Settings
    from cachelib.errors import ConfigError

    try:
        Settings.from_env({name: value})
    except ConfigError as exc:
        assert name in str(exc)
