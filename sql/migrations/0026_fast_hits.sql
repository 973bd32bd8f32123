-- The optional C hit path (ext/pgcache_hit).
--
-- A hit through the SQL engine is a PL/pgSQL call chain and one append to the event log: about a
-- third of a primary-key read's throughput under 16 clients (bench/, "hot_key"). The extension
-- pgcache_hit serves the same quick proof from C, reading the two indexes directly, and counts
-- hits in shared memory instead of a row per hit (ext/pgcache_hit/README.md). It needs a compiler
-- and the server's headers to build, a superuser to install and PostgreSQL 17+, so it is optional:
-- nothing here needs it, and without it every function behaves as before.
--
-- With it installed (python -m cachelib fast-hits enable):
-- * each generated wrapper asks cache_private.hit_fast() first and goes the SQL way when it
--   answers NULL (a miss, a transaction that wrote, a read-only or standby caller, a bad
--   duration, an entry only the slow proof accepts);
-- * every roll-up first forwards the hits counted in shared memory to the event log, where the
--   roll-up counts them like any other (cache_private.forward_fast_hits()).
--
-- write_wrapper is restated from 0017 with the one branch, rollup_stats from 0015 to forward first
-- and count rows by their weight.

CREATE FUNCTION cache_private.fast_hits_installed() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pgcache_hit')
$$;
COMMENT ON FUNCTION cache_private.fast_hits_installed() IS
  'Whether the optional C hit path (extension pgcache_hit) is installed in this database.';
REVOKE ALL ON FUNCTION cache_private.fast_hits_installed() FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- --- the roll-up forwards what the C path counted ---------------------------------------------

-- One row of the log can stand for many events: the C path forwards its sums as one row per
-- (key, entry, UTC hour), so the roll-up's work grows with the keys hit, not with the hits.
-- elapsed_ms and compute_ms of such a row are sums over its events.
ALTER TABLE cache_private.cache_events ADD COLUMN weight bigint NOT NULL DEFAULT 1;
COMMENT ON COLUMN cache_private.cache_events.weight IS
  'How many events the row stands for (1, or the hits pgcache_hit summed); elapsed_ms and compute_ms are their sums.';

-- Restated from 0015 with two changes: the C path's sums are forwarded first, and events are
-- counted by weight.
CREATE OR REPLACE FUNCTION cache_private.rollup_stats() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_events bigint;
BEGIN
  IF cache_private.fast_hits_installed() THEN
    -- Into the log first, in this transaction: if the roll-up fails, the sums go back to shared memory.
    PERFORM cache_private.forward_fast_hits();
  END IF;
  WITH claimed AS (
    DELETE FROM cache_private.cache_events e
    USING (SELECT ctid FROM cache_private.cache_events FOR UPDATE SKIP LOCKED) mine
    WHERE e.ctid = mine.ctid
    RETURNING e.*
  ), hourly AS (
    INSERT INTO cache_private.cache_stats_hourly AS s
      (cache_name, bucket, hits, misses, fallbacks, hit_ms_total, miss_ms_total, compute_ms_spent, compute_ms_saved)
    SELECT cache_name, pg_catalog.date_trunc('hour', event_at, 'UTC'),  -- UTC hours whatever the session's TimeZone
           COALESCE(sum(weight) FILTER (WHERE kind = 'hit'), 0),
           COALESCE(sum(weight) FILTER (WHERE kind = 'miss'), 0),
           COALESCE(sum(weight) FILTER (WHERE kind = 'fallback'), 0),
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
    SELECT e.cache_key, sum(e.weight) AS hits, min(e.event_at) AS first_hit_at, max(e.event_at) AS last_hit_at
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
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms, entry_only,
                                            weight)
    SELECT e.event_at, e.cache_name, e.cache_key, e.kind, e.elapsed_ms, e.compute_ms, true, e.weight
    FROM claimed e
    WHERE e.kind = 'hit' AND e.cache_key IN (SELECT cache_key FROM entry_hits EXCEPT SELECT cache_key FROM free)
  ), per_key_day AS (
    -- The monthly review's per-key history: activity per UTC day and key (compacted later).
    INSERT INTO cache_private.key_activity_daily AS d
      (day, cache_name, cache_key, hits, misses, fallbacks, compute_ms_spent, compute_ms_saved)
    SELECT (event_at AT TIME ZONE 'UTC')::date, cache_name, COALESCE(cache_key, '(no key)'),
           COALESCE(sum(weight) FILTER (WHERE kind = 'hit'), 0),
           COALESCE(sum(weight) FILTER (WHERE kind = 'miss'), 0),
           COALESCE(sum(weight) FILTER (WHERE kind = 'fallback'), 0),
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
    SELECT cache_name, COALESCE(reason, 'unknown'), sum(weight), max(event_at)
    FROM claimed WHERE kind = 'fallback' AND NOT entry_only GROUP BY 1, 2
    ON CONFLICT (cache_name, reason) DO UPDATE SET
      occurrences = f.occurrences + EXCLUDED.occurrences,
      last_at = GREATEST(f.last_at, EXCLUDED.last_at)
  )
  SELECT COALESCE(sum(weight) FILTER (WHERE NOT entry_only), 0) INTO v_events FROM claimed;

  DELETE FROM cache_private.cache_stats_hourly
  WHERE bucket < cache_private.cache_now()
                 - pg_catalog.make_interval(days => cache_private.setting('stats_retention_days')::integer);

  PERFORM cache_private.compact_history();
  PERFORM cache_private.sweep_stale();
  RETURN v_events;
END
$$;

-- --- the wrappers ask the C path first ---------------------------------------------------------

CREATE OR REPLACE FUNCTION cache_private.write_wrapper(p_cache_name text) RETURNS regprocedure
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  c cache_private.caches;
  v_fn regprocedure;
  v_direct text;
  v_wrapper text;
  v_args text;
  v_key text;
  v_call text;
  v_duration text := 'p_cache_duration';
  v_body text;
  v_oid regprocedure;
  v_fast boolean := cache_private.fast_hits_installed();
BEGIN
  SELECT * INTO c FROM cache_private.caches WHERE cache_name = p_cache_name;
  v_fn := pg_catalog.to_regprocedure(c.function_signature);
  IF v_fn IS NULL THEN
    PERFORM cache_private.refuse(pg_catalog.format('the function %s of cache %s no longer exists',
                                                   COALESCE(c.function_signature, '(none)'), p_cache_name));
  END IF;
  SELECT pg_catalog.format('%I.%I', n.nspname, p.proname), pg_catalog.format('%I.%I', n.nspname, p.proname || '_cached'),
         pg_catalog.pg_get_function_arguments(p.oid)
  INTO v_direct, v_wrapper, v_args
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = v_fn;
  IF c.key_type IS NULL THEN
    v_key := pg_catalog.quote_literal(p_cache_name || ':all');
    v_call := pg_catalog.quote_literal(pg_catalog.format('SELECT %s()', v_direct));
  ELSE
    -- $1: the argument may have no name.
    v_key := pg_catalog.format('%L || COALESCE($1::pg_catalog.text, %L)', p_cache_name || ':', 'all');
    v_call := pg_catalog.format('pg_catalog.format(%L, $1)', pg_catalog.format('SELECT %s(%%L::%s)', v_direct, c.key_type));
  END IF;
  IF c.duration_override IS NOT NULL THEN
    v_duration := pg_catalog.format('%L::pg_catalog.interval', c.duration_override);
  END IF;
  v_body := pg_catalog.format(E'%sBEGIN\n%s%s  RETURN cache_private.get_or_compute(%L, %s, %s,\n    %s);\nEND',
    CASE WHEN v_fast THEN E'DECLARE\n  v_data pg_catalog.jsonb;\n' ELSE '' END,
    CASE WHEN c.duration_override IS NULL THEN ''
         -- the caller's duration is still checked, so a bad one is refused the same way with or without an override
         ELSE E'  PERFORM cache_private.check_duration(p_cache_duration);\n' END,
    -- the C hit first when pgcache_hit is installed: it serves what the quick proof allows, NULL otherwise
    CASE WHEN v_fast THEN pg_catalog.format(
      E'  v_data := cache_private.hit_fast(%L, %s, %s);\n  IF v_data IS NOT NULL THEN\n    RETURN v_data;\n  END IF;\n',
      p_cache_name, v_key, v_duration) ELSE '' END,
    p_cache_name, v_key, v_duration, v_call);
  EXECUTE pg_catalog.format(
    'CREATE OR REPLACE FUNCTION %s(%s%sp_cache_duration pg_catalog.interval DEFAULT %L::pg_catalog.interval) '
    'RETURNS pg_catalog.jsonb LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L',
    v_wrapper, v_args, CASE WHEN v_args = '' THEN '' ELSE ', ' END, c.default_duration, v_body);
  v_oid := pg_catalog.to_regprocedure(pg_catalog.format('%s(%s)', v_wrapper,
             CASE WHEN c.key_type IS NULL THEN 'interval' ELSE c.key_type || ', interval' END));
  EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon, authenticated, service_role, cache_admin', v_oid);
  EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO authenticated, cache_admin, service_role', v_oid);
  EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', v_oid, pg_catalog.format(
    'Cached %s (cache %s): same jsonb, served from query_cache for p_cache_duration%s. Generated by '
    'cache_private.write_wrapper from the cache catalog: change the catalog, not this function.',
    v_fn, p_cache_name,
    CASE WHEN c.duration_override IS NULL THEN ''
         ELSE pg_catalog.format(' (an admin set %s, which wins)', c.duration_override) END));
  UPDATE cache_private.caches SET wrapper_signature = v_oid::text WHERE cache_name = p_cache_name;
  RETURN v_oid;
END
$$;

-- Rewrites every cache's wrapper: after installing or removing pgcache_hit.
CREATE FUNCTION cache_private.rewrite_wrappers() RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_count integer := 0;
  r record;
BEGIN
  -- (a cache without a function, written to by the application itself, has no wrapper)
  FOR r IN SELECT cache_name FROM cache_private.caches WHERE function_signature IS NOT NULL ORDER BY cache_name LOOP
    PERFORM cache_private.write_wrapper(r.cache_name);
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END
$$;
COMMENT ON FUNCTION cache_private.rewrite_wrappers() IS
  'Rewrites the wrapper of every cache with a function from the catalog (after pgcache_hit is installed or removed); returns how many.';
REVOKE ALL ON FUNCTION cache_private.rewrite_wrappers() FROM PUBLIC, anon, authenticated, service_role, cache_admin;
