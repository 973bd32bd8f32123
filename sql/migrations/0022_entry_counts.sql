-- Admin reads that do not grow with the cache, and a size bound that holds between cleanups.
--
-- Until now the overview, the health check, the size distribution and the cleanup's size check
-- each read every row of query_cache: at 1,000,000 entries the overview cost 3.1 full scans and
-- the health check 3.9. And the size bound (max_entries, max_total_bytes) was enforced by the
-- hourly cleanup only, so the cache overshot it between runs.
--
-- What the reads summarize is now maintained in the database, by triggers on query_cache, so it
-- counts whoever wrote the rows (the engine, a migration, COPY, an administrator by hand, a
-- logical replication apply: the triggers are ENABLE ALWAYS):
--
--   cache_private.entry_counts  -- append-only changes: per cache, minute of expiry and size
--                                  class, how many entries (rows holding data), their bytes,
--                                  hits, compute_ms and never-hit entries, and tombstones
--                                  (rows without data)
--
-- Every INSERT, UPDATE and DELETE appends what it changed (one row per group, from its
-- transition tables, in the writer's own transaction); a TRUNCATE empties it. No row is ever
-- updated: a counter row updated by every store would let one long transaction that stored
-- something hold up every other store. compact_entry_counts() replaces rows by their sums
-- (claimed with SKIP LOCKED, so compactions never wait for each other or for writers). A read
-- sums the rows its snapshot sees, which equal what the same snapshot sees in query_cache.
--
-- "Expired" depends on the time of the read: minutes of expiry wholly before it are summed from
-- the counts, and the one minute it falls in is counted from query_cache by its expires_at index.
--
-- Indexes serve the orderings the admin reads and the eviction use (top entries by hits and by
-- size, keys invalidated in the last day, least useful first), so each reads a few rows.
--
-- The size bound: every store (cache_private.compute_and_store) ends with
-- enforce_size_bound(), which evicts the least useful entries (the cleanup's rule, now one
-- function) when the entries or bytes exceed the bound less a headroom (1% of the bound, or 32
-- entries of the mean size if that is more; at most half the bound). The headroom is for stores
-- committing at the same moment, which cannot see each other: the bound holds at all times
-- while fewer than 32 stores (of about the mean size) are in flight at once. The cleanup still
-- evicts down to the bound itself.

CREATE TABLE cache_private.entry_counts (
  cache_name text NOT NULL,
  expires_minute timestamptz NOT NULL,  -- date_trunc('minute', expires_at, 'UTC')
  size_class smallint NOT NULL,
  entries bigint NOT NULL,     -- rows holding data
  bytes bigint NOT NULL,       -- their size_bytes
  never_hit bigint NOT NULL,   -- of them, with hit_count = 0
  hits bigint NOT NULL,        -- their hit_count, summed
  compute_ms numeric NOT NULL, -- their compute_ms, summed (numeric: exact under + and -)
  tombstones bigint NOT NULL,  -- rows without data (invalidated keys, keys being computed)
  compacted boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE cache_private.entry_counts IS
  'What query_cache holds, as append-only changes per cache, minute of expiry and size class; sum to read.';
ALTER TABLE cache_private.entry_counts ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.entry_counts FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- No write may slip between the triggers' creation and the first counts.
LOCK TABLE public.query_cache IN SHARE ROW EXCLUSIVE MODE;

-- What rows of query_cache add to the counts: the one rule, written once here as a query over
-- rows with a sign (+1 added, -1 removed), from which the trigger function's three statements and
-- the first fill below are made. Static SQL in the function (each plan cached) and no function
-- call per row: a call per row tripled the time of a cleanup's deletes, dynamic SQL cost a store
-- 0.8 ms a statement. An UPDATE that changed nothing counted (last_hit_at, say) adds no row.
-- The trigger function is SECURITY DEFINER: any role allowed to write query_cache is counted,
-- without a grant on the counts.
DO $migration$
DECLARE
  c_rule constant text := $rule$
    INSERT INTO cache_private.entry_counts
      (cache_name, expires_minute, size_class, entries, bytes, never_hit, hits, compute_ms, tombstones)
    SELECT r.cache_name, pg_catalog.date_trunc('minute', r.expires_at, 'UTC'),
           -- the size classes of get_cache_size_distribution(), by their lower bounds
           CASE WHEN r.data IS NULL OR r.size_bytes < 1024 THEN 0 WHEN r.size_bytes < 10240 THEN 1
                WHEN r.size_bytes < 102400 THEN 2 WHEN r.size_bytes < 1048576 THEN 3
                WHEN r.size_bytes < 10485760 THEN 4 ELSE 5 END,
           COALESCE(sum(r.sign) FILTER (WHERE r.data IS NOT NULL), 0),
           COALESCE(sum(r.sign * r.size_bytes::bigint) FILTER (WHERE r.data IS NOT NULL), 0),
           COALESCE(sum(r.sign) FILTER (WHERE r.data IS NOT NULL AND r.hit_count = 0), 0),
           COALESCE(sum(r.sign * r.hit_count) FILTER (WHERE r.data IS NOT NULL), 0),
           COALESCE(sum(r.sign * r.compute_ms::numeric) FILTER (WHERE r.data IS NOT NULL), 0),
           COALESCE(sum(r.sign) FILTER (WHERE r.data IS NULL), 0)
    FROM (%s) r
    GROUP BY 1, 2, 3
    HAVING sum(r.sign) FILTER (WHERE r.data IS NOT NULL) <> 0
        OR sum(r.sign * r.size_bytes::bigint) FILTER (WHERE r.data IS NOT NULL) <> 0
        OR sum(r.sign) FILTER (WHERE r.data IS NOT NULL AND r.hit_count = 0) <> 0
        OR sum(r.sign * r.hit_count) FILTER (WHERE r.data IS NOT NULL) <> 0
        OR sum(r.sign * r.compute_ms::numeric) FILTER (WHERE r.data IS NOT NULL) <> 0
        OR sum(r.sign) FILTER (WHERE r.data IS NULL) <> 0$rule$;
BEGIN
  EXECUTE pg_catalog.format($function$
CREATE FUNCTION cache_private.count_entry_changes() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    -- TRUNCATE waited for every transaction that had written query_cache: nothing is left to count.
    DELETE FROM cache_private.entry_counts;
  ELSIF TG_OP = 'INSERT' THEN %s;
  ELSIF TG_OP = 'DELETE' THEN %s;
  ELSE %s;
  END IF;
  RETURN NULL;
END
$body$$function$,
    pg_catalog.format(c_rule, 'SELECT n.*, 1 AS sign FROM new_rows n'),
    pg_catalog.format(c_rule, 'SELECT o.*, -1 AS sign FROM old_rows o'),
    pg_catalog.format(c_rule, 'SELECT n.*, 1 AS sign FROM new_rows n UNION ALL SELECT o.*, -1 AS sign FROM old_rows o'));
  -- The first counts, by the same rule (the table is locked above: no write slips in between).
  EXECUTE pg_catalog.format(c_rule, 'SELECT q.*, 1 AS sign FROM public.query_cache q');
END
$migration$;

CREATE TRIGGER query_cache_count_inserts AFTER INSERT ON public.query_cache
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION cache_private.count_entry_changes();
CREATE TRIGGER query_cache_count_updates AFTER UPDATE ON public.query_cache
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION cache_private.count_entry_changes();
CREATE TRIGGER query_cache_count_deletes AFTER DELETE ON public.query_cache
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION cache_private.count_entry_changes();
CREATE TRIGGER query_cache_count_truncate AFTER TRUNCATE ON public.query_cache
  FOR EACH STATEMENT EXECUTE FUNCTION cache_private.count_entry_changes();
-- Counted under session_replication_role = replica too (a logical replication apply, pg_restore
-- --disable-triggers is the exception: it restores the counts with the rows).
ALTER TABLE public.query_cache ENABLE ALWAYS TRIGGER query_cache_count_inserts;
ALTER TABLE public.query_cache ENABLE ALWAYS TRIGGER query_cache_count_updates;
ALTER TABLE public.query_cache ENABLE ALWAYS TRIGGER query_cache_count_deletes;
ALTER TABLE public.query_cache ENABLE ALWAYS TRIGGER query_cache_count_truncate;

-- Replaces the changes by their sums. All of them (p_all, the hourly cleanup), or only the
-- changes not yet compacted (the roll-up, and a store once more than 200 are waiting: every store
-- sums them). Rows another compaction holds are skipped: nothing here waits.
-- (enable_seqscan on: a store calls this from get_or_compute, which turns it off for its own
-- probes; a plan costed with seq scans disabled crosses PostgreSQL 15's JIT threshold and costs
-- ~90 ms to compile.)
CREATE FUNCTION cache_private.compact_entry_counts(p_all boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET enable_seqscan = on AS $$
DECLARE
  v_rows bigint;
BEGIN
  WITH claimed AS (
    DELETE FROM cache_private.entry_counts c
    USING (SELECT ctid FROM cache_private.entry_counts WHERE p_all OR NOT compacted FOR UPDATE SKIP LOCKED) mine
    WHERE c.ctid = mine.ctid
    RETURNING c.*
  ), summed AS (
    INSERT INTO cache_private.entry_counts
      (cache_name, expires_minute, size_class, entries, bytes, never_hit, hits, compute_ms, tombstones, compacted)
    SELECT cache_name, expires_minute, size_class, sum(entries), sum(bytes), sum(never_hit), sum(hits),
           sum(compute_ms), sum(tombstones), true
    FROM claimed
    GROUP BY 1, 2, 3
    HAVING sum(entries) <> 0 OR sum(bytes) <> 0 OR sum(never_hit) <> 0 OR sum(hits) <> 0 OR sum(compute_ms) <> 0
        OR sum(tombstones) <> 0
  )
  SELECT count(*) INTO v_rows FROM claimed;
  RETURN v_rows;
END
$$;

-- Per cache: entries, bytes, hits, never-hit entries and tombstones, as the caller's snapshot
-- sees query_cache (STABLE: it reads with the calling statement's snapshot).
CREATE FUNCTION cache_private.entry_totals()
RETURNS TABLE (cache_name text, entries bigint, bytes bigint, hits bigint, never_hit bigint, tombstones bigint,
               compute_ms numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT c.cache_name, sum(c.entries)::bigint, sum(c.bytes)::bigint, sum(c.hits)::bigint,
         sum(c.never_hit)::bigint, sum(c.tombstones)::bigint, sum(c.compute_ms)
  FROM cache_private.entry_counts c
  GROUP BY c.cache_name
$$;

-- Per cache: entries (rows holding data) with expires_at <= p_at, how many of them were never
-- hit, their bytes and compute_ms. Minutes of expiry wholly before p_at come from the counts;
-- the minute p_at falls in is counted from the rows themselves (an index range on expires_at of
-- at most a minute).
CREATE FUNCTION cache_private.entries_expired_by(p_at timestamptz)
RETURNS TABLE (cache_name text, expired bigint, expired_never_hit bigint, expired_bytes bigint,
               expired_compute_ms numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT x.cache_name, sum(x.entries)::bigint, sum(x.never_hit)::bigint, sum(x.bytes)::bigint, sum(x.compute_ms)
  FROM (
    SELECT c.cache_name, c.entries, c.never_hit, c.bytes, c.compute_ms
    FROM cache_private.entry_counts c
    WHERE c.expires_minute < pg_catalog.date_trunc('minute', p_at, 'UTC')
    UNION ALL
    SELECT q.cache_name, 1, CASE WHEN q.hit_count = 0 THEN 1 ELSE 0 END, q.size_bytes::bigint, q.compute_ms::numeric
    FROM public.query_cache q
    WHERE q.expires_at >= pg_catalog.date_trunc('minute', p_at, 'UTC') AND q.expires_at <= p_at
      AND q.data IS NOT NULL
  ) x
  GROUP BY x.cache_name
$$;

-- The orderings the admin reads and the eviction use.
CREATE INDEX query_cache_top_hits_idx ON public.query_cache (hit_count DESC, cache_key) WHERE data IS NOT NULL;
CREATE INDEX query_cache_top_size_idx ON public.query_cache (size_bytes DESC, cache_key) WHERE data IS NOT NULL;
CREATE INDEX query_cache_invalidated_at_idx ON public.query_cache (invalidated_at) WHERE invalidated_at IS NOT NULL;
CREATE INDEX query_cache_least_useful_idx ON public.query_cache
  ((hit_count * compute_ms), last_hit_at NULLS FIRST, created_at, cache_key) WHERE data IS NOT NULL;

-- Evicts the least useful entries (the least compute time saved so far, then the least recently
-- hit, then the oldest) until p_entries entries and p_bytes bytes are gone, or p_limit entries
-- (NULL: no limit), or no entry is free to take. p_spare is never evicted (the entry a store
-- has just written). Rows in use are skipped, never waited for. The one eviction rule: the
-- cleanup and every store call it.
CREATE FUNCTION cache_private.evict_least_useful(
  p_entries bigint, p_bytes bigint, p_spare text DEFAULT NULL, p_limit bigint DEFAULT NULL,
  OUT evicted bigint, OUT evicted_bytes bigint
)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_want bigint;
  v_batch bigint;
  v_batch_bytes bigint;
BEGIN
  evicted := 0;
  evicted_bytes := 0;
  WHILE (evicted < p_entries OR evicted_bytes < p_bytes) AND (p_limit IS NULL OR evicted < p_limit) LOOP
    -- As many as the count still needs, else a batch for the bytes (each row's size is known
    -- only once read).
    v_want := LEAST(GREATEST(p_entries - evicted, 100), 5000, COALESCE(p_limit - evicted, 5000));
    WITH candidates AS (
      SELECT q.cache_key, q.size_bytes, q.hit_count * q.compute_ms AS saved, q.last_hit_at, q.created_at
      FROM public.query_cache q
      WHERE q.data IS NOT NULL AND q.cache_key IS DISTINCT FROM p_spare
      ORDER BY q.hit_count * q.compute_ms, q.last_hit_at NULLS FIRST, q.created_at, q.cache_key
      LIMIT v_want
      FOR UPDATE OF q SKIP LOCKED
    ), ranked AS (
      SELECT c.cache_key, pg_catalog.row_number() OVER w AS position,
             pg_catalog.sum(c.size_bytes) OVER w - c.size_bytes AS bytes_before
      FROM candidates c
      WINDOW w AS (ORDER BY c.saved, c.last_hit_at NULLS FIRST, c.created_at, c.cache_key)
    ), gone AS (
      DELETE FROM public.query_cache q USING ranked r
      WHERE q.cache_key = r.cache_key
        AND (r.position <= p_entries - evicted OR r.bytes_before < p_bytes - evicted_bytes)
        AND r.position <= COALESCE(p_limit - evicted, r.position)
      RETURNING q.size_bytes
    )
    SELECT count(*), COALESCE(sum(g.size_bytes), 0) INTO v_batch, v_batch_bytes FROM gone g;
    EXIT WHEN v_batch = 0;
    evicted := evicted + v_batch;
    evicted_bytes := evicted_bytes + v_batch_bytes;
  END LOOP;
END
$$;

-- Room kept below a bound for stores committing at the same moment (they cannot see each other):
-- 1% of the bound, or 32 stores of p_unit (one entry; the mean entry's bytes), whichever is more,
-- but at most half the bound.
CREATE FUNCTION cache_private.bound_headroom(p_bound bigint, p_unit bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT LEAST(GREATEST(p_bound / 100, 32 * GREATEST(p_unit, 1)), p_bound / 2)
$$;

-- Called by every store, after writing p_spare: evicts what is above the bound less its
-- headroom (at most 1,000 entries per store: a cache far above a lowered bound is brought down
-- by the cleanup, while each store still takes out more than it adds). Returns the entries evicted.
-- enable_seqscan on: see compact_entry_counts.
CREATE FUNCTION cache_private.enforce_size_bound(p_spare text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET enable_seqscan = on AS $$
DECLARE
  v_max_entries bigint := cache_private.setting('max_entries')::bigint;
  v_max_bytes bigint := cache_private.setting('max_total_bytes')::bigint;
  v_entries bigint;
  v_bytes bigint;
  v_loose bigint;
  v_excess_entries bigint;
  v_excess_bytes bigint;
BEGIN
  SELECT COALESCE(sum(c.entries), 0), COALESCE(sum(c.bytes), 0), count(*) FILTER (WHERE NOT c.compacted)
  INTO v_entries, v_bytes, v_loose
  FROM cache_private.entry_counts c;
  IF v_loose > 200 THEN
    PERFORM cache_private.compact_entry_counts(false);
  END IF;
  v_excess_entries := v_entries - (v_max_entries - cache_private.bound_headroom(v_max_entries, 1));
  v_excess_bytes := v_bytes - (v_max_bytes - cache_private.bound_headroom(v_max_bytes, v_bytes / GREATEST(v_entries, 1)));
  IF v_excess_entries <= 0 AND v_excess_bytes <= 0 THEN
    RETURN 0;
  END IF;
  RETURN (SELECT e.evicted
          FROM cache_private.evict_least_useful(GREATEST(v_excess_entries, 0), GREATEST(v_excess_bytes, 0),
                                                p_spare, 1000) e);
END
$$;

-- --- restated with the counts: the roll-up compacts them -------------------------------

CREATE OR REPLACE FUNCTION cache_private.try_rollup() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET lock_timeout = '200ms' AS $$
BEGIN
  -- On a read replica or in a read-only transaction the read functions still answer,
  -- with the statistics as of the last roll-up on the primary.
  IF pg_catalog.current_setting('transaction_read_only') = 'on' OR NOT cache_private.session_is_owner() THEN
    RETURN;
  END IF;
  PERFORM cache_private.rollup_stats();
  BEGIN
    PERFORM cache_private.compact_entry_counts(false);
  EXCEPTION WHEN serialization_failure THEN
    NULL;  -- a REPEATABLE READ caller met a concurrent compaction; the next roll-up compacts
  END;
EXCEPTION WHEN lock_not_available THEN
  RAISE LOG 'cache statistics roll-up skipped: a statistics row was locked';
END
$$;

-- --- restated from 0012 with one change: the store enforces the size bound -----------

CREATE OR REPLACE FUNCTION cache_private.compute_and_store(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_compute_sql text,
  p_now timestamptz, p_started timestamptz
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_claimed boolean;
  v_data jsonb;
  v_snapshot pg_snapshot;
  v_compute_started timestamptz;
  v_compute_ms double precision;
BEGIN
  IF NOT cache_private.may_store() THEN
    RETURN cache_private.compute_without_storing(p_cache_name, p_cache_key, p_compute_sql, p_now, p_started,
                                                 'not stored: ' || pg_catalog.current_setting('transaction_isolation')
                                                 || CASE WHEN pg_catalog.current_setting('transaction_read_only') = 'on'
                                                         THEN ', read only' ELSE '' END);
  END IF;

  -- Own the key's row without waiting, if nobody holds it. Another caller may have
  -- stored the key since our read: then serve that instead of computing again.
  PERFORM 1 FROM public.query_cache WHERE cache_key = p_cache_key FOR NO KEY UPDATE SKIP LOCKED;
  v_claimed := FOUND;
  IF v_claimed THEN
    v_data := cache_private.read_live(p_cache_name, p_cache_key, p_cache_duration, p_now, p_started);
    IF v_data IS NOT NULL THEN
      RETURN v_data;
    END IF;
  ELSE
    SELECT w.claimed, w.data INTO v_claimed, v_data
    FROM cache_private.wait_for_key(p_cache_name, p_cache_key, p_cache_duration, p_now, p_started) w;
    IF v_data IS NOT NULL THEN
      RETURN v_data;  -- the holder stored it while we waited (read_live counted the hit)
    END IF;
    IF NOT v_claimed THEN  -- the holder failed or let us wait too long: try once more, else compute alone
      PERFORM 1 FROM public.query_cache WHERE cache_key = p_cache_key FOR NO KEY UPDATE SKIP LOCKED;
      v_claimed := FOUND;
    END IF;
    IF NOT v_claimed THEN
      RETURN cache_private.compute_without_storing(p_cache_name, p_cache_key, p_compute_sql, p_now, p_started,
                                                   'not stored: key busy');
    END IF;
  END IF;

  -- The snapshot is taken before the computation, whose own snapshot (READ COMMITTED)
  -- can only be newer: the entry may be judged older than it is, never newer.
  v_snapshot := pg_catalog.pg_current_snapshot();
  v_compute_started := pg_catalog.clock_timestamp();
  v_data := cache_private.compute(p_compute_sql);
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
    compute_ms = v_compute_ms,
    computed_snapshot = v_snapshot,
    computed_xmin = pg_catalog.pg_snapshot_xmin(v_snapshot),
    computed_xmax = pg_catalog.pg_snapshot_xmax(v_snapshot)
  WHERE cache_key = p_cache_key;
  PERFORM cache_private.enforce_size_bound(p_cache_key);

  INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
  VALUES (p_now, p_cache_name, p_cache_key, 'miss', cache_private.elapsed_ms(p_started), v_compute_ms);
  RETURN v_data;
END
$$;

-- --- restated from 0016: the bound read from the counts, eviction by the one rule ------

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

  SELECT COALESCE(sum(t.entries), 0), COALESCE(sum(t.bytes), 0) INTO v_live_entries, v_live_bytes
  FROM cache_private.entry_totals() t;
  IF v_live_entries > v_max_entries OR v_live_bytes > v_max_bytes THEN
    -- Down to the bound itself (stores keep a headroom below it). Rows in use are skipped: the
    -- next cleanup evicts them.
    SELECT e.evicted, e.evicted_bytes INTO v_evicted, v_evicted_bytes
    FROM cache_private.evict_least_useful(GREATEST(v_live_entries - v_max_entries, 0),
                                          GREATEST(v_live_bytes - v_max_bytes, 0)) e;
  END IF;
  PERFORM cache_private.compact_entry_counts(true);

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

-- --- the admin reads, restated to read the counts -------------------------------------

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
  ), entries AS (  -- from the maintained counts (0022), not a scan of the entries
    SELECT t.cache_name, t.entries, t.entries - COALESCE(x.expired, 0) AS live, COALESCE(x.expired, 0) AS expired,
           t.entries - t.never_hit AS with_hits, round(t.hits::numeric / NULLIF(t.entries, 0), 2) AS avg_hits,
           t.bytes
    FROM cache_private.entry_totals() t LEFT JOIN cache_private.entries_expired_by(v_now) x USING (cache_name)
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

CREATE OR REPLACE FUNCTION public.get_cache_size_distribution()
RETURNS TABLE (size_class text, lower_bytes bigint, entries bigint, total_bytes bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  WITH classes(position, size_class, lower_bytes) AS (VALUES
    (0, 'under 1 KB', 0::bigint), (1, '1-10 KB', 1024), (2, '10-100 KB', 10240),
    (3, '100 KB-1 MB', 102400), (4, '1-10 MB', 1048576), (5, 'over 10 MB', 10485760)
  ), counted AS (  -- from the maintained counts (0022), classed by the same lower bounds
    SELECT size_class AS position, sum(entries)::bigint AS entries, sum(bytes)::bigint AS total_bytes
    FROM cache_private.entry_counts
    GROUP BY 1
  )
  SELECT c.size_class, c.lower_bytes, COALESCE(n.entries, 0), COALESCE(n.total_bytes, 0)
  FROM classes c LEFT JOIN counted n USING (position)
  ORDER BY c.lower_bytes
$$;

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
  -- Every count below from the maintained counts (0022) in one statement (one snapshot): this
  -- runs on tables of millions of rows. Keys invalidated in 24 hours are read by their index.
  SELECT COALESCE(t.entries, 0) AS entries, COALESCE(t.bytes, 0) AS bytes, COALESCE(t.tombstones, 0) AS tombstones,
         COALESCE(n.expired, 0) AS expired, COALESCE(n.expired_never_hit, 0) AS expired_never_hit,
         COALESCE(l.expired, 0) AS expired_late, COALESCE(d.expired, 0) AS expired_day,
         i.invalidated_early, i.invalidated
  INTO c
  FROM (SELECT sum(e.entries)::bigint AS entries, sum(e.bytes)::bigint AS bytes, sum(e.tombstones)::bigint AS tombstones
        FROM cache_private.entry_totals() e) t,
       (SELECT sum(x.expired)::bigint AS expired, sum(x.expired_never_hit)::bigint AS expired_never_hit
        FROM cache_private.entries_expired_by(v_now) x) n,
       (SELECT sum(x.expired)::bigint AS expired FROM cache_private.entries_expired_by(v_now - c_expired_grace) x) l,
       (SELECT sum(x.expired)::bigint AS expired
        FROM cache_private.entries_expired_by(v_now - c_expired_critical_age) x) d,
       (SELECT count(*) FILTER (WHERE q.last_lifetime < q.ttl / 4) AS invalidated_early,
               count(*) FILTER (WHERE q.last_lifetime IS NOT NULL) AS invalidated
        FROM public.query_cache q WHERE q.invalidated_at > v_now - interval '24 hours') i;

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
        ELSE 'Hit rate below ' || c_hit_rate_warning || '%: raise its duration (e.g. double it: python -m '
             || 'cachelib cache duration ' || r.cache_name || ' ' || COALESCE(r.duration_setting || ' or ', '')
             || 'the dashboard''s Cache Management) and check how often writes invalidate this cache.' END;
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

REVOKE ALL ON FUNCTION
  cache_private.count_entry_changes(), cache_private.compact_entry_counts(boolean),
  cache_private.entry_totals(), cache_private.entries_expired_by(timestamptz),
  cache_private.evict_least_useful(bigint, bigint, text, bigint), cache_private.bound_headroom(bigint, bigint),
  cache_private.enforce_size_bound(text)
FROM PUBLIC, anon, authenticated, service_role, cache_admin;
