-- Trust (issue 11): device ownership, mailbox binding, fair shares.

-- Device ownership: the SHA-256 of the secret registerdevicev2 handed the
-- device; status, unregister and a new registration of the id need it.
-- NULL for devices registered before this version (docs/security.md).
ALTER TABLE devices ADD COLUMN secret_hash bytea CHECK (length(secret_hash) = 32);

---- create above / drop below ----

ALTER TABLE devices DROP COLUMN secret_hash;
