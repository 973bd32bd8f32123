-- Read functions for the dashboard, API and CLI. Each aggregates in SQL and
-- rolls up pending hit events first, so counts are exact.

CREATE FUNCTION cache_private.check_bucket(p_bucket text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = '' AS $$
BEGIN
  IF p_bucket IS NULL OR p_bucket NOT IN ('hour', 'day', 'week') THEN
    RAISE EXCEPTION 'bucket must be hour, day or week, got %', COALESCE(pg_catalog.quote_literal(pg_catalog.left(p_bucket, 50)), 'NULL')
      USING ERRCODE = '22023';
  END IF;
END
$$;

CREATE FUNCTION public.get_cache_metrics_overview()
RETURNS TABLE (cache_name text, entries bigint, live_entries bigint, expired_entries bigint,
               entries_with_hits bigint, avg_hits numeric, total_bytes bigint,
               hit_rate_today numeric, hit_rate_7d numeric, hit_rate_30d numeric,
               load_reduction_30d numeric, calls_30d bigint, fallbacks_7d bigint, last_cleanup_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := cache_private.cache_now();
  v_day timestamptz := pg_catalog.date_trunc('day', v_now);
BEGIN
  PERFORM cache_private.try_rollup();
  RETURN QUERY
  WITH names AS (
    SELECT c.cache_name FROM cache_private.caches c
  ), entries AS (
    SELECT q.cache_name,
           count(*) FILTER (WHERE q.data IS NOT NULL) AS entries,
           count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at > v_now) AS live,
           count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now) AS expired,
           count(*) FILTER (WHERE q.data IS NOT NULL AND q.hit_count > 0) AS with_hits,
           round(avg(q.hit_count) FILTER (WHERE q.data IS NOT NULL), 2) AS avg_hits,
           COALESCE(sum(q.size_bytes), 0)::bigint AS bytes
    FROM public.query_cache q GROUP BY q.cache_name
  ), today AS (SELECT * FROM cache_private.window_stats(v_day, v_now + interval '1 hour')),
     week AS (SELECT * FROM cache_private.window_stats(v_now - interval '7 days', v_now + interval '1 hour')),
     month AS (SELECT * FROM cache_private.window_stats(v_now - interval '30 days', v_now + interval '1 hour'))
  SELECT n.cache_name,
         COALESCE(e.entries, 0), COALESCE(e.live, 0), COALESCE(e.expired, 0), COALESCE(e.with_hits, 0),
         COALESCE(e.avg_hits, 0), COALESCE(e.bytes, 0),
         t.hit_rate, w.hit_rate, m.hit_rate, m.load_reduction,
         m.hits + m.misses + m.fallbacks, w.fallbacks,
         (SELECT max(l.cleanup_time) FROM public.cache_cleanup_log l)
  FROM names n
  LEFT JOIN entries e USING (cache_name)
  LEFT JOIN today t USING (cache_name)
  LEFT JOIN week w USING (cache_name)
  LEFT JOIN month m USING (cache_name)
  ORDER BY n.cache_name;
END
$$;
COMMENT ON FUNCTION public.get_cache_metrics_overview() IS
  'One row per cache: entries, sizes, hit rate today / 7 d / 30 d, load reduction, fallbacks, last cleanup.';

CREATE FUNCTION public.get_top_cache_entries(
  p_limit integer DEFAULT 50, p_order_by text DEFAULT 'hits',
  p_cache_name text DEFAULT NULL, p_search text DEFAULT NULL)
RETURNS TABLE (cache_key text, cache_name text, hit_count bigint, size_bytes integer,
               created_at timestamptz, expires_at timestamptz, age_seconds double precision,
               expires_in_seconds double precision, compute_ms double precision,
               time_saved_ms double precision, last_hit_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := cache_private.cache_now();
  v_order text;
BEGIN
  IF p_limit IS NULL OR p_limit < 1 OR p_limit > 10000 THEN
    RAISE EXCEPTION 'p_limit must be from 1 to 10000, got %', COALESCE(p_limit::text, 'NULL') USING ERRCODE = '22023';
  END IF;
  IF p_order_by IS NULL OR p_order_by NOT IN ('hits', 'size', 'age', 'expires', 'compute', 'saved', 'key') THEN
    RAISE EXCEPTION 'p_order_by must be one of hits, size, age, expires, compute, saved, key; got %',
      COALESCE(pg_catalog.quote_literal(pg_catalog.left(p_order_by, 50)), 'NULL') USING ERRCODE = '22023';
  END IF;
  IF p_cache_name IS NOT NULL THEN
    PERFORM cache_private.check_cache_name(p_cache_name);
  END IF;
  IF p_search IS NOT NULL AND pg_catalog.length(p_search) > 200 THEN
    RAISE EXCEPTION 'p_search must be at most 200 characters' USING ERRCODE = '22023';
  END IF;
  PERFORM cache_private.try_rollup();
  -- The order is one of the whitelisted column expressions above, spliced in so the
  -- planner can use an index (expires, key) or a plain top-N sort; the derived
  -- columns are computed for the returned rows only.
  v_order := CASE p_order_by
    WHEN 'hits' THEN 'q.hit_count DESC' WHEN 'size' THEN 'q.size_bytes DESC'
    WHEN 'compute' THEN 'q.compute_ms DESC' WHEN 'saved' THEN 'q.hit_count * q.compute_ms DESC'
    WHEN 'age' THEN 'q.created_at' WHEN 'expires' THEN 'q.expires_at' ELSE 'q.cache_key' END;
  RETURN QUERY EXECUTE pg_catalog.format($q$
    SELECT t.cache_key, t.cache_name, t.hit_count, t.size_bytes, t.created_at, t.expires_at,
           EXTRACT(epoch FROM $4 - t.created_at)::double precision,
           EXTRACT(epoch FROM t.expires_at - $4)::double precision,
           t.compute_ms, t.hit_count * t.compute_ms, t.last_hit_at
    FROM (
      SELECT q.cache_key, q.cache_name, q.hit_count, q.size_bytes, q.created_at, q.expires_at, q.compute_ms,
             q.last_hit_at
      FROM public.query_cache q
      WHERE q.data IS NOT NULL
        AND ($1::text IS NULL OR q.cache_name = $1)
        -- strpos, not LIKE: a search for "%%" or "_" means those characters.
        AND ($2::text IS NULL OR pg_catalog.strpos(pg_catalog.lower(q.cache_key), pg_catalog.lower($2)) > 0)
      ORDER BY %s, q.cache_key
      LIMIT $3) t
    ORDER BY %s, t.cache_key$q$, v_order, pg_catalog.replace(v_order, 'q.', 't.'))
  USING p_cache_name, p_search, p_limit, v_now;
END
$$;
COMMENT ON FUNCTION public.get_top_cache_entries(integer, text, text, text) IS
  'Live and expired entries (not tombstones) ordered by hits, size, age, expires, compute, saved or key.';

CREATE FUNCTION public.get_cache_hit_rate_series(
  p_days integer DEFAULT 30, p_bucket text DEFAULT 'day', p_cache_name text DEFAULT NULL)
RETURNS TABLE (bucket timestamptz, cache_name text, hits bigint, misses bigint, fallbacks bigint,
               hit_rate numeric, avg_hit_ms numeric, avg_miss_ms numeric)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := cache_private.cache_now();
BEGIN
  PERFORM cache_private.check_days(p_days);
  PERFORM cache_private.check_bucket(p_bucket);
  IF p_cache_name IS NOT NULL THEN
    PERFORM cache_private.check_cache_name(p_cache_name);
  END IF;
  PERFORM cache_private.try_rollup();
  RETURN QUERY
  SELECT pg_catalog.date_trunc(p_bucket, s.bucket) AS b, s.cache_name,
         sum(s.hits)::bigint, sum(s.misses)::bigint, sum(s.fallbacks)::bigint,
         round(100.0 * sum(s.hits) / NULLIF(sum(s.hits) + sum(s.misses) + sum(s.fallbacks), 0), 2),
         round((sum(s.hit_ms_total) / NULLIF(sum(s.hits), 0))::numeric, 3),
         round((sum(s.miss_ms_total) / NULLIF(sum(s.misses), 0))::numeric, 3)
  FROM cache_private.cache_stats_hourly s
  WHERE s.bucket >= v_now - pg_catalog.make_interval(days => p_days)
    AND (p_cache_name IS NULL OR s.cache_name = p_cache_name)
  GROUP BY 1, 2
  ORDER BY 1, 2;
END
$$;
COMMENT ON FUNCTION public.get_cache_hit_rate_series(integer, text, text) IS
  'Hits, misses, fallbacks, hit rate and mean hit/miss time per cache per hour, day or week.';

CREATE FUNCTION public.get_cache_load_reduction_series(p_days integer DEFAULT 30, p_bucket text DEFAULT 'day')
RETURNS TABLE (bucket timestamptz, compute_ms_spent double precision, compute_ms_saved double precision,
               load_reduction numeric)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := cache_private.cache_now();
BEGIN
  PERFORM cache_private.check_days(p_days);
  PERFORM cache_private.check_bucket(p_bucket);
  PERFORM cache_private.try_rollup();
  RETURN QUERY
  SELECT pg_catalog.date_trunc(p_bucket, s.bucket) AS b,
         sum(s.compute_ms_spent), sum(s.compute_ms_saved),
         round((100.0 * sum(s.compute_ms_saved) / NULLIF(sum(s.compute_ms_saved) + sum(s.compute_ms_spent), 0))::numeric, 2)
  FROM cache_private.cache_stats_hourly s
  WHERE s.bucket >= v_now - pg_catalog.make_interval(days => p_days)
  GROUP BY 1
  ORDER BY 1;
END
$$;
COMMENT ON FUNCTION public.get_cache_load_reduction_series(integer, text) IS
  'Database load reduction per bucket: share of direct-query time avoided by hits.';

CREATE FUNCTION public.get_cache_size_distribution()
RETURNS TABLE (size_class text, lower_bytes bigint, entries bigint, total_bytes bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  WITH classes(position, size_class, lower_bytes) AS (VALUES
    (0, 'under 1 KB', 0::bigint), (1, '1-10 KB', 1024), (2, '10-100 KB', 10240),
    (3, '100 KB-1 MB', 102400), (4, '1-10 MB', 1048576), (5, 'over 10 MB', 10485760)
  ), counted AS (  -- one pass over the entries
    SELECT CASE WHEN size_bytes < 1024 THEN 0 WHEN size_bytes < 10240 THEN 1 WHEN size_bytes < 102400 THEN 2
                WHEN size_bytes < 1048576 THEN 3 WHEN size_bytes < 10485760 THEN 4 ELSE 5 END AS position,
           count(*) AS entries, sum(size_bytes)::bigint AS total_bytes
    FROM public.query_cache WHERE data IS NOT NULL
    GROUP BY 1
  )
  SELECT c.size_class, c.lower_bytes, COALESCE(n.entries, 0), COALESCE(n.total_bytes, 0)
  FROM classes c LEFT JOIN counted n USING (position)
  ORDER BY c.lower_bytes
$$;
COMMENT ON FUNCTION public.get_cache_size_distribution() IS
  'Number and bytes of entries per size class (under 1 KB ... over 10 MB).';

CREATE FUNCTION public.record_cache_fallback(p_cache_name text, p_reason text) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  PERFORM cache_private.check_cache_name(p_cache_name);
  INSERT INTO cache_private.cache_events (event_at, cache_name, kind, reason)
  VALUES (cache_private.cache_now(), p_cache_name, 'fallback', pg_catalog.left(COALESCE(p_reason, 'unknown'), 200));
END
$$;
COMMENT ON FUNCTION public.record_cache_fallback(text, text) IS
  'Records that the application served a call of this cache from the direct query, and why.';

CREATE FUNCTION public.get_cache_fallback_usage(p_days integer DEFAULT 7)
RETURNS TABLE (day date, cache_name text, fallbacks bigint, calls bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
#variable_conflict use_column
DECLARE
  v_now timestamptz := cache_private.cache_now();
BEGIN
  PERFORM cache_private.check_days(p_days);
  PERFORM cache_private.try_rollup();
  RETURN QUERY
  SELECT (s.bucket AT TIME ZONE 'UTC')::date, s.cache_name, sum(s.fallbacks)::bigint,
         sum(s.hits + s.misses + s.fallbacks)::bigint
  FROM cache_private.cache_stats_hourly s
  WHERE s.bucket >= v_now - pg_catalog.make_interval(days => p_days)
  GROUP BY 1, 2
  ORDER BY 1, 2;
END
$$;
COMMENT ON FUNCTION public.get_cache_fallback_usage(integer) IS
  'Fallbacks to direct queries per UTC day and cache, with total calls for scale.';
