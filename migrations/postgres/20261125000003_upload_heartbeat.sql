-- A live upload refreshes heartbeat_at while it streams. The reaper treats an `uploading`
-- row as crashed only when its heartbeat is older than reaper.stale_upload_after; rows
-- written by a release without this column fall back to created_at. Additive only, so the
-- previous release keeps working on this schema.
ALTER TABLE media ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
