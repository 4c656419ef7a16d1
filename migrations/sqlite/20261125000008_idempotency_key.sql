-- See migrations/postgres: the Idempotency-Key an upload was sent with, unique per account.
ALTER TABLE media ADD COLUMN idempotency_key TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS media_owner_idempotency_key_idx
    ON media (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
