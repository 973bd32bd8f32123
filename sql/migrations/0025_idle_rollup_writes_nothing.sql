-- An idle roll-up writes nothing.
--
-- Every admin read (the overview, the health check, top entries, the series) first rolls up the
-- pending statistics (try_rollup). With nothing pending, the roll-up still wrote: compact_history
-- claimed its hourly turn with INSERT ... ON CONFLICT DO UPDATE WHERE, which locks the row even when
-- the WHERE turns it down, and sweep_stale locked its mark (FOR UPDATE) and moved it. A row lock is a
-- write: each read took a transaction id and waited for its commit to reach the disk, about 2.5 ms
-- of a 3 ms top-entries read on a settled database, more while the server writes much else.
--
-- Both now look first with plain reads: compact_history returns when it ran within the hour, and
-- sweep_stale returns when no invalidation was noted since its mark. What each does when there is
-- work is unchanged (compact_history restated from 0015, sweep_stale from 0020).

CREATE OR REPLACE FUNCTION cache_private.compact_history() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_now timestamptz := cache_private.cache_now();
  v_today date := (v_now AT TIME ZONE 'UTC')::date;
  v_keep integer := cache_private.setting('key_history_keys_per_day')::integer;
  -- The first UTC day kept: dates here are UTC days, whatever the session's TimeZone.
  v_first_kept date := v_today - cache_private.setting('stats_retention_days')::integer;
BEGIN
  -- Compacted within the hour: nothing to do, seen by a plain read. (The claim below locks the row
  -- even when it changes nothing, and a lock is a write: every roll-up, and so every admin read,
  -- committed a write.)
  IF EXISTS (SELECT 1 FROM cache_private.history_state s
             WHERE s.name = 'history_compacted' AND s.at > v_now - interval '1 hour' AND s.at <= v_now) THEN
    RETURN;
  END IF;
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


CREATE OR REPLACE FUNCTION cache_private.sweep_stale(p_all boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_from pg_catalog.xid8;
  v_next_from pg_catalog.xid8;
  v_marked integer := 0;
  s record;
BEGIN
  PERFORM cache_private.forget_other_cluster();
  -- No invalidation since the last sweep: nothing to sweep, seen by plain reads (taking the sweep's
  -- row lock and moving its mark is a write, which every roll-up, and so every admin read, committed).
  -- The mark stays where it is: the next sweep starts there, which is never too late.
  IF NOT p_all AND NOT EXISTS (
      SELECT 1 FROM cache_private.invalidations i
      WHERE i.writer_xid >= (SELECT e.xid FROM cache_private.engine_state e WHERE e.name = 'sweep_from')) THEN
    RETURN 0;
  END IF;
  v_next_from := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
  -- One sweep at a time; if another is running (or its transaction is still open), skip:
  -- nothing here is worth waiting for, the next roll-up or cleanup sweeps again.
  SELECT CASE WHEN p_all THEN '0'::pg_catalog.xid8 ELSE xid END INTO v_from
  FROM cache_private.engine_state WHERE name = 'sweep_from' FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  FOR s IN
    WITH recent AS (
      -- Not the pruning markers (whole-cache rows below the horizon, see prune_invalidations):
      -- entries older than the horizon are not served, and expire; sweeping them would read
      -- every entry of the cache at every roll-up.
      SELECT i.cache_key, i.cache_name, i.noted_at, i.writer_xid
      FROM cache_private.invalidations i JOIN cache_private.caches h USING (cache_name)
      WHERE i.writer_xid >= v_from AND i.writer_xid >= h.prune_horizon
    ), candidates AS (
      -- An entry whose snapshot's xmin is above the writer's id saw that writer: only
      -- older ones need the precise rule.
      SELECT q.cache_key, q.cache_name, q.computed_snapshot, n.noted_at
      FROM recent n JOIN public.query_cache q ON q.cache_key = n.cache_key
      WHERE n.cache_key <> n.cache_name AND q.data IS NOT NULL AND q.computed_xmin <= n.writer_xid
      UNION ALL
      SELECT q.cache_key, q.cache_name, q.computed_snapshot, n.noted_at
      FROM recent n JOIN public.query_cache q ON q.cache_name = n.cache_name
      WHERE n.cache_key = n.cache_name AND q.data IS NOT NULL AND q.computed_xmin <= n.writer_xid
    )
    SELECT c.cache_name, pg_catalog.max(c.noted_at) AS at, pg_catalog.array_agg(DISTINCT c.cache_key) AS keys
    FROM candidates c
    WHERE NOT cache_private.entry_is_current(c.cache_name, c.cache_key, c.computed_snapshot)
    GROUP BY c.cache_name
  LOOP
    v_marked := v_marked + cache_private.mark_stale(s.keys, s.at);
  END LOOP;
  UPDATE cache_private.engine_state SET xid = GREATEST(xid, v_next_from) WHERE name = 'sweep_from';
  RETURN v_marked;
END
$$;

