-- Entries computed in another cluster are forgotten, never served (a dump restored elsewhere).
--
-- An entry records the snapshot it was computed from (0012), and transaction ids mean
-- something only in the cluster that handed them out. pg_dump carries the entries, the
-- invalidation log, the prune horizons and the sweep mark to wherever it is restored. In
-- the same cluster that is harmless: the ids mean the same there. In another cluster whose
-- ids are behind the dump's (tests/test_dump_restore.py):
-- * every call missed: the restored horizons and invalidations lie ahead of every snapshot
--   taken there, so nothing computed there was current until a cleanup pruned them, and
--   verify failed ("the second call of expert_sessions:all was not a hit");
-- * a restored entry became current again once that cluster's ids passed its snapshot, and
--   a write made there before that (its id below the snapshot) looked older than the entry:
--   the entry was served with data from before the write, a cleanup in between or not.
--
-- The cluster's system identifier tells clusters apart. Reading it costs about 7 µs, a
-- large part of a hit, so the hit path does not read it: it is kept here, and every roll-up
-- and cleanup (through sweep_stale) and every `python -m cachelib migrate` compare it; in
-- another cluster they forget what the dump brought. Until the first of them runs, 0012's
-- rule still refuses every entry whose snapshot is ahead of this cluster's ids, so run
-- `python -m cachelib migrate` right after a restore, before the application writes.

CREATE TABLE cache_private.cluster_identity (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  system_identifier bigint NOT NULL
);
COMMENT ON TABLE cache_private.cluster_identity IS
  'The cluster the entries were computed in (pg_control_system().system_identifier); elsewhere they are forgotten.';
ALTER TABLE cache_private.cluster_identity ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.cluster_identity FROM PUBLIC, anon, authenticated, service_role, cache_admin;
INSERT INTO cache_private.cluster_identity (system_identifier)
SELECT system_identifier FROM pg_catalog.pg_control_system();

-- In a cluster other than the recorded one: delete every entry and the invalidation log, and
-- start the horizons and the sweep just above this transaction, so that only entries computed
-- from snapshots taken after it commits are current (they see every writer the deleted log
-- named). A row in use is being recomputed here and is skipped; if that computation rolls back
-- the row holds the other cluster's entry again, so the identity is recorded only when no row
-- was skipped, and the next roll-up tries again. Returns the entries deleted (0: same cluster).
CREATE FUNCTION cache_private.forget_other_cluster() RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_here bigint := (SELECT c.system_identifier FROM pg_catalog.pg_control_system() c);
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_horizon pg_catalog.xid8;
  v_deleted integer;
  v_left integer;
BEGIN
  IF (SELECT i.system_identifier FROM cache_private.cluster_identity i) = v_here THEN
    RETURN 0;
  END IF;
  -- One at a time; a second one finds the identity recorded once the first commits.
  PERFORM 1 FROM cache_private.cluster_identity FOR UPDATE;
  IF (SELECT i.system_identifier FROM cache_private.cluster_identity i) = v_here THEN
    RETURN 0;
  END IF;
  v_horizon := ((pg_catalog.pg_current_xact_id()::text)::numeric + 1)::text::pg_catalog.xid8;
  WITH free AS (
    SELECT cache_key FROM public.query_cache FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM public.query_cache c USING free f WHERE c.cache_key = f.cache_key RETURNING 1
  )
  SELECT (SELECT pg_catalog.count(*) FROM gone), (SELECT pg_catalog.count(*) FROM public.query_cache)
  INTO v_deleted, v_left;
  v_left := v_left - v_deleted;
  DELETE FROM cache_private.invalidations;  -- committed rows only: a writer still running keeps its own
  UPDATE cache_private.caches SET prune_horizon = v_horizon;
  -- The hit path's quick proof does not read the horizon (see prune_invalidations).
  INSERT INTO cache_private.invalidations (cache_key, writer_xid, cache_name, noted_at)
  SELECT cache_name, pg_catalog.pg_current_xact_id(), cache_name, cache_private.cache_now()
  FROM cache_private.caches;
  UPDATE cache_private.engine_state SET xid = v_horizon WHERE name = 'sweep_from';
  IF v_left = 0 THEN
    INSERT INTO cache_private.cluster_identity (system_identifier) VALUES (v_here)
    ON CONFLICT (only_row) DO UPDATE SET system_identifier = EXCLUDED.system_identifier;
  END IF;
  PERFORM cache_private.write_audit('forget_other_cluster',
    pg_catalog.jsonb_build_object('system_identifier', v_here::text), 'ok',
    pg_catalog.jsonb_build_object('entries_deleted', v_deleted, 'rows_in_use_left', v_left),
    cache_private.elapsed_ms(v_started));
  RETURN v_deleted;
END
$$;
REVOKE ALL ON FUNCTION cache_private.forget_other_cluster()
  FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- 0012's sweep, unchanged but for its first statement: every roll-up and cleanup sweeps.
CREATE OR REPLACE FUNCTION cache_private.sweep_stale(p_all boolean DEFAULT false) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_from pg_catalog.xid8;
  v_next_from pg_catalog.xid8;
  v_marked integer := 0;
  s record;
BEGIN
  PERFORM cache_private.forget_other_cluster();
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
