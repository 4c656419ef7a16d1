-- When the upload completed (its row became 'ready'): the media's Last-Modified, against
-- which If-Unmodified-Since is judged. NULL for rows made ready by a release without this
-- column; they fall back to created_at. Additive only.
ALTER TABLE media ADD COLUMN IF NOT EXISTS ready_at timestamptz;
