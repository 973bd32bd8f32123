-- A caller's session must not steer the cache's functions.
--
-- Whatever a caller can set in its own session reaches inside every function it
-- calls: its settings (SET anything.anything is allowed to everyone), its temporary
-- objects, its isolation level and open transaction. This migration closes what
-- 0012 did not:
--
-- * Temporary types. With search_path = '' PostgreSQL still searches the caller's
--   pg_temp first for relations and types, so CREATE DOMAIN pg_temp.jsonb ... CHECK
--   (pg_temp.evil(VALUE)) ran the caller's function as the owner wherever a body
--   wrote a type name unqualified. Every function now pins
--   search_path = pg_catalog, pg_temp (pg_temp named last is searched last;
--   functions and operators are never looked up there), and the clock, which carries
--   no SET clause so that it can be inlined, qualifies every type name.
-- * The movable clock (cachelib.now) and the acting user (cachelib.actor,
--   cachelib.actor_role) are honoured only in sessions of the owner: anyone else
--   gets the real time and is recorded as the database user they logged in as.
--   Every audit row now also keeps that database user.

-- --- the clock -------------------------------------------------------------------------------

-- No SET clause, so it can be inlined on the hit path; every name is qualified.
-- session_is_owner() runs only when the setting is present, so the hit path pays
-- one setting lookup as before.
CREATE OR REPLACE FUNCTION cache_private.cache_now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
  SELECT CASE
    WHEN COALESCE(pg_catalog.current_setting('cachelib.now', true), '') = '' THEN pg_catalog.now()
    WHEN cache_private.session_is_owner()
      THEN pg_catalog.current_setting('cachelib.now', true)::pg_catalog.timestamptz
    ELSE pg_catalog.now()
  END
$$;
COMMENT ON FUNCTION cache_private.cache_now() IS
  'The cache''s clock: now(), or cachelib.now when the session belongs to the owner (tests, demo replay).';

-- --- the acting user ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION cache_private.actor() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN cache_private.session_is_owner()
              THEN COALESCE(NULLIF(pg_catalog.current_setting('cachelib.actor', true), ''), session_user::text)
              ELSE session_user::text END
$$;

CREATE FUNCTION cache_private.actor_role() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN cache_private.session_is_owner()
              THEN COALESCE(NULLIF(pg_catalog.current_setting('cachelib.actor_role', true), ''), 'sql')
              ELSE 'sql' END
$$;
REVOKE ALL ON FUNCTION cache_private.actor_role() FROM PUBLIC, anon, authenticated, service_role, cache_admin;

ALTER TABLE cache_private.maintenance_audit ADD COLUMN database_user text;
COMMENT ON COLUMN cache_private.maintenance_audit.database_user IS
  'The database user whose session wrote the row (NULL for rows written before this column existed).';

-- Who is acting: the application names its user with SET LOCAL cachelib.actor /
-- cachelib.actor_role; any other session is recorded as its database user.
CREATE OR REPLACE FUNCTION cache_private.write_audit(
  p_action text, p_parameters jsonb, p_outcome text, p_result jsonb, p_duration_ms double precision
) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  INSERT INTO cache_private.maintenance_audit
    (at, actor, actor_role, action, parameters, outcome, result, duration_ms, database_user)
  VALUES (
    cache_private.cache_now(), cache_private.actor(), cache_private.actor_role(),
    p_action, COALESCE(p_parameters, '{}'::jsonb), p_outcome, COALESCE(p_result, '{}'::jsonb),
    COALESCE(p_duration_ms, 0), session_user::text)
$$;

-- --- pin every function's search_path ----------------------------------------------------------

-- Every function of ours that sets a search_path gets pg_catalog first and pg_temp
-- last. The clock, which has no SET clause so that it can be inlined, qualifies every
-- name instead; tests/test_engine_security.py checks that it is the only one.
DO $$
DECLARE
  f regprocedure;
BEGIN
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE (n.nspname = 'cache_private'
           OR (n.nspname = 'public' AND p.proname IN (
             'get_expert_sessions_with_stats', 'get_product_performance',
             'get_expert_sessions_with_stats_cached', 'get_product_performance_cached',
             'cleanup_expired_cache', 'analyze_cache_health', 'get_cache_cleanup_stats', 'optimize_cache',
             'invalidate_cache', 'emergency_clear_cache', 'get_cache_metrics_overview', 'get_top_cache_entries',
             'get_cache_hit_rate_series', 'get_cache_load_reduction_series', 'get_cache_size_distribution',
             'record_cache_fallback', 'get_cache_fallback_usage')))
      AND EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
  LOOP
    EXECUTE pg_catalog.format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f);
  END LOOP;
END
$$;

-- The direct queries' jsonb carries timestamps written in the session's TimeZone (and
-- intervals and floats in its styles): pin them, so a result never depends on who
-- computed it, whether it comes from the cache or from the direct query.
ALTER FUNCTION public.get_expert_sessions_with_stats(bigint)
  SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 1;
ALTER FUNCTION public.get_product_performance(bigint)
  SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres' SET extra_float_digits = 1;
