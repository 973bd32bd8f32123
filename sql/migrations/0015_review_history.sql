-- History kept for the monthly review.
--
-- The review of a past month must show that month's figures, not today's. Hourly
-- statistics per cache already exist (cache_stats_hourly); this adds what the review
-- also needs and nothing kept it:
--
-- * key_activity_daily: calls and compute time per UTC day and key, rolled up with
--   the hourly statistics. Bounded: once a day is over (a grace day later) only its
--   top key_history_keys_per_day keys per cache by time saved are kept and the rest
--   folds into one '(other keys)' row; rows older than stats_retention_days go.
-- * invalidations_daily: keys invalidated by writes per UTC day and cache, counted
--   when cleanup prunes the invalidation log (rows still in the log are counted by
--   the reader), kept for stats_retention_days.
--
-- The compaction runs from the roll-up at most once an hour (history_state).

INSERT INTO cache_private.settings (name, value, meaning) VALUES
  ('key_history_keys_per_day', '100',
   'Keys per cache and UTC day kept in the per-key history once the day is over (the rest is one row).')
ON CONFLICT (name) DO NOTHING;

CREATE TABLE cache_private.key_activity_daily (
  day date NOT NULL,
  cache_name text NOT NULL,
  cache_key text NOT NULL,
  hits bigint NOT NULL DEFAULT 0,
  misses bigint NOT NULL DEFAULT 0,
  fallbacks bigint NOT NULL DEFAULT 0,
  compute_ms_spent double precision NOT NULL DEFAULT 0,
  compute_ms_saved double precision NOT NULL DEFAULT 0,
  PRIMARY KEY (day, cache_name, cache_key)
);
COMMENT ON TABLE cache_private.key_activity_daily IS
  'Calls and compute time per UTC day and cache key, for the monthly review (compacted, retained).';

CREATE TABLE cache_private.invalidations_daily (
  day date NOT NULL,
  cache_name text NOT NULL,
  keys_invalidated bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (day, cache_name)
);
COMMENT ON TABLE cache_private.invalidations_daily IS
  'Keys invalidated by writes per UTC day and cache, counted when the invalidation log is pruned.';

CREATE TABLE cache_private.history_state (
  name text PRIMARY KEY,
  at timestamptz NOT NULL
);

ALTER TABLE cache_private.key_activity_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.invalidations_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.history_state ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.key_activity_daily, cache_private.invalidations_daily, cache_private.history_state
  FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- Keep the top keys of each finished day; fold the rest; drop what is past retention.
-- Idempotent: running it again changes nothing.
CREATE FUNCTION cache_private.compact_history() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_now timestamptz := cache_private.cache_now();
  v_today date := (v_now AT TIME ZONE 'UTC')::date;
  v_keep integer := cache_private.setting('key_history_keys_per_day')::integer;
  -- The first UTC day kept: dates here are UTC days, whatever the session's TimeZone.
  v_first_kept date := v_today - cache_private.setting('stats_retention_days')::integer;
BEGIN
  -- Once an hour: the claim is a row lock, so two roll-ups never compact at once.
  INSERT INTO cache_private.history_state AS s (name, at) VALUES ('history_compacted', v_now)
  ON CONFLICT (name) DO UPDATE SET at = EXCLUDED.at
  WHERE s.at <= EXCLUDED.at - interval '1 hour' OR s.at > EXCLUDED.at;  -- a clock moved back also runs it
  IF NOT FOUND THEN
    RETURN;
  END IF;

  WITH overfull AS (
    -- Finished days (a grace day later) holding more keys than kept; any age, so events
    -- rolled up days late still fold. An index-only count over a bounded table.
    SELECT day, cache_name FROM cache_private.key_activity_daily
    WHERE day < v_today - 1
    GROUP BY day, cache_name HAVING count(*) > v_keep + 1
  ), ranked AS (
    SELECT d.day, d.cache_name, d.cache_key,
           row_number() OVER (PARTITION BY d.day, d.cache_name
                              ORDER BY d.compute_ms_saved DESC, d.hits DESC, d.cache_key) AS position
    FROM cache_private.key_activity_daily d JOIN overfull o USING (day, cache_name)
    WHERE d.cache_key <> '(other keys)'
  ), folded AS (
    DELETE FROM cache_private.key_activity_daily d
    USING ranked r
    WHERE r.position > v_keep
      AND d.day = r.day AND d.cache_name = r.cache_name AND d.cache_key = r.cache_key
    RETURNING d.*
  )
  INSERT INTO cache_private.key_activity_daily AS d
    (day, cache_name, cache_key, hits, misses, fallbacks, compute_ms_spent, compute_ms_saved)
  SELECT day, cache_name, '(other keys)', sum(hits), sum(misses), sum(fallbacks),
         sum(compute_ms_spent), sum(compute_ms_saved)
  FROM folded GROUP BY day, cache_name
  ON CONFLICT (day, cache_name, cache_key) DO UPDATE SET
    hits = d.hits + EXCLUDED.hits,
    misses = d.misses + EXCLUDED.misses,
    fallbacks = d.fallbacks + EXCLUDED.fallbacks,
    compute_ms_spent = d.compute_ms_spent + EXCLUDED.compute_ms_spent,
    compute_ms_saved = d.compute_ms_saved + EXCLUDED.compute_ms_saved;

  DELETE FROM cache_private.key_activity_daily WHERE day < v_first_kept;
  DELETE FROM cache_private.invalidations_daily WHERE day < v_first_kept;
END
$$;

CREATE OR REPLACE FUNCTION cache_private.rollup_stats() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_events bigint;
BEGIN
  WITH claimed AS (
    DELETE FROM cache_private.cache_events e
    USING (SELECT ctid FROM cache_private.cache_events FOR UPDATE SKIP LOCKED) mine
    WHERE e.ctid = mine.ctid
    RETURNING e.*
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
    FROM claimed WHERE NOT entry_only GROUP BY 1, 2
    ON CONFLICT (cache_name, bucket) DO UPDATE SET
      hits = s.hits + EXCLUDED.hits,
      misses = s.misses + EXCLUDED.misses,
      fallbacks = s.fallbacks + EXCLUDED.fallbacks,
      hit_ms_total = s.hit_ms_total + EXCLUDED.hit_ms_total,
      miss_ms_total = s.miss_ms_total + EXCLUDED.miss_ms_total,
      compute_ms_spent = s.compute_ms_spent + EXCLUDED.compute_ms_spent,
      compute_ms_saved = s.compute_ms_saved + EXCLUDED.compute_ms_saved
  ), entry_hits AS (
    -- Hits count towards the entry's current lifetime only.
    SELECT e.cache_key, count(*) AS hits, min(e.event_at) AS first_hit_at, max(e.event_at) AS last_hit_at
    FROM claimed e JOIN public.query_cache q ON q.cache_key = e.cache_key
    WHERE e.kind = 'hit' AND e.event_at >= q.created_at AND q.data IS NOT NULL
    GROUP BY e.cache_key
  ), free AS (
    SELECT q.cache_key FROM public.query_cache q
    WHERE q.cache_key IN (SELECT cache_key FROM entry_hits)
    FOR NO KEY UPDATE SKIP LOCKED
  ), per_entry AS (
    UPDATE public.query_cache c SET
      hit_count = c.hit_count + k.hits,
      last_hit_at = GREATEST(c.last_hit_at, k.last_hit_at)
    FROM entry_hits k JOIN free f USING (cache_key)
    -- Rechecked on the row's newest version: hits of an entry replaced meanwhile are dropped.
    WHERE c.cache_key = k.cache_key AND c.data IS NOT NULL AND c.created_at <= k.first_hit_at
  ), kept AS (
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms, entry_only)
    SELECT e.event_at, e.cache_name, e.cache_key, e.kind, e.elapsed_ms, e.compute_ms, true
    FROM claimed e
    WHERE e.kind = 'hit' AND e.cache_key IN (SELECT cache_key FROM entry_hits EXCEPT SELECT cache_key FROM free)
  ), per_key_day AS (
    -- The monthly review's per-key history: activity per UTC day and key (compacted later).
    INSERT INTO cache_private.key_activity_daily AS d
      (day, cache_name, cache_key, hits, misses, fallbacks, compute_ms_spent, compute_ms_saved)
    SELECT (event_at AT TIME ZONE 'UTC')::date, cache_name, COALESCE(cache_key, '(no key)'),
           count(*) FILTER (WHERE kind = 'hit'),
           count(*) FILTER (WHERE kind = 'miss'),
           count(*) FILTER (WHERE kind = 'fallback'),
           COALESCE(sum(compute_ms) FILTER (WHERE kind IN ('miss', 'fallback')), 0),
           COALESCE(sum(compute_ms) FILTER (WHERE kind = 'hit'), 0)
    FROM claimed WHERE NOT entry_only GROUP BY 1, 2, 3
    ON CONFLICT (day, cache_name, cache_key) DO UPDATE SET
      hits = d.hits + EXCLUDED.hits,
      misses = d.misses + EXCLUDED.misses,
      fallbacks = d.fallbacks + EXCLUDED.fallbacks,
      compute_ms_spent = d.compute_ms_spent + EXCLUDED.compute_ms_spent,
      compute_ms_saved = d.compute_ms_saved + EXCLUDED.compute_ms_saved
  ), reasons AS (
    INSERT INTO cache_private.fallback_reasons AS f (cache_name, reason, occurrences, last_at)
    SELECT cache_name, COALESCE(reason, 'unknown'), count(*), max(event_at)
    FROM claimed WHERE kind = 'fallback' AND NOT entry_only GROUP BY 1, 2
    ON CONFLICT (cache_name, reason) DO UPDATE SET
      occurrences = f.occurrences + EXCLUDED.occurrences,
      last_at = GREATEST(f.last_at, EXCLUDED.last_at)
  )
  SELECT count(*) FILTER (WHERE NOT entry_only) INTO v_events FROM claimed;

  DELETE FROM cache_private.cache_stats_hourly
  WHERE bucket < cache_private.cache_now()
                 - pg_catalog.make_interval(days => cache_private.setting('stats_retention_days')::integer);

  PERFORM cache_private.compact_history();
  PERFORM cache_private.sweep_stale();
  RETURN v_events;
END
$$;

CREATE OR REPLACE FUNCTION cache_private.prune_invalidations() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_oldest_running pg_catalog.xid8 := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
  v_deleted bigint := 0;
  v_count bigint;
  v_horizon pg_catalog.xid8;
  r record;
BEGIN
  FOR r IN SELECT cache_name FROM cache_private.caches ORDER BY cache_name FOR UPDATE SKIP LOCKED LOOP
    SELECT LEAST(v_oldest_running, (
             SELECT q.computed_xmin FROM public.query_cache q
             WHERE q.cache_name = r.cache_name AND q.data IS NOT NULL AND q.computed_xmin IS NOT NULL
               -- a snapshot from another cluster (a restored dump) is never current: it must not hold pruning back
               AND q.computed_xmax <= v_oldest_running
             ORDER BY 1 LIMIT 1))
    INTO v_horizon;
    SELECT CASE WHEN h.prune_horizon > v_oldest_running THEN v_horizon  -- restored from another cluster
                ELSE GREATEST(h.prune_horizon, v_horizon) END
    INTO v_horizon FROM cache_private.caches h WHERE h.cache_name = r.cache_name;
    WITH pruned AS (
      DELETE FROM cache_private.invalidations
      WHERE cache_name = r.cache_name
        AND (writer_xid < v_horizon
             -- ids this cluster has not handed out yet come from another cluster (a restored dump)
             OR writer_xid >= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot()))
      RETURNING cache_key, noted_at
    ), counted AS (
      -- What the log forgets, the review keeps: keys invalidated per UTC day (whole-cache rows,
      -- which include pruning's own markers, are not keys).
      INSERT INTO cache_private.invalidations_daily AS d (day, cache_name, keys_invalidated)
      SELECT (noted_at AT TIME ZONE 'UTC')::date, r.cache_name, count(*)
      FROM pruned WHERE pg_catalog.strpos(cache_key, ':') > 0 GROUP BY 1
      ON CONFLICT (day, cache_name) DO UPDATE SET keys_invalidated = d.keys_invalidated + EXCLUDED.keys_invalidated
    )
    SELECT count(*) INTO v_count FROM pruned;
    v_deleted := v_deleted + v_count;
    UPDATE cache_private.caches SET prune_horizon = v_horizon WHERE cache_name = r.cache_name;
    -- The hit path's quick proof does not read the horizon: a whole-cache marker just
    -- below it fails every entry computed from a snapshot older than the horizon.
    INSERT INTO cache_private.invalidations (cache_key, writer_xid, cache_name, noted_at)
    VALUES (r.cache_name, ((v_horizon::text)::numeric - 1)::text::pg_catalog.xid8, r.cache_name,
            cache_private.cache_now())
    ON CONFLICT DO NOTHING;
  END LOOP;
  DELETE FROM cache_private.busy_keys WHERE noted_at < pg_catalog.clock_timestamp() - interval '1 hour';
  RETURN v_deleted;
END
$$;


REVOKE ALL ON FUNCTION cache_private.compact_history() FROM PUBLIC, anon, authenticated, service_role, cache_admin;
