-- Invalidation without locks: writers never wait for readers, and no read is stale.
--
-- Before this migration a computation claimed its key's row for the whole of the
-- caller's transaction and writers marked keys stale at commit by updating those
-- rows, so an idle caller could hold every writer of that key at COMMIT, a
-- REPEATABLE READ caller could store a result from an old snapshot for everyone,
-- and cleanup could delete a claimed row under a computation.
--
-- Now freshness is proved, not enforced by locks:
--
-- * Every entry records the snapshot its data was computed from
--   (query_cache.computed_snapshot, taken just before the computation runs).
-- * Every write to a source table appends a row to cache_private.invalidations:
--   the key it affects (or the bare cache name for the whole cache) and the
--   writing transaction's id. Appending never waits: the primary key includes
--   the writer's own transaction id, so only the writer itself can conflict.
-- * An entry is current while no committed writer of its key (or of its whole
--   cache) is invisible to its snapshot. The hit reads the entry and checks that
--   in one statement (a quick proof; the precise rule when it cannot decide), so
--   it sees a writer exactly when the writer has committed. A result computed
--   from any snapshot, at any isolation level, can only be served to readers
--   whose snapshot agrees with it.
-- * Pruning: cleanup deletes invalidations that every stored entry's snapshot
--   already sees, raises the cache's prune_horizon and leaves a whole-cache marker
--   just below it; an entry whose snapshot is older than the horizon (one still
--   being computed during the prune) is not current. Between cleanups the log
--   holds one row per key written per writing statement.
--   See cache_private.prune_invalidations().
--
-- Locks that remain, all bounded:
-- * A miss owns its key's row until its transaction ends (one computation per
--   key). Another miss of the same key waits at most compute_lock_timeout_ms for
--   it, then computes without storing and notes the key as busy for a minute so
--   later misses do not wait on the same holder. Nothing else waits on that row:
--   cleanup, eviction, optimize, invalidation and emergency clear skip rows in use.
-- * Statistics roll-ups run only in sessions of the owner (the dashboard, API,
--   CLI and scheduled jobs), never inside a caller's transaction.

-- --- the tables ---------------------------------------------------------------------------

ALTER TABLE public.query_cache
  ADD COLUMN computed_snapshot pg_catalog.pg_snapshot,
  -- The snapshot's bounds, kept apart because the hit path compares them on every call and
  -- reading them out of the snapshot value costs more than the rest of a hit's checks.
  ADD COLUMN computed_xmin pg_catalog.xid8,
  ADD COLUMN computed_xmax pg_catalog.xid8;
COMMENT ON COLUMN public.query_cache.computed_snapshot IS
  'Snapshot the data was computed from; the entry is current while no committed invalidation is invisible to it.';
COMMENT ON COLUMN public.query_cache.computed_xmin IS 'pg_snapshot_xmin(computed_snapshot)';
COMMENT ON COLUMN public.query_cache.computed_xmax IS 'pg_snapshot_xmax(computed_snapshot)';

ALTER TABLE cache_private.caches ADD COLUMN prune_horizon pg_catalog.xid8 NOT NULL DEFAULT '0';
COMMENT ON COLUMN cache_private.caches.prune_horizon IS
  'Invalidations older than this were pruned; entries computed from snapshots older than it are not current.';

CREATE TABLE cache_private.invalidations (
  cache_key text NOT NULL,  -- a key, or the bare cache name (no colon) for the whole cache
  writer_xid pg_catalog.xid8 NOT NULL,
  cache_name text NOT NULL,
  noted_at timestamptz NOT NULL,
  PRIMARY KEY (cache_key, writer_xid)
);
-- The roll-up's sweep reads what was noted since its last run; pruning deletes the oldest.
CREATE INDEX invalidations_writer_xid_idx ON cache_private.invalidations (writer_xid);
COMMENT ON TABLE cache_private.invalidations IS
  'One row per key (or whole cache) a transaction wrote; entries whose snapshot does not see a committed writer are stale.';

-- Keys whose row a transaction held for longer than compute_lock_timeout_ms: misses
-- of these keys compute without waiting for a minute. Appended only, never updated.
CREATE UNLOGGED TABLE cache_private.busy_keys (
  cache_key text NOT NULL,
  noted_at timestamptz NOT NULL
);
CREATE INDEX busy_keys_cache_key_noted_at_idx ON cache_private.busy_keys (cache_key, noted_at);

-- Where the roll-up's sweep of newly stale entries starts next time.
CREATE TABLE cache_private.engine_state (
  name text PRIMARY KEY,
  xid pg_catalog.xid8 NOT NULL
);
INSERT INTO cache_private.engine_state VALUES ('sweep_from', '0');

-- Hits of an entry whose row was in use at roll-up time, kept for the next roll-up
-- (already counted in the hourly statistics, so only hit_count still needs them).
ALTER TABLE cache_private.cache_events ADD COLUMN entry_only boolean NOT NULL DEFAULT false;
-- Only the engine's own functions write this table, with literal kinds. Its CHECK on kind
-- was prepared anew for every insert and cost a hit 12 µs, a third of its time in the
-- database (measured with the hit in a loop on the server); the roll-up ignores kinds it
-- does not know.
ALTER TABLE cache_private.cache_events DROP CONSTRAINT cache_events_kind_check;

ALTER TABLE cache_private.invalidations ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.busy_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.engine_state ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.invalidations, cache_private.busy_keys, cache_private.engine_state
  FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- The commit-time marking is gone: writers append instead.
DROP TRIGGER invalidate_cache_at_commit ON cache_private.pending_commits;
DROP FUNCTION cache_private.invalidate_at_commit();
DROP FUNCTION cache_private.queue_invalidation(text, text[]);
DROP TABLE cache_private.pending_commits, cache_private.pending_invalidations;

-- --- who the caller is, and what it may do ------------------------------------------------

-- True in sessions logged in as the owner of the cache (or a member of it): the
-- application's own connection, scheduled jobs, tests. Only such sessions may move
-- the clock, name the acting user for the audit, or roll up statistics. session_user,
-- not current_user: inside a SECURITY DEFINER function current_user is always the
-- owner, and SET ROLE cannot change session_user.
CREATE FUNCTION cache_private.session_is_owner() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT COALESCE((SELECT pg_catalog.pg_has_role(session_user, n.nspowner, 'MEMBER')
                   FROM pg_catalog.pg_namespace n WHERE n.nspname = 'cache_private'), false)
$$;

-- A result may be stored only from a READ COMMITTED, read-write transaction: then the
-- computation's snapshot is taken at the call, and the store cannot fail with a
-- serialization error inside the caller's transaction. Other callers still get hits.
CREATE FUNCTION cache_private.may_store() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT pg_catalog.current_setting('transaction_isolation') IN ('read committed', 'read uncommitted')
     AND pg_catalog.current_setting('transaction_read_only') = 'off'
$$;

-- --- is an entry current? -----------------------------------------------------------------

-- The rule, in one place. The hit path in get_or_compute first tries a quicker, stricter
-- proof written inline (a function here would cost a call per hit) and falls back to
-- this one; tests/test_engine_cache.py checks that the quick proof never accepts an
-- entry this rule rejects.
CREATE FUNCTION cache_private.entry_is_current(
  p_cache_name text, p_cache_key text, p_snapshot pg_catalog.pg_snapshot
) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT p_snapshot IS NOT NULL
     -- A snapshot from the future belongs to another cluster (a restored dump): its
     -- transaction ids mean nothing here.
     AND pg_catalog.pg_snapshot_xmax(p_snapshot) <= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
     AND pg_catalog.pg_snapshot_xmin(p_snapshot)
         >= (SELECT h.prune_horizon FROM cache_private.caches h WHERE h.cache_name = p_cache_name)
     AND NOT EXISTS (
       SELECT 1 FROM cache_private.invalidations i
       WHERE i.cache_key IN (p_cache_key, p_cache_name)
         AND i.writer_xid >= pg_catalog.pg_snapshot_xmin(p_snapshot)
         AND NOT pg_catalog.pg_visible_in_snapshot(i.writer_xid, p_snapshot))
$$;

-- --- writers: append what they touched ----------------------------------------------------

CREATE FUNCTION cache_private.record_invalidations(p_cache_name text, p_keys text[]) RETURNS integer
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  WITH noted AS (
    INSERT INTO cache_private.invalidations (cache_key, writer_xid, cache_name, noted_at)
    SELECT DISTINCT k, pg_catalog.pg_current_xact_id(), p_cache_name, cache_private.cache_now()
    FROM pg_catalog.unnest(p_keys) AS k WHERE k IS NOT NULL
    ON CONFLICT DO NOTHING  -- only this transaction can hold a row with its own id: never waits
    RETURNING 1
  )
  SELECT pg_catalog.count(*)::integer FROM noted
$$;

-- Statement-level trigger for any source table: notes the affected keys.
-- TG_ARGV[0]: the cache name; TG_ARGV[1]: the column holding the id that keys it.
CREATE OR REPLACE FUNCTION cache_private.invalidate_from_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_cache text := TG_ARGV[0];
  v_ids text[] := '{}';
  v_more text[];
BEGIN
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(DISTINCT %I::pg_catalog.text) FROM new_rows', TG_ARGV[1])
      INTO v_more;
    v_ids := v_ids || COALESCE(v_more, '{}');
  END IF;
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(DISTINCT %I::pg_catalog.text) FROM old_rows', TG_ARGV[1])
      INTO v_more;
    v_ids := v_ids || COALESCE(v_more, '{}');
  END IF;
  IF pg_catalog.cardinality(v_ids) > 0 THEN
    PERFORM cache_private.record_invalidations(
      v_cache,
      ARRAY[v_cache || ':all'] || ARRAY(SELECT v_cache || ':' || id FROM pg_catalog.unnest(v_ids) AS id));
  END IF;
  RETURN NULL;
END
$$;

-- TRUNCATE has no rows to look at: it invalidates the whole cache.
CREATE OR REPLACE FUNCTION cache_private.invalidate_all_of_cache() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM cache_private.record_invalidations(TG_ARGV[0], ARRAY[TG_ARGV[0]]);
  RETURN NULL;
END
$$;

-- Mark entries stale for the dashboard (data NULL, expires '-infinity', counted): the
-- invalidations already make them unservable; this only keeps the counts true. Rows
-- in use are skipped (the roll-up's sweep or cleanup gets them later). Returns how
-- many entries holding data were marked.
CREATE FUNCTION cache_private.mark_stale(p_keys text[], p_at timestamptz) RETURNS integer
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  WITH free AS (
    SELECT q.cache_key FROM public.query_cache q
    WHERE q.cache_key = ANY (p_keys) AND q.data IS NOT NULL
    FOR NO KEY UPDATE SKIP LOCKED
  ), marked AS (
    UPDATE public.query_cache c SET
      data = NULL,
      expires_at = '-infinity',
      size_bytes = 0,
      invalidation_count = c.invalidation_count + 1,
      invalidated_at = p_at,
      -- How long the value lived before it went stale (for the health check).
      last_lifetime = p_at - c.created_at
    FROM free f
    WHERE c.cache_key = f.cache_key AND c.data IS NOT NULL
    RETURNING 1
  )
  SELECT pg_catalog.count(*)::integer FROM marked
$$;

-- Invalidate keys of one cache now (admin actions): note them as written by this
-- transaction, then mark the entries. Returns how many entries holding data it marked.
CREATE OR REPLACE FUNCTION cache_private.invalidate_keys(p_cache_name text, p_keys text[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM cache_private.record_invalidations(p_cache_name, p_keys);
  RETURN cache_private.mark_stale(p_keys, cache_private.cache_now());
END
$$;

-- --- readers: the hit, the miss -----------------------------------------------------------

-- The read of a servable entry, by the precise rule, counting the hit: the hit path's
-- second chance and the read after waiting for another caller.
CREATE OR REPLACE FUNCTION cache_private.read_live(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_now timestamptz, p_started timestamptz
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_data jsonb;
  v_compute_ms double precision;
BEGIN
  SELECT c.data, c.compute_ms INTO v_data, v_compute_ms
  FROM public.query_cache c
  WHERE c.cache_key = p_cache_key
    AND c.data IS NOT NULL
    AND c.expires_at > p_now
    AND c.created_at > p_now - p_cache_duration
    AND cache_private.entry_is_current(p_cache_name, p_cache_key, c.computed_snapshot);
  IF v_data IS NOT NULL AND pg_catalog.current_setting('transaction_read_only') = 'off' THEN
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
    VALUES (p_now, p_cache_name, p_cache_key, 'hit', cache_private.elapsed_ms(p_started), v_compute_ms);
  END IF;
  RETURN v_data;
END
$$;

-- Hit path: one statement reads the entry and proves it current, one counts the hit.
-- enable_seqscan = off: the proof probes cache_private.invalidations, which is often
-- small enough that the planner would scan it whole (measured: 15% of a hit) instead of
-- descending its index once; every statement here reads by key. The computation
-- itself runs with the default (cache_private.compute).
CREATE OR REPLACE FUNCTION cache_private.get_or_compute(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_compute_sql text
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET enable_seqscan = off AS $$
DECLARE
  v_started pg_catalog.timestamptz := pg_catalog.clock_timestamp();
  v_now pg_catalog.timestamptz := cache_private.cache_now();
  v_data pg_catalog.jsonb;
  v_compute_ms double precision;
BEGIN
  IF p_cache_duration IS NULL OR p_cache_duration <= interval '0' OR p_cache_duration > interval '366 days' THEN
    PERFORM cache_private.check_duration(p_cache_duration);  -- raises the precise error
  END IF;

  -- A transaction that has written data behind this key (or its cache) must see its
  -- own writes: answer from the data it sees and cache nothing. Read-only callers
  -- skip this at no cost.
  -- (Two IFs, not one with AND: a condition holding a subquery is planned and run as a
  -- query on every call, which cost a hit 8 µs when it was written as one.)
  IF pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL THEN
    IF EXISTS (SELECT 1 FROM cache_private.invalidations i
               WHERE i.cache_key IN (p_cache_key, p_cache_name)
                 AND i.writer_xid = pg_catalog.pg_current_xact_id_if_assigned()) THEN
      RETURN cache_private.compute(p_compute_sql);
    END IF;
  END IF;

  -- The quick proof that the entry is current: every invalidation of its key and of its
  -- whole cache that this statement can see is older than the oldest transaction the
  -- entry's snapshot could not see, so its snapshot saw them all. (Pruning leaves a
  -- whole-cache marker just below its horizon, so entries older than the horizon fail
  -- here too.) An entry that fails the quick proof may still be current: read_live
  -- decides with cache_private.entry_is_current(). Two index probes, no join: a hit is
  -- the hot path.
  SELECT c.data, c.compute_ms INTO v_data, v_compute_ms
  FROM public.query_cache c
  WHERE c.cache_key = p_cache_key
    AND c.data IS NOT NULL
    AND c.expires_at > v_now
    AND c.created_at > v_now - p_cache_duration  -- honour a caller asking for fresher data than stored
    -- a snapshot from the future belongs to another cluster (a restored dump)
    AND c.computed_xmax <= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())
    AND NOT EXISTS (SELECT 1 FROM cache_private.invalidations i
                    WHERE i.cache_key = p_cache_key AND i.writer_xid >= c.computed_xmin)
    AND NOT EXISTS (SELECT 1 FROM cache_private.invalidations i
                    WHERE i.cache_key = p_cache_name AND i.writer_xid >= c.computed_xmin);
  IF v_data IS NOT NULL THEN
    IF pg_catalog.current_setting('transaction_read_only') = 'off' THEN  -- a read-only caller is served, not counted
      INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
      VALUES (v_now, p_cache_name, p_cache_key, 'hit',
              EXTRACT(epoch FROM pg_catalog.clock_timestamp() - v_started) * 1000, v_compute_ms);
    END IF;
    RETURN v_data;
  END IF;
  v_data := cache_private.read_live(p_cache_name, p_cache_key, p_cache_duration, v_now, v_started);
  IF v_data IS NOT NULL THEN
    RETURN v_data;  -- current after all (a writer of the key had committed before its snapshot)
  END IF;
  RETURN cache_private.compute_and_store(p_cache_name, p_cache_key, p_cache_duration, p_compute_sql, v_now,
                                         v_started);
END
$$;

-- Every computation runs here, under fixed output settings: the result is stored for
-- everyone, so it must not carry the computing caller's TimeZone (timestamps in
-- jsonb are written in it), IntervalStyle or extra_float_digits. (enable_seqscan = on
-- undoes the hit path's setting: an aggregate over a whole table should scan it.)
CREATE FUNCTION cache_private.compute(p_compute_sql text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY'
SET IntervalStyle = 'postgres' SET extra_float_digits = 1 SET enable_seqscan = on AS $$
DECLARE
  v_data jsonb;
BEGIN
  EXECUTE p_compute_sql INTO v_data;
  RETURN v_data;
END
$$;

-- Compute for this caller only: its snapshot may not be stored (see may_store), or
-- another transaction holds the key.
CREATE FUNCTION cache_private.compute_without_storing(
  p_cache_name text, p_cache_key text, p_compute_sql text, p_now timestamptz, p_started timestamptz, p_why text
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_data jsonb;
  v_compute_started timestamptz := pg_catalog.clock_timestamp();
  v_compute_ms double precision;
BEGIN
  v_data := cache_private.compute(p_compute_sql);
  v_compute_ms := cache_private.elapsed_ms(v_compute_started);
  IF pg_catalog.current_setting('transaction_read_only') = 'off' THEN
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms, reason)
    VALUES (p_now, p_cache_name, p_cache_key, 'miss', cache_private.elapsed_ms(p_started), v_compute_ms, p_why);
  END IF;
  RETURN v_data;
END
$$;

-- The key's row is held by another transaction, or does not exist yet. Insert it (we
-- then own it), or wait, at most compute_lock_timeout_ms, for the holder to finish
-- and read what it stored. The wait runs in a subtransaction that is rolled back
-- unless we inserted the row, so we never keep a lock on a row we do not compute.
CREATE FUNCTION cache_private.wait_for_key(
  p_cache_name text, p_cache_key text, p_cache_duration interval, p_now timestamptz, p_started timestamptz,
  OUT claimed boolean, OUT data jsonb
)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_caller_lock_timeout text := pg_catalog.current_setting('lock_timeout');
  v_inserted boolean;
  v_waited boolean := false;
BEGIN
  claimed := false;
  -- A transaction that already holds row locks (it has a transaction id: it claimed
  -- another key or wrote something) must not wait for another one: two such
  -- transactions waiting for each other's keys would deadlock.
  IF pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL THEN
    RETURN;
  END IF;
  IF EXISTS (SELECT 1 FROM cache_private.busy_keys b
             WHERE b.cache_key = p_cache_key AND b.noted_at > pg_catalog.clock_timestamp() - interval '1 minute') THEN
    RETURN;  -- its holder kept someone waiting the whole timeout a moment ago: do not wait again
  END IF;
  BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', cache_private.setting('compute_lock_timeout_ms'), true);
    INSERT INTO public.query_cache (cache_key, cache_name, data, expires_at, created_at)
    VALUES (p_cache_key, p_cache_name, NULL, '-infinity', p_now)
    ON CONFLICT (cache_key) DO NOTHING  -- waits for another caller inserting the same key
    RETURNING true INTO v_inserted;
    IF v_inserted THEN
      claimed := true;  -- the block ends normally: the new row stays ours
    ELSE
      -- FOR SHARE: every waiter wakes when the holder ends, and none blocks another.
      PERFORM 1 FROM public.query_cache WHERE cache_key = p_cache_key FOR SHARE;
      v_waited := true;
      RAISE SQLSTATE 'CW001';  -- give the shared lock back
    END IF;
  EXCEPTION
    WHEN SQLSTATE 'CW001' THEN
      NULL;
    WHEN lock_not_available THEN
      INSERT INTO cache_private.busy_keys (cache_key, noted_at) VALUES (p_cache_key, pg_catalog.clock_timestamp());
    WHEN deadlock_detected THEN
      NULL;  -- not expected (see above), but never worth failing the caller's call for
  END;
  PERFORM pg_catalog.set_config('lock_timeout', v_caller_lock_timeout, true);
  IF v_waited THEN
    data := cache_private.read_live(p_cache_name, p_cache_key, p_cache_duration, p_now, p_started);
  END IF;
END
$$;

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

  INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
  VALUES (p_now, p_cache_name, p_cache_key, 'miss', cache_private.elapsed_ms(p_started), v_compute_ms);
  RETURN v_data;
END
$$;

-- --- statistics ------------------------------------------------------------------------------

-- Fold the event log into hourly statistics and per-entry hit counts, and mark entries
-- that writers made stale since the last sweep. Never waits for a row in use: events
-- another roll-up claimed are skipped, and hits of an entry whose row is held are kept
-- for the next roll-up.
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

  PERFORM cache_private.sweep_stale();
  RETURN v_events;
END
$$;

-- Mark the entries made stale by invalidations (all of them with p_all, else those
-- noted since the last sweep; writers still running at the last sweep have ids at or
-- above its mark, so their invalidations are looked at again until they are over).
-- Set-based: one pass over the entries for whole-cache invalidations, key lookups for
-- the rest. Returns how many entries it marked.
CREATE FUNCTION cache_private.sweep_stale(p_all boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_from pg_catalog.xid8;
  v_next_from pg_catalog.xid8 := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
  v_marked integer := 0;
  s record;
BEGIN
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

-- The read functions roll up first so what they show is exact, in the owner's
-- sessions only: a roll-up writes (and holds) statistics rows, which must never
-- happen inside an outside caller's transaction. Others see the last roll-up
-- (the dashboard, API and scheduled jobs run one at least every few minutes).
-- If the roll-up cannot get a lock quickly, the read goes on with the last one.
CREATE OR REPLACE FUNCTION cache_private.try_rollup() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET lock_timeout = '200ms' AS $$
BEGIN
  -- On a read replica or in a read-only transaction the read functions still answer,
  -- with the statistics as of the last roll-up on the primary.
  IF pg_catalog.current_setting('transaction_read_only') = 'on' OR NOT cache_private.session_is_owner() THEN
    RETURN;
  END IF;
  PERFORM cache_private.rollup_stats();
EXCEPTION WHEN lock_not_available THEN
  RAISE LOG 'cache statistics roll-up skipped: a statistics row was locked';
END
$$;

-- --- maintenance -------------------------------------------------------------------------------

-- Delete invalidations every entry's snapshot already sees, cache by cache, and raise
-- the cache's prune_horizon to match. The horizon is at most the oldest transaction
-- still running (so every pruned writer is over) and at most the oldest snapshot of
-- a stored entry (so no stored entry loses an invalidation it needs); an entry still
-- being computed from an older snapshot is not current once stored. Caches whose
-- row another cleanup holds are left for the next one. Returns invalidations deleted.
CREATE FUNCTION cache_private.prune_invalidations() RETURNS bigint
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
    DELETE FROM cache_private.invalidations
    WHERE cache_name = r.cache_name
      AND (writer_xid < v_horizon
           -- ids this cluster has not handed out yet come from another cluster (a restored dump)
           OR writer_xid >= pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot()));
    GET DIAGNOSTICS v_count = ROW_COUNT;
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

-- Delete what is expired or stale (in batches that skip rows in use), then evict the
-- least useful live entries while the size bound is exceeded, then prune invalidations.
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
  v_max_entries bigint := cache_private.setting('max_entries')::bigint;
  v_max_bytes bigint := cache_private.setting('max_total_bytes')::bigint;
  v_live_entries bigint;
  v_live_bytes bigint;
  v_row public.cache_cleanup_log;
BEGIN
  PERFORM cache_private.try_rollup();  -- so "never hit" below is exact

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

  INSERT INTO public.cache_cleanup_log
    (cleanup_time, entries_removed, entries_evicted, never_hit_removed, bytes_freed, duration_ms, triggered_by, details)
  VALUES (v_now, v_removed, v_evicted, v_never_hit, v_bytes + v_evicted_bytes,
          cache_private.elapsed_ms(v_started), p_triggered_by,
          pg_catalog.jsonb_build_object(
            'expired_bytes', v_bytes, 'evicted_bytes', v_evicted_bytes,
            'stale_marked', v_stale, 'invalidations_pruned', v_pruned,
            'max_entries', v_max_entries, 'max_total_bytes', v_max_bytes,
            'eviction_reason', CASE
              WHEN v_evicted = 0 THEN NULL
              WHEN v_live_entries > v_max_entries THEN 'entry count above max_entries'
              ELSE 'total size above max_total_bytes' END))
  RETURNING * INTO v_row;
  RETURN v_row;
END
$$;

CREATE OR REPLACE FUNCTION public.invalidate_cache(p_cache_name text DEFAULT NULL, p_cache_key text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    -- Only keys that exist are noted: a stray key must not add rows.
    v_count := CASE WHEN v_cache IS NULL THEN 0
                    ELSE cache_private.invalidate_keys(v_cache, ARRAY[p_cache_key]) END;
  ELSE
    PERFORM cache_private.check_cache_name(p_cache_name);
    -- The whole cache: one invalidation under the bare cache name stales every entry,
    -- including ones being computed right now; then mark what holds data.
    PERFORM cache_private.record_invalidations(p_cache_name, ARRAY[p_cache_name]);
    v_count := cache_private.mark_stale(ARRAY(
      SELECT cache_key FROM public.query_cache WHERE cache_name = p_cache_name AND data IS NOT NULL),
      cache_private.cache_now());
  END IF;
  PERFORM cache_private.write_audit('invalidate',
    pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('cache', p_cache_name, 'key', p_cache_key)),
    'ok', pg_catalog.jsonb_build_object('entries_invalidated', v_count), cache_private.elapsed_ms(v_started));
  RETURN v_count;
END
$$;

CREATE OR REPLACE FUNCTION public.emergency_clear_cache(p_confirm text) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_count integer;
  v_in_use integer;
BEGIN
  IF p_confirm IS DISTINCT FROM 'EMERGENCY_CLEAR_CONFIRMED' THEN
    -- The error rolls back any audit row, so the refusal goes to the server log.
    RAISE LOG 'emergency_clear_cache refused for %: wrong or missing confirmation token', cache_private.actor();
    RAISE EXCEPTION 'emergency clear refused: p_confirm must be exactly EMERGENCY_CLEAR_CONFIRMED'
      USING ERRCODE = '22023';
  END IF;
  -- Every cache invalidated as a whole first: from our commit on, no entry computed
  -- before it is served, including rows in use that the delete below must skip.
  PERFORM cache_private.record_invalidations(c.cache_name, ARRAY[c.cache_name]) FROM cache_private.caches c;
  WITH free AS (
    SELECT cache_key FROM public.query_cache FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM public.query_cache c USING free f WHERE c.cache_key = f.cache_key RETURNING 1
  )
  SELECT count(*) INTO v_count FROM gone;
  SELECT count(*) INTO v_in_use FROM public.query_cache;
  PERFORM cache_private.write_audit('emergency_clear', '{}'::jsonb, 'ok',
    pg_catalog.jsonb_build_object('entries_deleted', v_count, 'rows_in_use_left_for_cleanup', v_in_use),
    cache_private.elapsed_ms(v_started));
  RETURN v_count;
END
$$;

REVOKE ALL ON FUNCTION
  cache_private.session_is_owner(), cache_private.may_store(), cache_private.compute(text),
  cache_private.entry_is_current(text, text, pg_catalog.pg_snapshot),
  cache_private.record_invalidations(text, text[]), cache_private.mark_stale(text[], timestamptz),
  cache_private.compute_without_storing(text, text, text, timestamptz, timestamptz, text),
  cache_private.wait_for_key(text, text, interval, timestamptz, timestamptz),
  cache_private.sweep_stale(boolean), cache_private.prune_invalidations()
FROM PUBLIC, anon, authenticated, service_role, cache_admin;
