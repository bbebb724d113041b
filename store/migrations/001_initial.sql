-- The first ENSGate schema: tenants and their API tokens, allowed EWS
-- endpoints, device key pairs, devices, mailbox subscriptions, compliance.

CREATE TABLE tenants (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               text NOT NULL UNIQUE
                       CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    -- PolicyLimitNotificationText ceiling: 0 shows most, 4 nothing.
    notification_level smallint NOT NULL DEFAULT 0 CHECK (notification_level BETWEEN 0 AND 4),
    created_at         timestamptz NOT NULL DEFAULT now()
);

-- Only the SHA-256 of a token is kept; the token itself is shown once.
CREATE TABLE api_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

-- A device's ewsUrl must equal one of these (normalised) URLs. A pin belongs
-- to the tenant's entry: two tenants may list one URL with different pins.
CREATE TABLE ews_endpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url         text NOT NULL,
    fingerprint text CHECK (fingerprint ~ '^(sha256|spki-sha256):[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, url)
);

-- RSA key pairs handed to devices for encrypting their credentials. The
-- private key is sealed under the master key named by master_key_id, so the
-- master key can rotate. Unassigned rows are the pre-generated pool.
CREATE TABLE key_pairs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id             text NOT NULL UNIQUE,
    public_key         bytea NOT NULL,
    sealed_private_key bytea NOT NULL,
    master_key_id      text NOT NULL,
    tenant_id          bigint REFERENCES tenants (id) ON DELETE CASCADE,
    device_id          text,
    assigned_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((assigned_at IS NULL) = (tenant_id IS NULL))
);
CREATE INDEX key_pairs_pool ON key_pairs (id) WHERE assigned_at IS NULL;

-- One EWS push subscription per mailbox (tenant + keyed hash of the
-- lower-cased address). The credentials are sealed under a per-subscription
-- key that is never stored: it travels only in Exchange's callback URL.
-- Ended and failed rows stay, so Exchange's late callbacks still get an
-- authenticated Unsubscribe.
CREATE TABLE subscriptions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_id           text NOT NULL UNIQUE,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    mailbox_hash        bytea NOT NULL,
    endpoint_id         bigint NOT NULL REFERENCES ews_endpoints (id) ON DELETE CASCADE,
    auth_type           text NOT NULL CHECK (auth_type IN ('basic', 'oauth', 'cert')),
    sealed_credentials  bytea NOT NULL,
    ews_subscription_id text NOT NULL,
    watermark           text,
    status_frequency    integer NOT NULL CHECK (status_frequency BETWEEN 1 AND 1440),
    state               text NOT NULL DEFAULT 'active'
                        CHECK (state IN ('active', 'failed', 'ended')),
    state_reason        text,
    last_seen_at        timestamptz NOT NULL DEFAULT now(),
    created_at          timestamptz NOT NULL DEFAULT now(),
    ended_at            timestamptz
);
CREATE UNIQUE INDEX subscriptions_live_mailbox ON subscriptions (tenant_id, mailbox_hash)
    WHERE state = 'active';
CREATE INDEX subscriptions_mailbox ON subscriptions (tenant_id, mailbox_hash, id);
CREATE INDEX subscriptions_liveness ON subscriptions (last_seen_at) WHERE state = 'active';

-- Which (item, device) pushes are done or in progress, so that Created and
-- NewMail events for one item, and Exchange's retries on any node, give one
-- push. A claim that is not finished expires (its node died), and the next
-- retry from Exchange takes it over.
CREATE TABLE push_claims (
    subscription_id bigint NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    item_hash       bytea NOT NULL,
    device_id       bigint NOT NULL,
    claimed_until   timestamptz NOT NULL,
    done_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription_id, item_hash, device_id)
);
CREATE INDEX push_claims_age ON push_claims (created_at);

CREATE TABLE devices (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id          bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id          text NOT NULL CHECK (length(device_id) BETWEEN 1 AND 256),
    mailbox_hash       bytea NOT NULL,
    platform           text NOT NULL CHECK (platform IN ('ios', 'android')),
    push_token         text NOT NULL,
    topic              text,
    notification_level smallint NOT NULL CHECK (notification_level BETWEEN 0 AND 4),
    state              text NOT NULL DEFAULT 'active'
                       CHECK (state IN ('active', 'inactive', 'unregistered', 'removed')),
    state_reason       text,
    registered_at      timestamptz NOT NULL DEFAULT now(),
    state_changed_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, device_id)
);
CREATE INDEX devices_mailbox ON devices (tenant_id, mailbox_hash) WHERE state = 'active';

-- Compliance is kept apart from devices: the EWS proxy judges devices that
-- never registered with ENS, and an admin may block an ID before it appears.
CREATE TABLE device_compliance (
    tenant_id  bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    device_id  text NOT NULL CHECK (length(device_id) BETWEEN 1 AND 256),
    state      text NOT NULL CHECK (state IN ('compliant', 'noncompliant', 'blocked', 'wiped')),
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, device_id)
);

---- create above / drop below ----

DROP TABLE push_claims;
DROP TABLE device_compliance;
DROP TABLE devices;
DROP TABLE subscriptions;
DROP TABLE key_pairs;
DROP TABLE ews_endpoints;
DROP TABLE api_tokens;
DROP TABLE tenants;
