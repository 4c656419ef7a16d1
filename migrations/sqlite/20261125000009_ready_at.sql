-- See migrations/postgres: when the upload completed (milliseconds since the epoch).
ALTER TABLE media ADD COLUMN ready_at INTEGER;
