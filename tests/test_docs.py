"""The README documents every public SQL function and every CLI command."""

import psycopg

from cachelib.config import PROJECT_ROOT
from tests.test_cli import all_commands

README = (PROJECT_ROOT / "README.md").read_text()


def test_every_public_cache_function_and_direct_twin_is_documented(db_url):
    with psycopg.connect(db_url) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT routine_name FROM information_schema.routines WHERE routine_schema = 'public' "
            "AND (routine_name LIKE '%cache%' OR routine_name IN ('get_expert_sessions_with_stats', "
            "'get_product_performance'))")]
    missing = [n for n in names if f"`{n}(" not in README]
    assert not missing, f"public functions missing from README: {missing}"


def test_every_cli_command_is_documented():
    missing = [" ".join(path) for path in all_commands() if f"python -m cachelib {' '.join(path)}" not in README
               and not _documented_as_group_member(path)]
    assert not missing, f"commands missing from README: {missing}"


def _documented_as_group_member(path):
    # "db start / db stop / ..." rows list siblings after the first with their group prefix only.
    return len(path) == 2 and f"`{path[0]} {path[1]}`" in README
