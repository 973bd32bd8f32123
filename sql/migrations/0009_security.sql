-- Who may do what.
--   anon           nothing
--   authenticated  the cached and direct functions, the read functions, record_cache_fallback
--   cache_admin    all of the above, maintenance, and direct reads of the cache tables
--   service_role   like cache_admin (Supabase's server-side role)
-- Functions are owned by the migrating role and run as it (SECURITY DEFINER,
-- search_path pinned to ''), so no caller needs rights on the tables.

ALTER TABLE public.query_cache ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.cache_cleanup_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.cache_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.cache_stats_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.fallback_reasons ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.maintenance_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.caches ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.pending_invalidations ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.pending_commits ENABLE ROW LEVEL SECURITY;

CREATE POLICY "cache admins can read cache entries" ON public.query_cache
  FOR SELECT TO cache_admin USING (true);
CREATE POLICY "cache admins can read the cleanup log" ON public.cache_cleanup_log
  FOR SELECT TO cache_admin USING (true);

-- Supabase grants every new table in public to anon and authenticated by default; undo that here.
REVOKE ALL ON public.query_cache, public.cache_cleanup_log FROM PUBLIC, anon, authenticated, service_role;
GRANT SELECT ON public.query_cache, public.cache_cleanup_log TO cache_admin;

DO $$
DECLARE
  f regprocedure;
BEGIN
  -- Every function we created: nobody by default.
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = 'cache_private'
       OR (n.nspname = 'public' AND p.proname IN (
         'get_expert_sessions_with_stats', 'get_product_performance',
         'get_expert_sessions_with_stats_cached', 'get_product_performance_cached',
         'cleanup_expired_cache', 'analyze_cache_health', 'get_cache_cleanup_stats', 'optimize_cache',
         'invalidate_cache', 'emergency_clear_cache', 'get_cache_metrics_overview', 'get_top_cache_entries',
         'get_cache_hit_rate_series', 'get_cache_load_reduction_series', 'get_cache_size_distribution',
         'record_cache_fallback', 'get_cache_fallback_usage'))
  LOOP
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated, service_role, cache_admin', f);
  END LOOP;
END
$$;

-- Reading: every signed-in role.
GRANT EXECUTE ON FUNCTION
  public.get_expert_sessions_with_stats(bigint),
  public.get_product_performance(bigint),
  public.get_expert_sessions_with_stats_cached(bigint, interval),
  public.get_product_performance_cached(bigint, interval),
  public.analyze_cache_health(),
  public.get_cache_cleanup_stats(integer),
  public.get_cache_metrics_overview(),
  public.get_top_cache_entries(integer, text, text, text),
  public.get_cache_hit_rate_series(integer, text, text),
  public.get_cache_load_reduction_series(integer, text),
  public.get_cache_size_distribution(),
  public.record_cache_fallback(text, text),
  public.get_cache_fallback_usage(integer)
TO authenticated, cache_admin, service_role;

-- Maintenance: admins only.
GRANT EXECUTE ON FUNCTION
  public.cleanup_expired_cache(),
  public.optimize_cache(),
  public.invalidate_cache(text, text),
  public.emergency_clear_cache(text)
TO cache_admin, service_role;
