"""Command line: python -m cachelib COMMAND [--help].

Every command calls the same cachelib functions as the dashboard and the API;
errors print one line naming the cause and exit non-zero, never a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from cachelib import config, db
from cachelib.errors import CacheError


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def friendly_errors(func):
    """Turn our own errors into one clear line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except CacheError as exc:
            _fail(str(exc))

    return wrapper


def emit(data, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        click.echo(text if text is not None else data)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """pgcache-admin: PostgreSQL query-result cache and its admin tools."""


# --- database lifecycle -------------------------------------------------------

@cli.group("db")
def db_group():
    """Start, stop and locate the embedded PostgreSQL server."""


def _embedded_dir():
    settings = config.settings()
    if settings.database_url:
        _fail("DATABASE_URL is set, so the embedded server is not used; unset it to manage the embedded one")
    return settings.data_dir


@db_group.command("start")
@friendly_errors
def db_start():
    """Start the embedded server (no-op when it already runs)."""
    data_dir = _embedded_dir()
    before = db.embedded_status(data_dir)
    status = db.start_embedded(data_dir)
    if before.running:
        click.echo(f"already running (data kept) in {status.data_dir}")
    else:
        click.echo(f"started PostgreSQL in {status.data_dir}")
    click.echo(status.uri)


@db_group.command("stop")
@friendly_errors
def db_stop():
    """Stop the embedded server; its data stays in the data directory."""
    data_dir = _embedded_dir()
    if db.stop_embedded(data_dir):
        click.echo(f"stopped PostgreSQL in {data_dir}")
    else:
        click.echo(f"not running ({data_dir})")


@db_group.command("status")
@friendly_errors
def db_status():
    """Say whether the database is reachable (embedded or DATABASE_URL)."""
    settings = config.settings()
    if settings.database_url:
        with db.connect(settings.secret("database_url")) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        click.echo(f"DATABASE_URL {db.describe_url(settings.secret('database_url'))}: reachable, PostgreSQL {version}")
        return
    status = db.embedded_status(settings.data_dir)
    state = "running" if status.running else ("stopped" if status.initialized else "not initialized")
    click.echo(f"embedded PostgreSQL in {status.data_dir}: {state}")
    if not status.running:
        sys.exit(3)


@db_group.command("url")
@friendly_errors
def db_url():
    """Print the connection URI (starts the embedded server if needed)."""
    click.echo(db.database_url())


# --- schema ------------------------------------------------------------------

@cli.command("migrate")
@friendly_errors
def migrate_cmd():
    """Apply pending migrations from sql/migrations, each in its own transaction."""
    from cachelib import migrate

    report = migrate.apply(db.database_url())
    click.echo(report.describe())


# --- demo data ----------------------------------------------------------------

@cli.group("demo")
def demo_group():
    """Demo schema data and demo traffic."""


@demo_group.command("load")
@click.option("--scale", type=click.Choice(["small", "demo", "full"]), default="small", show_default=True,
              help="small: 40 experts and 60 products, for tests; demo: 400 experts, 600 products and 20,000 "
                   "sessions and orders each, what make run loads; full: 1M sessions and 1M orders for benchmarks.")
@click.option("--force", is_flag=True, help="Load even if the demo tables already hold data (adds more rows).")
@friendly_errors
def demo_load(scale: str, force: bool):
    """Fill experts, expert_sessions, products and orders with generated data."""
    from cachelib import demo

    url = db.database_url()
    if not force and demo.has_data(url):
        click.echo("demo tables already hold data; nothing loaded (use --force to add more)")
        return
    counts = demo.load(url, scale, progress=_progress_bar)
    click.echo("loaded " + ", ".join(f"{n:,} {table}" for table, n in counts.items()))


@demo_group.command("traffic")
@click.option("--days", type=click.IntRange(1, 400), default=35, show_default=True,
              help="How many days of history to replay, ending now.")
@friendly_errors
def demo_traffic(days: int):
    """Replay realistic traffic through the real cached functions (moves the SQL clock)."""
    from cachelib import demo

    report = demo.traffic(db.database_url(), days, progress=_progress_bar)
    click.echo(f"replayed {days} days: {report.calls:,} calls, {report.writes:,} writes, "
               f"{report.cleanups} cleanups in {report.seconds:.1f} s; {report.live_entries:,} live entries")


# --- one-step setup and serving (make run) --------------------------------------

@cli.command("setup")
@click.option("--demo/--no-demo", default=None,
              help="Load demo data and replay demo traffic. Default: yes on the embedded server, "
                   "no with DATABASE_URL (your own database is never filled with demo rows unless asked).")
@friendly_errors
def setup_cmd(demo: bool | None):
    """Everything make run needs: database, migrations, demo data and traffic, dashboard logins."""
    from cachelib import auth, migrate

    settings = config.settings()
    url = db.database_url(settings)
    where = db.describe_url(url) if settings.database_url else f"embedded PostgreSQL in {settings.data_dir}"
    click.echo(f"database: {where}")
    click.echo(migrate.apply(url).describe())
    if demo if demo is not None else not settings.database_url:
        _setup_demo(url)
    else:
        click.echo("demo data: skipped (DATABASE_URL is set; pass --demo to load it there)")
    created = auth.ensure_credentials(settings)
    if created:
        click.secho("Dashboard logins (shown once; stored hashed in " f"{settings.auth_file}):", bold=True)
        given = {"admin": settings.secret("admin_password"), "viewer": settings.secret("viewer_password")}
        for user, password in created:
            # A password the operator chose is theirs already; only generated ones are shown.
            shown = f"(as set in DASHBOARD_{user.upper()}_PASSWORD)" if given.get(user) == password else password
            click.echo(f"  {user:8s} {shown}")
    else:
        click.echo(f"dashboard logins: as created earlier (hashed in {settings.auth_file}); "
                   "delete that file to make new ones")


def _setup_demo(url: str) -> None:
    """Demo rows when the demo tables are empty, then demo traffic once, over those rows only."""
    from cachelib import catalog, demo
    from cachelib.maintenance import Actor, Maintenance

    loaded_now = False
    if not demo.has_data(url):
        counts = demo.load(url, demo.SETUP_SCALE, progress=_progress_bar)
        click.echo("demo data: " + ", ".join(f"{n:,} {table}" for table, n in counts.items()))
        loaded_now = True
    # The replay writes a few rows to the source tables: only ever over demo rows.
    if loaded_now or (demo.is_demo(url) and not demo.has_traffic(url)):
        report = demo.traffic(url, 35, progress=_progress_bar)
        click.echo(f"demo traffic: {report.calls:,} calls over 35 days in {report.seconds:.1f} s; "
                   f"{report.live_entries:,} live entries")
        setup_actor = Actor("setup", "admin", "cli")
        for cache in catalog.caches(db.get_database(url)):
            if cache.callable:
                Maintenance(db.get_database(url)).prewarm(setup_actor, cache.name)


@cli.command("serve")
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@friendly_errors
def serve_cmd(port: int, host: str):
    """Start the dashboard (Streamlit) on PORT."""
    import os
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            _fail(f"port {port} is already in use; stop what runs there or use: make run PORT={port + 1}")
    click.secho(f"Dashboard: http://localhost:{port}  (log in as admin or viewer; Ctrl+C stops it)", bold=True)
    os.execvp(sys.executable, [sys.executable, "-m", "streamlit", "run", str(config.PROJECT_ROOT / "dashboard.py"),
                               *_streamlit_flags(), "--server.port", str(port), "--server.address", host])


def _streamlit_flags() -> list[str]:
    """The project's .streamlit/config.toml as command-line flags: Streamlit reads that file only from the
    working directory, and an installed pgcache may be started from anywhere."""
    import tomllib

    path = config.PROJECT_ROOT / ".streamlit" / "config.toml"
    if not path.is_file():
        return []
    flags = []
    for section, values in tomllib.loads(path.read_text(encoding="utf-8")).items():
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags += [f"--{section}.{key}", text]
    return flags


# --- status and maintenance -------------------------------------------------------

@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def status_cmd(as_json: bool):
    """Print the cache overview and the Week 1 / Month 1 target status."""
    from cachelib import queries

    overview = queries.overview()
    targets = queries.target_status()
    if as_json:
        emit({"overview": overview.to_dict("records"), "targets": targets.to_dict("records")}, True)
        return
    click.echo(_status_text(overview.to_dict("records"), targets.to_dict("records")))


@cli.command("review")
@click.option("--month", metavar="YYYY-MM", help="The month to review (UTC); default: the last full month.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the daily rows per cache to this CSV file.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the self-contained HTML report (charts included, opens offline) to this file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def review_cmd(month: str | None, csv_path: str | None, html_path: str | None, as_json: bool):
    """The monthly review: targets, load, top entries, invalidations, cleanups, fallbacks, health."""
    from cachelib import review

    data = review.build(review.parse_month(month) if month else None)
    if csv_path:
        _write(csv_path, review.to_csv(data))
    if html_path:
        from cachelib import report

        _write(html_path, report.to_html(data))
    if as_json:
        emit(review.to_dict(data), True)
    else:
        click.echo(_review_text(data))


def _write(path: str, text: str) -> None:
    """Write an export whole or not at all: a half-written report is worse than none."""
    import os
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, encoding="utf-8",
                                         suffix=".part") as part:
            part.write(text)
        os.replace(part.name, path)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")
    click.echo(f"wrote {path}", err=True)


def _review_text(data) -> str:
    """The review as plain tables, in the order of the dashboard's Monthly Review page."""
    from cachelib import review
    from cachelib.formats import fmt_ms

    span = data.period
    per_cache = data.per_cache
    lines = [f"Monthly review: {span.title}, {span.span} (UTC)"
             + (" - demo data" if data.demo_data else ""),
             f"  calls {review.calls(data):,}, load reduction {_percent(review.month_load_reduction(data))}", ""]
    lines += ["Targets", *_table(
        ["TARGET", "CACHE", "WINDOW", "MEASURED", "GOAL", "RESULT"],
        [[row.target, row.cache, row.window, _percent(row.measured), f">{row.goal:g}%", row.result]
         for row in data.targets.itertuples()]), ""]
    lines += ["Top entries by time saved", *(_table(
        ["KEY", "CACHE", "HITS", "CALLS", "TIME SAVED", "DAYS ACTIVE"],
        [[row.cache_key, row.cache_name, _count(row.hits), _count(row.calls), fmt_ms(row.compute_ms_saved),
          _count(row.days_active)] for row in data.top_keys.itertuples()]) if not data.top_keys.empty
        else ["  no calls this month"]), ""]
    lines += ["Invalidations, fallbacks", *_table(
        ["CACHE", "KEYS INVALIDATED", "FALLBACKS", "CALLS"],
        [[row.cache_name, _count(row.keys_invalidated), _count(row.fallbacks), _count(row.calls)]
         for row in per_cache.itertuples()]), ""]
    cleanups = data.cleanups
    lines += [f"Cleanups: {cleanups['cleanups']:,} ({cleanups['by_hand']:,} by hand), "
              f"{cleanups['entries_removed']:,} entries removed, {_size(cleanups['bytes_freed'])} freed", ""]
    lines += [f"Health ({data.health_runs:,} snapshots)", *(_table(
        ["CHECK", "WORST", "NOT OK", "LAST", "RECOMMENDATION"],
        [[row.check_name, row.worst, f"{row.not_ok:,} of {row.runs:,}", row.last_status, row.recommendation or ""]
         for row in data.health.itertuples()]) if not data.health.empty else ["  no health snapshots this month"])]
    return "\n".join(lines)


def _status_text(overview: list[dict], targets: list[dict]) -> str:
    """The overview and the targets as plain tables: full names, units, UTC times."""
    lines = ["Entries", *_table(
        ["CACHE", "ENTRIES", "LIVE", "EXPIRED", "WITH HITS", "SIZE"],
        [[row["cache_name"], _count(row["entries"]), _count(row["live_entries"]), _count(row["expired_entries"]),
          _count(row["entries_with_hits"]), _size(row["total_bytes"])] for row in overview]), ""]
    lines += ["Hit rates and load", *_table(
        ["CACHE", "HIT RATE TODAY", "7 DAYS", "30 DAYS", "LOAD REDUCTION 30 DAYS", "CALLS 30 DAYS",
         "FALLBACKS 7 DAYS"],
        [[row["cache_name"], _percent(row["hit_rate_today"]), _percent(row["hit_rate_7d"]),
          _percent(row["hit_rate_30d"]), _percent(row["load_reduction_30d"]), _count(row["calls_30d"]),
          _count(row["fallbacks_7d"])] for row in overview])]
    cleanups = [row["last_cleanup_at"] for row in overview if _present(row["last_cleanup_at"])]
    lines += ["", f"Last cleanup: {_when(max(cleanups)) if cleanups else 'never'}"]
    for milestone in dict.fromkeys(row["milestone"] for row in targets):
        rows = [row for row in targets if row["milestone"] == milestone]
        lines += ["", f"{milestone} targets, {_when(rows[0]['window_start'])} to {_when(rows[0]['window_end'])}",
                  *_table(["TARGET", "CACHE", "MEASURED", "GOAL", "STATE"],
                          [[row["target"], row["cache_name"], _percent(row["measured"]), f"{row['goal']:g}%",
                            row["state"]] for row in rows])]
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Columns as wide as their widest cell, indented; columns of numbers right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    numeric = [i > 0 and bool(rows) and all(row[i] == "-" or row[i][:1].isdigit() for row in rows)
               for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(cell.rjust(width) if right else cell.ljust(width)
                                for cell, width, right in zip(cells, widths, numeric, strict=True)).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _present(value) -> bool:
    import pandas as pd

    return value is not None and not (not isinstance(value, str) and pd.isna(value))


def _count(value) -> str:
    return f"{int(value):,}" if _present(value) else "-"


def _percent(value) -> str:
    return f"{float(value):.1f}%" if _present(value) else "-"


def _size(value) -> str:
    """Bytes for people: 512 bytes, 12.3 KB, 4.0 MB, 1.2 GB (1 KB = 1,024 bytes)."""
    if not _present(value):
        return "-"
    size = float(value)
    if size < 1024:
        return f"{int(size):,} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            return f"{size:,.1f} {unit}"
    raise AssertionError("unreachable")


def _when(value) -> str:
    """A moment in UTC to the minute, e.g. 2026-11-04 09:30 UTC."""
    from datetime import UTC

    if not _present(value):
        return "-"
    moment = value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _actor() -> object:
    import getpass

    from cachelib.maintenance import Actor

    # Whoever can run this command can reach the database as its owner: an admin.
    return Actor(getpass.getuser(), "admin", "cli")


@cli.group("maintenance")
def maintenance_group():
    """Maintenance actions (for cron: non-zero exit on failure, --json for scripts)."""


def _health_text(result) -> str:
    lines = [result.message]
    for check in result.details["checks"]:
        lines.append(f"  [{check['status']:8s}] {check['check_name']}: {check['value']}")
        if check["status"] != "ok":
            lines.append(f"             -> {check['recommendation']}")
    return "\n".join(lines)


def _stats_text(result) -> str:
    return "\n".join([result.message, *(
        f"  {row['day']}  cleanups={row['cleanups']:<4} removed={row['entries_removed']:<6} "
        f"evicted={row['entries_evicted']:<5} freed={row['bytes_freed']:,} bytes" for row in result.details["days"])])


# How a command prints an action's result without --json (default: its message).
_ACTION_TEXT = {"health_check": _health_text, "cleanup_stats": _stats_text}


def _exit_status(result) -> int:
    """Non-zero when cron should mail someone: a health check that found a critical check."""
    return 1 if result.action == "health_check" and result.details.get("overall") == "critical" else 0


def _action_command(action) -> click.Command:
    """One command from the registry entry ``action`` (cachelib.actions), in its group."""
    from cachelib import actions

    # A default is passed only when there is one: click takes default=None as a value, which would
    # satisfy a required option.
    params: list[click.Parameter] = []
    for p in action.parameters:
        kind = click.IntRange(*p.integer_range) if p.integer_range else str
        if p.argument:
            params.append(click.Argument([p.name], type=kind, required=p.required, metavar=p.placeholder))
        else:
            params.append(click.Option([f"--{p.name}"], help=p.help, required=p.required, type=kind,
                                       multiple=p.multiple, metavar=p.placeholder,
                                       **({"default": p.default, "show_default": True}
                                          if p.default is not None else {})))
    params.append(click.Option(["--json", "as_json"], is_flag=True, help="Machine-readable output."))
    arguments = [f"{p.placeholder}: {p.help}" for p in action.parameters if p.argument]

    @friendly_errors
    def callback(as_json: bool, **given):
        given = {name: list(value) if isinstance(value, tuple) else value for name, value in given.items()}
        result = actions.run(db.get_database(), _actor(), action.name, given)
        emit(result.to_dict(), as_json, _ACTION_TEXT.get(action.name, lambda r: r.message)(result))
        sys.exit(_exit_status(result))

    help_text = action.summary + ("\n\n" + "\n\n".join(arguments) if arguments else "")
    return click.Command(action.command, callback=callback, params=params, help=help_text)


@cli.group("cache")
def cache_group():
    """The catalog of caches: list them, add a function as a cache, remove one, change a duration."""


@cache_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def cache_list_cmd(as_json: bool):
    """Every cache: the function it serves, its wrapper, sources and the duration in effect (and why)."""
    from cachelib import catalog

    rows = catalog.listing(config.settings(), db.get_database())
    lines = [f"{row['cache']}{' (guide)' if row['builtin'] else ''}: {row['description']}\n"
             f"  function {row['function'] or '(wired by hand)'} -> {row['wrapper'] or '-'}\n"
             f"  duration {row['duration']} ({row['duration_source']}); sources {catalog.sources_text(row['sources'])}"
             for row in rows]
    emit({"caches": rows}, as_json, "\n".join(lines) or "no caches")


_GROUPS = {"maintenance": maintenance_group, "cache": cache_group}


def _add_action_commands() -> None:
    from cachelib.actions import REGISTRY

    for action in REGISTRY.values():
        if action.command:
            _GROUPS[action.group].add_command(_action_command(action))


_add_action_commands()


@cli.command("config")
@friendly_errors
def config_cmd():
    """Show every setting, its value in effect and where it comes from."""
    import os

    settings = config.settings()
    for setting in config.SETTINGS:
        value = os.environ.get(setting.name) or setting.default
        if setting.secret and os.environ.get(setting.name):
            shown = "(set)"
        else:
            shown = value if value is not None else "(unset)"
        click.echo(f"{setting.name:32s} {shown!s:24s} {settings.sources[setting.name]:11s} {setting.meaning}")


# --- deployment verification, schedule, candidates (verify.py, schedule.py, candidates.py) ---

@cli.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--allow-writes", is_flag=True,
              help="Also run a cleanup (deletes expired entries, logged) and check that it is logged.")
@click.option("--api", "api_url", metavar="URL", help="Admin API base URL to check, e.g. http://127.0.0.1:8000.")
@click.option("--api-key", metavar="KEY", help="An API key (viewer is enough) for --api.")
@click.option("--dashboard", "dashboard_url", metavar="URL", help="Dashboard URL to check, e.g. http://localhost:8501.")
@friendly_errors
def verify_cmd(as_json: bool, allow_writes: bool, api_url: str | None, api_key: str | None,
               dashboard_url: str | None):
    """Check the deployment: settings, schema, grants, triggers, cache calls, cleanup schedule, API, dashboard.

    One line per check with the fix for each failure; exits 0 only when every required check passes.
    """
    from cachelib import verify

    if api_key and not api_url:
        raise click.UsageError("--api-key needs --api URL")
    checks = verify.run_checks(db.database_url(), allow_writes=allow_writes, api_url=api_url, api_key=api_key,
                               dashboard_url=dashboard_url, config=config.settings())
    ok = verify.all_required_pass(checks)
    if as_json:
        emit({"ok": ok, "summary": verify.summary(checks), "checks": [c.to_dict() for c in checks]}, True)
    else:
        for check in checks:
            click.echo(check.line())
        click.secho(verify.summary(checks), fg="green" if ok else "red", bold=True)
    if not ok:
        sys.exit(1)


@cli.group("schedule")
def schedule_group():
    """Scheduled cleanup and statistics roll-up with pg_cron (or the crontab line without it)."""


def _schedule_or_usage(func, *args):
    from cachelib.errors import InvalidInput

    try:
        return func(*args)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--every / --rollup-every") from None


@schedule_group.command("install")
@click.option("--every", default="hourly", show_default=True,
              help="Cleanup schedule: hourly, daily, 15m, 2h, 30s (pg_cron 1.5+) or a cron expression.")
@click.option("--rollup-every", default="5m", show_default=True, help="Statistics roll-up schedule, same forms.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def schedule_install(every: str, rollup_every: str, as_json: bool):
    """Schedule cleanup_expired_cache() and the statistics roll-up with pg_cron; exits 1 without pg_cron."""
    from cachelib import schedule

    result = _schedule_or_usage(schedule.install, db.database_url(), every, rollup_every)
    if as_json:
        emit(result.to_dict(), True)
    elif result.installed:
        click.echo(result.message)
        for job in result.jobs:
            click.echo(f"  {job.describe()}")
    else:
        click.echo(f"not scheduled: {result.message}")
        click.echo("Instead, add this line to the crontab of the user that runs pgcache-admin (crontab -e):")
        click.echo(f"  {result.crontab}")
    if not result.installed:
        sys.exit(1)


@schedule_group.command("status")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def schedule_status(as_json: bool):
    """The pgcache pg_cron jobs with their last run; exits 1 when a job is missing, failed or late."""
    from cachelib import schedule

    state = schedule.status(db.database_url())
    healthy = (state.available and {schedule.CLEANUP_JOB, schedule.ROLLUP_JOB} <= {
        j.name.split("@")[0] for j in state.jobs} and all(
        j.active and j.last_status != "failed" and not j.late for j in state.jobs))
    if as_json:
        emit({**state.to_dict(), "healthy": healthy}, True)
    else:
        click.echo(state.message)
        for job in state.jobs:
            click.echo(f"  {job.describe()}")
        if not state.available:
            click.echo(f"cleanup from cron instead: {state.crontab}")
    if not healthy:
        sys.exit(1)


@schedule_group.command("remove")
@friendly_errors
def schedule_remove():
    """Unschedule the pgcache pg_cron jobs (cleanup then stops running by itself)."""
    from cachelib import schedule

    removed = schedule.remove(db.database_url())
    click.echo(f"removed: {', '.join(removed)}" if removed else "no pgcache pg_cron jobs to remove")


@cli.command("candidates")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--min-calls", type=click.IntRange(1), default=2, show_default=True,
              help="Only queries called at least this often.")
@click.option("--min-mean-ms", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Only queries taking at least this long per call (cheaper ones are not worth caching).")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def candidates_cmd(limit: int, min_calls: int, min_mean_ms: float, as_json: bool):
    """The most expensive repeated read queries not yet cached (pg_stat_statements); exits 1 without it."""
    from cachelib import candidates

    report = candidates.find_candidates(db.get_database(), limit, min_calls, min_mean_ms)
    emit(report.to_dict(), as_json, candidates.format_report(report))
    if not report.available:
        sys.exit(1)


# --- end deployment verification, schedule, candidates ---------------------------------


def _progress_bar(label: str, total: int):
    return click.progressbar(length=total, label=label, file=sys.stderr)


# --- HTTP API (api.py) ---------------------------------------------------------

@cli.command("api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="Port to listen on.")
@friendly_errors
def api_cmd(host: str, port: int):
    """Serve the admin HTTP API with uvicorn (OpenAPI docs at /docs)."""
    import uvicorn

    from cachelib import api

    api.metrics_require_key()  # a bad API_METRICS_REQUIRE_KEY fails here, with its name, not at the first request
    config.settings()  # and so does any other bad setting (TRUSTED_PROXIES), before uvicorn starts
    click.echo(f"pgcache-admin API on http://{host}:{port} (docs: http://{host}:{port}/docs)", err=True)
    uvicorn.run("cachelib.api:create_app", factory=True, host=host, port=port, log_level="info",
                **api.SERVER_OPTIONS)


def _api_key_actor():
    import getpass

    from cachelib.maintenance import Actor

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "cli"
    # Whoever can run this command reaches the database as its owner: an admin.
    return Actor(user, "admin", "cli")


@cli.group("api-key")
def api_key_group():
    """Create, revoke and list API keys of the HTTP API."""


@api_key_group.command("create")
@click.option("--name", required=True, help="A unique name; it appears in the audit log for every use of the key.")
@click.option("--role", required=True, type=click.Choice(["admin", "viewer"]),
              help="viewer: read metrics; admin: also run maintenance.")
@friendly_errors
def api_key_create(name: str, role: str):
    """Create a key and print it (shown only this once)."""
    from cachelib import apikeys

    key = apikeys.create_key(name, role, actor=_api_key_actor())
    click.echo(key)
    click.secho(f"API key {name!r} ({role}) created. This is the only time the key is shown: store it now; "
                "only its hash is kept. Use it as: Authorization: Bearer <key>", fg="yellow", err=True)


@api_key_group.command("revoke")
@click.option("--name", required=True, help="Name of the key to revoke.")
@friendly_errors
def api_key_revoke(name: str):
    """Revoke a key; it stops working at once."""
    from cachelib import apikeys

    apikeys.revoke_key(name, actor=_api_key_actor())
    click.echo(f"API key {name!r} revoked")


@api_key_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def api_key_list(as_json: bool):
    """List keys (names, roles, prefixes, last use; never the keys themselves)."""
    from cachelib import apikeys

    keys = apikeys.list_keys()
    lines = [f"{'NAME':24s} {'ROLE':7s} {'PREFIX':9s} {'CREATED':20s} {'LAST USED':20s} STATE"]
    for k in keys:
        def when(value):
            return f"{value:%Y-%m-%d %H:%M:%S}" if value else "never"
        state = "active" if k["active"] else f"revoked {when(k['revoked_at'])}"
        lines.append(f"{k['name']:24s} {k['role']:7s} {k['key_prefix']:9s} {when(k['created_at']):20s} "
                     f"{when(k['last_used_at']):20s} {state}")
    emit(keys, as_json, "\n".join(lines) if keys else "no API keys; create one with: "
         "python -m cachelib api-key create --name NAME --role admin|viewer")


# --- end HTTP API (api.py) -----------------------------------------------------


# --- alert webhook (alerts.py) ---------------------------------------------------

@cli.group("alerts")
def alerts_group():
    """Webhook notifications (CACHE_ALERT_WEBHOOK_URL, Slack-compatible) when the overall health changes."""


@alerts_group.command("notify")
@friendly_errors
def alerts_notify():
    """Tell the webhook the overall status of the last recorded health run if it changed since it was last
    told (run it from cron after the cleanup); exits 1 when the webhook did not take it, and the next run
    sends it again."""
    from cachelib import alerts

    click.echo(alerts.notify().message)


@alerts_group.command("test")
@friendly_errors
def alerts_test():
    """Post a test message to the webhook; exits 1 when it is unset or did not take the message."""
    from cachelib import alerts

    click.echo(alerts.send_test())


# --- end alert webhook (alerts.py) -----------------------------------------------


# --- the optional C hit path (fasthits.py) ----------------------------------------

@cli.group("fast-hits")
def fast_hits_group():
    """The optional C hit path (extension pgcache_hit): build it on the database's host, then enable it."""


@fast_hits_group.command("status")
@friendly_errors
def fast_hits_status():
    """Say whether pgcache_hit is built on the server and whether the cached functions use it."""
    from cachelib import fasthits

    click.echo(fasthits.status(db.database_url()).describe())


@fast_hits_group.command("build")
@click.option("--pg-config", type=click.Path(dir_okay=False, exists=True),
              help="The server's pg_config (default: the embedded server's, else pg_config on PATH).")
@friendly_errors
def fast_hits_build(pg_config: str | None):
    """Compile pgcache_hit and install it into the server pg_config names (run it on the database's host)."""
    from pathlib import Path

    from cachelib import fasthits

    if pg_config is None:
        pg_config = fasthits.server_pg_config(db.database_url(), embedded=not config.settings().database_url)
    fasthits.build_and_install(Path(pg_config) if pg_config else None)
    click.echo(f"built and installed {fasthits.EXTENSION} with {pg_config}; next: python -m cachelib fast-hits enable")


@fast_hits_group.command("enable")
@friendly_errors
def fast_hits_enable():
    """Create pgcache_hit in the database and rewrite every cached function to serve hits from it (superuser)."""
    from cachelib import fasthits

    click.echo(fasthits.enable(db.database_url()).describe())


@fast_hits_group.command("disable")
@friendly_errors
def fast_hits_disable():
    """Forward the hits it counted, drop pgcache_hit and rewrite the cached functions without it (superuser)."""
    from cachelib import fasthits

    click.echo(fasthits.disable(db.database_url()).describe())


# --- end the optional C hit path -------------------------------------------------


def main():
    # The pool retries in the background and logs each failure; one clear line from us is enough.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        config.settings()
    except CacheError as exc:
        _fail(str(exc), code=2)
    cli(prog_name="python -m cachelib")


if __name__ == "__main__":
    main()
