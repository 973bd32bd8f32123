"""Settings: every documented form parses, every bad value fails naming the variable."""

from datetime import UTC

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachelib.config import SETTINGS, Duration, Settings
from cachelib.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172800),
                                          (" 10M ", 600), ("1d2h3m4s", 93784)])
def test_duration_accepts_the_documented_forms(text, seconds):
    assert Duration.parse(text).seconds == seconds


@pytest.mark.parametrize("text", ["5x", "", "m", "5", "-5m", "0s", "5m5m", "30m1h", "1.5h", "5 m", "400d", "1h 30m"])
def test_duration_rejects_anything_else(text):
    with pytest.raises(ConfigError) as err:
        Duration.parse(text, setting="CACHE_DEFAULT_DURATION")
    assert "CACHE_DEFAULT_DURATION" in str(err.value)
    assert "90s, 5m, 1h, 1h30m, 2d" in str(err.value) or "year" in str(err.value)


@given(st.text(max_size=12))
def test_duration_either_parses_or_says_why(text):
    try:
        parsed = Duration.parse(text, setting="X")
    except ConfigError as exc:
        assert str(exc).startswith("X=")
    else:
        assert 0 < parsed.seconds <= 366 * 86400


def test_defaults_are_the_guides():
    settings = Settings.from_env({})
    assert settings.expert_sessions_duration.seconds == 300
    assert settings.analytics_duration.seconds == 900
    assert settings.default_duration.seconds == 600
    assert settings.cache_enabled is True
    assert (settings.targets.week1_sessions, settings.targets.week1_analytics) == (50, 70)
    assert (settings.targets.month1_sessions, settings.targets.month1_analytics) == (70, 85)
    assert settings.targets.load_reduction == 40
    assert settings.duration_from("CACHE_EXPERT_SESSIONS_DURATION").text == "5m"
    assert settings.duration_from("CACHE_ANALYTICS_DURATION").text == "15m"
    assert settings.duration_from("CACHE_DEFAULT_DURATION").text == "10m"
    with pytest.raises(ConfigError, match="not a duration setting"):
        settings.duration_from("CACHE_LOCK_TIMEOUT")
    assert all(source == "default" for source in settings.sources.values())


def test_environment_overrides_and_sources():
    settings = Settings.from_env({"CACHE_EXPERT_SESSIONS_DURATION": "1h30m", "CACHE_ENABLED": "false",
                                  "CACHE_DEPLOYED_AT": "2026-10-01", "CACHE_TARGET_MONTH1_ANALYTICS": "90%"})
    assert settings.expert_sessions_duration.seconds == 5400
    assert settings.cache_enabled is False
    assert settings.deployed_at.tzinfo == UTC and settings.deployed_at.day == 1
    assert settings.targets.month1_analytics == 90
    assert settings.sources["CACHE_EXPERT_SESSIONS_DURATION"] == "environment"


@pytest.mark.parametrize("name,value", [
    ("CACHE_ANALYTICS_DURATION", "15 minutes"), ("CACHE_ENABLED", "maybe"), ("CACHE_DEPLOYED_AT", "yesterday"),
    ("CACHE_TARGET_WEEK1_SESSIONS", "150"), ("CACHE_TARGET_LOAD_REDUCTION", "lots"), ("CACHE_POOL_SIZE", "0"),
    ("DATABASE_URL", "mysql://x"), ("DASHBOARD_REFRESH_SECONDS", "1"), ("CACHE_STATEMENT_TIMEOUT", "0s"),
])
def test_each_bad_value_names_the_variable_and_the_value(name, value):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({name: value})
    assert name in str(err.value)


def test_every_setting_is_documented_in_the_readme():
    from cachelib.config import PROJECT_ROOT

    readme = (PROJECT_ROOT / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert not missing, f"settings missing from README's configuration table: {missing}"


@pytest.mark.parametrize("text, inside, outside", [
    ("10.0.0.5", ["10.0.0.5"], ["10.0.0.6", "::1"]),
    (" 10.0.0.0/8 , 192.168.1.7 ", ["10.200.3.4", "192.168.1.7", "::ffff:10.0.0.1"], ["192.168.1.8", "11.0.0.1"]),
    ("fd00::/8,127.0.0.1", ["fd12::1", "127.0.0.1"], ["fe80::1", "127.0.0.2"]),
    ("10.0.0.5/24", ["10.0.0.200"], ["10.0.1.1"]),  # host bits are forgiven: the network is meant
])
def test_trusted_proxies_parse_addresses_and_networks(text, inside, outside):
    trusted = Settings.from_env({"TRUSTED_PROXIES": text}).trusted_proxies
    assert all(address in trusted for address in inside)
    assert not any(address in trusted for address in outside)
    assert "not-an-address" not in trusted and None not in trusted


def test_trusted_proxies_default_to_none():
    trusted = Settings.from_env({}).trusted_proxies
    assert not trusted and "127.0.0.1" not in trusted


@pytest.mark.parametrize("value, fragment", [
    ("*", "is not an IP address or network"), ("proxy.internal", "is not an IP address or network"),
    ("10.0.0.1,10.0.0.300", "'10.0.0.300'"), ("0.0.0.0/0", "would trust every address"),
    ("::/0", "would trust every address"),
])
def test_trusted_proxies_refuse_nonsense_and_trusting_everyone(value, fragment):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"TRUSTED_PROXIES": value})
    assert str(err.value).startswith(f"TRUSTED_PROXIES={value!r}") and fragment in str(err.value)


SECRETS = {"DATABASE_URL": "postgresql://app:db-pass-7731@db.internal:5432/app",
           "DATABASE_READ_URL": "postgresql://app:replica-pass-6642@replica.internal:5432/app",
           "DASHBOARD_COOKIE_KEY": "cookie-key-5519-0123456789", "DASHBOARD_ADMIN_PASSWORD": "admin-pass-4410",
           "DASHBOARD_VIEWER_PASSWORD": "viewer-pass-8820",
           "CACHE_ALERT_WEBHOOK_URL": "https://hooks.example.invalid/services/T0/B0/webhook-3390"}
SECRET_MARKERS = ("db-pass-7731", "6642", "5519", "4410", "8820", "3390")


def test_every_secret_setting_is_in_the_attack_list():
    assert {s.name for s in SETTINGS if s.secret} == set(SECRETS)


def test_secrets_never_show_in_a_repr_or_a_dump():
    secrets = SECRETS
    settings = Settings.from_env(secrets)
    for shown in (repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())):
        assert not any(marker in shown for marker in SECRET_MARKERS), shown
    assert settings.secret("database_url") == secrets["DATABASE_URL"]
    assert settings.secret("admin_password") == "admin-pass-4410"
    assert Settings.from_env({}).secret("cookie_key") is None


def test_each_setting_is_declared_once_and_listed_in_order():
    fields = [f for f in Settings.model_fields.values() if f.json_schema_extra]
    names = [f.validation_alias for f in fields]
    assert names == [s.name for s in SETTINGS] and len(set(names)) == len(names)
    assert all(s.meaning for s in SETTINGS)


def test_the_config_command_shows_that_a_secret_is_set_never_its_value(monkeypatch):
    from click.testing import CliRunner

    from cachelib import config
    from cachelib.__main__ import cli

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_cached", None)
    try:
        shown = CliRunner().invoke(cli, ["config"]).output
    finally:
        monkeypatch.setattr(config, "_cached", None)
    assert not any(marker in shown for marker in SECRET_MARKERS), shown
    assert all(f"{name}" in shown for name in SECRETS) and shown.count("(set)") == len(SECRETS)
