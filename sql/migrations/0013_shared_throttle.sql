-- Failed logins and failed API keys, and dashboard login sessions, kept in the
-- database so every dashboard replica and API process shares them
-- (cachelib/throttle.py, cachelib/auth.py).
--
-- auth_throttle: one row per (scope, subject). scope is 'api' (API keys) or
-- 'login' (dashboard passwords); subject is 'address:<client address>' (an
-- IPv6 client counts by its /64) or, for logins, 'user:<username>'. Before a
-- key or password is checked, the attempt reserves the next slot of its rows
-- in one INSERT ... ON CONFLICT DO UPDATE ... RETURNING: the row lock makes
-- parallel attempts from any process take turns, each one gets its own slot
-- and counts as a failure until it succeeds. A success deletes its rows.
-- UNLOGGED like the hit/miss events: a server crash forgets the counts, which
-- costs an attacker nothing more than a fresh budget, and no request waits
-- for a WAL flush. Rows idle longer than the forget window are pruned.
--
-- dashboard_sessions: one row per dashboard login. The login cookie carries a
-- random session id; only its SHA-256 is stored. A session is valid while its
-- row exists and has not expired; logging out deletes the row, so a copy of
-- the cookie taken before the logout no longer logs in anywhere. Expired rows
-- are pruned at every login.
--
-- Only the owning role uses these tables: RLS is on with no policies, no
-- function exposes them, and every API role is refused.

CREATE UNLOGGED TABLE cache_private.auth_throttle (
  scope text NOT NULL CHECK (scope IN ('api', 'login')),
  subject text NOT NULL CHECK (subject ~ '^(address|user):' AND pg_catalog.length(subject) <= 200),
  failures integer NOT NULL CHECK (failures >= 0),
  next_allowed_at timestamptz NOT NULL,
  last_attempt_at timestamptz NOT NULL,
  PRIMARY KEY (scope, subject)
);
CREATE INDEX auth_throttle_last_attempt_at_idx ON cache_private.auth_throttle (last_attempt_at);
COMMENT ON TABLE cache_private.auth_throttle IS
  'Failed-authentication throttle shared by every process: attempts since the last success and the next free slot, '
  'per client address (and per username for dashboard logins).';

CREATE TABLE cache_private.dashboard_sessions (
  session_hash text PRIMARY KEY CHECK (session_hash ~ '^[0-9a-f]{64}$'),
  username text NOT NULL CHECK (pg_catalog.length(username) BETWEEN 1 AND 100),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  expires_at timestamptz NOT NULL
);
CREATE INDEX dashboard_sessions_expires_at_idx ON cache_private.dashboard_sessions (expires_at);
COMMENT ON TABLE cache_private.dashboard_sessions IS
  'Dashboard login sessions (SHA-256 of the id in the login cookie); logout deletes the row.';

ALTER TABLE cache_private.auth_throttle ENABLE ROW LEVEL SECURITY;
ALTER TABLE cache_private.dashboard_sessions ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.auth_throttle, cache_private.dashboard_sessions
  FROM PUBLIC, anon, authenticated, service_role, cache_admin;
