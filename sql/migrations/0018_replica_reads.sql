-- Reads on a hot standby are counted on the primary.
--
-- A standby (like any read-only transaction) serves hits and computes misses without storing
-- them, and cannot append to cache_private.cache_events. Until now such reads were not counted
-- at all, so a replica taking the dashboard's or the application's reads made the hit rates
-- lie. Now the engine leaves the read it could not count in the transaction-local setting
-- cachelib.uncounted (one JSON object: at, cache, key, kind, elapsed_ms, compute_ms), the
-- application that called it (cachelib.manager, reading in the same statement) collects
-- them, and forwards them in batches to the primary through
--
--   public.record_replica_reads(p_events jsonb)
--
-- which appends them to cache_private.cache_events as if they had happened there; the
-- roll-up counts them like any other. Only the server-side roles (cache_admin,
-- service_role) and the owner may forward: a signed-in user could otherwise inflate the hit
-- rates. SQL run on a standby by hand is served and not counted.
--
-- get_or_compute, read_live and compute_without_storing are restated from 0012 with one
-- change each: the ELSE branch that notes the read. The primary's hit path is unchanged.

-- The read this transaction could not count, for its caller to forward (the last one only:
-- the application makes one cached call per statement).
CREATE FUNCTION cache_private.note_uncounted(
  p_at timestamptz, p_cache_name text, p_cache_key text, p_kind text, p_elapsed_ms double precision,
  p_compute_ms double precision
) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT pg_catalog.set_config('cachelib.uncounted',
    pg_catalog.jsonb_build_object('at', p_at, 'cache', p_cache_name, 'key', p_cache_key, 'kind', p_kind,
                                  'elapsed_ms', p_elapsed_ms, 'compute_ms', COALESCE(p_compute_ms, 0))::text,
    true)
$$;
REVOKE ALL ON FUNCTION cache_private.note_uncounted(timestamptz, text, text, text, double precision, double precision)
  FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- --- the engine notes what it could not count --------------------------------------------

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
  IF v_data IS NULL THEN
    NULL;
  ELSIF pg_catalog.current_setting('transaction_read_only') = 'off' THEN
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
    VALUES (p_now, p_cache_name, p_cache_key, 'hit', cache_private.elapsed_ms(p_started), v_compute_ms);
  ELSE
    PERFORM cache_private.note_uncounted(p_now, p_cache_name, p_cache_key, 'hit', cache_private.elapsed_ms(p_started),
                                         v_compute_ms);
  END IF;
  RETURN v_data;
END
$$;

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
    IF pg_catalog.current_setting('transaction_read_only') = 'off' THEN
      INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms)
      VALUES (v_now, p_cache_name, p_cache_key, 'hit',
              EXTRACT(epoch FROM pg_catalog.clock_timestamp() - v_started) * 1000, v_compute_ms);
    ELSE  -- a read-only caller (a standby) is served; the read is left for its application to forward
      PERFORM cache_private.note_uncounted(v_now, p_cache_name, p_cache_key, 'hit',
                                           EXTRACT(epoch FROM pg_catalog.clock_timestamp() - v_started) * 1000,
                                           v_compute_ms);
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

CREATE OR REPLACE FUNCTION cache_private.compute_without_storing(
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
  ELSE
    PERFORM cache_private.note_uncounted(p_now, p_cache_name, p_cache_key, 'miss', cache_private.elapsed_ms(p_started),
                                         v_compute_ms);
  END IF;
  RETURN v_data;
END
$$;

-- Reads a standby served, forwarded by the application to the primary. Each element:
-- {"at": timestamptz, "cache": name, "key": text, "kind": "hit"|"miss", "elapsed_ms": n,
-- "compute_ms": n}. Refused whole (22023, nothing appended) when any element is not one.
-- A time more than a day old or in the future is taken as now: a replica's counts belong
-- to the hours they were forwarded in at worst, never to a past the review already showed.
CREATE FUNCTION public.record_replica_reads(p_events jsonb) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_now timestamptz := cache_private.cache_now();
  v_bad record;
  v_count integer;
BEGIN
  IF p_events IS NULL OR pg_catalog.jsonb_typeof(p_events) <> 'array' THEN
    RAISE EXCEPTION 'p_events must be a JSON array of reads' USING ERRCODE = '22023';
  END IF;
  IF pg_catalog.jsonb_array_length(p_events) > 10000 THEN
    RAISE EXCEPTION 'p_events holds % reads; send at most 10000 at a time', pg_catalog.jsonb_array_length(p_events)
      USING ERRCODE = '22023';
  END IF;
  SELECT e.n, e.item INTO v_bad
  FROM pg_catalog.jsonb_array_elements(p_events) WITH ORDINALITY AS e(item, n)
  WHERE pg_catalog.jsonb_typeof(e.item) IS DISTINCT FROM 'object'
     OR (e.item ->> 'kind') IS DISTINCT FROM 'hit' AND (e.item ->> 'kind') IS DISTINCT FROM 'miss'
     OR NOT EXISTS (SELECT 1 FROM cache_private.caches c WHERE c.cache_name = e.item ->> 'cache')
     OR pg_catalog.length(e.item ->> 'key') NOT BETWEEN 1 AND 1000
     OR pg_catalog.jsonb_typeof(e.item -> 'elapsed_ms') IS DISTINCT FROM 'number'
     OR pg_catalog.jsonb_typeof(e.item -> 'compute_ms') IS DISTINCT FROM 'number'
     OR (e.item ->> 'elapsed_ms')::double precision NOT BETWEEN 0 AND 86400000
     OR (e.item ->> 'compute_ms')::double precision NOT BETWEEN 0 AND 86400000
     OR pg_catalog.jsonb_typeof(e.item -> 'at') IS DISTINCT FROM 'string'
  ORDER BY e.n LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'read % of p_events is not {"at", "cache" (a known cache), "key", "kind" (hit or miss), '
      '"elapsed_ms", "compute_ms"}: %', v_bad.n, pg_catalog.left(v_bad.item::text, 200) USING ERRCODE = '22023';
  END IF;
  INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms, reason)
  SELECT CASE WHEN e.at BETWEEN v_now - interval '1 day' AND v_now THEN e.at ELSE v_now END,
         e.cache, e.key, e.kind, e.elapsed_ms, e.compute_ms,
         CASE WHEN e.kind = 'miss' THEN 'not stored: on a read replica' END
  FROM pg_catalog.jsonb_to_recordset(p_events)
       AS e(at timestamptz, cache text, key text, kind text, elapsed_ms double precision, compute_ms double precision);
  GET DIAGNOSTICS v_count = ROW_COUNT;
  RETURN v_count;
END
$$;
COMMENT ON FUNCTION public.record_replica_reads(jsonb) IS
  'Counts reads a hot standby served (collected by the application from cachelib.uncounted) on the primary.';
REVOKE ALL ON FUNCTION public.record_replica_reads(jsonb) FROM PUBLIC, anon, authenticated, service_role, cache_admin;
GRANT EXECUTE ON FUNCTION public.record_replica_reads(jsonb) TO cache_admin, service_role;
