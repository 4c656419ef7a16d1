-- The Idempotency-Key an upload was sent with, NULL without one. An account's key names at
-- most one row: the upload holding it (streaming, or ready until it expires or is deleted).
-- A crashed upload's or an expired medium's key is cleared (the row itself stays for the
-- reaper) before another upload takes it. Additive only.
ALTER TABLE media ADD COLUMN IF NOT EXISTS idempotency_key text;
CREATE UNIQUE INDEX IF NOT EXISTS media_owner_idempotency_key_idx
    ON media (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
