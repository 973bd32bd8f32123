-- A health signal an admin can act on, and a history of it.
--
-- analyze_cache_health() (0007) judged shares from any sample: "2 of 3 entries
-- (66.7%)" expired made expired_entries critical in a tiny idle cache, and an
-- idle cache went ok -> warning -> critical -> ok every hour as its entries
-- expired and the hourly cleanup removed them. Now:
--
-- * Every check that judges a share needs a minimum sample before it warns, and
--   its value says so when the sample is smaller ("...; fewer than 100 entries,
--   not judged"). expired_entries judges the entries still there 2 hours after
--   they expired (an hourly cleanup missed them: warning) or 24 hours after
--   (a day of cleanups missed them: critical), not ordinary expiry waiting for
--   the next cleanup.
-- * The thresholds are the constants at the top of the function, in one place;
--   docs/health.md documents each check's threshold and minimum sample.
-- * Counts are written with thousands separators and times in UTC, so a value
--   reads the same whoever ran the check, in whatever TimeZone or locale.
-- * cache_private.health_history keeps one row per check each time the checks
--   are recorded: by every cleanup (scheduled with pg_cron or cron, or by hand;
--   the state the cleanup found, before it removed anything) and by the
--   dashboard's, the API's and the command line's health check action. Every
--   cleanup prunes rows older than the setting health_history_days (400).
--
-- The public functions stay the same 15 with the same signatures; health_history
-- is read by the owner's application only (cachelib/queries.py).

-- --- the history ------------------------------------------------------------------------------

CREATE TABLE cache_private.health_history (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  recorded_at timestamptz NOT NULL,
  source text NOT NULL CHECK (pg_catalog.length(source) BETWEEN 1 AND 100),
  check_name text NOT NULL,
  status text NOT NULL CHECK (status IN ('ok', 'warning', 'critical')),
  value text,
  recommendation text
);
CREATE INDEX health_history_recorded_at_idx ON cache_private.health_history (recorded_at);
COMMENT ON TABLE cache_private.health_history IS
  'One row per health check each time the checks were recorded (every cleanup, every health check action); '
  'pruned by every cleanup to health_history_days.';

ALTER TABLE cache_private.health_history ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.health_history FROM PUBLIC, anon, authenticated, service_role, cache_admin;

INSERT INTO cache_private.settings (name, value, meaning) VALUES
  ('health_history_days', '400',
   'Days of health-check history kept (cache_private.health_history); every cleanup prunes older rows.')
ON CONFLICT (name) DO NOTHING;

-- --- the checks ---------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.analyze_cache_health()
RETURNS TABLE (check_name text, value text, status text, recommendation text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
  -- Every threshold, in one place (docs/health.md explains each). A check that judges a
  -- share is ok until its minimum sample is there, and its value says "not judged".
  c_hit_rate_min_calls constant bigint := 100;         -- calls of the cache in 7 days
  c_hit_rate_warning constant numeric := 50;           -- hit rate below this %: warning
  c_hit_rate_critical constant numeric := 25;          -- hit rate below this %: critical
  c_expired_min_entries constant bigint := 100;        -- entries holding data
  c_expired_grace constant interval := '2 hours';      -- expired longer: an hourly cleanup missed it
  c_expired_warning constant numeric := 20;            -- % of entries expired longer than the grace: warning
  c_expired_critical_age constant interval := '24 hours';  -- expired longer: a day of cleanups missed it
  c_expired_critical constant numeric := 50;           -- % of entries expired longer than that: critical
  c_entry_warning_bytes constant bigint := 1048576;    -- largest entry above 1 MB: warning
  c_entry_critical_bytes constant bigint := 5242880;   -- above 5 MB: critical
  c_cleanup_warning_age constant interval := '24 hours';
  c_cleanup_critical_age constant interval := '72 hours';
  c_bloat_min_dead constant bigint := 1000;            -- dead rows in query_cache
  c_bloat_warning constant numeric := 50;              -- % of the table's rows dead
  c_never_hit_min_expired constant bigint := 100;      -- expired entries
  c_never_hit_warning constant numeric := 50;          -- % of them never hit
  c_invalidated_min_keys constant bigint := 100;       -- keys invalidated in 24 h
  c_invalidated_warning constant numeric := 50;        -- % of them invalidated within a quarter of their duration
  c_fallbacks_critical constant bigint := 100;         -- fallbacks in 24 h above this: critical (any: warning)
  c_size_bound_warning constant numeric := 100;        -- % of max_entries / max_total_bytes
  c_count constant text := 'FM999,999,999,999,999,990';  -- a count with a fixed thousands separator
  v_now timestamptz := cache_private.cache_now();
  r record;
  v_total bigint;
  v_expired bigint;
  v_share numeric;
  v_late_share numeric;
  v_last_cleanup timestamptz;
  v_since timestamptz;  -- the last cleanup, or the deployment when none has run
  v_last_text text;
  v_dead numeric;
  v_live numeric;
  v_text text;
  c record;
BEGIN
  PERFORM cache_private.try_rollup();
  -- Every count below in one pass over the entries: this runs on tables of millions of rows.
  SELECT count(*) FILTER (WHERE q.data IS NOT NULL) AS entries,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now) AS expired,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now - c_expired_grace) AS expired_late,
         count(*) FILTER (WHERE q.data IS NOT NULL
                            AND q.expires_at <= v_now - c_expired_critical_age) AS expired_day,
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
    IF r.calls < c_hit_rate_min_calls THEN
      value := pg_catalog.to_char(r.calls, c_count) || ' calls in 7 days; fewer than '
               || pg_catalog.to_char(c_hit_rate_min_calls, c_count) || ' calls, not judged';
      status := 'ok';
      recommendation := 'Too few calls to judge the hit rate yet.';
    ELSE
      value := r.hit_rate || '% of ' || pg_catalog.to_char(r.calls, c_count) || ' calls (7 days)';
      status := CASE WHEN r.hit_rate < c_hit_rate_critical THEN 'critical'
                     WHEN r.hit_rate < c_hit_rate_warning THEN 'warning' ELSE 'ok' END;
      recommendation := CASE WHEN status = 'ok' THEN 'Hit rate is healthy.'
        ELSE 'Hit rate below ' || c_hit_rate_warning || '%: raise ' || r.duration_setting
             || ' (e.g. double it) and check how often writes invalidate this cache.' END;
    END IF;
    RETURN NEXT;
  END LOOP;

  -- Expired entries waiting for cleanup (invalidated keys are counted apart). Entries that
  -- expired since the last hourly cleanup are ordinary; ones expired for longer than the
  -- grace were missed by a cleanup (warning), ones expired for a day by a day of them (critical).
  v_total := c.entries;
  v_expired := c.expired;
  v_share := round(100.0 * v_expired / NULLIF(v_total, 0), 1);
  check_name := 'expired_entries';
  value := pg_catalog.to_char(v_expired, c_count) || ' of ' || pg_catalog.to_char(v_total, c_count) || ' entries'
           || COALESCE(' (' || v_share || '%)', '') || ' expired';
  IF v_total < c_expired_min_entries THEN
    value := value || '; fewer than ' || pg_catalog.to_char(c_expired_min_entries, c_count)
             || ' entries, not judged';
    status := 'ok';
    recommendation := 'Too few entries to judge; cleanup removes expired entries when it runs.';
  ELSE
    v_late_share := round(100.0 * c.expired_late / v_total, 1);
    v_share := round(100.0 * c.expired_day / v_total, 1);
    value := value || ', ' || pg_catalog.to_char(c.expired_late, c_count) || ' (' || v_late_share
             || '%) more than ' || EXTRACT(EPOCH FROM c_expired_grace)::bigint / 3600 || ' hours ago, '
             || pg_catalog.to_char(c.expired_day, c_count) || ' (' || v_share || '%) more than '
             || EXTRACT(EPOCH FROM c_expired_critical_age)::bigint / 3600 || ' hours ago';
    status := CASE WHEN v_share > c_expired_critical THEN 'critical'
                   WHEN v_late_share > c_expired_warning THEN 'warning' ELSE 'ok' END;
    recommendation := CASE WHEN status = 'ok' THEN 'Cleanup removes expired entries in time.'
      ELSE 'Expired entries are not being removed: run cleanup_expired_cache() now and schedule it hourly '
           '(python -m cachelib schedule install, or cron).' END;
  END IF;
  value := value || '; ' || pg_catalog.to_char(c.tombstones, c_count)
           || CASE WHEN c.tombstones = 1 THEN ' invalidated key' ELSE ' invalidated keys' END || ' awaiting cleanup';
  RETURN NEXT;

  -- The largest entries.
  SELECT pg_catalog.string_agg(cache_key || ' (' || pg_catalog.pg_size_pretty(size_bytes::bigint) || ')', ', '
                               ORDER BY size_bytes DESC), max(size_bytes)
  INTO v_text, v_total
  FROM (SELECT cache_key, size_bytes FROM public.query_cache WHERE data IS NOT NULL
        ORDER BY size_bytes DESC LIMIT 3) big;
  check_name := 'largest_entries';
  value := COALESCE(v_text, 'no entries');
  status := CASE WHEN COALESCE(v_total, 0) > c_entry_critical_bytes THEN 'critical'
                 WHEN COALESCE(v_total, 0) > c_entry_warning_bytes THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Entry sizes are reasonable.'
    ELSE 'Entries above ' || pg_catalog.pg_size_pretty(c_entry_warning_bytes)
         || ' cost more to fetch: cache per id instead of all rows, or return fewer fields.' END;
  RETURN NEXT;

  -- Cleanup recency.
  SELECT max(cleanup_time) INTO v_last_cleanup FROM public.cache_cleanup_log;
  -- No cleanup yet: judged from the deployment, so a deployment a few hours old is not "critical"
  -- (its first scheduled cleanup has not come yet); one never cleaned for days still is.
  BEGIN
    v_since := COALESCE(v_last_cleanup, NULLIF(cache_private.setting('deployed_at'), '')::timestamptz);
  EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
    v_since := NULL;
  END;
  v_last_text := pg_catalog.to_char(v_last_cleanup AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"');
  check_name := 'last_cleanup';
  value := COALESCE(v_last_text || ' (' || CASE
             WHEN v_now - v_last_cleanup < interval '1 minute' THEN 'just now'
             WHEN v_now - v_last_cleanup < interval '2 hours'
               THEN (EXTRACT(EPOCH FROM v_now - v_last_cleanup)::bigint / 60) || ' min ago'
             WHEN v_now - v_last_cleanup < interval '48 hours'
               THEN (EXTRACT(EPOCH FROM v_now - v_last_cleanup)::bigint / 3600) || ' h ago'
             ELSE (EXTRACT(EPOCH FROM v_now - v_last_cleanup)::bigint / 86400) || ' days ago' END
           || ')', 'never');
  status := CASE WHEN v_since IS NULL OR v_since < v_now - c_cleanup_critical_age THEN 'critical'
                 WHEN v_since < v_now - c_cleanup_warning_age THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' AND v_last_cleanup IS NULL
      THEN 'No cleanup yet in a deployment under 24 hours old; schedule it hourly '
           '(python -m cachelib schedule install, or cron).'
    WHEN status = 'ok' THEN 'Cleanup ran in the last 24 hours.'
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
      value := 'no pg_cron job pgcache-cleanup; last cleanup ' || COALESCE(v_last_text, 'never');
      -- Unlike last_cleanup, "never" warns here from the start: nothing shows a schedule exists yet.
      status := CASE WHEN v_last_cleanup >= v_now - c_cleanup_warning_age THEN 'ok' ELSE 'warning' END;
      recommendation := CASE WHEN status = 'ok' THEN 'Cleanups run (from cron or by hand).'
        ELSE 'Nothing cleaned up in 24 hours: schedule it with python -m cachelib schedule install (pg_cron) '
             'or the crontab line in docs/operations.md.' END;
    END IF;
    RETURN NEXT;
  END;

  -- Dead tuples (bloat) in the cache table: a share of the table's rows, judged once there are
  -- enough dead rows to cost anything (autovacuum removes a few on its own).
  SELECT n_dead_tup, n_live_tup INTO v_dead, v_live
  FROM pg_catalog.pg_stat_user_tables WHERE relid = 'public.query_cache'::pg_catalog.regclass;
  v_dead := COALESCE(v_dead, 0);
  v_share := round(100.0 * v_dead / NULLIF(COALESCE(v_live, 0) + v_dead, 0), 1);
  check_name := 'table_bloat';
  value := pg_catalog.to_char(v_dead, c_count) || ' dead rows'
           || COALESCE(' (' || v_share || '% of ' || pg_catalog.to_char(COALESCE(v_live, 0) + v_dead, c_count)
                       || ' rows)', '');
  IF v_dead < c_bloat_min_dead THEN
    value := value || '; judged from ' || pg_catalog.to_char(c_bloat_min_dead, c_count) || ' dead rows';
    status := 'ok';
    recommendation := 'Too few dead rows to matter; autovacuum removes them.';
  ELSE
    status := CASE WHEN v_share > c_bloat_warning THEN 'warning' ELSE 'ok' END;
    recommendation := CASE WHEN status = 'ok' THEN 'Autovacuum keeps up.'
      ELSE 'Many dead rows: run optimize_cache() or VACUUM public.query_cache; consider a more aggressive '
           'autovacuum.' END;
  END IF;
  RETURN NEXT;

  -- Entries that expired without ever being hit (cached for nothing).
  v_expired := c.expired_never_hit;
  v_total := c.expired;
  v_share := round(100.0 * v_expired / NULLIF(v_total, 0), 1);
  check_name := 'never_hit_before_expiry';
  value := pg_catalog.to_char(v_expired, c_count) || ' of ' || pg_catalog.to_char(v_total, c_count)
           || ' expired entries' || COALESCE(' (' || v_share || '%)', '') || ' never hit';
  IF v_total < c_never_hit_min_expired THEN
    value := value || '; fewer than ' || pg_catalog.to_char(c_never_hit_min_expired, c_count)
             || ' expired entries, not judged';
    status := 'ok';
    recommendation := 'Too few expired entries to judge yet.';
  ELSE
    status := CASE WHEN v_share > c_never_hit_warning THEN 'warning' ELSE 'ok' END;
    recommendation := CASE WHEN status = 'ok' THEN 'Most entries are used before they expire.'
      ELSE 'Many entries expire unused: lengthen the duration for keys that are reused, or stop caching '
           'one-off keys.' END;
  END IF;
  RETURN NEXT;

  -- Keys whose values were invalidated in well under their duration.
  v_expired := c.invalidated_early;
  v_total := c.invalidated;
  v_share := round(100.0 * v_expired / NULLIF(v_total, 0), 1);
  check_name := 'invalidated_early';
  value := pg_catalog.to_char(v_expired, c_count) || ' of ' || pg_catalog.to_char(v_total, c_count)
           || ' keys invalidated in 24 h' || COALESCE(' (' || v_share || '%)', '')
           || ' lived under a quarter of their duration';
  IF v_total < c_invalidated_min_keys THEN
    value := value || '; fewer than ' || pg_catalog.to_char(c_invalidated_min_keys, c_count)
             || ' keys, not judged';
    status := 'ok';
    recommendation := 'Too few invalidations to judge yet.';
  ELSE
    status := CASE WHEN v_share > c_invalidated_warning THEN 'warning' ELSE 'ok' END;
    recommendation := CASE WHEN status = 'ok' THEN 'Invalidations leave values time to be reused.'
      ELSE 'Writes invalidate these keys faster than their duration: shorten the duration or cache per id.' END;
  END IF;
  RETURN NEXT;

  -- Fallbacks: the application bypassed the cache because it failed. Every one is a failure,
  -- so there is no minimum sample.
  SELECT COALESCE(sum(fallbacks), 0) INTO v_total FROM cache_private.cache_stats_hourly
  WHERE bucket >= v_now - interval '24 hours';
  SELECT reason INTO v_text FROM cache_private.fallback_reasons ORDER BY last_at DESC LIMIT 1;
  check_name := 'fallbacks';
  value := pg_catalog.to_char(v_total, c_count) || ' in 24 h' || COALESCE('; last reason: ' || v_text, '');
  status := CASE WHEN v_total > c_fallbacks_critical THEN 'critical' WHEN v_total > 0 THEN 'warning' ELSE 'ok' END;
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
  value := pg_catalog.to_char(v_total, c_count) || ' entries, ' || pg_catalog.pg_size_pretty(v_expired)
           || ' (' || v_share || '% of the bound)';
  status := CASE WHEN v_share > c_size_bound_warning THEN 'warning' ELSE 'ok' END;
  recommendation := CASE WHEN status = 'ok' THEN 'Within the size bound.'
    ELSE 'Above the size bound: the next cleanup evicts the least useful entries; raise max_entries / '
         'max_total_bytes if this is expected.' END;
  RETURN NEXT;
END
$$;
COMMENT ON FUNCTION public.analyze_cache_health() IS
  'Health checks with status ok/warning/critical and a recommendation for each; shares are judged only from a '
  'minimum sample (docs/health.md).';

-- Store the checks as they are now, one row per check, and return them in their order.
-- Callers: run_cleanup (source 'cleanup') and the health check action (source 'health check').
CREATE FUNCTION cache_private.record_health(p_source text)
RETURNS TABLE (check_name text, value text, status text, recommendation text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  WITH checks AS (
    SELECT h.check_name, h.value, h.status, h.recommendation, h.n
    FROM public.analyze_cache_health() WITH ORDINALITY AS h(check_name, value, status, recommendation, n)
  ), stored AS (
    INSERT INTO cache_private.health_history (recorded_at, source, check_name, status, value, recommendation)
    SELECT cache_private.cache_now(), p_source, k.check_name, k.status, k.value, k.recommendation
    FROM checks k ORDER BY k.n
    RETURNING id, check_name, value, status, recommendation
  )
  SELECT s.check_name, s.value, s.status, s.recommendation FROM stored s ORDER BY s.id
$$;
REVOKE ALL ON FUNCTION cache_private.record_health(text) FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- --- cleanup records the checks it found and prunes the history ------------------------------------

-- 0012's cleanup, plus: first record the health checks as the cleanup finds them (so the
-- history shows what was waiting, e.g. a late cleanup or entries a cleanup missed), and at
-- the end delete history older than health_history_days. A failure to record is logged and
-- does not stop the cleanup.
CREATE OR REPLACE FUNCTION cache_private.run_cleanup(p_triggered_by text)
RETURNS public.cache_cleanup_log
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
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
  v_stale integer;
  v_pruned bigint;
  v_history_pruned bigint;
  v_max_entries bigint := cache_private.setting('max_entries')::bigint;
  v_max_bytes bigint := cache_private.setting('max_total_bytes')::bigint;
  v_live_entries bigint;
  v_live_bytes bigint;
  v_row public.cache_cleanup_log;
BEGIN
  PERFORM cache_private.try_rollup();  -- so "never hit" below is exact

  BEGIN
    PERFORM cache_private.record_health('cleanup');
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'cleanup: the health checks were not recorded: % (SQLSTATE %)', SQLERRM, SQLSTATE;
  END;

  -- Entries a writer made stale that the roll-up has not marked yet are as good as
  -- expired: mark them, and the loop below deletes them.
  v_stale := cache_private.sweep_stale(true);

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
      -- SKIP LOCKED: a row in use is evicted by the next cleanup.
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

  v_pruned := cache_private.prune_invalidations();

  DELETE FROM cache_private.health_history
  WHERE recorded_at < v_now - pg_catalog.make_interval(
          days => GREATEST(COALESCE(cache_private.setting('health_history_days')::integer, 400), 1));
  GET DIAGNOSTICS v_history_pruned = ROW_COUNT;

  INSERT INTO public.cache_cleanup_log
    (cleanup_time, entries_removed, entries_evicted, never_hit_removed, bytes_freed, duration_ms, triggered_by, details)
  VALUES (v_now, v_removed, v_evicted, v_never_hit, v_bytes + v_evicted_bytes,
          cache_private.elapsed_ms(v_started), p_triggered_by,
          pg_catalog.jsonb_build_object(
            'expired_bytes', v_bytes, 'evicted_bytes', v_evicted_bytes,
            'stale_marked', v_stale, 'invalidations_pruned', v_pruned,
            'health_history_pruned', v_history_pruned,
            'max_entries', v_max_entries, 'max_total_bytes', v_max_bytes,
            'eviction_reason', CASE
              WHEN v_evicted = 0 THEN NULL
              WHEN v_live_entries > v_max_entries THEN 'entry count above max_entries'
              ELSE 'total size above max_total_bytes' END))
  RETURNING * INTO v_row;
  RETURN v_row;
END
$$;
