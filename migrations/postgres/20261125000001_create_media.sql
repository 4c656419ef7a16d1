-- One row per media object. A row exists before the first byte reaches storage, so every
-- object that can exist has a row and the reaper can always find it.
CREATE TABLE IF NOT EXISTS media (
    id           uuid PRIMARY KEY,
    owner        text        NOT NULL,
    extension    text        NOT NULL,
    content_type text        NOT NULL,
    size_bytes   bigint,
    sha256       text,
    status       text        NOT NULL CHECK (status IN ('uploading', 'ready')),
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- The reaper's claim query walks expired rows in expiry order.
CREATE INDEX IF NOT EXISTS media_expires_at_idx ON media (expires_at);
-- Stale uploads (crashed mid-body) are found by age; few rows are ever 'uploading'.
CREATE INDEX IF NOT EXISTS media_uploading_created_at_idx ON media (created_at)
    WHERE status = 'uploading';
