-- An eviction locks only the entries it evicts.
--
-- evict_least_useful (0022) locked a batch of at least 100 candidates (FOR UPDATE SKIP LOCKED)
-- and deleted only the few it needed; the rest stayed locked until its transaction ended.
-- Under concurrent stores at the size bound, one store's eviction locked most of a small cache,
-- and the stores after it found every candidate locked, skipped them all and evicted nothing:
-- 16 clients storing at a bound of 200 entries (headroom 32) peaked at 189 in a measurement,
-- and once at 201 in a full test run. Measured with a log of every store's eviction: about half
-- the stores that needed to evict evicted nothing.
--
-- Now each pass locks exactly as many of the least useful entries as it still needs: the count
-- it must take out, or, for bytes, the number of entries whose sizes (as this statement sees
-- them) add up to the bytes it must free. An entry locked by another eviction is skipped and
-- the pass takes the next one, so concurrent evictions together take out what each needs.

CREATE OR REPLACE FUNCTION cache_private.evict_least_useful(
  p_entries bigint, p_bytes bigint, p_spare text DEFAULT NULL, p_limit bigint DEFAULT NULL,
  OUT evicted bigint, OUT evicted_bytes bigint
)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  c_batch constant bigint := 5000;
  v_room bigint;   -- entries this call may still take (p_limit, and one batch)
  v_want bigint;   -- entries to lock in this pass
  v_batch bigint;
  v_batch_bytes bigint;
BEGIN
  evicted := 0;
  evicted_bytes := 0;
  WHILE (evicted < p_entries OR evicted_bytes < p_bytes) AND (p_limit IS NULL OR evicted < p_limit) LOOP
    v_room := LEAST(c_batch, COALESCE(p_limit - evicted, c_batch));
    v_want := GREATEST(p_entries - evicted, 0);
    IF evicted_bytes < p_bytes THEN
      -- The least useful entries whose sizes reach the bytes still to free (each entry's size is
      -- known only once read; read without locking, so that nothing is locked and left).
      SELECT GREATEST(v_want, count(*)) INTO v_want
      FROM (SELECT pg_catalog.sum(l.size_bytes) OVER w - l.size_bytes AS bytes_before
            FROM (SELECT q.size_bytes, q.hit_count * q.compute_ms AS saved, q.last_hit_at, q.created_at, q.cache_key
                  FROM public.query_cache q
                  WHERE q.data IS NOT NULL AND q.cache_key IS DISTINCT FROM p_spare
                  ORDER BY q.hit_count * q.compute_ms, q.last_hit_at NULLS FIRST, q.created_at, q.cache_key
                  LIMIT v_room) l
            WINDOW w AS (ORDER BY l.saved, l.last_hit_at NULLS FIRST, l.created_at, l.cache_key)) s
      WHERE s.bytes_before < p_bytes - evicted_bytes;
    END IF;
    v_want := LEAST(v_want, v_room);
    EXIT WHEN v_want = 0;
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
      -- The locked entries are all needed, unless others' sizes changed since they were read.
      DELETE FROM public.query_cache q USING ranked r
      WHERE q.cache_key = r.cache_key
        AND (r.position <= p_entries - evicted OR r.bytes_before < p_bytes - evicted_bytes)
      RETURNING q.size_bytes
    )
    SELECT count(*), COALESCE(sum(g.size_bytes), 0) INTO v_batch, v_batch_bytes FROM gone g;
    EXIT WHEN v_batch = 0;
    evicted := evicted + v_batch;
    evicted_bytes := evicted_bytes + v_batch_bytes;
  END LOOP;
END
$$;
