"""Checks of the environment: settings, durations, the kill switch, credentials and the cookie key."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

from cachelib.config import PROJECT_ROOT, SETTINGS, Settings
from cachelib.errors import CacheError
from cachelib.verify.checks import Check, Run

DURATION_SETTINGS = ("CACHE_EXPERT_SESSIONS_DURATION", "CACHE_ANALYTICS_DURATION", "CACHE_DEFAULT_DURATION")


def environment_checks(run: Run, config: Settings | None) -> Settings:
    group = "environment"
    if config is None:
        try:
            config = Settings.from_env()
        except CacheError as exc:
            run.add(Check("settings parse", group, "fail", str(exc), "correct the variable named above; "
                          "python -m cachelib config lists every setting and its accepted values"))
            config = Settings.from_env({})
            run.add(Check("durations in effect", group, "skipped", "the settings did not parse; defaults used"))
            _credential_checks(run, config)
            return config
    set_here = sorted(name for name, source in config.sources.items() if source == "environment")
    run.add(Check("settings parse", group, "pass",
                  f"{len(SETTINGS)} settings valid ({len(set_here)} from the environment"
                  + (f": {', '.join(set_here)}" if set_here else "") + ")"))
    # Which cache each setting feeds is the catalog's business (database: cache catalog).
    run.add(Check("durations in effect", group, "pass", ", ".join(
        f"{setting} {config.duration_from(setting)} ({config.sources.get(setting, 'default')})"
        for setting in DURATION_SETTINGS)))
    if config.cache_enabled:
        run.add(Check("caching enabled", group, "pass", "CACHE_ENABLED=true"))
    else:
        run.add(Check("caching enabled", group, "fail",
                      "CACHE_ENABLED=false: every call goes straight to the direct query (the kill switch is on)",
                      "unset CACHE_ENABLED (or set it to true) and restart the application when the incident is over",
                      required=False))
    _credential_checks(run, config)
    return config


def _credential_checks(run: Run, config: Settings) -> None:
    group = "environment"
    path = Path(config.auth_file)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        run.add(Check("credentials file", group, "fail", f"{path} does not exist (DASHBOARD_AUTH_FILE)",
                      "python -m cachelib setup creates it and prints the passwords once (or start the dashboard)"))
    except OSError as exc:
        run.add(Check("credentials file", group, "fail", f"cannot read {path}: {exc.strerror}",
                      f"make {path} readable by the user that runs the dashboard"))
    else:
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            run.add(Check("credentials file", group, "fail",
                          f"{path} is accessible by other users (mode {stat.filemode(mode)})", f"chmod 600 {path}"))
        else:
            run.add(Check("credentials file", group, "pass", f"{path} (mode {stat.filemode(mode)})"))
    run.add(_cookie_key_check(config))


def _cookie_key_check(config: Settings) -> Check:
    group, name = "environment", "cookie key"
    if config.cookie_key:
        if len(config.secret("cookie_key")) < 16:
            return Check(name, group, "fail", "DASHBOARD_COOKIE_KEY is shorter than 16 characters",
                         "set DASHBOARD_COOKIE_KEY to a long random value, e.g. python -c "
                         "'import secrets; print(secrets.token_urlsafe(32))'")
        return Check(name, group, "pass", "from DASHBOARD_COOKIE_KEY")
    secrets_file = PROJECT_ROOT / ".streamlit" / "secrets.toml"
    try:
        if tomllib.loads(secrets_file.read_text(encoding="utf-8")).get("cookie_key"):
            return Check(name, group, "pass", f"cookie_key in {secrets_file}")
    except (OSError, tomllib.TOMLDecodeError):
        pass
    path = Path(config.auth_file).parent / "cookie_key"
    try:
        mode = path.stat().st_mode
        present = bool(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        return Check(name, group, "fail", f"no DASHBOARD_COOKIE_KEY and no key file {path}",
                     "start the dashboard once (it creates the file), or set DASHBOARD_COOKIE_KEY "
                     "(the same value on every dashboard replica)")
    except OSError as exc:
        return Check(name, group, "fail", f"cannot read {path}: {exc.strerror}",
                     f"make {path} readable by the dashboard's user only (chmod 600 {path})")
    if not present:
        return Check(name, group, "fail", f"{path} is empty", f"delete {path} and start the dashboard again")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return Check(name, group, "fail", f"{path} is accessible by other users (mode {stat.filemode(mode)})",
                     f"chmod 600 {path}")
    return Check(name, group, "pass", f"{path} (mode {stat.filemode(mode)})")


