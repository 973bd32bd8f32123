-- Invalidation: writes to a source table mark exactly the affected keys stale
-- (one id's key and the cache's ":all" key) when the writing transaction commits.
--
-- A statement-level trigger on each source table only notes the keys (in an
-- unlogged, transaction-private queue). A deferred constraint trigger then
-- marks them all at commit time, in one global order (cache name, ":all" key
-- first, then key order). Marking at commit rather than per statement means a
-- writer holds cache rows only for the moment of its commit, so writers to the
-- same cache do not queue behind each other's whole transactions, and
-- transactions that write several cached tables in different orders cannot
-- deadlock on cache rows.
--
-- Marking is an upsert of a tombstone, not a DELETE: an upsert also waits for a
-- computation of the same key that is in flight (it holds the row), so a result
-- computed from data older than this write can never outlive the write's commit.

CREATE FUNCTION cache_private.invalidate_keys(p_cache_name text, p_keys text[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
  v_now timestamptz := cache_private.cache_now();
  v_new_keys text[];
  v_count integer;
BEGIN
  WITH upserted AS (
    INSERT INTO public.query_cache AS c
      (cache_key, cache_name, data, expires_at, created_at, invalidation_count, invalidated_at)
    SELECT k, p_cache_name, NULL, '-infinity', v_now, 1, v_now
    FROM (SELECT DISTINCT k FROM pg_catalog.unnest(p_keys) AS k WHERE k IS NOT NULL) keys
    ORDER BY k NOT LIKE '%:all', k
    ON CONFLICT (cache_key) DO UPDATE SET
      data = NULL,
      expires_at = '-infinity',
      size_bytes = 0,
      invalidation_count = c.invalidation_count + 1,
      invalidated_at = v_now,
      -- How long the value lived before this write made it stale (for the health check).
      last_lifetime = CASE WHEN c.data IS NOT NULL THEN v_now - c.created_at ELSE c.last_lifetime END
    RETURNING c.cache_key, (c.xmax = 0) AS inserted
  )
  SELECT pg_catalog.array_agg(cache_key) FILTER (WHERE inserted), count(*) INTO v_new_keys, v_count FROM upserted;
  -- A key nobody had cached needs no tombstone once we commit. Deleting it in
  -- this transaction still makes a concurrent first computation of that key
  -- wait for our commit (unique-index check), which is all the insert was for.
  IF v_new_keys IS NOT NULL THEN
    DELETE FROM public.query_cache WHERE cache_key = ANY (v_new_keys);
  END IF;
  RETURN v_count;
END
$$;

-- Keys noted by this transaction's writes, marked stale at its commit. Rows never
-- outlive their transaction (the commit-time trigger deletes them; a rollback
-- discards them), so the table is unlogged.
CREATE UNLOGGED TABLE cache_private.pending_invalidations (
  txid xid8 NOT NULL,
  cache_name text NOT NULL,
  cache_key text NOT NULL,
  PRIMARY KEY (txid, cache_key)
);
-- One row per writing transaction; its deferred trigger does the marking at commit.
CREATE UNLOGGED TABLE cache_private.pending_commits (
  txid xid8 PRIMARY KEY
);

CREATE FUNCTION cache_private.queue_invalidation(p_cache_name text, p_keys text[]) RETURNS void
LANGUAGE sql VOLATILE SET search_path = '' AS $$
  INSERT INTO cache_private.pending_invalidations (txid, cache_name, cache_key)
  SELECT pg_catalog.pg_current_xact_id(), p_cache_name, k
  FROM pg_catalog.unnest(p_keys) AS k WHERE k IS NOT NULL
  ON CONFLICT DO NOTHING;
  INSERT INTO cache_private.pending_commits (txid) VALUES (pg_catalog.pg_current_xact_id())
  ON CONFLICT DO NOTHING;
$$;

-- At commit: mark every queued key of this transaction stale, cache by cache in name order.
CREATE FUNCTION cache_private.invalidate_at_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  r record;
BEGIN
  FOR r IN
    WITH mine AS (
      DELETE FROM cache_private.pending_invalidations
      WHERE txid = pg_catalog.pg_current_xact_id()
      RETURNING cache_name, cache_key
    )
    SELECT cache_name, pg_catalog.array_agg(cache_key) AS keys FROM mine GROUP BY cache_name ORDER BY cache_name
  LOOP
    PERFORM cache_private.invalidate_keys(r.cache_name, r.keys);
  END LOOP;
  DELETE FROM cache_private.pending_commits WHERE txid = pg_catalog.pg_current_xact_id();
  RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER invalidate_cache_at_commit
  AFTER INSERT ON cache_private.pending_commits
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION cache_private.invalidate_at_commit();

-- Statement-level trigger for any source table: notes the affected keys.
-- TG_ARGV[0]: the cache name; TG_ARGV[1]: the column holding the id that keys it.
-- Transition tables make a bulk load of a million rows one call, not a million.
CREATE FUNCTION cache_private.invalidate_from_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  v_cache text := TG_ARGV[0];
  v_ids text[] := '{}';
  v_more text[];
BEGIN
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    EXECUTE pg_catalog.format('SELECT array_agg(DISTINCT %I::text) FROM new_rows', TG_ARGV[1]) INTO v_more;
    v_ids := v_ids || COALESCE(v_more, '{}');
  END IF;
  IF TG_OP IN ('DELETE', 'UPDATE') THEN
    EXECUTE pg_catalog.format('SELECT array_agg(DISTINCT %I::text) FROM old_rows', TG_ARGV[1]) INTO v_more;
    v_ids := v_ids || COALESCE(v_more, '{}');
  END IF;
  IF pg_catalog.cardinality(v_ids) > 0 THEN
    PERFORM cache_private.queue_invalidation(
      v_cache,
      ARRAY[v_cache || ':all'] || ARRAY(SELECT v_cache || ':' || id FROM pg_catalog.unnest(v_ids) AS id));
  END IF;
  RETURN NULL;
END
$$;

-- One trigger per operation: PostgreSQL allows transition tables only that way.
CREATE FUNCTION cache_private.attach_invalidation(p_table regclass, p_cache_name text, p_id_column text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = '' AS $$
DECLARE
  v_base text := 'invalidate_' || p_cache_name;
BEGIN
  EXECUTE pg_catalog.format(
    'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
    'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_from_rows(%L, %L)',
    v_base || '_ins', p_table, p_cache_name, p_id_column);
  EXECUTE pg_catalog.format(
    'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
    'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_from_rows(%L, %L)',
    v_base || '_upd', p_table, p_cache_name, p_id_column);
  EXECUTE pg_catalog.format(
    'CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
    'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_from_rows(%L, %L)',
    v_base || '_del', p_table, p_cache_name, p_id_column);
END
$$;

DO $$
BEGIN
  PERFORM cache_private.attach_invalidation('public.experts', 'expert_sessions', 'id');
  PERFORM cache_private.attach_invalidation('public.expert_sessions', 'expert_sessions', 'expert_id');
  PERFORM cache_private.attach_invalidation('public.products', 'product_performance', 'id');
  PERFORM cache_private.attach_invalidation('public.orders', 'product_performance', 'product_id');
END
$$;

-- TRUNCATE has no rows to look at: it invalidates the whole cache.
CREATE FUNCTION cache_private.invalidate_all_of_cache() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
  PERFORM cache_private.queue_invalidation(TG_ARGV[0], ARRAY(
    SELECT cache_key FROM public.query_cache WHERE cache_name = TG_ARGV[0]
    UNION SELECT TG_ARGV[0] || ':all'));
  RETURN NULL;
END
$$;
CREATE TRIGGER invalidate_expert_sessions_truncate AFTER TRUNCATE ON public.expert_sessions
  FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_all_of_cache('expert_sessions');
CREATE TRIGGER invalidate_expert_sessions_truncate AFTER TRUNCATE ON public.experts
  FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_all_of_cache('expert_sessions');
CREATE TRIGGER invalidate_product_performance_truncate AFTER TRUNCATE ON public.orders
  FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_all_of_cache('product_performance');
CREATE TRIGGER invalidate_product_performance_truncate AFTER TRUNCATE ON public.products
  FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_all_of_cache('product_performance');
