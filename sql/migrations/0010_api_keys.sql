-- API keys for the admin HTTP API (cachelib/apikeys.py, cachelib/api.py).
--
-- A key is shown once when it is created; only its SHA-256 is kept. Keys are
-- high-entropy random tokens (256 bits), so a fast hash is the right tool:
-- there is nothing to brute-force that a slow hash would protect. key_prefix
-- is the short public part of the key (pgc_<prefix>_<secret>) used to find the
-- row and to tell keys apart in listings. A revoked key keeps its row (and its
-- name) so the audit log stays unambiguous.
--
-- Only the owning role uses this table: RLS is on with no policies, and no
-- public function exposes it.

CREATE TABLE cache_private.api_keys (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name text NOT NULL UNIQUE
    CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
  role text NOT NULL CHECK (role IN ('admin', 'viewer')),
  key_hash text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
  key_prefix text NOT NULL UNIQUE CHECK (key_prefix ~ '^[0-9a-f]{8}$'),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  revoked_at timestamptz,
  last_used_at timestamptz
);
COMMENT ON TABLE cache_private.api_keys IS
  'Keys of the admin HTTP API: name, role, SHA-256 of the key, its public prefix; revoked keys are kept.';

ALTER TABLE cache_private.api_keys ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.api_keys FROM PUBLIC, anon, authenticated, service_role, cache_admin;
