-- pgcache_hit 1.0: the optional C hit path (ext/pgcache_hit/README.md). Owned by the
-- installing superuser; nothing here is granted: only the engine's owner calls it.
\echo Use "CREATE EXTENSION pgcache_hit" to load this file. \quit

CREATE FUNCTION cache_private.hit_fast(p_cache_name text, p_cache_key text, p_cache_duration interval)
RETURNS jsonb LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'hit_fast';
COMMENT ON FUNCTION cache_private.hit_fast(text, text, interval) IS
  'The entry''s data when get_or_compute''s quick proof holds, counted in shared memory; NULL otherwise (go the SQL way).';

CREATE FUNCTION cache_private.drain_fast_hits(
  OUT cache_name text, OUT cache_key text, OUT entry_created_at timestamptz, OUT hits bigint,
  OUT elapsed_ms double precision, OUT compute_ms double precision,
  OUT first_hit_at timestamptz, OUT last_hit_at timestamptz)
RETURNS SETOF record LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'drain_fast_hits';
COMMENT ON FUNCTION cache_private.drain_fast_hits() IS
  'Hands over the hits counted in shared memory and empties the table; an aborted transaction puts them back.';

-- The drained sums into the engine's event log, one row per (key, entry, hour) weighted by its
-- hits (cache_events.weight, migration 0026), for the roll-up to count like any other event.
-- Returns the hits forwarded. rollup_stats calls it first when the extension is installed.
CREATE FUNCTION cache_private.forward_fast_hits() RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_hits bigint;
BEGIN
  WITH drained AS (
    SELECT * FROM cache_private.drain_fast_hits()
  ), appended AS (
    INSERT INTO cache_private.cache_events (event_at, cache_name, cache_key, kind, elapsed_ms, compute_ms, weight)
    -- last_hit_at: the roll-up counts a hit for the entry only if it came after the entry was stored
    SELECT d.last_hit_at, d.cache_name, d.cache_key, 'hit', d.elapsed_ms, d.compute_ms, d.hits
    FROM drained d
    -- hits of a cache removed since are dropped with its other events (remove_cache)
    WHERE EXISTS (SELECT 1 FROM cache_private.caches c WHERE c.cache_name = d.cache_name)
    RETURNING weight
  )
  SELECT COALESCE(sum(weight), 0) INTO v_hits FROM appended;
  RETURN v_hits;
END
$$;

REVOKE ALL ON FUNCTION cache_private.hit_fast(text, text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION cache_private.drain_fast_hits() FROM PUBLIC;
REVOKE ALL ON FUNCTION cache_private.forward_fast_hits() FROM PUBLIC;
