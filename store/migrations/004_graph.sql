-- Mail sources (issue 14): Exchange Online through Microsoft Graph beside
-- EWS, and OAuth refresh tokens for both.

-- An allowed endpoint is an EWS URL or a Graph root (kind). oauth_* say how
-- a device's refresh token is redeemed: the mail app's public client id,
-- its authority (the token endpoint is authority + /oauth2/v2.0/token) and
-- the scope asked for. A Graph entry needs them; an EWS entry has them only
-- if its OAuth devices may register refresh tokens.
ALTER TABLE ews_endpoints ADD COLUMN kind text NOT NULL DEFAULT 'ews' CHECK (kind IN ('ews', 'graph'));
ALTER TABLE ews_endpoints ADD COLUMN oauth_client_id text CHECK (length(oauth_client_id) BETWEEN 1 AND 256);
ALTER TABLE ews_endpoints ADD COLUMN oauth_authority text CHECK (length(oauth_authority) BETWEEN 1 AND 2048);
ALTER TABLE ews_endpoints ADD COLUMN oauth_scope text CHECK (length(oauth_scope) BETWEEN 1 AND 2048);
ALTER TABLE ews_endpoints ADD CONSTRAINT ews_endpoints_oauth_whole
    CHECK ((oauth_client_id IS NULL) = (oauth_authority IS NULL) AND (oauth_client_id IS NULL) = (oauth_scope IS NULL));
ALTER TABLE ews_endpoints ADD CONSTRAINT ews_endpoints_graph_has_oauth
    CHECK (kind = 'ews' OR oauth_client_id IS NOT NULL);

-- A subscription is Exchange's (EWS push) or Graph's; remote_id is its id
-- there. expires_at: Graph subscriptions expire unless renewed (EWS push
-- subscriptions do not); the health job fails one that passed it.
ALTER TABLE subscriptions RENAME COLUMN ews_subscription_id TO remote_id;
ALTER TABLE subscriptions ADD COLUMN source text NOT NULL DEFAULT 'ews' CHECK (source IN ('ews', 'graph'));
ALTER TABLE subscriptions ADD COLUMN expires_at timestamptz;
CREATE INDEX subscriptions_expiry ON subscriptions (expires_at) WHERE state = 'active' AND expires_at IS NOT NULL;
