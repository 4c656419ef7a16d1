-- See migrations/postgres: the multipart upload of an `uploading` row.
ALTER TABLE media ADD COLUMN multipart_upload_id TEXT;
