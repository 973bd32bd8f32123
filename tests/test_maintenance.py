"""Maintenance service: admins only, audited, the emergency token, results the UI/API/CLI can show."""

import psycopg
import pytest

from cachelib import actions
from cachelib.actions import actions_for
from cachelib.db import Database
from cachelib.errors import ConfirmationRequired, InvalidInput, PermissionDenied
from cachelib.maintenance import EMERGENCY_TOKEN, Actor, Maintenance
from cachelib.manager import CacheManager

ADMIN = Actor("alice", "admin", "test")
VIEWER = Actor("victor", "viewer", "test")


@pytest.fixture(scope="module")
def service(db_url):
    return Maintenance(Database(db_url))


@pytest.fixture
def warm(db_url, service):
    manager = CacheManager(service.database)
    manager.expert_sessions()
    manager.expert_sessions(2)
    manager.product_performance()
    return manager


def audit_rows(db_url, action):
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT actor, actor_role, outcome, parameters, result "
                            "FROM cache_private.maintenance_audit WHERE action = %s ORDER BY id", (action,)).fetchall()


def live_entries(db_url):
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM public.query_cache WHERE data IS NOT NULL").fetchone()[0]


@pytest.mark.parametrize("action,call", [
    ("health_check", lambda s: s.health_check(VIEWER)),
    ("cleanup", lambda s: s.cleanup(VIEWER)),
    ("cleanup_stats", lambda s: s.cleanup_stats(VIEWER, 7)),
    ("optimize_cache", lambda s: s.optimize(VIEWER)),
    ("invalidate", lambda s: s.invalidate(VIEWER, cache="expert_sessions")),
    ("emergency_clear", lambda s: s.emergency_clear(VIEWER, EMERGENCY_TOKEN)),
    ("prewarm", lambda s: s.prewarm(VIEWER, "expert_sessions")),
])
def test_viewers_are_refused_everything_and_the_refusal_is_audited(db_url, service, warm, action, call):
    before = live_entries(db_url)
    with pytest.raises(PermissionDenied) as err:
        call(service)
    assert "victor" in str(err.value) and "admin" in str(err.value)
    assert live_entries(db_url) == before
    assert ("victor (test)", "viewer", "refused") in [row[:3] for row in audit_rows(db_url, action)]


def test_actions_for_roles():
    assert "emergency_clear" in actions_for(ADMIN)
    assert actions_for(VIEWER) == []
    with pytest.raises(InvalidInput):
        Actor("mallory", "root")


def test_health_check_returns_every_check_and_the_worst_status(db_url, service, warm):
    result = service.health_check(ADMIN)
    names = {c["check_name"] for c in result.details["checks"]}
    assert {"expired_entries", "largest_entries", "last_cleanup", "table_bloat", "fallbacks"} <= names
    assert result.details["overall"] in ("ok", "warning", "critical")
    assert result.ok and result.message.startswith("Health:")
    assert audit_rows(db_url, "health_check")[-1][:3] == ("alice (test)", "admin", "ok")


def test_cleanup_logs_and_audits(db_url, service, warm):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE public.query_cache SET expires_at = now() - interval '1 minute' "
                     "WHERE cache_key = 'expert_sessions:2'")
    result = service.cleanup(ADMIN)
    assert result.details["entries_removed"] >= 1 and result.details["triggered_by"] == "alice (test)"
    assert "removed" in result.message
    assert audit_rows(db_url, "cleanup")[-1][:3] == ("alice (test)", "admin", "ok")


def test_cleanup_stats_validates_days(service):
    assert len(service.cleanup_stats(ADMIN, 3).details["days"]) == 3
    for bad in (0, 3651, -1, "7", None, True):
        with pytest.raises(InvalidInput):
            service.cleanup_stats(ADMIN, bad)


def test_optimize_reports_what_it_did(db_url, service, warm):
    result = service.optimize(ADMIN)
    assert {"expired_removed", "evicted", "unprofitable_removed", "bytes_freed"} <= set(result.details)
    assert audit_rows(db_url, "optimize")[-1][:3] == ("alice (test)", "admin", "ok")


def test_invalidate_by_cache_and_by_key(db_url, service, warm):
    assert service.invalidate(ADMIN, key="expert_sessions:all").details["entries_invalidated"] == 1
    assert service.invalidate(ADMIN, key="no-such-key").details["entries_invalidated"] == 0
    warm.expert_sessions()
    assert service.invalidate(ADMIN, cache="expert_sessions").details["entries_invalidated"] >= 1
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.query_cache WHERE cache_name = 'expert_sessions' "
                            "AND data IS NOT NULL").fetchone()[0] == 0
    for cache, key in ((None, None), ("expert_sessions", "x"), ("nope", None)):
        with pytest.raises(InvalidInput):
            service.invalidate(ADMIN, cache=cache, key=key)


@pytest.mark.parametrize("token", [None, "", "emergency_clear_confirmed", "EMERGENCY_CLEAR_CONFIRMED ", "yes"])
def test_emergency_clear_refuses_without_the_exact_token(db_url, service, warm, token):
    before = live_entries(db_url)
    assert before > 0
    with pytest.raises(ConfirmationRequired) as err:
        service.emergency_clear(ADMIN, token)
    assert EMERGENCY_TOKEN in str(err.value) and "nothing was deleted" in str(err.value)
    assert live_entries(db_url) == before
    assert audit_rows(db_url, "emergency_clear")[-1][2] == "refused"


def test_emergency_clear_with_the_token_deletes_everything(db_url, service, warm):
    result = service.emergency_clear(ADMIN, EMERGENCY_TOKEN)
    assert result.details["entries_deleted"] >= 3
    assert live_entries(db_url) == 0
    assert audit_rows(db_url, "emergency_clear")[-1][:3] == ("alice (test)", "admin", "ok")


def test_prewarm_fills_a_cache(db_url, service):
    service.emergency_clear(ADMIN, EMERGENCY_TOKEN)
    result = service.prewarm(ADMIN, "product_performance")
    assert result.details["keys_warmed"] >= 1
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.query_cache WHERE cache_key = 'product_performance:all' "
                            "AND data IS NOT NULL").fetchone()[0] == 1
    with pytest.raises(InvalidInput):
        service.prewarm(ADMIN, "nope")


def test_verify_runs_the_read_only_checks_for_admins(db_url, service):
    result = actions.verify_deployment(service, ADMIN)
    names = {c["name"] for c in result.details["checks"]}
    assert {"migrations", "cache functions", "invalidation triggers", "row-level security"} <= names
    assert result.message.startswith("verify:")
    with pytest.raises(PermissionDenied):
        actions.verify_deployment(service, VIEWER)
