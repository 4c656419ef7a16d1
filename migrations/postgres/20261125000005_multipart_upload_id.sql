-- The S3 multipart upload of an `uploading` row: NULL when none was started, '' while one
-- is being created (a crash then leaves an upload only a listing can find), else its id,
-- by which a clean-up or the reaper aborts it without listing. Additive only.
ALTER TABLE media ADD COLUMN IF NOT EXISTS multipart_upload_id text;
