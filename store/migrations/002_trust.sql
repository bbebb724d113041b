-- Trust (issue 11): device ownership, mailbox binding, fair shares.

-- Device ownership: the SHA-256 of the secret registerdevicev2 handed the
-- device; status, unregister and a new registration of the id need it.
-- NULL for devices registered before this version (docs/security.md).
ALTER TABLE devices ADD COLUMN secret_hash bytea CHECK (length(secret_hash) = 32);

-- Mailbox binding: a registration made before it was never checked to log in
-- to its mailbox (a device could claim any address, and get that mailbox's
-- mail). Such devices get no pushes until they register again through the
-- check; each is asked to at its subscription's next callback, which ends
-- that subscription (docs/operations.md, "Upgrading to mailbox binding").
UPDATE devices SET state = 'inactive', state_reason = 'reverify: registered before mailbox binding',
    state_changed_at = now()
    WHERE state = 'active';

-- Fair shares (key pool): publickey counts a tenant's unused key pairs and
-- finds a device's own again; the clean-up deletes them by age.
CREATE INDEX key_pairs_handed_out ON key_pairs (tenant_id, device_id) WHERE assigned_at IS NOT NULL;
CREATE INDEX key_pairs_expiry ON key_pairs (assigned_at) WHERE assigned_at IS NOT NULL;

-- Endpoint removal (ensgate ens endpoint remove): a removed entry stays,
-- marked, so its subscriptions end cleanly (their rows answer Exchange's
-- next callback with Unsubscribe) instead of vanishing by cascade.
ALTER TABLE ews_endpoints ADD COLUMN removed_at timestamptz;
-- A registration may not add a live subscription to a removed endpoint:
-- FOR SHARE waits for a removal in progress and then sees it, and a removal
-- waits for the registrations holding it (store.RemoveEndpoint).
CREATE FUNCTION ensgate_endpoint_live() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM ews_endpoints WHERE id = NEW.endpoint_id AND removed_at IS NULL FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'EWS endpoint % was removed', NEW.endpoint_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER subscriptions_endpoint_live BEFORE INSERT ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION ensgate_endpoint_live();

-- Fair shares (key pool, per client address): the client address (IPv6 by
-- its /56) that was handed the pair, so that publickey can bound the pairs
-- one address holds within its tenant (store.AssignKeyPair). It lives as
-- long as the pair: minutes, until a registration uses it or it expires.
ALTER TABLE key_pairs ADD COLUMN client_address text;

---- create above / drop below ----

-- Fair shares (key pool, per client address).
ALTER TABLE key_pairs DROP COLUMN client_address;

ALTER TABLE devices DROP COLUMN secret_hash;

-- Fair shares (key pool).
DROP INDEX key_pairs_expiry;
DROP INDEX key_pairs_handed_out;

-- Endpoint removal: removed entries go, with their ended subscriptions.
DROP TRIGGER subscriptions_endpoint_live ON subscriptions;
DROP FUNCTION ensgate_endpoint_live();
DELETE FROM ews_endpoints WHERE removed_at IS NOT NULL;
ALTER TABLE ews_endpoints DROP COLUMN removed_at;
