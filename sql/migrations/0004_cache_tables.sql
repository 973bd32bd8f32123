-- The cache's tables.
--
-- query_cache holds one row per key. A row with data IS NULL and
-- expires_at = '-infinity' is a tombstone: the key was invalidated. Tombstones
-- matter: an invalidation takes the row's lock, and a computation in flight
-- holds the same lock, so an invalidation can never be lost behind a slow
-- computation (see 0005_cache_engine.sql).

CREATE TABLE public.query_cache (
  cache_key text PRIMARY KEY,
  cache_name text NOT NULL,
  data jsonb,
  expires_at timestamptz NOT NULL,
  hit_count bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL,
  last_hit_at timestamptz,
  ttl interval,
  size_bytes integer NOT NULL DEFAULT 0,
  compute_ms double precision NOT NULL DEFAULT 0,
  invalidation_count integer NOT NULL DEFAULT 0,
  invalidated_at timestamptz,
  last_lifetime interval
);
CREATE INDEX query_cache_expires_at_idx ON public.query_cache (expires_at);
CREATE INDEX query_cache_cache_name_idx ON public.query_cache (cache_name);
COMMENT ON TABLE public.query_cache IS
  'Cached results. hit_count is exact after cache_private.rollup_stats(), which every read function runs.';

-- The caches that exist, with the setting that sets their duration.
CREATE TABLE cache_private.caches (
  cache_name text PRIMARY KEY,
  duration_setting text NOT NULL,
  description text NOT NULL
);
INSERT INTO cache_private.caches VALUES
  ('expert_sessions', 'CACHE_EXPERT_SESSIONS_DURATION', 'Per-expert session statistics'),
  ('product_performance', 'CACHE_ANALYTICS_DURATION', 'Per-product sales analytics');

-- Every hit, miss and fallback, appended. UNLOGGED: a hit must not wait for a
-- durable commit, and nothing updates a shared row per hit. Rolled up into
-- cache_stats_hourly and query_cache.hit_count by cache_private.rollup_stats().
-- A crash loses the events not yet rolled up (seconds of counts, never data).
CREATE UNLOGGED TABLE cache_private.cache_events (
  event_at timestamptz NOT NULL,
  cache_name text NOT NULL,
  cache_key text,
  kind text NOT NULL CHECK (kind IN ('hit', 'miss', 'fallback')),
  elapsed_ms double precision NOT NULL DEFAULT 0,
  compute_ms double precision NOT NULL DEFAULT 0,
  reason text
);

-- Hourly statistics per cache, kept for stats_retention_days.
-- compute_ms_spent: time spent running the direct query on misses.
-- compute_ms_saved: for each hit, what computing that entry had cost.
CREATE TABLE cache_private.cache_stats_hourly (
  cache_name text NOT NULL,
  bucket timestamptz NOT NULL,
  hits bigint NOT NULL DEFAULT 0,
  misses bigint NOT NULL DEFAULT 0,
  fallbacks bigint NOT NULL DEFAULT 0,
  hit_ms_total double precision NOT NULL DEFAULT 0,
  miss_ms_total double precision NOT NULL DEFAULT 0,
  compute_ms_spent double precision NOT NULL DEFAULT 0,
  compute_ms_saved double precision NOT NULL DEFAULT 0,
  PRIMARY KEY (cache_name, bucket)
);
CREATE INDEX cache_stats_hourly_bucket_idx ON cache_private.cache_stats_hourly (bucket);

-- Why the application fell back to the direct query, counted per reason.
CREATE TABLE cache_private.fallback_reasons (
  cache_name text NOT NULL,
  reason text NOT NULL,
  occurrences bigint NOT NULL,
  last_at timestamptz NOT NULL,
  PRIMARY KEY (cache_name, reason)
);

CREATE TABLE public.cache_cleanup_log (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  cleanup_time timestamptz NOT NULL,
  entries_removed integer NOT NULL,
  entries_evicted integer NOT NULL DEFAULT 0,
  never_hit_removed integer NOT NULL DEFAULT 0,
  bytes_freed bigint NOT NULL,
  duration_ms double precision NOT NULL,
  triggered_by text NOT NULL,
  details jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX cache_cleanup_log_cleanup_time_idx ON public.cache_cleanup_log (cleanup_time);
COMMENT ON TABLE public.cache_cleanup_log IS
  'One row per cleanup: expired entries removed, entries evicted by the size bound, bytes freed, who ran it.';

-- Who did what to the cache, when, with which result.
CREATE TABLE cache_private.maintenance_audit (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL,
  actor text NOT NULL,
  actor_role text NOT NULL,
  action text NOT NULL,
  parameters jsonb NOT NULL DEFAULT '{}'::jsonb,
  outcome text NOT NULL CHECK (outcome IN ('ok', 'refused', 'error')),
  result jsonb NOT NULL DEFAULT '{}'::jsonb,
  duration_ms double precision NOT NULL DEFAULT 0
);
CREATE INDEX maintenance_audit_at_idx ON cache_private.maintenance_audit (at);

-- Who is acting: the application says so with SET LOCAL cachelib.actor / cachelib.actor_role;
-- a direct SQL caller is recorded as its database user.
CREATE FUNCTION cache_private.write_audit(
  p_action text, p_parameters jsonb, p_outcome text, p_result jsonb, p_duration_ms double precision
) RETURNS void
LANGUAGE sql VOLATILE SET search_path = '' AS $$
  INSERT INTO cache_private.maintenance_audit (at, actor, actor_role, action, parameters, outcome, result, duration_ms)
  VALUES (
    cache_private.cache_now(),
    COALESCE(NULLIF(pg_catalog.current_setting('cachelib.actor', true), ''), session_user::text),
    COALESCE(NULLIF(pg_catalog.current_setting('cachelib.actor_role', true), ''), 'sql'),
    p_action, COALESCE(p_parameters, '{}'::jsonb), p_outcome, COALESCE(p_result, '{}'::jsonb),
    COALESCE(p_duration_ms, 0))
$$;
