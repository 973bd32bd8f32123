-- The migration tool's own bookkeeping tables live in public (they exist before the
-- first migration runs). Keep them away from API roles: on Supabase, default
-- privileges would otherwise expose them to anon and authenticated.

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['_cachelib_migrations', '_yoyo_log', '_yoyo_version', 'yoyo_lock'] LOOP
    IF pg_catalog.to_regclass('public.' || t) IS NOT NULL THEN
      EXECUTE pg_catalog.format('REVOKE ALL ON public.%I FROM PUBLIC, anon, authenticated, service_role', t);
      EXECUTE pg_catalog.format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
    END IF;
  END LOOP;
END
$$;
