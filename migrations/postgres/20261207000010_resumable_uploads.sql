-- Resumable uploads (tus 1.0 and the IETF draft): a paused upload's row has status
-- 'incomplete'. Its progress lives in the columns below, so any replica continues it.
-- Widening the CHECK keeps the previous release working on this schema (it never writes
-- the new status, and its reaper removes expired rows of any status).
ALTER TABLE media DROP CONSTRAINT IF EXISTS media_status_check;
ALTER TABLE media ADD CONSTRAINT media_status_check
    CHECK (status IN ('uploading', 'incomplete', 'ready'));
-- The declared length (NULL until known), the bytes kept so far, and the engine's saved
-- state (JSON: the SHA-256 state, the parts written, the temporary tail, the first bytes
-- for the content check).
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_length bigint;
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_offset bigint;
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_state text;
-- Bumped by every request that takes the upload: its S3 part numbers and temporary
-- objects are its own, so a request that lost the upload can never overwrite a newer one's.
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_generation bigint;
-- The request writing the upload now: its token, until when it holds the upload unless it
-- renews, and the token of a newer request asking it to stop.
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_lease text;
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_lease_until timestamptz;
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_takeover text;
-- 'tus' or 'draft', and tus's Upload-Metadata as sent at creation (HEAD repeats it).
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_protocol text;
ALTER TABLE media ADD COLUMN IF NOT EXISTS upload_metadata text;
-- An account's incomplete uploads are counted at every creation.
CREATE INDEX IF NOT EXISTS media_incomplete_owner_idx ON media (owner)
    WHERE status = 'incomplete';
