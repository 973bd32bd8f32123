-- Counters that never run backwards: lifetime totals of hits, misses and fallbacks per cache.
--
-- GET /metrics exported pgcache_hits_total (and misses, fallbacks) as sums over the hourly
-- statistics, which keep stats_retention_days (450). Once the roll-up deleted an hour past
-- retention, the "counter" went down; Prometheus reads a decrease as a counter reset, and
-- rate() and increase() spike for that scrape (the shipped fallback alert could fire on it).
--
-- Here the totals are kept apart from the retained history, in cache_private.cache_lifetime_totals,
-- and maintained by a trigger on cache_private.cache_stats_hourly: every insert or update of an
-- hour adds what it added, and the retention's DELETE takes nothing away. So they count whoever
-- rolled the events up (the dashboard, the API, the pgcache-rollup job) with no change to the
-- roll-up itself. A cache removed from the catalog takes its totals with it (its series ends).
-- They start from the history still kept when this migration runs.

CREATE TABLE cache_private.cache_lifetime_totals (
  cache_name text PRIMARY KEY REFERENCES cache_private.caches (cache_name) ON DELETE CASCADE,
  hits bigint NOT NULL DEFAULT 0 CHECK (hits >= 0),
  misses bigint NOT NULL DEFAULT 0 CHECK (misses >= 0),
  fallbacks bigint NOT NULL DEFAULT 0 CHECK (fallbacks >= 0),
  counting_since timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE cache_private.cache_lifetime_totals IS
  'Hits, misses and fallbacks per cache since it was first counted; never lowered by the statistics retention.';
ALTER TABLE cache_private.cache_lifetime_totals ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.cache_lifetime_totals FROM PUBLIC, anon, authenticated, service_role, cache_admin;

INSERT INTO cache_private.cache_lifetime_totals (cache_name, hits, misses, fallbacks, counting_since)
SELECT c.cache_name, COALESCE(sum(s.hits), 0), COALESCE(sum(s.misses), 0), COALESCE(sum(s.fallbacks), 0),
       COALESCE(min(s.bucket), pg_catalog.now())
FROM cache_private.caches c LEFT JOIN cache_private.cache_stats_hourly s USING (cache_name)
GROUP BY c.cache_name;

-- What an hour's row gained (all of it when inserted), added to its cache's totals. Statistics of a
-- cache no longer in the catalog (removed while its events were still being rolled up) are skipped.
CREATE FUNCTION cache_private.add_to_lifetime_totals() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  v_hits bigint := NEW.hits;
  v_misses bigint := NEW.misses;
  v_fallbacks bigint := NEW.fallbacks;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    v_hits := GREATEST(NEW.hits - OLD.hits, 0);
    v_misses := GREATEST(NEW.misses - OLD.misses, 0);
    v_fallbacks := GREATEST(NEW.fallbacks - OLD.fallbacks, 0);
  END IF;
  IF v_hits = 0 AND v_misses = 0 AND v_fallbacks = 0 THEN
    RETURN NULL;
  END IF;
  INSERT INTO cache_private.cache_lifetime_totals AS t (cache_name, hits, misses, fallbacks, counting_since)
  SELECT NEW.cache_name, v_hits, v_misses, v_fallbacks, NEW.bucket
  WHERE EXISTS (SELECT 1 FROM cache_private.caches c WHERE c.cache_name = NEW.cache_name)
  ON CONFLICT (cache_name) DO UPDATE SET
    hits = t.hits + EXCLUDED.hits,
    misses = t.misses + EXCLUDED.misses,
    fallbacks = t.fallbacks + EXCLUDED.fallbacks,
    counting_since = LEAST(t.counting_since, EXCLUDED.counting_since);
  RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION cache_private.add_to_lifetime_totals() FROM PUBLIC, anon, authenticated, service_role,
  cache_admin;

CREATE TRIGGER cache_stats_hourly_lifetime_totals
  AFTER INSERT OR UPDATE OF hits, misses, fallbacks ON cache_private.cache_stats_hourly
  FOR EACH ROW EXECUTE FUNCTION cache_private.add_to_lifetime_totals();
