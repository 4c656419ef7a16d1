-- The type the upload's first bytes show (media.verify_content), beside the served type
-- that comes from the extension. NULL when the bytes were not recognised. Additive only.
ALTER TABLE media ADD COLUMN IF NOT EXISTS detected_mime_type text;
