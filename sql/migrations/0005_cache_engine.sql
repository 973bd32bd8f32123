-- The engine: one get-or-compute path that every cached function uses.
--
-- Hit:  one primary-key read plus one append to an unlogged event table. No
--       shared row is updated and no durable commit is waited for.
-- Miss: 1. an advisory lock per key, so concurrent misses compute once
--          (the others wait, bounded by compute_lock_timeout_ms, then read);
--       2. the key's row is created if missing and locked (FOR NO KEY UPDATE);
--       3. the direct query runs and the row is updated with the result.
--       An invalidation (0006) upserts the same row, so it either committed
--       before step 2 (and we compute from its data) or it waits for our
--       commit and then marks our result stale. No stale read after commit.
--
-- Adding a cached function: register its cache in cache_private.caches, write
-- a wrapper that builds a key and calls cache_private.get_or_compute with the
-- SQL of its direct query, and add an invalidation trigger on its source
-- tables (0006 shows both). See README "Adding a cached function".

CREATE FUNCTION cache_private.check_duration(p_cache_duration interval) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
BEGIN
  IF p_cache_duration IS NULL OR p_cache_duration <= interval '0' THEN
    RAISE EXCEPTION 'p_cache_duration must be a positive interval such as ''5 minutes'', got %',
      COALESCE(p_cache_duration::text, 'NULL') USING ERRCODE = '22023';
  END IF;
  IF p_cache_duration > interval '366 days' THEN
    RAISE EXCEPTION 'p_cache_duration must be at most 366 days, got %', p_cache_duration USING ERRCODE = '22023';
  END IF;
END
$$;

CREATE FUNCTION cache_private.elapsed_ms(p_since timestamptz) RETURNS double precision
LANGUAGE sql VOLATILE SET search_path = '' AS $$
  SELECT EXTRACT(epoch FROM pg_catalog.clock_timestamp() - p_since)::double precision * 1000
$$;

-- The read of a live entry, shared by the hit path and the re-check after waiting.
CREATE FUNCTION cache_private.read_live(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_now timestamptz, p_started timestamptz
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
  v_data jsonb;
  v_compute_ms double precision;
BEGIN
  SELECT c.data, c.compute_ms INTO v_data, v_compute_ms
  FROM public.query_cache c
  WHERE c.cache_key = p_cache_key
    AND c.data IS NOT NULL
    AND c.expires_at > p_now
    AND c.created_at > p_now - p_cache_duration;  -- honour a caller asking for fresher data than stored
  IF v_data IS NOT NULL THEN
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
    VALUES (p_now, p_cache_name, p_cache_key, 'hit', cache_private.elapsed_ms(p_started), v_compute_ms);
  END IF;
  RETURN v_data;
END
$$;

-- The hit path is written out inline (one statement to read, one to count; the
-- same read and count as cache_private.read_live, which the miss path uses after
-- waiting: change them together) and
-- this function carries no SET clause: a hit is the hot path, and every nested
-- call or GUC swap costs microseconds per call. It is only ever called from the
-- SECURITY DEFINER wrappers below, which pin search_path; every name here is
-- schema-qualified anyway.
CREATE FUNCTION cache_private.get_or_compute(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_compute_sql text
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_now timestamptz := cache_private.cache_now();
  v_data jsonb;
  v_compute_ms double precision;
BEGIN
  IF p_cache_duration IS NULL OR p_cache_duration <= interval '0' OR p_cache_duration > interval '366 days' THEN
    PERFORM cache_private.check_duration(p_cache_duration);  -- raises the precise error
  END IF;

  -- A transaction that has written data behind this key (its invalidation is
  -- queued for its commit, see 0006) must see its own writes: answer from the
  -- data it sees and cache nothing. Read-only callers skip this at no cost.
  IF pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL AND EXISTS (
       SELECT 1 FROM cache_private.pending_invalidations
       WHERE txid = pg_catalog.pg_current_xact_id_if_assigned() AND cache_key = p_cache_key) THEN
    EXECUTE p_compute_sql INTO v_data;
    RETURN v_data;
  END IF;

  SELECT c.data, c.compute_ms INTO v_data, v_compute_ms
  FROM public.query_cache c
  WHERE c.cache_key = p_cache_key
    AND c.data IS NOT NULL
    AND c.expires_at > v_now
    AND c.created_at > v_now - p_cache_duration;  -- honour a caller asking for fresher data than stored
  IF v_data IS NOT NULL THEN
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
    VALUES (v_now, p_cache_name, p_cache_key, 'hit',
            EXTRACT(epoch FROM pg_catalog.clock_timestamp() - v_started) * 1000, v_compute_ms);
    RETURN v_data;
  END IF;
  RETURN cache_private.compute_and_store(p_cache_name, p_cache_key, p_cache_duration, p_compute_sql, v_now,
                                         v_started);
END
$$;

CREATE FUNCTION cache_private.compute_and_store(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_compute_sql text,
  p_now timestamptz, p_started timestamptz
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
  v_data jsonb;
  v_compute_started timestamptz;
  v_compute_ms double precision;
  v_caller_lock_timeout text := pg_catalog.current_setting('lock_timeout');
BEGIN
  -- One computation per key at a time. The first caller takes the key's advisory
  -- lock exclusively and computes; the others wait for it in shared mode, so when
  -- it commits they all read the result at once instead of one after another.
  -- Waiting is bounded by compute_lock_timeout_ms (then the caller falls back).
  PERFORM pg_catalog.set_config('lock_timeout', cache_private.setting('compute_lock_timeout_ms'), true);
  IF NOT pg_catalog.pg_try_advisory_xact_lock(726354, pg_catalog.hashtext(p_cache_key)) THEN
    PERFORM pg_catalog.pg_advisory_xact_lock_shared(726354, pg_catalog.hashtext(p_cache_key));
    -- If the computing caller failed, we compute below without the stampede lock:
    -- upgrading a shared lock that other waiters share could deadlock with them.
  END IF;
  v_data := cache_private.read_live(p_cache_name, p_cache_key, p_cache_duration, p_now, p_started);
  IF v_data IS NOT NULL THEN
    PERFORM pg_catalog.set_config('lock_timeout', v_caller_lock_timeout, true);
    RETURN v_data;  -- another caller computed it while we waited
  END IF;

  -- Claim the row: invalidations of this key now wait for our commit.
  INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at)
  VALUES (p_cache_key, p_cache_name, NULL, '-infinity', p_now)
  ON CONFLICT (cache_key) DO NOTHING;
  PERFORM 1 FROM public.query_cache WHERE cache_key = p_cache_key FOR NO KEY UPDATE;
  PERFORM pg_catalog.set_config('lock_timeout', v_caller_lock_timeout, true);

  v_compute_started := pg_catalog.clock_timestamp();
  EXECUTE p_compute_sql INTO v_data;
  v_compute_ms := cache_private.elapsed_ms(v_compute_started);

  UPDATE public.query_cache SET
    cache_name = p_cache_name,
    data = v_data,
    expires_at = p_now + p_cache_duration,
    created_at = p_now,
    ttl = p_cache_duration,
    hit_count = 0,
    last_hit_at = NULL,
    size_bytes = pg_catalog.pg_column_size(v_data),
    compute_ms = v_compute_ms
  WHERE cache_key = p_cache_key;

  INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
  VALUES (p_now, p_cache_name, p_cache_key, 'miss', cache_private.elapsed_ms(p_started), v_compute_ms);
  RETURN v_data;
END
$$;

CREATE FUNCTION public.get_expert_sessions_with_stats_cached(
  p_expert_id bigint DEFAULT NULL, p_cache_duration interval DEFAULT interval '5 minutes'
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  RETURN cache_private.get_or_compute(
    'expert_sessions',
    'expert_sessions:' || COALESCE(p_expert_id::text, 'all'),
    p_cache_duration,
    pg_catalog.format('SELECT public.get_expert_sessions_with_stats(%L::bigint)', p_expert_id));
END
$$;
COMMENT ON FUNCTION public.get_expert_sessions_with_stats_cached(bigint, interval) IS
  'Cached get_expert_sessions_with_stats: same jsonb, served from query_cache for p_cache_duration.';

CREATE FUNCTION public.get_product_performance_cached(
  p_product_id bigint DEFAULT NULL, p_cache_duration interval DEFAULT interval '15 minutes'
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  RETURN cache_private.get_or_compute(
    'product_performance',
    'product_performance:' || COALESCE(p_product_id::text, 'all'),
    p_cache_duration,
    pg_catalog.format('SELECT public.get_product_performance(%L::bigint)', p_product_id));
END
$$;
COMMENT ON FUNCTION public.get_product_performance_cached(bigint, interval) IS
  'Cached get_product_performance: same jsonb, served from query_cache for p_cache_duration.';

-- Fold the event log into hourly statistics and per-entry hit counts.
-- Claims events with DELETE ... RETURNING, so concurrent roll-ups never count
-- an event twice and events appended meanwhile wait for the next roll-up.
CREATE FUNCTION cache_private.rollup_stats() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
  v_events bigint;
BEGIN
  WITH claimed AS (
    DELETE FROM cache_private.cache_events RETURNING *
  ), hourly AS (
    INSERT INTO cache_private.cache_stats_hourly AS s
      (cache_name, bucket, hits, misses, fallbacks, hit_ms_total, miss_ms_total, compute_ms_spent, compute_ms_saved)
    SELECT cache_name, pg_catalog.date_trunc('hour', event_at, 'UTC'),  -- UTC hours whatever the session's TimeZone
           count(*) FILTER (WHERE kind = 'hit'),
           count(*) FILTER (WHERE kind = 'miss'),
           count(*) FILTER (WHERE kind = 'fallback'),
           COALESCE(sum(elapsed_ms) FILTER (WHERE kind = 'hit'), 0),
           COALESCE(sum(elapsed_ms) FILTER (WHERE kind = 'miss'), 0),
           COALESCE(sum(compute_ms) FILTER (WHERE kind IN ('miss', 'fallback')), 0),
           COALESCE(sum(compute_ms) FILTER (WHERE kind = 'hit'), 0)
    FROM claimed GROUP BY 1, 2
    ON CONFLICT (cache_name, bucket) DO UPDATE SET
      hits = s.hits + EXCLUDED.hits,
      misses = s.misses + EXCLUDED.misses,
      fallbacks = s.fallbacks + EXCLUDED.fallbacks,
      hit_ms_total = s.hit_ms_total + EXCLUDED.hit_ms_total,
      miss_ms_total = s.miss_ms_total + EXCLUDED.miss_ms_total,
      compute_ms_spent = s.compute_ms_spent + EXCLUDED.compute_ms_spent,
      compute_ms_saved = s.compute_ms_saved + EXCLUDED.compute_ms_saved
  ), per_entry AS (
    -- Hits count towards the entry's current lifetime only.
    UPDATE public.query_cache c SET
      hit_count = c.hit_count + k.hits,
      last_hit_at = GREATEST(c.last_hit_at, k.last_hit_at)
    FROM (
      SELECT e.cache_key, count(*) AS hits, max(e.event_at) AS last_hit_at
      FROM claimed e JOIN public.query_cache q ON q.cache_key = e.cache_key
      WHERE e.kind = 'hit' AND e.event_at >= q.created_at AND q.data IS NOT NULL
      GROUP BY e.cache_key
    ) k
    WHERE c.cache_key = k.cache_key
  ), reasons AS (
    INSERT INTO cache_private.fallback_reasons AS f (cache_name, reason, occurrences, last_at)
    SELECT cache_name, COALESCE(reason, 'unknown'), count(*), max(event_at)
    FROM claimed WHERE kind = 'fallback' GROUP BY 1, 2
    ON CONFLICT (cache_name, reason) DO UPDATE SET
      occurrences = f.occurrences + EXCLUDED.occurrences,
      last_at = GREATEST(f.last_at, EXCLUDED.last_at)
  )
  SELECT count(*) INTO v_events FROM claimed;

  DELETE FROM cache_private.cache_stats_hourly
  WHERE bucket < cache_private.cache_now()
                 - pg_catalog.make_interval(days => cache_private.setting('stats_retention_days')::int);
  RETURN v_events;
END
$$;

-- The read functions roll up first so what they show is exact. If the
-- roll-up cannot get a row lock quickly (a long computation holds it), the
-- read goes on with the last roll-up rather than wait.
CREATE FUNCTION cache_private.try_rollup() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = '' SET lock_timeout = '200ms' AS $$
BEGIN
  -- On a read replica or in a read-only transaction the read functions still answer,
  -- with the statistics as of the last roll-up on the primary.
  IF pg_catalog.current_setting('transaction_read_only') = 'on' THEN
    RETURN;
  END IF;
  PERFORM cache_private.rollup_stats();
EXCEPTION WHEN lock_not_available THEN
  RAISE LOG 'cache statistics roll-up skipped: a cache row was locked';
END
$$;

-- Totals over a time window, per cache: the basis of hit rates and targets.
CREATE FUNCTION cache_private.window_stats(p_from timestamptz, p_to timestamptz)
RETURNS TABLE (cache_name text, hits bigint, misses bigint, fallbacks bigint,
               hit_rate numeric, compute_ms_spent double precision, compute_ms_saved double precision,
               load_reduction numeric)
LANGUAGE sql STABLE SET search_path = '' AS $$
  SELECT c.cache_name,
         COALESCE(sum(s.hits), 0)::bigint,
         COALESCE(sum(s.misses), 0)::bigint,
         COALESCE(sum(s.fallbacks), 0)::bigint,
         round(100.0 * sum(s.hits) / NULLIF(sum(s.hits) + sum(s.misses) + sum(s.fallbacks), 0), 2),
         COALESCE(sum(s.compute_ms_spent), 0),
         COALESCE(sum(s.compute_ms_saved), 0),
         round((100.0 * sum(s.compute_ms_saved)
                / NULLIF(sum(s.compute_ms_saved) + sum(s.compute_ms_spent), 0))::numeric, 2)
  FROM cache_private.caches c
  LEFT JOIN cache_private.cache_stats_hourly s
    ON s.cache_name = c.cache_name AND s.bucket >= p_from AND s.bucket < p_to
  GROUP BY c.cache_name
$$;
