"""A plain (non-editable) `pip install .` gives a working `pgcache`: the wheel carries the package, and the
dashboard, its pages, the migrations and the Streamlit config as data files; run from another folder, the
installed command migrates a database, lists the catalog, and its dashboard script runs.

The wheel is built from a copy of the project's files (so the checkout gets no build/ folder) with pip's
build isolation (setuptools from the package index, as any user's pip does). The throwaway environment
borrows the test environment's dependencies through a .pth file, so nothing but the wheel is installed.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from cachelib.config import PROJECT_ROOT

SHIPPED = ["pyproject.toml", "requirements.txt", "requirements-dev.txt", "dashboard.py", "cachelib", "pages", "sql",
           ".streamlit/config.toml", "ext"]


def run(*args, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-2000:])
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment with the project's wheel installed in it (not editable)."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    for name in SHIPPED:
        origin, target = PROJECT_ROOT / name, source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.so"))
        else:
            shutil.copy2(origin, target)
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(work / "wheels"), cwd=source)
    wheel = next((work / "wheels").glob("pgcache_admin-*.whl"))
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=work)
    run(sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q",
        str(wheel), cwd=work)
    venv_site = next((venv / "lib").glob("python3.*/site-packages"))
    (venv_site / "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_installs_the_app_files_where_the_package_finds_them(installed, tmp_path):
    shown = run(str(installed / "bin" / "python"), "-c",
                "import cachelib, cachelib.config as c; print(cachelib.__file__); print(c.PROJECT_ROOT)",
                cwd=tmp_path).stdout.split()
    assert shown[0].startswith(str(installed))  # the installed copy, not the checkout
    app = Path(shown[1])
    assert app == installed / "share" / "pgcache-admin"
    assert (app / "dashboard.py").is_file() and (app / "pages" / "management.py").is_file()
    assert (app / ".streamlit" / "config.toml").is_file()
    assert sorted(p.name for p in (app / "sql" / "migrations").glob("*.sql")) == \
        sorted(p.name for p in (PROJECT_ROOT / "sql" / "migrations").glob("*.sql"))
    # the optional C hit path's source, for `pgcache fast-hits build` on the database's host
    shipped = run(str(installed / "bin" / "python"), "-c",
                  "from cachelib import fasthits; print(all((fasthits.SOURCE / f).is_file() "
                  "for f in fasthits.SOURCE_FILES))", cwd=tmp_path).stdout.strip()
    assert shipped == "True"


def test_the_installed_command_migrates_and_lists_the_catalog_from_any_folder(installed, pg18, tmp_path):
    url = pg18.empty_database("packaging")
    env = {"DATABASE_URL": url, "PYTHONPATH": ""}
    pgcache = str(installed / "bin" / "pgcache")
    migrations = len(list((PROJECT_ROOT / "sql" / "migrations").glob("*.sql")))
    assert f"Applied {migrations} migration(s)" in run(pgcache, "migrate", cwd=tmp_path, env=env).stdout
    listed = run(pgcache, "cache", "list", cwd=tmp_path, env=env).stdout
    assert "expert_sessions (guide)" in listed and "product_performance (guide)" in listed
    assert "cleanup" in run(pgcache, "maintenance", "--help", cwd=tmp_path, env=env).stdout


def test_the_installed_dashboard_script_runs(installed, tmp_path):
    app = installed / "share" / "pgcache-admin"
    script = ("from cachelib import auth, config\n"
              "auth.ensure_credentials(config.settings())\n"  # what setup does first
              "from streamlit.testing.v1 import AppTest\n"
              f"at = AppTest.from_file({str(app / 'dashboard.py')!r}, default_timeout=60)\n"
              "at.run()\n"
              "assert not at.exception, [e.value for e in at.exception]\n"
              "print('errors:', [e.value for e in at.error])\n"
              "print('login form' if at.text_input else 'no form')\n")
    env = {"DASHBOARD_AUTH_FILE": str(tmp_path / "auth.yaml"), "DASHBOARD_COOKIE_KEY": "packaging-test-cookie-key-0123",
           "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "PYTHONPATH": ""}
    shown = run(str(installed / "bin" / "python"), "-c", script, cwd=tmp_path, env=env).stdout
    assert "login form" in shown, shown
