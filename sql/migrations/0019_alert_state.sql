-- What the alert webhook was last told, so that a change of the overall health status is sent once
-- and a failed send is sent again.
--
-- python -m cachelib alerts notify (cachelib/alerts.py), run from cron after each cleanup, compares
-- the overall status of the most recent recorded health run (cache_private.health_history, 0016)
-- with the status stored here, posts to CACHE_ALERT_WEBHOOK_URL when they differ, and stores the
-- new status only once the webhook took the message: a run whose send failed leaves the row as it
-- was, and the next run sends again. The run holds the row's lock while it sends, so two
-- overlapping runs send once (the row is made here, so that no run ever waits for another's
-- insert). One row per notification, today only 'health'; a NULL status means nothing was sent yet.
--
-- Read and written by the owner's application only, like the rest of cache_private. The webhook URL
-- is never stored in the database: it is a secret of the environment.

CREATE TABLE cache_private.alert_state (
  name text PRIMARY KEY CHECK (pg_catalog.length(name) BETWEEN 1 AND 100),
  status text CHECK (status IN ('ok', 'warning', 'critical')),  -- the overall status last sent
  notified_at timestamptz,      -- when the webhook took it
  run_recorded_at timestamptz   -- recorded_at of the health run that message was about
);
COMMENT ON TABLE cache_private.alert_state IS
  'The overall health status the alert webhook was last told (python -m cachelib alerts notify), one row per '
  'notification; updated only after the webhook took the message.';

ALTER TABLE cache_private.alert_state ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON cache_private.alert_state FROM PUBLIC, anon, authenticated, service_role, cache_admin;

INSERT INTO cache_private.alert_state (name) VALUES ('health');
