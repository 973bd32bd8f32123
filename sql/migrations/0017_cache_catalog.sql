-- One catalog of caches: a cache is a row, and registering it builds everything it needs.
--
-- Before this migration a cache was written out by hand: its row in cache_private.caches,
-- a wrapper function, invalidation triggers on each source table (insert, update and
-- delete from cache_private.attach_invalidation, TRUNCATE separately), its grants.
-- Now cache_private.caches says which function a cache serves and cache_private.cache_sources
-- which tables feed it (and the column that maps a changed row to a key), and
--
--   cache_private.register_cache(function, sources, duration, name, description)
--
-- creates from that row the wrapper <function>_cached(<its argument>, p_cache_duration),
-- the invalidation triggers (insert, update, delete and truncate on every source: per key
-- where a column maps rows to keys, the whole cache otherwise), the grants (authenticated,
-- cache_admin and service_role may call the wrapper; nobody else) and an audit row.
-- cache_private.unregister_cache(name) drops them again, with the cache's entries and
-- statistics. cache_private.set_cache_duration(name, duration) changes a cache's duration
-- at runtime: the wrapper is rewritten with the new duration written into it, so a hit
-- reads nothing more than before, and every caller (the application, or SQL written
-- from the guide with its own p_cache_duration) gets the admin's duration.
--
-- The guide's two caches are rebuilt here through the same functions: their wrappers keep
-- their public signatures and behaviour, and their triggers the same names.
--
-- Only the owner (the application's own connection, scheduled jobs) can run these: they
-- create functions and triggers. The application lets admins run them (cachelib/catalog.py),
-- like the other maintenance actions. public.cache_catalog is the read side every signed-in
-- role may see: which caches exist, the function each serves, and its duration.
--
-- What may be registered, and why (each rule is a refusal with a message in register_cache):
-- * a function that returns jsonb (one value, not a set) and takes at most one argument,
--   whose type is smallint, integer, bigint or uuid: the key is <cache>:<argument as text>,
--   and those types print the same in every session (a date or a float would not, and a
--   writer's trigger in another session must build the same key as the reader's wrapper);
-- * owned by the owner of the cache, or by a role that is a member of it: the wrapper runs
--   the function with the owner's rights, so a function someone else may rewrite would run
--   their code as the owner;
-- * with its own search_path (SET search_path = ... on the function): it runs for every
--   caller under the engine's pinned search_path, where an unqualified table name would be
--   looked up in the caller's pg_temp last: a caller's temporary table must not feed the cache;
-- * source tables that exist, and a key column of the same kind as the argument (whole
--   numbers, or uuid), so a changed row invalidates exactly the key that reads it.

-- --- the catalog ------------------------------------------------------------------------------

ALTER TABLE cache_private.caches
  ALTER COLUMN duration_setting DROP NOT NULL,
  ADD COLUMN function_signature text,        -- e.g. public.get_product_performance(bigint); NULL: wired by hand
  ADD COLUMN wrapper_signature text,         -- e.g. public.get_product_performance_cached(bigint,interval)
  ADD COLUMN key_type text,                  -- the argument's type, NULL for a function without argument
  ADD COLUMN default_duration interval NOT NULL DEFAULT interval '10 minutes',
  ADD COLUMN duration_override interval,     -- set by an admin at runtime; wins over every caller's duration
  ADD COLUMN duration_changed_at timestamptz,
  ADD COLUMN duration_changed_by text,
  ADD COLUMN builtin boolean NOT NULL DEFAULT false,  -- the guide's caches: cannot be removed
  ADD COLUMN registered_at timestamptz,
  ADD COLUMN registered_by text,
  ADD COLUMN from_queryid bigint;            -- the caching candidate (pg_stat_statements) it was wrapped from
COMMENT ON COLUMN cache_private.caches.duration_setting IS
  'Environment variable the application reads for this cache''s duration (the guide''s caches); NULL: default_duration.';
COMMENT ON COLUMN cache_private.caches.duration_override IS
  'Duration set by an admin at runtime (cache duration command); NULL: the caller''s p_cache_duration.';

CREATE TABLE cache_private.cache_sources (
  cache_name text NOT NULL REFERENCES cache_private.caches ON DELETE CASCADE,
  source_table text NOT NULL,  -- as regclass prints it, schema-qualified
  key_column text,             -- the column holding the key argument's value; NULL: any change, whole cache
  PRIMARY KEY (cache_name, source_table)
);
COMMENT ON TABLE cache_private.cache_sources IS
  'Tables a cache is computed from; a write to one invalidates the keys of the rows it changed (or the whole cache).';
ALTER TABLE cache_private.cache_sources ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.cache_sources FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- --- the rules --------------------------------------------------------------------------------

CREATE FUNCTION cache_private.refuse(p_message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  RAISE EXCEPTION '%', p_message USING ERRCODE = '22023';
END
$$;

-- Qualify a bare name with public: the engine's own search_path is pg_catalog, pg_temp.
CREATE FUNCTION cache_private.qualified(p_name text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT CASE WHEN pg_catalog.strpos(pg_catalog.split_part(p_name, '(', 1), '.') > 0 THEN p_name
              ELSE 'public.' || p_name END
$$;

-- The function named by p_function ('schema.name', 'name' or with its argument types), if
-- it may be cached; otherwise the reason it may not, as an error an admin can act on.
CREATE FUNCTION cache_private.cacheable_function(p_function text) RETURNS regprocedure
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_name text := cache_private.qualified(pg_catalog.btrim(COALESCE(p_function, '')));
  v_fn regprocedure;
  p pg_catalog.pg_proc;
  v_schema name;
  v_search_path boolean;
BEGIN
  IF pg_catalog.btrim(COALESCE(p_function, '')) = '' THEN
    PERFORM cache_private.refuse('give the function to cache, e.g. public.get_order_summary');
  END IF;
  BEGIN
    IF pg_catalog.strpos(v_name, '(') > 0 THEN
      v_fn := pg_catalog.to_regprocedure(v_name);
    ELSE
      v_fn := pg_catalog.to_regproc(v_name)::oid::regprocedure;
      IF v_fn IS NULL AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_proc p2 JOIN pg_catalog.pg_namespace n2 ON n2.oid = p2.pronamespace
           WHERE n2.nspname = pg_catalog.split_part(v_name, '.', 1) AND p2.proname = pg_catalog.split_part(v_name, '.', 2)) THEN
        PERFORM cache_private.refuse(pg_catalog.format(
          'more than one function is named %s: give its argument types too, e.g. %s(bigint)', v_name, v_name));
      END IF;
    END IF;
  EXCEPTION WHEN syntax_error OR invalid_name OR invalid_text_representation OR undefined_object
                 OR invalid_schema_name THEN
    v_fn := NULL;
  END;
  IF v_fn IS NULL THEN
    PERFORM cache_private.refuse(pg_catalog.format('no function %s exists (create it first, then register it)',
                                                   pg_catalog.left(v_name, 200)));
  END IF;
  SELECT * INTO p FROM pg_catalog.pg_proc WHERE oid = v_fn;
  SELECT nspname INTO v_schema FROM pg_catalog.pg_namespace WHERE oid = p.pronamespace;
  IF v_schema IN ('pg_catalog', 'information_schema', 'cache_private') OR v_schema LIKE 'pg\_temp%'
     OR v_schema LIKE 'pg\_toast%' THEN
    PERFORM cache_private.refuse(pg_catalog.format('%s is not a function of the application: it cannot be cached', v_fn));
  END IF;
  IF p.prokind <> 'f' THEN
    PERFORM cache_private.refuse(pg_catalog.format('%s is not a plain function (a procedure or aggregate)', v_fn));
  END IF;
  IF p.proretset OR p.prorettype <> 'pg_catalog.jsonb'::pg_catalog.regtype OR p.proallargtypes IS NOT NULL THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      '%s returns %s: only a function returning one jsonb value can be cached', v_fn,
      CASE WHEN p.proretset THEN 'a set' WHEN p.proallargtypes IS NOT NULL THEN 'OUT parameters'
           ELSE pg_catalog.format_type(p.prorettype, NULL) END));
  END IF;
  IF p.pronargs > 1 OR p.provariadic <> 0 THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      '%s takes %s arguments: a cached function takes at most one (its key, e.g. an id)', v_fn, p.pronargs));
  END IF;
  IF p.pronargs = 1 AND p.proargtypes[0] NOT IN ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype,
                                                 'pg_catalog.int8'::pg_catalog.regtype, 'pg_catalog.uuid'::pg_catalog.regtype) THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      '%s takes a %s: the key argument must be smallint, integer, bigint or uuid (values that read the same in '
      'every session)', v_fn, pg_catalog.format_type(p.proargtypes[0], NULL)));
  END IF;
  IF p.pronargs = 1 AND COALESCE(p.proargnames[1], '') = 'p_cache_duration' THEN
    PERFORM cache_private.refuse(pg_catalog.format('%s: its argument may not be called p_cache_duration', v_fn));
  END IF;
  IF NOT pg_catalog.pg_has_role(p.proowner,
                                (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'cache_private'),
                                'MEMBER') THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      '%s is owned by %s, not by the owner of the cache: its code would run with the cache owner''s rights for every '
      'caller (ALTER FUNCTION %s OWNER TO %s, after reading it)', v_fn, p.proowner::regrole, v_fn,
      (SELECT n.nspowner::regrole FROM pg_catalog.pg_namespace n WHERE n.nspname = 'cache_private')));
  END IF;
  -- pg_temp must be named, and last: where it is not named, PostgreSQL searches the session's
  -- temporary schema first for tables, so a caller's temporary table "orders" would be read instead.
  -- (the last entry: what follows the last comma, or the whole list when there is none)
  SELECT pg_catalog.btrim(pg_catalog.regexp_replace(pg_catalog.substr(c, pg_catalog.length('search_path=') + 1),
                                                    '^.*,', ''), ' "') = 'pg_temp'
  INTO v_search_path
  FROM pg_catalog.unnest(p.proconfig) c WHERE c LIKE 'search\_path=%';
  IF NOT COALESCE(v_search_path, false) THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      '%s must set its own search_path with pg_temp last: run ALTER FUNCTION %s SET search_path = %I, pg_temp, '
      'so no caller''s temporary tables are read in place of yours', v_fn, v_fn, v_schema));
  END IF;
  RETURN v_fn;
END
$$;

-- One source 'table' or 'table:column' of a cache whose function takes p_key_type, checked.
CREATE FUNCTION cache_private.checked_source(p_source text, p_key_type regtype, OUT source_table regclass,
                                             OUT key_column text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_text text := pg_catalog.btrim(COALESCE(p_source, ''));
  v_table_text text;
  v_type regtype;
  v_kind "char";
BEGIN
  IF v_text = '' THEN
    PERFORM cache_private.refuse('a source is a table, or TABLE:COLUMN where COLUMN holds the key, e.g. public.orders:customer_id');
  END IF;
  IF v_text ~ ':[^:.]*$' THEN
    v_table_text := pg_catalog.regexp_replace(v_text, ':[^:.]*$', '');
    key_column := pg_catalog.substring(v_text, ':([^:.]*)$');
  ELSE
    v_table_text := v_text;
  END IF;
  BEGIN
    source_table := pg_catalog.to_regclass(cache_private.qualified(v_table_text));
  EXCEPTION WHEN syntax_error OR invalid_name OR invalid_schema_name OR undefined_object THEN
    source_table := NULL;
  END;
  SELECT c.relkind INTO v_kind FROM pg_catalog.pg_class c WHERE c.oid = source_table;
  IF source_table IS NULL OR v_kind NOT IN ('r', 'p') THEN
    PERFORM cache_private.refuse(pg_catalog.format('source table %s does not exist%s',
      pg_catalog.left(v_table_text, 200), CASE WHEN source_table IS NULL THEN '' ELSE ' (it is not a table)' END));
  END IF;
  IF key_column IS NOT NULL THEN
    IF p_key_type IS NULL THEN
      PERFORM cache_private.refuse(pg_catalog.format(
        'the function takes no argument, so a change in %s cannot be mapped to a key: give %s without :%s',
        source_table, source_table, key_column));
    END IF;
    SELECT a.atttypid::regtype INTO v_type FROM pg_catalog.pg_attribute a
    WHERE a.attrelid = source_table AND a.attname = key_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF v_type IS NULL THEN
      PERFORM cache_private.refuse(pg_catalog.format('table %s has no column %I', source_table, key_column));
    END IF;
    IF (p_key_type = 'pg_catalog.uuid'::regtype) <> (v_type = 'pg_catalog.uuid'::regtype)
       OR v_type NOT IN ('pg_catalog.int2'::regtype, 'pg_catalog.int4'::regtype, 'pg_catalog.int8'::regtype,
                         'pg_catalog.uuid'::regtype) THEN
      PERFORM cache_private.refuse(pg_catalog.format(
        'column %s.%I is %s but the function''s key is %s: a changed row could not name the key it invalidates',
        source_table, key_column, v_type, p_key_type));
    END IF;
  END IF;
END
$$;

-- --- what a registered cache is built of --------------------------------------------------------

-- The invalidation triggers of one source: insert, update and delete (per key when a column
-- maps rows to keys, else the whole cache) and truncate (always the whole cache). Names are
-- invalidate_<cache>_ins, _upd, _del and _truncate, as the guide's caches have had since 0006.
CREATE FUNCTION cache_private.attach_source(p_cache_name text, p_table regclass, p_key_column text)
RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_base text := 'invalidate_' || p_cache_name;
BEGIN
  IF NOT pg_catalog.has_table_privilege(p_table, 'TRIGGER') THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'the cache''s owner (%s) may not create triggers on %s: GRANT TRIGGER ON %s TO %s, or have its owner '
      'register the cache', current_user, p_table, p_table, current_user));
  END IF;
  PERFORM cache_private.detach_source(p_cache_name, p_table);
  IF p_key_column IS NOT NULL THEN
    EXECUTE pg_catalog.format(
      'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
      'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_from_rows(%L, %L)',
      v_base || '_ins', p_table, p_cache_name, p_key_column);
    EXECUTE pg_catalog.format(
      'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
      'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_from_rows(%L, %L)',
      v_base || '_upd', p_table, p_cache_name, p_key_column);
    EXECUTE pg_catalog.format(
      'CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
      'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_from_rows(%L, %L)',
      v_base || '_del', p_table, p_cache_name, p_key_column);
  ELSE
    EXECUTE pg_catalog.format(
      'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s '
      'FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_all_of_cache(%L)',
      v_base || '_ins', p_table, p_cache_name);
  END IF;
  EXECUTE pg_catalog.format(
    'CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION cache_private.invalidate_all_of_cache(%L)',
    v_base || '_truncate', p_table, p_cache_name);
END
$$;

CREATE FUNCTION cache_private.detach_source(p_cache_name text, p_table regclass) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_suffix text;
BEGIN
  IF p_table IS NULL THEN
    RETURN;  -- the table is gone, and its triggers with it
  END IF;
  FOREACH v_suffix IN ARRAY ARRAY['_ins', '_upd', '_del', '_truncate'] LOOP
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
               WHERE t.tgrelid = p_table AND t.tgname = 'invalidate_' || p_cache_name || v_suffix) THEN
      EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', 'invalidate_' || p_cache_name || v_suffix, p_table);
    END IF;
  END LOOP;
END
$$;

-- (Re)write a cache's wrapper from its catalog row. The body is what 0005 wrote by hand for
-- the guide's caches: the key <cache>:<argument> (or <cache>:all for NULL), the duration,
-- and the direct call for a miss. A runtime duration is written in as a constant, so the
-- hit path reads no more rows than before. CREATE OR REPLACE keeps the wrapper's identity,
-- so callers and the grants below never see it missing.
CREATE FUNCTION cache_private.write_wrapper(p_cache_name text) RETURNS regprocedure
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
  v_body := pg_catalog.format(E'BEGIN\n%s  RETURN cache_private.get_or_compute(%L, %s, %s,\n    %s);\nEND',
    CASE WHEN c.duration_override IS NULL THEN ''
         -- the caller's duration is still checked, so a bad one is refused the same way with or without an override
         ELSE E'  PERFORM cache_private.check_duration(p_cache_duration);\n' END,
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

-- --- the read side -------------------------------------------------------------------------------

-- Which caches exist and how each is called: what the application needs to call any cache,
-- readable by every signed-in role (the application may connect as one). It runs with its
-- owner's rights, so readers need no right on cache_private; nothing in it is secret.
CREATE VIEW public.cache_catalog WITH (security_barrier) AS
  SELECT c.cache_name, c.description, c.function_signature, c.wrapper_signature, c.key_type,
         (SELECT p.proargnames[1] FROM pg_catalog.pg_proc p
          WHERE p.oid = pg_catalog.to_regprocedure(c.function_signature) AND p.pronargs = 1) AS key_argument,
         c.default_duration, c.duration_override, c.duration_setting, c.duration_changed_at, c.builtin,
         c.registered_at,
         COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('table', s.source_table, 'column', s.key_column)
                                               ORDER BY s.source_table)
                   FROM cache_private.cache_sources s WHERE s.cache_name = c.cache_name), '[]'::jsonb) AS sources
  FROM cache_private.caches c;
COMMENT ON VIEW public.cache_catalog IS
  'The registered caches: function, wrapper, key type, durations and source tables (one row per cache).';
REVOKE ALL ON public.cache_catalog FROM PUBLIC, anon, authenticated, service_role, cache_admin;
GRANT SELECT ON public.cache_catalog TO authenticated, cache_admin, service_role;

-- What the catalog holds about one cache, as the actions return it: its row of public.cache_catalog.
CREATE FUNCTION cache_private.describe_cache(p_cache_name text) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  SELECT pg_catalog.jsonb_build_object(
    'cache', c.cache_name, 'function', c.function_signature, 'wrapper', c.wrapper_signature,
    'key_type', c.key_type, 'description', c.description,
    'default_duration', c.default_duration::text, 'duration_override', c.duration_override::text,
    'duration_setting', c.duration_setting, 'builtin', c.builtin, 'sources', c.sources)
  FROM public.cache_catalog c WHERE c.cache_name = p_cache_name
$$;

-- --- the actions ---------------------------------------------------------------------------------

CREATE FUNCTION cache_private.register_cache(
  p_function text, p_sources text[], p_duration interval, p_name text DEFAULT NULL, p_description text DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_fn regprocedure := cache_private.cacheable_function(p_function);
  v_proname name;
  v_schema name;
  v_key_type regtype;
  v_name text;
  v_source text;
  v_checked record;
  v_result jsonb;
BEGIN
  PERFORM cache_private.check_duration(p_duration);
  SELECT p.proname, n.nspname, CASE WHEN p.pronargs = 1 THEN p.proargtypes[0]::regtype END
  INTO v_proname, v_schema, v_key_type
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = v_fn;
  v_name := COALESCE(NULLIF(pg_catalog.btrim(p_name), ''), pg_catalog.regexp_replace(v_proname, '^get_', ''));
  IF v_name !~ '^[a-z][a-z0-9_]{0,39}$' THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'cache name %s: use 1 to 40 lower-case letters, digits and underscores, starting with a letter%s',
      pg_catalog.quote_literal(pg_catalog.left(v_name, 100)),
      CASE WHEN p_name IS NULL OR pg_catalog.btrim(p_name) = '' THEN ' (give one with the name parameter)' ELSE '' END));
  END IF;
  IF EXISTS (SELECT 1 FROM cache_private.caches WHERE cache_name = v_name) THEN
    PERFORM cache_private.refuse(pg_catalog.format('a cache named %s exists already', v_name));
  END IF;
  IF EXISTS (SELECT 1 FROM cache_private.caches WHERE function_signature = v_fn::text) THEN
    PERFORM cache_private.refuse(pg_catalog.format('%s is cached already (cache %s)', v_fn,
      (SELECT cache_name FROM cache_private.caches WHERE function_signature = v_fn::text)));
  END IF;
  IF pg_catalog.octet_length(v_proname || '_cached') > 63 THEN
    PERFORM cache_private.refuse(pg_catalog.format('%s_cached would be longer than PostgreSQL''s 63-byte names', v_proname));
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace
                                                                         WHERE nspname = v_schema)
                                                  AND p.proname = v_proname || '_cached') THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'a function %I.%I exists already: the cache''s wrapper would replace it', v_schema, v_proname || '_cached'));
  END IF;
  IF COALESCE(pg_catalog.cardinality(p_sources), 0) = 0 THEN
    PERFORM cache_private.refuse(
      'give at least one source table (TABLE or TABLE:KEY_COLUMN): without one, nothing would invalidate the cache '
      'and it would serve old results until they expire');
  END IF;
  IF pg_catalog.length(COALESCE(p_description, '')) > 500 THEN
    PERFORM cache_private.refuse('description: at most 500 characters');
  END IF;

  INSERT INTO cache_private.caches
    (cache_name, duration_setting, description, function_signature, key_type, default_duration,
     registered_at, registered_by)
  VALUES (v_name, NULL, COALESCE(NULLIF(pg_catalog.btrim(p_description), ''),
                                  pg_catalog.obj_description(v_fn, 'pg_proc'), 'Cached ' || v_fn::text), v_fn::text,
          v_key_type::text, p_duration, cache_private.cache_now(), cache_private.actor());
  FOREACH v_source IN ARRAY p_sources LOOP
    SELECT * INTO v_checked FROM cache_private.checked_source(v_source, v_key_type);
    INSERT INTO cache_private.cache_sources (cache_name, source_table, key_column)
    VALUES (v_name, v_checked.source_table::text, v_checked.key_column)
    ON CONFLICT (cache_name, source_table) DO NOTHING;
    IF NOT FOUND THEN
      PERFORM cache_private.refuse(pg_catalog.format('source %s is given twice', v_checked.source_table));
    END IF;
    PERFORM cache_private.attach_source(v_name, v_checked.source_table, v_checked.key_column);
  END LOOP;
  PERFORM cache_private.write_wrapper(v_name);
  v_result := cache_private.describe_cache(v_name);
  PERFORM cache_private.write_audit('cache_add', pg_catalog.jsonb_build_object(
      'function', p_function, 'sources', p_sources, 'duration', p_duration::text, 'name', p_name),
    'ok', v_result, cache_private.elapsed_ms(v_started));
  RETURN v_result;
END
$$;

CREATE FUNCTION cache_private.unregister_cache(p_cache_name text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  c cache_private.caches;
  s record;
  v_entries integer;
  v_result jsonb;
BEGIN
  PERFORM cache_private.check_cache_name(p_cache_name);
  SELECT * INTO c FROM cache_private.caches WHERE cache_name = p_cache_name FOR UPDATE;
  IF c.builtin THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'cache %s is one of the deployment guide''s caches: it cannot be removed (CACHE_ENABLED=false turns caching off)',
      p_cache_name));
  END IF;
  IF c.function_signature IS NULL THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'cache %s was wired by hand, not registered: drop its wrapper and triggers by hand', p_cache_name));
  END IF;
  v_result := cache_private.describe_cache(p_cache_name);
  FOR s IN SELECT source_table FROM cache_private.cache_sources WHERE cache_name = p_cache_name LOOP
    PERFORM cache_private.detach_source(p_cache_name, pg_catalog.to_regclass(s.source_table));
  END LOOP;
  IF pg_catalog.to_regprocedure(c.wrapper_signature) IS NOT NULL THEN
    EXECUTE pg_catalog.format('DROP FUNCTION %s', pg_catalog.to_regprocedure(c.wrapper_signature));
  END IF;
  -- Its entries (a computation still running holds its row: wait for it, bounded by the
  -- caller's lock_timeout), statistics and bookkeeping go with it.
  WITH gone AS (DELETE FROM public.query_cache WHERE cache_name = p_cache_name RETURNING 1)
  SELECT pg_catalog.count(*) INTO v_entries FROM gone;
  DELETE FROM cache_private.cache_events WHERE cache_name = p_cache_name;
  DELETE FROM cache_private.cache_stats_hourly WHERE cache_name = p_cache_name;
  DELETE FROM cache_private.fallback_reasons WHERE cache_name = p_cache_name;
  DELETE FROM cache_private.invalidations WHERE cache_name = p_cache_name;
  DELETE FROM cache_private.key_activity_daily WHERE cache_name = p_cache_name;
  DELETE FROM cache_private.invalidations_daily WHERE cache_name = p_cache_name;
  DELETE FROM cache_private.caches WHERE cache_name = p_cache_name;  -- and its sources (ON DELETE CASCADE)
  v_result := v_result || pg_catalog.jsonb_build_object('entries_deleted', v_entries);
  PERFORM cache_private.write_audit('cache_remove', pg_catalog.jsonb_build_object('cache', p_cache_name), 'ok',
                                    v_result, cache_private.elapsed_ms(v_started));
  RETURN v_result;
END
$$;

-- p_duration NULL: back to the caller's p_cache_duration (the environment's, for the application).
CREATE FUNCTION cache_private.set_cache_duration(p_cache_name text, p_duration interval) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_started timestamptz := pg_catalog.clock_timestamp();
  v_before interval;
  v_result jsonb;
BEGIN
  PERFORM cache_private.check_cache_name(p_cache_name);
  IF p_duration IS NOT NULL THEN
    PERFORM cache_private.check_duration(p_duration);
  END IF;
  SELECT duration_override INTO v_before FROM cache_private.caches WHERE cache_name = p_cache_name FOR UPDATE;
  IF (SELECT function_signature FROM cache_private.caches WHERE cache_name = p_cache_name) IS NULL THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'cache %s was wired by hand, not registered: its duration is whatever its callers pass', p_cache_name));
  END IF;
  UPDATE cache_private.caches
  SET duration_override = p_duration, duration_changed_at = cache_private.cache_now(),
      duration_changed_by = cache_private.actor()
  WHERE cache_name = p_cache_name;
  PERFORM cache_private.write_wrapper(p_cache_name);
  v_result := cache_private.describe_cache(p_cache_name)
              || pg_catalog.jsonb_build_object('previous_override', v_before::text);
  PERFORM cache_private.write_audit('cache_duration',
    pg_catalog.jsonb_build_object('cache', p_cache_name, 'duration', p_duration::text), 'ok', v_result,
    cache_private.elapsed_ms(v_started));
  RETURN v_result;
END
$$;

-- --- from a caching candidate to a function ------------------------------------------------------

-- Wrap a read query (a caching candidate from pg_stat_statements, cachelib/candidates.py) in a
-- function that register_cache accepts: public.<name>(p_key <type> DEFAULT NULL) returning the
-- query's rows as a jsonb array. The body is SQL-standard (BEGIN ATOMIC): its tables and
-- functions are resolved now, from public, and kept by identity, so no later search_path (or a
-- caller's temporary table) can change what it reads; PostgreSQL records the tables it reads,
-- which become its sources. The query may take one parameter ($1), whose type PostgreSQL infers
-- (PREPARE); it must be one a key can be. Returns the new function.
CREATE FUNCTION cache_private.wrap_query(p_name text, p_query text) RETURNS regprocedure
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_types regtype[];
  v_argument text := '';
  v_fn regprocedure;
BEGIN
  IF p_name IS NULL OR p_name !~ '^[a-z][a-z0-9_]{0,50}$' THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'function name %s: use 1 to 51 lower-case letters, digits and underscores, starting with a letter',
      pg_catalog.quote_literal(pg_catalog.left(COALESCE(p_name, ''), 100))));
  END IF;
  IF EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = 'public'::regnamespace AND proname = p_name) THEN
    PERFORM cache_private.refuse(pg_catalog.format('a function public.%I exists already: choose another name', p_name));
  END IF;
  IF pg_catalog.strpos(COALESCE(p_query, ''), ';') > 0 OR pg_catalog.btrim(COALESCE(p_query, '')) = '' THEN
    PERFORM cache_private.refuse('give one read query, without a semicolon');
  END IF;
  -- Resolve the query's names the way the application wrote them: in public, then the catalog;
  -- pg_temp named last (unnamed, it would be searched first). Reverted when this function ends.
  PERFORM pg_catalog.set_config('search_path', 'public, pg_catalog, pg_temp', true);
  BEGIN
    EXECUTE pg_catalog.format('PREPARE cache_wrap_probe AS %s', p_query);
    SELECT parameter_types INTO v_types FROM pg_catalog.pg_prepared_statements WHERE name = 'cache_wrap_probe';
    DEALLOCATE cache_wrap_probe;
  EXCEPTION WHEN syntax_error OR undefined_table OR undefined_column OR undefined_function OR ambiguous_column
                 OR datatype_mismatch OR indeterminate_datatype OR wrong_object_type THEN
    PERFORM cache_private.refuse('the query cannot be wrapped as it is: ' || SQLERRM);
  END;
  IF pg_catalog.cardinality(v_types) > 1 THEN
    PERFORM cache_private.refuse(pg_catalog.format(
      'the query takes %s parameters: a cached function takes at most one (its key)', pg_catalog.cardinality(v_types)));
  END IF;
  IF pg_catalog.cardinality(v_types) = 1 THEN
    IF v_types[1] NOT IN ('pg_catalog.int2'::regtype, 'pg_catalog.int4'::regtype, 'pg_catalog.int8'::regtype,
                          'pg_catalog.uuid'::regtype) THEN
      PERFORM cache_private.refuse(pg_catalog.format(
        'the query''s parameter is a %s: a key must be smallint, integer, bigint or uuid', v_types[1]));
    END IF;
    v_argument := pg_catalog.format('p_key %s DEFAULT NULL', v_types[1]);
  END IF;
  EXECUTE pg_catalog.format(
    'CREATE FUNCTION public.%I(%s) RETURNS pg_catalog.jsonb LANGUAGE sql STABLE '
    'SET search_path = public, pg_temp BEGIN ATOMIC '
    'SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(q)), ''[]''::pg_catalog.jsonb) FROM (%s) q; END',
    p_name, v_argument, p_query);
  v_fn := pg_catalog.to_regprocedure(pg_catalog.format('public.%I(%s)', p_name,
                                                       COALESCE(v_types[1]::text, '')));
  EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', v_fn,
                            'Wrapped from a caching candidate: ' || pg_catalog.left(p_query, 400));
  -- Like the guide's direct twins: the signed-in roles may call it (the application falls back to it).
  EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, anon', v_fn);
  EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO authenticated, cache_admin, service_role', v_fn);
  RETURN v_fn;
END
$$;

-- The tables a function with an SQL-standard body reads (PostgreSQL recorded them when it was made).
-- VOLATILE: it must see a function made earlier in the same statement (wrap_query).
CREATE FUNCTION cache_private.tables_read(p_function regprocedure) RETURNS text[]
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
  SELECT COALESCE(pg_catalog.array_agg(DISTINCT d.refobjid::regclass::text ORDER BY d.refobjid::regclass::text), '{}')
  FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.refobjid
  WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p_function
    AND d.refclassid = 'pg_catalog.pg_class'::regclass AND c.relkind IN ('r', 'p')
$$;

-- --- who may run all this: the owner only ---------------------------------------------------------

REVOKE ALL ON FUNCTION
  cache_private.refuse(text), cache_private.qualified(text), cache_private.cacheable_function(text),
  cache_private.checked_source(text, regtype), cache_private.attach_source(text, regclass, text),
  cache_private.detach_source(text, regclass), cache_private.write_wrapper(text), cache_private.describe_cache(text),
  cache_private.register_cache(text, text[], interval, text, text), cache_private.unregister_cache(text),
  cache_private.set_cache_duration(text, interval), cache_private.wrap_query(text, text),
  cache_private.tables_read(regprocedure)
FROM PUBLIC, anon, authenticated, service_role, cache_admin;

-- --- the guide's caches, rebuilt from the catalog ------------------------------------------------

UPDATE cache_private.caches SET function_signature = 'public.get_expert_sessions_with_stats(bigint)',
  key_type = 'bigint', default_duration = interval '5 minutes', builtin = true
WHERE cache_name = 'expert_sessions';
UPDATE cache_private.caches SET function_signature = 'public.get_product_performance(bigint)',
  key_type = 'bigint', default_duration = interval '15 minutes', builtin = true
WHERE cache_name = 'product_performance';
INSERT INTO cache_private.cache_sources VALUES
  ('expert_sessions', 'public.experts', 'id'),
  ('expert_sessions', 'public.expert_sessions', 'expert_id'),
  ('product_performance', 'public.products', 'id'),
  ('product_performance', 'public.orders', 'product_id');

DO $$
DECLARE
  s record;
BEGIN
  FOR s IN SELECT * FROM cache_private.cache_sources LOOP
    PERFORM cache_private.attach_source(s.cache_name, s.source_table::regclass, s.key_column);
  END LOOP;
  PERFORM cache_private.write_wrapper('expert_sessions');
  PERFORM cache_private.write_wrapper('product_performance');
END
$$;

-- Replaced by attach_source, which also attaches the TRUNCATE trigger.
DROP FUNCTION cache_private.attach_invalidation(regclass, text, text);

-- --- the health analysis names how to change any cache's duration ------------------------------

-- As in 0016, except the hit-rate recommendation: a registered cache has no environment
-- variable (its duration_setting is NULL, which made the whole recommendation NULL), and
-- every cache's duration can now be changed at runtime.
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
  -- Every count below in one pass over the entries: this runs on tables of millions of rows.
  SELECT count(*) FILTER (WHERE q.data IS NOT NULL) AS entries,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now) AS expired,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now - c_expired_grace) AS expired_late,
         count(*) FILTER (WHERE q.data IS NOT NULL
                            AND q.expires_at <= v_now - c_expired_critical_age) AS expired_day,
         count(*) FILTER (WHERE q.data IS NULL) AS tombstones,
         count(*) FILTER (WHERE q.data IS NOT NULL AND q.expires_at <= v_now AND q.hit_count = 0) AS expired_never_hit,
         count(*) FILTER (WHERE q.invalidated_at > v_now - interval '24 hours'
                            AND q.last_lifetime < q.ttl / 4) AS invalidated_early,
         count(*) FILTER (WHERE q.invalidated_at > v_now - interval '24 hours'
                            AND q.last_lifetime IS NOT NULL) AS invalidated,
         COALESCE(sum(q.size_bytes) FILTER (WHERE q.data IS NOT NULL), 0) AS bytes
  INTO c FROM public.query_cache q;

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

