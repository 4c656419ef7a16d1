-- See migrations/postgres: the type the upload's first bytes show.
ALTER TABLE media ADD COLUMN detected_mime_type TEXT;
