"""Command line: python -m cachelib COMMAND [--help].

Every command calls the same cachelib functions as the dashboard and the API;
errors print one line naming the cause and exit non-zero, never a traceback.
"""

from __future__ import annotations

import functools
import json
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
        with db.connect(settings.database_url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        click.echo(f"DATABASE_URL {db.describe_url(settings.database_url)}: reachable, PostgreSQL {version}")
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
@click.option("--scale", type=click.Choice(["small", "full"]), default="small", show_default=True,
              help="small: seconds, for trying it out and tests; full: 1M sessions and 1M orders for benchmarks.")
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


def _progress_bar(label: str, total: int):
    return click.progressbar(length=total, label=label, file=sys.stderr)


def main():
    try:
        config.settings()
    except CacheError as exc:
        _fail(str(exc), code=2)
    cli(prog_name="python -m cachelib")


if __name__ == "__main__":
    main()
