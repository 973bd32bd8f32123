-- One summary of the entries per cache, at a moment, for every read that needs it.
--
-- 0022 made the admin reads sum maintained counts instead of scanning query_cache. Two rules
-- of that summary were then written out in three places (the overview here, and the
-- dashboard's guide overview and clear-impact queries): an entry is live when it has not
-- expired at the moment of the read (live = entries less those expired by then), and it has
-- been hit when it is not among the never-hit ones. They live here now, once:
--
--   cache_private.entry_summary(p_at)  -- per cache: entries, live and expired entries,
--                                         entries with hits, hits, bytes, and the live
--                                         entries' bytes and compute_ms
--
-- and get_cache_metrics_overview() is restated to read it; cachelib.queries reads it too.

CREATE FUNCTION cache_private.entry_summary(p_at timestamptz)
RETURNS TABLE (cache_name text, entries bigint, live_entries bigint, expired_entries bigint,
               entries_with_hits bigint, hits bigint, bytes bigint, live_bytes bigint, live_compute_ms numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT t.cache_name, t.entries,
         t.entries - COALESCE(x.expired, 0),
         COALESCE(x.expired, 0)::bigint,
         t.entries - t.never_hit,
         t.hits, t.bytes,
         t.bytes - COALESCE(x.expired_bytes, 0),
         COALESCE(t.compute_ms, 0) - COALESCE(x.expired_compute_ms, 0)
  FROM cache_private.entry_totals() t
  LEFT JOIN cache_private.entries_expired_by(p_at) x USING (cache_name)
$$;
REVOKE ALL ON FUNCTION cache_private.entry_summary(timestamptz)
FROM PUBLIC, anon, authenticated, service_role, cache_admin;

CREATE OR REPLACE FUNCTION public.get_cache_metrics_overview()
RETURNS TABLE (cache_name text, entries bigint, live_entries bigint, expired_entries bigint,
               entries_with_hits bigint, avg_hits numeric, total_bytes bigint,
               hit_rate_today numeric, hit_rate_7d numeric, hit_rate_30d numeric,
               load_reduction_30d numeric, calls_30d bigint, fallbacks_7d bigint, last_cleanup_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    SELECT s.cache_name, s.entries, s.live_entries AS live, s.expired_entries AS expired,
           s.entries_with_hits AS with_hits, round(s.hits::numeric / NULLIF(s.entries, 0), 2) AS avg_hits, s.bytes
    FROM cache_private.entry_summary(v_now) s
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
