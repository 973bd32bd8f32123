-- Foundation: the private schema, the roles, settings and the one clock.
--
-- Roles follow Supabase's names so the same migrations run there unchanged:
-- anon, authenticated and service_role are used when they exist and created
-- (NOLOGIN) when they do not; cache_admin holds the maintenance rights.

DO $$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role', 'cache_admin'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END
$$;

CREATE SCHEMA IF NOT EXISTS cache_private;
REVOKE ALL ON SCHEMA cache_private FROM PUBLIC;
COMMENT ON SCHEMA cache_private IS
  'Helpers and bookkeeping of the query cache. Not part of the public API; only the owner uses it.';

-- Key/value settings the SQL side needs (size bounds, retention, deployment start).
CREATE TABLE cache_private.settings (
  name text PRIMARY KEY,
  value text NOT NULL,
  meaning text NOT NULL
);

INSERT INTO cache_private.settings (name, value, meaning) VALUES
  ('deployed_at', pg_catalog.now()::text, 'When the cache was deployed; Week 1 and Month 1 count from here.'),
  ('max_entries', '100000', 'Most live cache entries; cleanup evicts the least useful beyond this.'),
  ('max_total_bytes', '1073741824', 'Most bytes of cached data; cleanup evicts the least useful beyond this.'),
  ('stats_retention_days', '450', 'Days of hourly hit/miss statistics kept.'),
  ('compute_lock_timeout_ms', '5000', 'How long a miss waits for another caller computing the same key.'),
  ('demo_data', 'false', 'true when the statistics were produced by the demo traffic generator.');

CREATE FUNCTION cache_private.setting(p_name text) RETURNS text
LANGUAGE sql STABLE SET search_path = '' AS $$
  SELECT value FROM cache_private.settings WHERE name = p_name
$$;

-- The one clock. Tests and the demo traffic generator move it per session with
-- SET cachelib.now = '2026-01-01 10:00+00'; everything else uses real time.
-- No SET clause, so it can be inlined on the hit path; its names are qualified.
CREATE FUNCTION cache_private.cache_now() RETURNS timestamptz
LANGUAGE sql STABLE AS $$
  SELECT COALESCE(NULLIF(pg_catalog.current_setting('cachelib.now', true), '')::timestamptz, pg_catalog.now())
$$;
