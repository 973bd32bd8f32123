-- Maintenance: cleanup with its log and the size bound, cleanup statistics,
-- the health analysis, optimize, invalidation and the emergency clear.
-- Every write action records an audit row (cache_private.maintenance_audit).

CREATE FUNCTION cache_private.check_days(p_days integer) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
BEGIN
  IF p_days IS NULL OR p_days < 1 OR p_days > 3650 THEN
    RAISE EXCEPTION 'days must be a whole number from 1 to 3650, got %', COALESCE(p_days::text, 'NULL')
      USING ERRCODE = '22023';
  END IF;
END
$$;

CREATE FUNCTION cache_private.check_cache_name(p_cache_name text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = '' AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM cache_private.caches WHERE cache_name = p_cache_name) THEN
    RAISE EXCEPTION 'unknown cache name %; known caches: %', pg_catalog.quote_literal(pg_catalog.left(p_cache_name, 100)),
      (SELECT pg_catalog.string_agg(cache_name, ', ' ORDER BY cache_name) FROM cache_private.caches)
      USING ERRCODE = '22023';
  END IF;
END
$$;

-- Delete what is expired (in batches that skip rows a computation holds), then
-- evict the least useful live entries while the size bound is exceeded.
CREATE FUNCTION cache_private.run_cleanup(p_triggered_by text)
RETURNS public.cache_cleanup_log
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_now timestamptz := cache_private.cache_now();
  v_batch integer;
  v_batch_bytes bigint;
  v_batch_never_hit integer;
  v_removed integer := 0;
  v_bytes bigint := 0;
  v_never_hit integer := 0;
  v_evicted integer := 0;
  v_evicted_bytes bigint := 0;
  v_max_entries bigint := cache_private.setting('max_entries')::bigint;
  v_max_bytes bigint := cache_private.setting('max_total_bytes')::bigint;
  v_live_entries bigint;
  v_live_bytes bigint;
  v_row public.cache_cleanup_log;
BEGIN
  PERFORM cache_private.try_rollup();  -- so "never hit" below is exact
  LOOP
    WITH doomed AS (
      SELECT cache_key FROM public.query_cache
      WHERE expires_at <= v_now
      ORDER BY expires_at
      LIMIT 5000
      FOR UPDATE SKIP LOCKED
    ), gone AS (
      DELETE FROM public.query_cache c USING doomed d
      WHERE c.cache_key = d.cache_key
      RETURNING c.size_bytes, (c.data IS NOT NULL AND c.hit_count = 0) AS never_hit
    )
    SELECT count(*), COALESCE(sum(size_bytes), 0), count(*) FILTER (WHERE never_hit)
    INTO v_batch, v_batch_bytes, v_batch_never_hit FROM gone;
    EXIT WHEN v_batch = 0;
    v_removed := v_removed + v_batch;
    v_bytes := v_bytes + v_batch_bytes;
    v_never_hit := v_never_hit + v_batch_never_hit;
  END LOOP;

  SELECT count(*), COALESCE(sum(size_bytes), 0) INTO v_live_entries, v_live_bytes
  FROM public.query_cache WHERE data IS NOT NULL;
  IF v_live_entries > v_max_entries OR v_live_bytes > v_max_bytes THEN
    -- Least useful first: the least compute time saved so far, then the oldest.
    WITH ranked AS (
      SELECT cache_key, size_bytes,
             row_number() OVER w AS position,
             sum(size_bytes) OVER w AS bytes_so_far
      FROM public.query_cache WHERE data IS NOT NULL
      WINDOW w AS (ORDER BY hit_count * compute_ms, last_hit_at NULLS FIRST, created_at, cache_key)
    ), doomed AS (
      SELECT r.cache_key FROM ranked r
      WHERE r.position <= v_live_entries - v_max_entries
         OR r.bytes_so_far - r.size_bytes < v_live_bytes - v_max_bytes
    ), unlocked AS (
      -- SKIP LOCKED: holding evicted rows while waiting for one a writer holds would deadlock
      -- with that writer's next statement; a row in use is evicted by the next cleanup.
      SELECT q.cache_key FROM public.query_cache q
      WHERE q.cache_key IN (SELECT cache_key FROM doomed)
      FOR UPDATE OF q SKIP LOCKED
    ), gone AS (
      DELETE FROM public.query_cache c USING unlocked d
      WHERE c.cache_key = d.cache_key
      RETURNING c.size_bytes
    )
    SELECT count(*), COALESCE(sum(size_bytes), 0) INTO v_evicted, v_evicted_bytes FROM gone;
  END IF;

  INSERT INTO public.cache_cleanup_log
    (cleanup_time, entries_removed, entries_evicted, never_hit_removed, bytes_freed, duration_ms, triggered_by, details)
  VALUES (v_now, v_removed, v_evicted, v_never_hit, v_bytes + v_evicted_bytes,
          cache_private.elapsed_ms(v_started), p_triggered_by,
          pg_catalog.jsonb_build_object(
            'expired_bytes', v_bytes, 'evicted_bytes', v_evicted_bytes,
            'max_entries', v_max_entries, 'max_total_bytes', v_max_bytes,
            'eviction_reason', CASE
              WHEN v_evicted = 0 THEN NULL
              WHEN v_live_entries > v_max_entries THEN 'entry count above max_entries'
              ELSE 'total size above max_total_bytes' END))
  RETURNING * INTO v_row;
  RETURN v_row;
END
$$;

CREATE FUNCTION cache_private.actor() RETURNS text
LANGUAGE sql STABLE SET search_path = '' AS $$
  SELECT COALESCE(NULLIF(pg_catalog.current_setting('cachelib.actor', true), ''), session_user::text)
$$;

CREATE FUNCTION public.cleanup_expired_cache() RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  v_row public.cache_cleanup_log;
BEGIN
  v_row := cache_private.run_cleanup(cache_private.actor());
  PERFORM cache_private.write_audit('cleanup', '{}'::jsonb, 'ok',
    pg_catalog.jsonb_build_object('entries_removed', v_row.entries_removed, 'entries_evicted', v_row.entries_evicted,
                                  'bytes_freed', v_row.bytes_freed, 'cleanup_log_id', v_row.id),
    v_row.duration_ms);
  RETURN v_row.entries_removed + v_row.entries_evicted;
END
$$;
COMMENT ON FUNCTION public.cleanup_expired_cache() IS
  'Deletes expired entries (and evicts beyond the size bound), logs to cache_cleanup_log, returns entries removed.';

CREATE FUNCTION public.get_cache_cleanup_stats(days integer DEFAULT 7)
RETURNS TABLE (day date, cleanups bigint, entries_removed bigint, entries_evicted bigint,
               never_hit_removed bigint, bytes_freed bigint, avg_duration_ms numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_today date := (cache_private.cache_now() AT TIME ZONE 'UTC')::date;
BEGIN
  PERFORM cache_private.check_days(days);
  RETURN QUERY
  SELECT d::date,
         count(l.id),
         COALESCE(sum(l.entries_removed), 0)::bigint,
         COALESCE(sum(l.entries_evicted), 0)::bigint,
         COALESCE(sum(l.never_hit_removed), 0)::bigint,
         COALESCE(sum(l.bytes_freed), 0)::bigint,
         round(avg(l.duration_ms)::numeric, 2)
  FROM pg_catalog.generate_series(v_today - (days - 1), v_today, interval '1 day') AS d
  LEFT JOIN public.cache_cleanup_log l
    ON l.cleanup_time >= d::date::timestamp AT TIME ZONE 'UTC'
   AND l.cleanup_time < (d::date + 1)::timestamp AT TIME ZONE 'UTC'
  GROUP BY d
  ORDER BY d;
END
$$;
COMMENT ON FUNCTION public.get_cache_cleanup_stats(integer) IS
  'Cleanup log summarized per UTC day for the last `days` days (1..3650), one row per day.';

CREATE FUNCTION public.analyze_cache_health()
RETURNS TABLE (check_name text, value text, status text, recommendation text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := cache_private.cache_now();
  r record;
  v_total bigint;
  v_expired bigint;
  v_share numeric;
  v_last_cleanup timestamptz;
  v_dead numeric;
  v_live numeric;
  v_text text;
  c record;
BEGIN
  PERFORM cache_private.try_rollup();
  -- Every count below in one pass over the entries: this runs on tables of millions of rows.
  SELECT count(*) FILTER (WHERE q.data IS NOT NULL) AS entries,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now) AS expired,
         count(*) FILTER (WHERE q.data IS NULL) AS tombstones,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now AND q.hit_count = 0) AS expired_never_hit,
         count(*) FILTER (WHERE q.invalidated_at > v_now - interval '24 hours'
                            AND q.last_lifetime < q.ttl / 4) AS invalidated_early,
         count(*) FILTER (WHERE q.invalidated_at > v_now - interval '24 hours'
                            AND q.last_lifetime IS NOT NULL) AS invalidated,
         COALESCE(sum(q.size_bytes) FILTER (WHERE q.data IS NOT NULL), 0) AS bytes
  INTO c FROM public.query_cache q;

  -- Hit rate per cache over the last 7 days.
  FOR r IN
    SELECT w.cache_name, w.hit_rate, w.hits + w.misses + w.fallbacks AS calls, c.duration_setting
    FROM cache_private.window_stats(v_now - interval '7 days', v_now + interval '1 hour') w
    JOIN cache_private.caches c USING (cache_name)
    ORDER BY w.cache_name
  LOOP
    check_name := 'hit_rate:' || r.cache_name;
    IF r.calls < 20 THEN
      value := r.calls || ' calls in 7 days'; status := 'ok';
      recommendation := 'Too few calls to judge the hit rate yet.';
    ELSE
      value := r.hit_rate || '% of ' || r.calls || ' calls (7 days)';
      IF r.hit_rate < 25 THEN
        status := 'critical';
      ELSIF r.hit_rate < 50 THEN
        status := 'warning';
      ELSE
        status := 'ok';
      END IF;
      recommendation := CASE WHEN status = 'ok' THEN 'Hit rate is healthy.'
        ELSE 'Hit rate below 50%: raise ' || r.duration_setting
             || ' (e.g. double it) and check how often writes invalidate this cache.' END;
    END IF;
    RETURN NEXT;
  END LOOP;

  -- Expired entries waiting for cleanup (invalidated keys are counted apart).
  v_total := c.entries;
  v_expired := c.expired;
  v_dead := c.tombstones;
  v_share := round(100.0 * v_expired / NULLIF(v_total, 0), 1);
  check_name := 'expired_entries';
  value := v_expired || ' of ' || v_total || ' entries' || COALESCE(' (' || v_share || '%)', '')
           || '; ' || v_dead || ' invalidated keys awaiting cleanup';
  status := CASE WHEN COALESCE(v_share, 0) > 50 THEN 'critical' WHEN COALESCE(v_share, 0) > 20 THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Few expired entries.'
    ELSE 'Run cleanup_expired_cache() now, schedule it hourly, and review invalidation frequency.' END;
  RETURN NEXT;

  -- The largest entries.
  SELECT pg_catalog.string_agg(cache_key || ' (' || pg_catalog.pg_size_pretty(size_bytes::bigint) || ')', ', '
                               ORDER BY size_bytes DESC), max(size_bytes)
  INTO v_text, v_total
  FROM (SELECT cache_key, size_bytes FROM public.query_cache WHERE data IS NOT NULL
        ORDER BY size_bytes DESC LIMIT 3) big;
  check_name := 'largest_entries';
  value := COALESCE(v_text, 'no entries');
  status := CASE WHEN COALESCE(v_total, 0) > 5 * 1024 * 1024 THEN 'critical'
                 WHEN COALESCE(v_total, 0) > 1024 * 1024 THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Entry sizes are reasonable.'
    ELSE 'Entries above 1 MB cost more to fetch: cache per id instead of all rows, or return fewer fields.' END;
  RETURN NEXT;

  -- Cleanup recency.
  SELECT max(cleanup_time) INTO v_last_cleanup FROM public.cache_cleanup_log;
  check_name := 'last_cleanup';
  value := COALESCE(v_last_cleanup::text, 'never');
  status := CASE WHEN v_last_cleanup IS NULL OR v_last_cleanup < v_now - interval '72 hours' THEN 'critical'
                 WHEN v_last_cleanup < v_now - interval '24 hours' THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Cleanup ran in the last 24 hours.'
    ELSE 'Cleanup has not run in 24 hours: run cleanup_expired_cache() and schedule it hourly '
         '(python -m cachelib schedule install, or cron).' END;
  RETURN NEXT;

  -- Scheduled cleanup: the pg_cron job pgcache-cleanup (python -m cachelib schedule install) when
  -- pg_cron lives in this database, else cleanups in the last 24 hours (cron, or pg_cron elsewhere).
  -- Dynamic SQL, so this works where pg_cron is not installed.
  DECLARE
    v_job text;
    v_run_status text;
    v_run_message text;
  BEGIN
    BEGIN
      IF pg_catalog.to_regclass('cron.job') IS NOT NULL THEN
        EXECUTE 'SELECT j.schedule, d.status, d.return_message FROM cron.job j
                 LEFT JOIN LATERAL (SELECT r.status, r.return_message FROM cron.job_run_details r
                   WHERE r.jobid = j.jobid AND r.status IN (''succeeded'', ''failed'')
                   ORDER BY r.runid DESC LIMIT 1) d ON true
                 WHERE j.jobname = ''pgcache-cleanup'' AND j.active LIMIT 1'
          INTO v_job, v_run_status, v_run_message;
      END IF;
    EXCEPTION WHEN insufficient_privilege OR undefined_table OR undefined_column OR invalid_schema_name THEN
      v_job := NULL;
    END;
    check_name := 'cleanup_schedule';
    IF v_job IS NOT NULL THEN
      value := 'pg_cron job pgcache-cleanup [' || v_job || '], last run ' || COALESCE(v_run_status, 'not yet');
      status := CASE WHEN v_run_status = 'failed' THEN 'warning' ELSE 'ok' END;
      recommendation := CASE WHEN status = 'ok' THEN 'Cleanup is scheduled with pg_cron.'
        ELSE 'The last pg_cron cleanup failed (' || COALESCE(pg_catalog.left(v_run_message, 200), 'no message')
             || '): see python -m cachelib schedule status and cron.job_run_details.' END;
    ELSE
      value := 'no pg_cron job pgcache-cleanup; last cleanup ' || COALESCE(v_last_cleanup::text, 'never');
      status := CASE WHEN v_last_cleanup >= v_now - interval '24 hours' THEN 'ok' ELSE 'warning' END;
      recommendation := CASE WHEN status = 'ok' THEN 'Cleanups run (from cron or by hand).'
        ELSE 'Nothing cleaned up in 24 hours: schedule it with python -m cachelib schedule install (pg_cron) '
             'or the crontab line in docs/operations.md.' END;
    END IF;
    RETURN NEXT;
  END;

  -- Dead tuples (bloat) in the cache table.
  SELECT n_dead_tup, n_live_tup INTO v_dead, v_live
  FROM pg_catalog.pg_stat_user_tables WHERE relid = 'public.query_cache'::regclass;
  v_share := round(100.0 * COALESCE(v_dead, 0) / NULLIF(COALESCE(v_live, 0) + COALESCE(v_dead, 0), 0), 1);
  check_name := 'table_bloat';
  value := COALESCE(v_dead, 0) || ' dead rows' || COALESCE(' (' || v_share || '%)', '');
  status := CASE WHEN COALESCE(v_share, 0) > 50 AND v_dead > 1000 THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Autovacuum keeps up.'
    ELSE 'Many dead rows: run optimize_cache() or VACUUM public.query_cache; consider a more aggressive autovacuum.' END;
  RETURN NEXT;

  -- Entries that expired without ever being hit (cached for nothing).
  v_expired := c.expired_never_hit;
  v_total := c.expired;
  v_share := round(100.0 * v_expired / NULLIF(v_total, 0), 1);
  check_name := 'never_hit_before_expiry';
  value := v_expired || ' of ' || v_total || ' expired entries' || COALESCE(' (' || v_share || '%)', '');
  status := CASE WHEN v_total >= 10 AND v_share > 50 THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Most entries are used before they expire.'
    ELSE 'Many entries expire unused: lengthen the duration for keys that are reused, or stop caching one-off keys.' END;
  RETURN NEXT;

  -- Keys whose values were invalidated in well under their duration.
  v_expired := c.invalidated_early;
  v_total := c.invalidated;
  check_name := 'invalidated_early';
  value := v_expired || ' of ' || v_total || ' keys invalidated in 24 h lived under a quarter of their duration';
  status := CASE WHEN v_expired >= 10 AND v_expired * 2 > v_total THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Invalidations leave values time to be reused.'
    ELSE 'Writes invalidate these keys faster than their duration: shorten the duration or cache per id.' END;
  RETURN NEXT;

  -- Fallbacks: the application bypassed the cache because it failed.
  SELECT COALESCE(sum(fallbacks), 0) INTO v_total FROM cache_private.cache_stats_hourly
  WHERE bucket >= v_now - interval '24 hours';
  SELECT reason INTO v_text FROM cache_private.fallback_reasons ORDER BY last_at DESC LIMIT 1;
  check_name := 'fallbacks';
  value := v_total || ' in 24 h' || COALESCE('; last reason: ' || v_text, '');
  status := CASE WHEN v_total > 100 THEN 'critical' WHEN v_total > 0 THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'No cache failures.'
    ELSE 'The cache failed and calls fell back to direct queries: check function permissions, locks and '
         'connectivity (python -m cachelib verify).' END;
  RETURN NEXT;

  -- Size bound usage.
  v_total := c.entries;
  v_expired := c.bytes;
  v_share := round(100.0 * GREATEST(v_total::numeric / cache_private.setting('max_entries')::numeric,
                                    v_expired::numeric / cache_private.setting('max_total_bytes')::numeric), 1);
  check_name := 'size_bound';
  value := v_total || ' entries, ' || pg_catalog.pg_size_pretty(v_expired) || ' (' || v_share || '% of the bound)';
  status := CASE WHEN v_share > 100 THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Within the size bound.'
    ELSE 'Above the size bound: the next cleanup evicts the least useful entries; raise max_entries / '
         'max_total_bytes if this is expected.' END;
  RETURN NEXT;
END
$$;
COMMENT ON FUNCTION public.analyze_cache_health() IS
  'Health checks with status ok/warning/critical and a recommendation for each.';

CREATE FUNCTION public.optimize_cache() RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_now timestamptz := cache_private.cache_now();
  v_cleanup public.cache_cleanup_log;
  v_dropped integer;
  v_dropped_bytes bigint;
  v_result jsonb;
BEGIN
  v_cleanup := cache_private.run_cleanup('optimize_cache by ' || cache_private.actor());
  -- Entries that cost more than they save: never hit after half their lifetime,
  -- or so cheap to compute (< 1 ms) that storing them is pure overhead.
  WITH doomed AS (
    SELECT cache_key FROM public.query_cache
    WHERE data IS NOT NULL AND hit_count = 0
      AND (compute_ms < 1 OR created_at + ttl / 2 < v_now)
    FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM public.query_cache c USING doomed d WHERE c.cache_key = d.cache_key RETURNING c.size_bytes
  )
  SELECT count(*), COALESCE(sum(size_bytes), 0) INTO v_dropped, v_dropped_bytes FROM gone;
  ANALYZE public.query_cache;
  ANALYZE cache_private.cache_stats_hourly;
  v_result := pg_catalog.jsonb_build_object(
    'expired_removed', v_cleanup.entries_removed,
    'evicted', v_cleanup.entries_evicted,
    'unprofitable_removed', v_dropped,
    'bytes_freed', v_cleanup.bytes_freed + v_dropped_bytes,
    'statistics_refreshed', true,
    'cleanup_log_id', v_cleanup.id);
  PERFORM cache_private.write_audit('optimize', '{}'::jsonb, 'ok', v_result, cache_private.elapsed_ms(v_started));
  RETURN v_result;
END
$$;
COMMENT ON FUNCTION public.optimize_cache() IS
  'Cleanup, then drop entries that cost more than they save, then refresh planner statistics; returns what it did.';

CREATE FUNCTION public.invalidate_cache(p_cache_name text DEFAULT NULL, p_cache_key text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_count integer;
  v_cache text;
BEGIN
  IF (p_cache_name IS NULL) = (p_cache_key IS NULL) THEN
    RAISE EXCEPTION 'give exactly one of p_cache_name or p_cache_key' USING ERRCODE = '22023';
  END IF;
  IF p_cache_key IS NOT NULL THEN
    IF pg_catalog.length(p_cache_key) NOT BETWEEN 1 AND 1000 THEN
      RAISE EXCEPTION 'p_cache_key must be 1 to 1000 characters, got %', pg_catalog.length(p_cache_key)
        USING ERRCODE = '22023';
    END IF;
    SELECT cache_name INTO v_cache FROM public.query_cache WHERE cache_key = p_cache_key;
    -- Only keys that exist are marked: a stray key must not add rows.
    v_count := CASE WHEN v_cache IS NULL THEN 0
                    ELSE cache_private.invalidate_keys(v_cache, ARRAY[p_cache_key]) END;
  ELSE
    PERFORM cache_private.check_cache_name(p_cache_name);
    -- The ':all' key first and on its own, as every writer does (0006): otherwise we could hold
    -- keys while waiting for one that a writer's transaction holds, and it for ours (deadlock).
    v_count := (SELECT pg_catalog.count(*) FROM public.query_cache
                WHERE cache_key = p_cache_name || ':all' AND data IS NOT NULL);
    PERFORM cache_private.invalidate_keys(p_cache_name, ARRAY[p_cache_name || ':all']);
    v_count := v_count + cache_private.invalidate_keys(p_cache_name, ARRAY(
      SELECT cache_key FROM public.query_cache WHERE cache_name = p_cache_name AND data IS NOT NULL));
  END IF;
  PERFORM cache_private.write_audit('invalidate',
    pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('cache', p_cache_name, 'key', p_cache_key)),
    'ok', pg_catalog.jsonb_build_object('entries_invalidated', v_count), cache_private.elapsed_ms(v_started));
  RETURN v_count;
END
$$;
COMMENT ON FUNCTION public.invalidate_cache(text, text) IS
  'Marks every entry of one cache (p_cache_name) or one key (p_cache_key) stale; returns how many.';

CREATE FUNCTION public.emergency_clear_cache(p_confirm text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_count integer;
BEGIN
  IF p_confirm IS DISTINCT FROM 'EMERGENCY_CLEAR_CONFIRMED' THEN
    -- The error rolls back any audit row, so the refusal goes to the server log.
    RAISE LOG 'emergency_clear_cache refused for %: wrong or missing confirmation token', cache_private.actor();
    RAISE EXCEPTION 'emergency clear refused: p_confirm must be exactly EMERGENCY_CLEAR_CONFIRMED'
      USING ERRCODE = '22023';
  END IF;
  -- Wait for every transaction writing cache rows to end, then delete with no row waits: deleting
  -- row by row could hold one key while waiting for another a writer holds, and it for ours.
  -- Hits are not blocked (they only read query_cache); misses and invalidations wait for the commit.
  LOCK TABLE public.query_cache IN SHARE ROW EXCLUSIVE MODE;
  DELETE FROM public.query_cache;
  GET DIAGNOSTICS v_count = ROW_COUNT;
  PERFORM cache_private.write_audit('emergency_clear', '{}'::jsonb, 'ok',
    pg_catalog.jsonb_build_object('entries_deleted', v_count), cache_private.elapsed_ms(v_started));
  RETURN v_count;
END
$$;
COMMENT ON FUNCTION public.emergency_clear_cache(text) IS
  'Deletes every cache entry; does nothing unless p_confirm = ''EMERGENCY_CLEAR_CONFIRMED''.';
