"""No secret in the repository, the logs, the audit trail or an error message."""

import logging
import secrets
import subprocess

import psycopg
from fastapi.testclient import TestClient

from cachelib import apikeys, auth
from cachelib.api import create_app
from cachelib.config import PROJECT_ROOT, Settings
from cachelib.db import Database, unavailable_error
from cachelib.maintenance import Actor, Maintenance
from tests.test_cli import run_cli


def tracked_files_containing(needle: str) -> list[str]:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout
    hits = []
    for name in filter(None, files.split("\0")):
        path = PROJECT_ROOT / name
        if path.is_file() and needle in path.read_text(errors="ignore"):
            hits.append(name)
    return hits


def test_passwords_and_keys_stay_out_of_repo_logs_and_database(db_url, tmp_path, caplog):
    password = "pw-" + secrets.token_urlsafe(12)
    config = Settings.from_env({"DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml"),
                                "DASHBOARD_ADMIN_PASSWORD": password, "DASHBOARD_COOKIE_KEY": "ck-" + "z" * 30})
    database = Database(db_url)
    caplog.set_level(logging.DEBUG)
    auth.ensure_credentials(config)
    key = apikeys.create_key("secret-test", "admin", database)
    client = TestClient(create_app(database))
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/admin/cache/metrics", headers=headers).status_code == 200
    assert client.post("/api/admin/cache/maintenance?action=cleanup", headers=headers).status_code == 200
    assert client.get("/api/admin/cache/metrics", headers={"Authorization": f"Bearer {key}x"}).status_code == 401
    Maintenance(database).health_check(Actor("alice", "admin", "test"))

    for secret in (password, key, "ck-" + "z" * 30):
        assert secret not in caplog.text
        assert tracked_files_containing(secret) == []
    assert password not in (tmp_path / "auth.yaml").read_text()  # only its bcrypt hash
    with psycopg.connect(db_url) as conn:
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM cache_private.api_keys t").fetchone()[0]
        audit = conn.execute("SELECT string_agg(t::text, ' ') FROM cache_private.maintenance_audit t").fetchone()[0]
    assert key not in dump and key not in audit and key.split("_")[-1] not in dump


def test_database_passwords_never_reach_error_messages():
    url = "postgresql://app:S3cretPassw0rd@127.0.0.1:9/db"
    message = str(unavailable_error(url, OSError("connection refused")))
    assert "S3cretPassw0rd" not in message and "127.0.0.1" in message
    result = run_cli("status", env={"DATABASE_URL": url, "CACHE_CONNECT_TIMEOUT": "2s"})
    assert result.returncode == 1 and "S3cretPassw0rd" not in result.stderr + result.stdout


def test_no_credentials_file_or_data_directory_is_tracked():
    files = subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in files if f.startswith(".data/") or f.endswith("auth.yaml") or "secrets.toml" in f]
