-- Durable jobs (issue 13). River's own tables (river_*) are created by
-- store.Migrate before this file runs, so version 3 means they are there.

-- What became of each push: the database holds at most one row, so at most
-- one delivered push, per (subscription, item, device). NULL while claimed,
-- and for pushes finished before this version.
--   delivered      APNs or FCM accepted it
--   rejected       APNs or FCM refused it for good (a bad payload or topic)
--   token_dead     the push token is gone; the device was deactivated
--   not_announced  nothing to show: the item was gone, not new mail of the
--                  Inbox, or the EWS proxy did not accept the device
--   expired        APNs or FCM stayed away longer than ENSGate retries
ALTER TABLE push_claims ADD COLUMN outcome text
    CHECK (outcome IN ('delivered', 'rejected', 'token_dead', 'not_announced', 'expired'));
