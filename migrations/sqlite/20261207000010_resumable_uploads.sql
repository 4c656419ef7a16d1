-- See migrations/postgres: resumable uploads and the status 'incomplete'. SQLite cannot
-- change a CHECK constraint, so the table is rebuilt with the wider one and every column
-- and index it had (instants in epoch milliseconds, as before).
CREATE TABLE media_resumable (
    id                  TEXT    PRIMARY KEY NOT NULL,
    owner               TEXT    NOT NULL,
    extension           TEXT    NOT NULL,
    content_type        TEXT    NOT NULL,
    size_bytes          INTEGER,
    sha256              TEXT,
    status              TEXT    NOT NULL CHECK (status IN ('uploading', 'incomplete', 'ready')),
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    reap_claim          TEXT,
    reap_claimed_until  INTEGER,
    heartbeat_at        INTEGER,
    multipart_upload_id TEXT,
    detected_mime_type  TEXT,
    idempotency_key     TEXT,
    ready_at            INTEGER,
    upload_length       INTEGER,
    upload_offset       INTEGER,
    upload_state        TEXT,
    upload_generation   INTEGER,
    upload_lease        TEXT,
    upload_lease_until  INTEGER,
    upload_takeover     TEXT,
    upload_protocol     TEXT,
    upload_metadata     TEXT
);
INSERT INTO media_resumable
    (id, owner, extension, content_type, size_bytes, sha256, status, created_at, expires_at,
     reap_claim, reap_claimed_until, heartbeat_at, multipart_upload_id, detected_mime_type,
     idempotency_key, ready_at)
SELECT id, owner, extension, content_type, size_bytes, sha256, status, created_at, expires_at,
       reap_claim, reap_claimed_until, heartbeat_at, multipart_upload_id, detected_mime_type,
       idempotency_key, ready_at
FROM media;
DROP TABLE media;
ALTER TABLE media_resumable RENAME TO media;
CREATE INDEX IF NOT EXISTS media_expires_at_idx ON media (expires_at);
CREATE INDEX IF NOT EXISTS media_uploading_created_at_idx ON media (created_at)
    WHERE status = 'uploading';
CREATE INDEX IF NOT EXISTS media_owner_created_at_idx ON media (owner, created_at DESC, id DESC);
CREATE UNIQUE INDEX IF NOT EXISTS media_owner_idempotency_key_idx
    ON media (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS media_incomplete_owner_idx ON media (owner)
    WHERE status = 'incomplete';
